package overlay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/graphdriver/drivertest"
	"github.com/layers-storage/layers/internal/loopfs"
)

// needRoot skips t unless it runs as root: overlay mounts need it.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("overlay mounts need root")
	}
}

func TestSuite(t *testing.T) {
	needRoot(t)
	t.Run("tempdir", func(t *testing.T) { drivertest.Run(t, drivertest.HomeFactory("", New, nil)) })
	for _, typ := range []string{"ext4", "xfs", "btrfs", "tmpfs"} {
		t.Run(typ, func(t *testing.T) {
			mnt := loopfs.New(t, typ, 1<<30)
			drivertest.Run(t, drivertest.HomeFactory(mnt, New, nil))
		})
	}
	// With renamed directories recorded as redirects and metadata-only
	// copy-ups, the native differ must still give the naive one's answer
	// (the suite compares them on every case).
	t.Run("tmpfs-redirect-metacopy", func(t *testing.T) {
		mnt := loopfs.New(t, "tmpfs", 1<<30)
		drivertest.Run(t, drivertest.HomeFactory(mnt, New, map[string]string{"overlay.metacopy": "true", "overlay.redirect_dir": "true"}))
	})
}

// newDriver makes a driver in home (a fresh temp dir when "") and cleans
// it up, checking that Cleanup leaves no mount under home.
func newDriver(t *testing.T, home string) *Driver {
	t.Helper()
	needRoot(t)
	if home == "" {
		home = t.TempDir()
	}
	d, err := New(home, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Cleanup(); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
		if ms := mountsUnder(t, home); len(ms) > 0 {
			t.Errorf("mounted under %s after Cleanup: %v", home, ms)
		}
	})
	return d.(*Driver)
}

// mountsUnder lists the mount points below dir.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		if m.Mountpoint != dir {
			out = append(out, m.Mountpoint)
		}
	}
	return out
}

// layer creates image layer id on parent and applies entries to it.
func layer(t *testing.T, d *Driver, id, parent string, entries ...fixtures.Entry) {
	t.Helper()
	if err := d.Create(id, parent, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := graphdriver.ApplyDiff(context.Background(), d, id, parent, bytes.NewReader(fixtures.Tar(entries...)), diff.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
}

func isWhiteout(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

func isOpaque(p string) bool {
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(p, "trusted.overlay.opaque", buf)
	return err == nil && string(buf[:n]) == "y"
}

// A chain of three layers mounts with every layer's content, and what the
// middle layer deletes stays hidden: the kernel stored the deletions in
// its upper dir as whiteouts and opaque dirs. Once per mount method.
func TestChainWhiteouts(t *testing.T) {
	for _, method := range []mountMethod{methodFsconfigFd, methodFsconfigPath, methodMount} {
		t.Run(strings.ReplaceAll(method.String(), " ", "_"), func(t *testing.T) {
			d := newDriver(t, "")
			d.method = method
			layer(t, d, "l1", "",
				fixtures.File("a", "a", 0o644), fixtures.File("b", "b", 0o644),
				fixtures.Dir("d", 0o755), fixtures.File("d/x", "x", 0o644), fixtures.File("d/y", "y", 0o644),
				fixtures.Dir("o", 0o755), fixtures.File("o/old", "old", 0o644))
			layer(t, d, "l2", "l1",
				fixtures.Whiteout("a"), fixtures.Dir("d", 0o755), fixtures.Whiteout("d/x"),
				fixtures.Dir("o", 0o755), fixtures.Opaque("o"), fixtures.File("o/new", "new", 0o644))
			layer(t, d, "l3", "l2", fixtures.File("c", "c", 0o644), fixtures.File("b", "b3", 0o644))

			root, err := d.Get("l3", graphdriver.MountOpts{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := fixtures.Snapshot(root, fixtures.WithoutOverlayXattrs())
			if perr := d.Put("l3"); perr != nil {
				t.Error(perr)
			}
			if err != nil {
				t.Fatal(err)
			}
			var paths []string
			for p := range got {
				paths = append(paths, p)
			}
			sort.Strings(paths)
			if want := "[/ /b /c /d /d/y /o /o/new]"; fmt.Sprint(paths) != want {
				t.Errorf("l3 shows %v, want %s", paths, want)
			}
			if ms := mountsUnder(t, d.home); len(ms) > 0 {
				t.Errorf("mounted after Put: %v", ms)
			}
			// The deletions live in l2's upper dir, as the kernel wrote them.
			diff2 := filepath.Join(d.home, "l2", "diff")
			if !isWhiteout(filepath.Join(diff2, "a")) || !isWhiteout(filepath.Join(diff2, "d/x")) {
				t.Errorf("l2/diff lacks whiteouts for a and d/x")
			}
			if !isOpaque(filepath.Join(diff2, "o")) && !isWhiteout(filepath.Join(diff2, "o/old")) {
				t.Errorf("l2/diff hides o/old neither by an opaque o nor by a whiteout")
			}
			b, err := os.ReadFile(filepath.Join(d.home, "l3", "lower"))
			if err != nil || string(b) != "l2\nl1\n" {
				t.Errorf("l3/lower holds %q (%v), want the parent first", b, err)
			}
		})
	}
}

// The short links and layer files are where the package doc says.
func TestLayout(t *testing.T) {
	d := newDriver(t, "")
	layer(t, d, "base", "", fixtures.File("f", "f", 0o644))
	if err := d.CreateReadWrite("rw", "base", nil); err != nil {
		t.Fatal(err)
	}
	for id, kind := range map[string]string{"base": "image\n", "rw": "read-write\n"} {
		b, err := os.ReadFile(filepath.Join(d.home, id, "kind"))
		if err != nil || string(b) != kind {
			t.Errorf("%s/kind: %q %v", id, b, err)
		}
		short, err := d.readLink(id)
		if err != nil {
			t.Fatal(err)
		}
		target, err := filepath.EvalSymlinks(filepath.Join(d.home, "l", short))
		if err != nil || target != filepath.Join(d.home, id, "diff") {
			t.Errorf("l/%s resolves to %q (%v)", short, target, err)
		}
		for _, sub := range []string{"diff", "work", "merged"} {
			fi, err := os.Stat(filepath.Join(d.home, id, sub))
			if sub == "work" && id == "base" {
				if !os.IsNotExist(err) {
					t.Errorf("image layer %s has a work dir: %v", id, err)
				}
				continue
			}
			if err != nil || !fi.IsDir() {
				t.Errorf("%s/%s: %v", id, sub, err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(d.home, "base", "lower")); !os.IsNotExist(err) {
		t.Errorf("a layer without parent has a lower file: %v", err)
	}
	if err := d.Remove("base"); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(d.home, "l")); len(ents) != 1 {
		t.Errorf("HOME/l after removing one of two layers: %v", ents)
	}
	st := map[string]string{}
	for _, s := range d.Status() {
		st[s.Key] = s.Value
	}
	if st["Mount API"] != "fsconfig lowerdir+ (fds)" || st["Supports d_type"] != "true" || st["Backing Filesystem"] == "" {
		t.Errorf("Status = %v", st)
	}
	t.Logf("status: %v", st)
}

// Image layers mount read-only: as a read-only bind mount of their diff
// dir without parent, as a lowers-only overlay with one; read-write
// layers mount writable, with their diff dir as upper dir.
func TestMountKinds(t *testing.T) {
	d := newDriver(t, "")
	layer(t, d, "base", "", fixtures.File("a", "a", 0o644))
	layer(t, d, "top", "base", fixtures.File("b", "b", 0o644))
	if err := d.CreateReadWrite("rw", "top", nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id, fsType string
		writable   bool
	}{{"base", "", false}, {"top", "overlay", false}, {"rw", "overlay", true}} {
		root, err := d.Get(c.id, graphdriver.MountOpts{})
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(root, "a")); err != nil || string(b) != "a" {
			t.Errorf("%s: a = %q, %v", c.id, b, err)
		}
		werr := os.WriteFile(filepath.Join(root, "new"), []byte("x"), 0o644)
		if c.writable && werr != nil {
			t.Errorf("%s: write: %v", c.id, werr)
		}
		if !c.writable && !errors.Is(werr, unix.EROFS) {
			t.Errorf("%s: write into an image layer's mount: %v, want EROFS", c.id, werr)
		}
		ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(root))
		if err != nil || len(ms) != 1 {
			t.Fatalf("%s: mountinfo: %v %v", c.id, ms, err)
		}
		if c.fsType != "" && ms[0].FSType != c.fsType {
			t.Errorf("%s mounted as %s, want %s", c.id, ms[0].FSType, c.fsType)
		}
		if c.fsType == "" && ms[0].FSType == "overlay" {
			t.Errorf("%s (one layer) mounted as overlay, want a bind mount", c.id)
		}
		if err := d.Put(c.id); err != nil {
			t.Fatal(err)
		}
	}
	if ms := mountsUnder(t, d.home); len(ms) > 0 {
		t.Errorf("mounted after Put: %v", ms)
	}
	// A mounted image layer takes no ApplyDiff; unmounted it does.
	if _, err := d.Get("top", graphdriver.MountOpts{}); err != nil {
		t.Fatal(err)
	}
	tar := fixtures.Tar(fixtures.File("c", "c", 0o644))
	if _, err := d.ApplyDiff(context.Background(), "top", "base", bytes.NewReader(tar), diff.ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "mounted") {
		t.Errorf("ApplyDiff into a mounted image layer: %v", err)
	}
	if err := d.Put("top"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ApplyDiff(context.Background(), "top", "", bytes.NewReader(tar), diff.ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "parent") {
		t.Errorf("ApplyDiff against the wrong parent: %v", err)
	}
}

func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Get and Put leave no fd open: not the fsopen and fsmount fds, not the
// O_PATH fds of the lowers.
func TestNoFdLeak(t *testing.T) {
	d := newDriver(t, "")
	layer(t, d, "l1", "", fixtures.File("a", "a", 0o644))
	layer(t, d, "l2", "l1", fixtures.File("b", "b", 0o644))
	if err := d.CreateReadWrite("c", "l2", nil); err != nil {
		t.Fatal(err)
	}
	before := fdCount(t)
	for range 20 {
		for _, id := range []string{"c", "l2"} {
			if _, err := d.Get(id, graphdriver.MountOpts{}); err != nil {
				t.Fatal(err)
			}
		}
		for _, id := range []string{"l2", "c"} {
			if err := d.Put(id); err != nil {
				t.Fatal(err)
			}
		}
	}
	if after := fdCount(t); after != before {
		t.Errorf("%d fds open before 20 Get/Put rounds, %d after", before, after)
	}
}

// No mount is left after the last Put, after Remove of a mounted layer
// and after Cleanup with references still held.
func TestNoMountsLeft(t *testing.T) {
	home := t.TempDir()
	d := newDriver(t, home)
	layer(t, d, "base", "", fixtures.File("a", "a", 0o644))
	for _, id := range []string{"c1", "c2", "c3"} {
		if err := d.CreateReadWrite(id, "base", nil); err != nil {
			t.Fatal(err)
		}
	}
	get := func(id string) string {
		t.Helper()
		p, err := d.Get(id, graphdriver.MountOpts{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := get("c1")
	get("c1")
	if ms := mountsUnder(t, home); len(ms) != 1 || ms[0] != p {
		t.Fatalf("after two Gets of c1: %v", ms)
	}
	d.Put("c1")
	if len(mountsUnder(t, home)) != 1 {
		t.Fatal("unmounted with a reference held")
	}
	d.Put("c1")
	if ms := mountsUnder(t, home); len(ms) != 0 {
		t.Fatalf("after the last Put: %v", ms)
	}
	get("c2")
	if err := d.Remove("c2"); err != nil {
		t.Fatal(err)
	}
	if ms := mountsUnder(t, home); len(ms) != 0 {
		t.Fatalf("after Remove of a mounted layer: %v", ms)
	}
	if err := d.Put("c2"); err != nil {
		t.Errorf("Put after Remove: %v", err)
	}
	get("c3")
	get("base")
	if err := d.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if ms := mountsUnder(t, home); len(ms) != 0 {
		t.Fatalf("after Cleanup: %v", ms)
	}
}

func TestOptions(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		opts map[string]string
		err  string
	}{
		{map[string]string{"x": ""}, `driver overlay: unknown storage option "x" for driver overlay`},
		{map[string]string{"overlay.metacopy": "maybe"}, `driver overlay: invalid storage option overlay.metacopy="maybe" for driver overlay: want true or false`},
		{map[string]string{"overlay.userxattr": ""}, `driver overlay: invalid storage option overlay.userxattr="" for driver overlay: want true or false`},
		{map[string]string{"overlay.mountopt": "volatile,index=on"}, `driver overlay: invalid storage option overlay.mountopt="volatile,index=on" for driver overlay: index is set by the driver (use its own storage option where there is one)`},
		{map[string]string{"metacopy": "true", "redirect_dir": "false"}, `driver overlay: invalid storage option overlay.redirect_dir="false" for driver overlay: metacopy=true needs redirect_dir=true (the kernel follows metacopy files through redirects)`},
		{map[string]string{"overlay.mountopt": "nosuchoption"}, "cannot mount overlay"},
	} {
		_, err := graphdriver.New("overlay", t.TempDir(), c.opts)
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("New(%v): %v, want %q", c.opts, err, c.err)
		}
	}
	for _, c := range []struct {
		opts map[string]string
		want string
	}{
		{nil, "index=off,metacopy=off,redirect_dir=nofollow"},
		{map[string]string{"overlay.redirect_dir": "true"}, "index=off,metacopy=off,redirect_dir=on"},
		{map[string]string{"overlay.metacopy": "true"}, "index=off,metacopy=on,redirect_dir=on"},
		{map[string]string{"overlay.userxattr": "true", "mountopt": "volatile"}, "index=off,metacopy=off,redirect_dir=nofollow,userxattr,volatile"},
	} {
		drv, err := graphdriver.New("overlay", t.TempDir(), c.opts)
		if err != nil {
			t.Errorf("New(%v): %v", c.opts, err)
			continue
		}
		for _, s := range drv.Status() {
			if s.Key == "Mount Options" && s.Value != c.want {
				t.Errorf("New(%v): mount options %q, want %q", c.opts, s.Value, c.want)
			}
		}
		_ = drv.Cleanup()
	}
	d := newDriver(t, "")
	err := d.Create("a", "", &graphdriver.CreateOpts{StorageOpt: map[string]string{"size": "1G"}})
	if !errors.Is(err, graphdriver.ErrUnknownOption) || !strings.Contains(err.Error(), `unknown storage option "size" for driver overlay`) {
		t.Fatalf("per-layer option: %v", err)
	}
	if d.Exists("a") {
		t.Fatal("layer made despite a refused option")
	}
	if err := d.Create("a", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Get("a", graphdriver.MountOpts{Options: []string{"ro"}}); err == nil {
		t.Error("Get with mount options succeeded")
	}
	for _, bad := range []string{"", ".", "..", "a/b", "l", "tmp", "empty"} {
		if err := d.Create(bad, "", nil); err == nil {
			t.Errorf("Create(%q) succeeded", bad)
		}
		if d.Exists(bad) {
			t.Errorf("Exists(%q)", bad)
		}
	}
}

// The registry picks overlay before vfs where overlay works.
func TestRegistryDefault(t *testing.T) {
	needRoot(t)
	if names := graphdriver.Names(); len(names) == 0 || names[0] != Name {
		t.Fatalf("Names() = %v, want overlay first", names)
	}
	d, err := graphdriver.Default(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Cleanup()
	if d.String() != Name {
		t.Errorf("Default = %s", d)
	}
}

// A home on overlayfs is refused with ErrNotSupported and a message
// saying what to do.
func TestOverlayHomeRefused(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	for _, s := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data := fmt.Sprintf("lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work", dir, dir, dir)
	if err := unix.Mount("overlay", filepath.Join(dir, "merged"), "overlay", 0, data); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(filepath.Join(dir, "merged"), 0)
	_, err := New(filepath.Join(dir, "merged", "home"), nil)
	if !errors.Is(err, graphdriver.ErrNotSupported) || !strings.Contains(err.Error(), "is on overlayfs, which cannot be an upper dir; use --driver vfs") {
		t.Fatalf("New on overlayfs: %v", err)
	}
}

// A Create that fails at any step (here: the filesystem runs out of
// inodes) leaves no layer, nothing in HOME/tmp and no short link.
func TestCreateRollback(t *testing.T) {
	needRoot(t)
	fs := loopfs.NewFS(t, "tmpfs", 16<<20, loopfs.Options{MountData: "nr_inodes=64"})
	d := newDriver(t, fs.Dir)
	layer(t, d, "parent", "", fixtures.File("f", "f", 0o644))
	if err := d.Create("orphan", "nope", nil); !errors.Is(err, graphdriver.ErrLayerNotExist) {
		t.Errorf("Create on a missing parent: %v", err)
	}
	links := func() int {
		ents, err := os.ReadDir(filepath.Join(fs.Dir, "l"))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	nlinks := links()
	// Use up every inode, then give them back one at a time: each
	// Create gets one step further before it fails.
	var fillers []string
	for i := 0; ; i++ {
		p := filepath.Join(fs.Dir, fmt.Sprintf("filler%03d", i))
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
		fillers = append(fillers, p)
	}
	failures := 0
	for len(fillers) > 0 {
		err := d.Create("child", "parent", nil)
		if err == nil {
			break
		}
		failures++
		if !errors.Is(err, unix.ENOSPC) {
			t.Fatalf("Create with %d inodes free: %v, want ENOSPC", failures-1, err)
		}
		if d.Exists("child") {
			t.Fatal("half-made layer exists")
		}
		if _, err := os.Lstat(filepath.Join(fs.Dir, "child")); !os.IsNotExist(err) {
			t.Fatalf("HOME/child after a failed Create: %v", err)
		}
		if ents, _ := os.ReadDir(filepath.Join(fs.Dir, "tmp")); len(ents) != 0 {
			t.Fatalf("left in HOME/tmp: %v", ents)
		}
		if n := links(); n != nlinks {
			t.Fatalf("HOME/l holds %d links after a failed Create, %d before", n, nlinks)
		}
		last := fillers[len(fillers)-1]
		fillers = fillers[:len(fillers)-1]
		if err := os.Remove(last); err != nil {
			t.Fatal(err)
		}
	}
	if !d.Exists("child") {
		t.Fatal("Create never succeeded")
	}
	if failures < 5 {
		t.Errorf("only %d failing Creates: the test did not reach the later steps", failures)
	}
	t.Logf("%d Creates failed before one succeeded", failures)
	for _, f := range fillers {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	p, err := d.Get("child", graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put("child")
	if b, err := os.ReadFile(filepath.Join(p, "f")); err != nil || string(b) != "f" {
		t.Errorf("child shows f = %q, %v", b, err)
	}
}

// Leftovers of a killed process under HOME/tmp, a probe still mounted
// among them, are removed by New and never show as layers.
func TestNewCleansTmp(t *testing.T) {
	home := t.TempDir()
	d := newDriver(t, home)
	layer(t, d, "a", "", fixtures.File("f", "f", 0o644))
	junk := filepath.Join(home, "tmp", "new-b-0011223344556677", "diff")
	if err := os.MkdirAll(junk, 0o755); err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(home, "tmp", "probe-8899aabbccddeeff")
	if err := os.MkdirAll(filepath.Join(probe, "merged"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", filepath.Join(probe, "merged"), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	d2 := newDriver(t, home)
	if !d2.Exists("a") || d2.Exists("b") {
		t.Fatal("layers wrong after reopen")
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "tmp")); len(ents) != 0 {
		t.Errorf("leftovers kept: %v", ents)
	}
	if ms := mountsUnder(t, home); len(ms) != 0 {
		t.Errorf("mounts left: %v", ms)
	}
}

// A layer mounted twice (another instance's mount, stacked) is unmounted
// fully by Remove, which never deletes through a live mount.
func TestRemoveStackedMounts(t *testing.T) {
	home := t.TempDir()
	d := newDriver(t, home)
	layer(t, d, "p", "", fixtures.File("f", "lower", 0o644))
	if err := d.CreateReadWrite("c", "p", nil); err != nil {
		t.Fatal(err)
	}
	merged, err := d.Get("c", graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	// A second instance on the same home mounting the same layer again.
	if err := unix.Mount(merged, merged, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove("c"); err != nil {
		t.Fatalf("Remove of a twice-mounted layer: %v", err)
	}
	if d.Exists("c") {
		t.Fatal("c still exists")
	}
	if ms := mountsUnder(t, home); len(ms) > 0 {
		t.Fatalf("mounts left under the home: %v", ms)
	}
	// The lower layer is untouched.
	p, err := d.Get("p", graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put("p")
	if b, err := os.ReadFile(filepath.Join(p, "f")); err != nil || string(b) != "lower" {
		t.Fatalf("p/f = %q, %v", b, err)
	}
}

func getxattr(p, name string, buf []byte) (int, error) { return unix.Lgetxattr(p, name, buf) }

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// New records what it probed in the home, and the next New on the same
// kernel, filesystem and options takes the record instead of probing;
// anything else probes again.
func TestProbeRecord(t *testing.T) {
	home := t.TempDir()
	d := newDriver(t, home)
	rec, ok := readProbeRecord(d.probeFile())
	if !ok || rec.Method != d.method || rec.Kernel == "" {
		t.Fatalf("probe record after New: %+v, %v", rec, ok)
	}
	// Doctor the record: a New that takes it shows the doctored method.
	rec.Method = methodMount
	if err := writeProbeRecord(d.probeFile(), d.tmp, rec); err != nil {
		t.Fatal(err)
	}
	if d2 := newDriver(t, home); d2.method != methodMount {
		t.Errorf("New did not take the record: method %s", d2.method)
	}
	// Another kernel, other options or a damaged record: probe again.
	for name, doctor := range map[string]func(){
		"kernel": func() {
			r := rec
			r.Kernel = "2.6.32"
			_ = writeProbeRecord(d.probeFile(), d.tmp, r)
		},
		"damaged": func() { _ = os.WriteFile(d.probeFile(), []byte("{"), 0o600) },
	} {
		doctor()
		if d2 := newDriver(t, home); d2.method != methodFsconfigFd {
			t.Errorf("%s: New took a stale record: method %s", name, d2.method)
		}
	}
	_ = writeProbeRecord(d.probeFile(), d.tmp, rec)
	drv, err := New(home, map[string]string{"overlay.redirect_dir": "true"})
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Cleanup()
	if m := drv.(*Driver).method; m != methodFsconfigFd {
		t.Errorf("other options: New took the record: method %s", m)
	}
	if d.Exists(probeFileName) || d.Create(probeFileName, "", nil) == nil {
		t.Errorf("%s is usable as a layer ID", probeFileName)
	}
}
