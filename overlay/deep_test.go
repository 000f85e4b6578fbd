package overlay

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/loopfs"
)

// deepChain makes n image layers on a fresh tmpfs home, each adding
// f<i> and replacing "top"; layer i deletes f<i-2> (a whiteout deep in
// the chain), and returns the driver and the top layer's ID.
func deepChain(t *testing.T, n int, tweak func(d *Driver)) (*Driver, string) {
	t.Helper()
	needRoot(t)
	home := loopfs.New(t, "tmpfs", 1<<30)
	d := newDriver(t, home)
	if tweak != nil {
		tweak(d)
	}
	parent := ""
	for i := range n {
		id := fmt.Sprintf("layer%04d", i)
		entries := []fixtures.Entry{
			fixtures.File(fmt.Sprintf("f%04d", i), fmt.Sprint(i), 0o644),
			fixtures.File("top", id, 0o644),
		}
		if i >= 2 {
			entries = append(entries, fixtures.Whiteout(fmt.Sprintf("f%04d", i-2)))
		}
		layer(t, d, id, parent, entries...)
		parent = id
	}
	return d, parent
}

// checkDeep mounts top (and a read-write layer on it) and checks that
// every layer shows: the newest "top", the last two files, and none of
// the deleted ones.
func checkDeep(t *testing.T, d *Driver, top string, n int) {
	t.Helper()
	rw := "rw-" + top
	if err := d.CreateReadWrite(rw, top, nil); err != nil && !errors.Is(err, graphdriver.ErrLayerExists) {
		t.Fatal(err)
	}
	for _, id := range []string{top, rw} {
		root, err := d.Get(id, graphdriver.MountOpts{})
		if err != nil {
			t.Fatalf("mount %s over %d layers: %v", id, n, err)
		}
		if b, err := os.ReadFile(filepath.Join(root, "top")); err != nil || string(b) != top {
			t.Errorf("%s: top = %q, %v; want %q", id, b, err, top)
		}
		ents, err := os.ReadDir(root)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		want := fmt.Sprintf("[f%04d f%04d top]", n-2, n-1)
		if fmt.Sprint(names) != want {
			t.Errorf("%s shows %v, want %s", id, names, want)
		}
		if id == rw {
			if err := os.WriteFile(filepath.Join(root, "top"), []byte(top), 0o644); err != nil {
				t.Errorf("write into the read-write layer: %v", err)
			}
		}
		if err := d.Put(id); err != nil {
			t.Fatal(err)
		}
	}
}

// Chains of 128 and 500 layers mount with every mount method: fsconfig
// with fds, fsconfig with short-link paths, and mount(2) with bare short
// names from HOME/l, whose one page of options holds 500. 501 is one past
// the kernel's limit: the image mount flattens, the read-write layer on it
// (500 lowers plus its upper dir) does too, since its lowers are 501.
func TestDeepChains(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 1,000+ layers")
	}
	for _, n := range []int{128, 500, 501} {
		for _, method := range []mountMethod{methodFsconfigFd, methodFsconfigPath, methodMount} {
			if n != 500 && method != methodFsconfigFd {
				continue
			}
			t.Run(fmt.Sprintf("%d/%s", n, strings.ReplaceAll(method.String(), " ", "_")), func(t *testing.T) {
				d, top := deepChain(t, n, func(d *Driver) { d.method = method })
				checkDeep(t, d, top, n)
			})
		}
	}
}

// Mount counts are shared between processes: a process that took a
// reference and died without Put leaves the layer mounted with that
// reference (as `layers mount` does on purpose), which a later process
// releases; a count whose mount vanished behind the driver's back (a
// reboot, a manual umount) reads as zero and the next Get mounts again.
func TestMountCountAcrossProcesses(t *testing.T) {
	if os.Getenv("LAYERS_OVERLAY_HELPER") == "get" {
		d, err := New(os.Getenv("LAYERS_OVERLAY_HOME"), nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if _, err := d.Get("c", graphdriver.MountOpts{}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		// Killed before Put: exit without cleaning up.
		os.Exit(0)
	}
	home := t.TempDir()
	d := newDriver(t, home)
	layer(t, d, "base", "", fixtures.File("f", "f", 0o644))
	if err := d.CreateReadWrite("c", "base", nil); err != nil {
		t.Fatal(err)
	}
	getInChild := func() {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestMountCountAcrossProcesses$")
		cmd.Env = append(os.Environ(), "LAYERS_OVERLAY_HELPER=get", "LAYERS_OVERLAY_HOME="+home)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("child: %v: %s", err, out)
		}
	}
	merged := filepath.Join(home, "c", "merged")
	isMounted := func() bool {
		t.Helper()
		ok, err := graphdriver.IsMountpoint(merged)
		if errors.Is(err, os.ErrNotExist) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	count := func() int {
		t.Helper()
		n, err := d.mountCount("c").Count()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	getInChild()
	if !isMounted() || count() != 1 {
		t.Fatalf("after a child's Get: mounted %v, count %d; want true, 1", isMounted(), count())
	}
	// This process takes and drops its own reference: the child's stays.
	if _, err := d.Get("c", graphdriver.MountOpts{}); err != nil {
		t.Fatal(err)
	}
	if err := d.Put("c"); err != nil {
		t.Fatal(err)
	}
	if !isMounted() || count() != 1 {
		t.Fatalf("after Get+Put here: mounted %v, count %d; want true, 1", isMounted(), count())
	}
	// The dead child's reference is released by a Put from here.
	if err := d.Put("c"); err != nil {
		t.Fatal(err)
	}
	if isMounted() || count() != 0 {
		t.Fatalf("after releasing the child's reference: mounted %v, count %d", isMounted(), count())
	}

	// The mount vanishes behind the driver's back.
	getInChild()
	if err := graphdriver.Unmount(merged); err != nil {
		t.Fatal(err)
	}
	if count() != 0 {
		t.Fatalf("count %d after the mount vanished, want 0", count())
	}
	root, err := d.Get("c", graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "f")); err != nil || string(b) != "f" {
		t.Fatalf("after remount: f = %q, %v", b, err)
	}
	if count() != 1 {
		t.Fatalf("count %d after one Get, want 1", count())
	}
	if err := d.Put("c"); err != nil {
		t.Fatal(err)
	}
	if isMounted() {
		t.Fatal("mounted after the last Put")
	}

	// Cleanup releases only this instance's references.
	getInChild()
	if _, err := d.Get("c", graphdriver.MountOpts{}); err != nil {
		t.Fatal(err)
	}
	d2, err := New(home, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if count() != 2 {
		t.Fatalf("count %d after another instance's Cleanup, want 2", count())
	}
	if err := d.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if !isMounted() || count() != 1 {
		t.Fatalf("after Cleanup: mounted %v, count %d; want the child's reference kept", isMounted(), count())
	}
	if err := d.Remove("c"); err != nil {
		t.Fatal(err)
	}
	if isMounted() {
		t.Fatal("mounted after Remove")
	}
}

// With userxattr, overlay's xattrs are user.overlay.*: ApplyDiff marks
// opaque dirs so, and the mount (with the userxattr option) honours them.
func TestUserXattr(t *testing.T) {
	needRoot(t)
	home := loopfs.New(t, "tmpfs", 64<<20)
	drv, err := New(home, map[string]string{"overlay.userxattr": "true"})
	if err != nil {
		t.Fatal(err)
	}
	d := drv.(*Driver)
	t.Cleanup(func() { _ = d.Cleanup() })
	layer(t, d, "l1", "", fixtures.Dir("o", 0o755), fixtures.File("o/old", "old", 0o644), fixtures.File("gone", "g", 0o644))
	layer(t, d, "l2", "l1", fixtures.Dir("o", 0o755), fixtures.Opaque("o"), fixtures.File("o/new", "new", 0o644), fixtures.Whiteout("gone"))
	buf := make([]byte, 8)
	if n, err := getxattr(filepath.Join(home, "l2", "diff", "o"), "user.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Fatalf("l2/diff/o: user.overlay.opaque = %q, %v", buf[:n], err)
	}
	if n, _ := getxattr(filepath.Join(home, "l2", "diff", "o"), "trusted.overlay.opaque", buf); n > 0 {
		t.Fatal("l2/diff/o carries trusted.overlay.opaque with userxattr")
	}
	root, err := d.Get("l2", graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put("l2")
	got, err := fixtures.Snapshot(root, fixtures.WithoutOverlayXattrs())
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for p := range got {
		paths = append(paths, p)
	}
	if want := "[/ /o /o/new]"; fmt.Sprint(sorted(paths)) != want {
		t.Errorf("l2 shows %v, want %s", sorted(paths), want)
	}
}

// Chains deeper than the kernel's 500 lowers mount through cached
// flattened trees at every 256th layer from the bottom; 1,100 layers take
// three of them, each built from the one below.
func TestDeeperThanKernelLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 1,800 layers")
	}
	for _, c := range []struct {
		n    int
		flat []int // depths (from the bottom, 1-based) flattened
	}{{700, []int{256}}, {1100, []int{256, 512, 768}}} {
		t.Run(fmt.Sprint(c.n), func(t *testing.T) {
			d, top := deepChain(t, c.n, nil)
			checkDeep(t, d, top, c.n)
			flats, err := filepath.Glob(filepath.Join(d.home, "*", "flat"))
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, depth := range c.flat {
				want = append(want, filepath.Join(d.home, fmt.Sprintf("layer%04d", depth-1), "flat"))
			}
			if fmt.Sprint(flats) != fmt.Sprint(want) {
				t.Errorf("flattened trees %v, want %v", flats, want)
			}
			for _, s := range d.Status() {
				if s.Key == "Deep Chains" && !strings.Contains(s.Value, fmt.Sprintf("(%d cached)", len(c.flat))) {
					t.Errorf("Status: %s: %s", s.Key, s.Value)
				}
			}
			// Every mount method mounts it; the trees are reused.
			for _, method := range []mountMethod{methodFsconfigPath, methodMount} {
				d.method = method
				checkDeep(t, d, top, c.n)
			}
		})
	}
}

// A home whose path is 200+ characters long mounts 129-layer chains with
// every method: fsconfig takes fds (or short links under 256 bytes) and
// mount(2) names lowers relative to HOME/l, so the home's length is paid
// once, not per lower.
func TestLongHome(t *testing.T) {
	needRoot(t)
	base := loopfs.New(t, "tmpfs", 1<<30)
	home := base
	for len(home) < 220 {
		home = filepath.Join(home, strings.Repeat("h", 40))
	}
	for _, method := range []mountMethod{methodFsconfigFd, methodFsconfigPath, methodMount} {
		t.Run(strings.ReplaceAll(method.String(), " ", "_"), func(t *testing.T) {
			d := newDriver(t, filepath.Join(home, fmt.Sprint(int(method))))
			d.method = method
			parent := ""
			for i := range 129 {
				id := fmt.Sprintf("layer%04d", i)
				entries := []fixtures.Entry{fixtures.File(fmt.Sprintf("f%04d", i), fmt.Sprint(i), 0o644), fixtures.File("top", id, 0o644)}
				if i >= 2 {
					entries = append(entries, fixtures.Whiteout(fmt.Sprintf("f%04d", i-2)))
				}
				layer(t, d, id, parent, entries...)
				parent = id
			}
			checkDeep(t, d, parent, 129)
		})
	}
}

// mount(2) options of exactly a page (containers/storage#1159: the
// kernel needs the terminating NUL inside the page) or more are refused
// before the syscall, with an error that says why.
func TestClassicOptionsPageLimit(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	page := os.Getpagesize()
	opts := [][2]string{{"index", "off"}}
	// "lowerdir=" + names + ",index=off" is exactly one page.
	fixed := len("lowerdir=") + len(",index=off")
	name := strings.Repeat("n", page-fixed)
	m := overlayMount{lowers: []string{name}, lowerLinks: []string{filepath.Join(dir, name)}, target: filepath.Join(dir, "merged"), options: opts, linkDir: dir}
	err := mountClassic(m)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("need %d bytes of mount(2) options, the kernel takes less than %d", page, page)) {
		t.Fatalf("mount(2) with %d bytes of options: %v", page, err)
	}
}
