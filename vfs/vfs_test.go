package vfs

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/graphdriver/drivertest"
	"github.com/layers-storage/layers/internal/fscopy"
	"github.com/layers-storage/layers/internal/loopfs"
)

func TestSuite(t *testing.T) {
	t.Run("tempdir", func(t *testing.T) { drivertest.Run(t, drivertest.HomeFactory("", New, nil)) })
	for _, typ := range []string{"xfs", "btrfs"} {
		t.Run(typ, func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Skip("loop filesystems need root")
			}
			mnt := loopfs.New(t, typ, 1<<30)
			drivertest.Run(t, drivertest.HomeFactory(mnt, New, map[string]string{"vfs.copy": "reflink"}))
		})
	}
}

func newDriver(t *testing.T, home string, opts map[string]string) *Driver {
	t.Helper()
	d, err := New(home, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Cleanup() })
	return d.(*Driver)
}

func TestOptions(t *testing.T) {
	_, err := New(t.TempDir(), map[string]string{"x": "1"})
	if !errors.Is(err, graphdriver.ErrUnknownOption) || err.Error() != `unknown storage option "x" for driver vfs` {
		t.Fatalf("unknown option: %v", err)
	}
	_, err = New(t.TempDir(), map[string]string{"vfs.copy": "fast"})
	if !errors.Is(err, graphdriver.ErrInvalidOption) || !strings.Contains(err.Error(), "want auto, reflink or copy") {
		t.Fatalf("bad vfs.copy: %v", err)
	}
	for _, v := range []string{"auto", "copy"} {
		if _, err := New(t.TempDir(), map[string]string{"vfs.copy": v}); err != nil {
			t.Errorf("vfs.copy=%s: %v", v, err)
		}
	}
	d := newDriver(t, t.TempDir(), nil)
	err = d.Create("a", "", &graphdriver.CreateOpts{StorageOpt: map[string]string{"size": "1G"}})
	if !errors.Is(err, graphdriver.ErrUnknownOption) || !strings.Contains(err.Error(), `unknown storage option "size" for driver vfs`) {
		t.Fatalf("per-layer option: %v", err)
	}
	if d.Exists("a") {
		t.Fatal("layer made despite a refused option")
	}
}

func TestReflinkRequiredRefusedOnExt4(t *testing.T) {
	dir := t.TempDir() // the host's /, ext4 here
	if ok, _ := fscopy.ReflinkSupported(dir); ok {
		t.Skip("the temp dir's filesystem can reflink")
	}
	_, err := New(dir, map[string]string{"vfs.copy": "reflink"})
	if !errors.Is(err, graphdriver.ErrInvalidOption) || !strings.Contains(err.Error(), "cannot clone") {
		t.Fatalf("vfs.copy=reflink on a filesystem without reflink: %v", err)
	}
}

func TestCreateErrors(t *testing.T) {
	d := newDriver(t, t.TempDir(), nil)
	if err := d.Create("a", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Create("a", "", nil); !errors.Is(err, graphdriver.ErrLayerExists) {
		t.Errorf("second Create: %v", err)
	}
	err := d.Create("b", "nope", nil)
	if !errors.Is(err, graphdriver.ErrLayerNotExist) || !strings.Contains(err.Error(), "parent nope") {
		t.Errorf("Create on unknown parent: %v", err)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "../x"} {
		if err := d.Create(bad, "", nil); err == nil {
			t.Errorf("Create(%q) succeeded", bad)
		}
		if d.Exists(bad) {
			t.Errorf("Exists(%q)", bad)
		}
	}
	if _, err := d.Get("nope", graphdriver.MountOpts{}); !errors.Is(err, graphdriver.ErrLayerNotExist) {
		t.Errorf("Get unknown: %v", err)
	}
	if _, err := d.Get("a", graphdriver.MountOpts{Options: []string{"ro"}}); err == nil {
		t.Error("Get with mount options succeeded")
	}
	if err := d.Remove("nope"); err != nil {
		t.Errorf("Remove of a missing layer: %v, want nil (idempotent)", err)
	}
	if err := d.Put("nope"); err != nil {
		t.Errorf("Put of an unknown layer: %v", err)
	}
}

func TestEmptyLayerRoot(t *testing.T) {
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	d := newDriver(t, t.TempDir(), nil)
	if err := d.Create("a", "", nil); err != nil {
		t.Fatal(err)
	}
	p, err := d.Get("a", graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put("a")
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&07777 != 0o755 {
		t.Errorf("root mode %#o, want 0755", st.Mode&07777)
	}
	if os.Geteuid() == 0 && (st.Uid != 0 || st.Gid != 0) {
		t.Errorf("root owned by %d:%d", st.Uid, st.Gid)
	}
	if ents, _ := os.ReadDir(p); len(ents) != 0 {
		t.Errorf("new layer not empty: %v", ents)
	}
}

// A failed copy of the parent (here: the filesystem fills up half way)
// leaves neither the layer nor anything in HOME/tmp.
func TestCreateRollback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a small tmpfs to fill")
	}
	home := loopfs.New(t, "tmpfs", 4<<20)
	d := newDriver(t, home, nil)
	if err := d.Create("parent", "", nil); err != nil {
		t.Fatal(err)
	}
	p, _ := d.Get("parent", graphdriver.MountOpts{})
	d.Put("parent")
	for _, name := range []string{"a", "b", "c"} {
		if err := os.WriteFile(filepath.Join(p, name), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	err := d.Create("child", "parent", nil)
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Create of a 3 MiB copy on a 4 MiB tmpfs holding 3 MiB: %v, want ENOSPC", err)
	}
	if d.Exists("child") {
		t.Error("half-made layer exists")
	}
	ents, _ := os.ReadDir(filepath.Join(home, "tmp"))
	if len(ents) != 0 {
		t.Errorf("left in HOME/tmp: %v", ents)
	}
	// And the space is back: a small layer still fits.
	if err := d.Create("small", "", nil); err != nil {
		t.Errorf("Create after rollback: %v", err)
	}
}

// Leftovers of a killed process under HOME/tmp are removed by New, and
// never show as layers.
func TestNewCleansTmp(t *testing.T) {
	home := t.TempDir()
	d := newDriver(t, home, nil)
	if err := d.Create("a", "", nil); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(home, "tmp", "new-b-0011223344556677", "usr")
	if err := os.MkdirAll(junk, 0o755); err != nil {
		t.Fatal(err)
	}
	d2 := newDriver(t, home, nil)
	if !d2.Exists("a") || d2.Exists("b") {
		t.Fatal("layers wrong after reopen")
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "tmp")); len(ents) != 0 {
		t.Errorf("leftovers kept: %v", ents)
	}
}

// On xfs with reflink a child layer of a 64 MiB file costs almost no data
// blocks, and the file's extents are shared.
func TestReflinkUsedOnXFS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop filesystems need root")
	}
	mnt := loopfs.New(t, "xfs", 1<<30)
	d := newDriver(t, filepath.Join(mnt, "home"), nil)
	if err := d.Create("base", "", nil); err != nil {
		t.Fatal(err)
	}
	p, _ := d.Get("base", graphdriver.MountOpts{})
	data := make([]byte, 64<<20)
	rand.New(rand.NewSource(1)).Read(data)
	if err := os.WriteFile(filepath.Join(p, "big"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	d.Put("base")
	unix.Sync()
	free := func() int64 {
		var st unix.Statfs_t
		if err := unix.Statfs(mnt, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bfree) * st.Bsize
	}
	before := free()
	if err := d.Create("child", "base", nil); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	used := before - free()
	if used > 4<<20 {
		t.Errorf("child layer of a 64 MiB file used %d bytes: not reflinked", used)
	}
	cp, _ := d.Get("child", graphdriver.MountOpts{})
	defer d.Put("child")
	shared, mapped, err := fscopy.SharedBytes(filepath.Join(cp, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if shared != mapped || mapped < int64(len(data)) {
		t.Errorf("%d of %d bytes shared", shared, mapped)
	}
	got, _ := os.ReadFile(filepath.Join(cp, "big"))
	if !bytes.Equal(got, data) {
		t.Error("child's copy differs")
	}
	st := map[string]string{}
	for _, s := range d.Status() {
		st[s.Key] = s.Value
	}
	if st["Backing Filesystem"] != "xfs" || st["Layer Copies"] != "reflink" {
		t.Errorf("Status = %v", st)
	}
	t.Logf("child layer used %d bytes; status %v", used, st)
}

func TestRegistryDefaultPicksVFS(t *testing.T) {
	if names := graphdriver.Names(); len(names) != 1 || names[0] != "vfs" {
		t.Skipf("other drivers registered in this binary: %v", names)
	}
	d, err := graphdriver.Default(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Cleanup()
	if d.String() != "vfs" {
		t.Fatalf("Default = %s", d)
	}
	if _, err := graphdriver.New("vfs", t.TempDir(), map[string]string{"x": ""}); err == nil ||
		err.Error() != `driver vfs: unknown storage option "x" for driver vfs` {
		t.Fatalf("New with unknown option: %v", err)
	}
}
