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
	"github.com/layers-storage/layers/internal/subvol"
	"github.com/layers-storage/layers/internal/subvol/subvoltest"
)

func TestSuite(t *testing.T) {
	t.Run("tempdir", func(t *testing.T) { drivertest.Run(t, drivertest.HomeFactory("", New, nil)) })
	for _, c := range []struct {
		name, typ string
		opts      map[string]string
	}{
		{"xfs", "xfs", map[string]string{"vfs.copy": "reflink"}},
		// On btrfs layers are subvolumes and children snapshots ...
		{"btrfs", "btrfs", map[string]string{"vfs.copy": "reflink"}},
		// ... unless turned off: then copies with reflinks, as on xfs.
		{"btrfs-copy", "btrfs", map[string]string{"vfs.copy": "reflink", "vfs.subvolumes": "false"}},
		{"ext4", "ext4", nil},
		{"tmpfs", "tmpfs", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Skip("loop filesystems need root")
			}
			mnt := loopfs.New(t, c.typ, 1<<30)
			drivertest.Run(t, drivertest.HomeFactory(mnt, New, c.opts))
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
	_, err = New(t.TempDir(), map[string]string{"vfs.subvolumes": "maybe"})
	if !errors.Is(err, graphdriver.ErrInvalidOption) || !strings.Contains(err.Error(), "want true or false") {
		t.Fatalf("bad vfs.subvolumes: %v", err)
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

func isSubvolume(t *testing.T, path string) bool {
	t.Helper()
	ok, err := subvol.IsSubvolume(path)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// On btrfs every layer is a subvolume, a child is a snapshot of its
// parent (same tree, every extent shared, its own inodes untouched by the
// parent's later changes), and Remove deletes the subvolume.
func TestSubvolumesOnBtrfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop filesystems need root")
	}
	mnt := loopfs.New(t, "btrfs", 1<<30)
	home := filepath.Join(mnt, "home")
	d := newDriver(t, home, nil)
	if err := d.Create("base", "", nil); err != nil {
		t.Fatal(err)
	}
	base, _ := d.Get("base", graphdriver.MountOpts{})
	defer d.Put("base")
	if !isSubvolume(t, base) {
		t.Fatal("base layer is not a subvolume")
	}
	var st unix.Stat_t
	if err := unix.Stat(base, &st); err != nil || st.Mode&07777 != 0o755 || st.Uid != 0 || st.Gid != 0 {
		t.Fatalf("base root: mode %#o owner %d:%d, %v", st.Mode&07777, st.Uid, st.Gid, err)
	}
	data := make([]byte, 8<<20)
	rand.New(rand.NewSource(2)).Read(data)
	if err := os.MkdirAll(filepath.Join(base, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "usr/bin/big"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(base, "usr/bin/big"), filepath.Join(base, "usr/bin/link")); err != nil {
		t.Fatal(err)
	}
	if err := d.Create("child", "base", nil); err != nil {
		t.Fatal(err)
	}
	child, _ := d.Get("child", graphdriver.MountOpts{})
	defer d.Put("child")
	if !isSubvolume(t, child) {
		t.Fatal("child layer is not a subvolume")
	}
	got, err := os.ReadFile(filepath.Join(child, "usr/bin/big"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("child's copy differs (%v)", err)
	}
	var a, b unix.Stat_t
	if err := unix.Lstat(filepath.Join(child, "usr/bin/big"), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(child, "usr/bin/link"), &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hardlink not kept: inodes %d %d, nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	unix.Sync()
	shared, mapped, err := fscopy.SharedBytes(filepath.Join(child, "usr/bin/big"))
	if err != nil || shared != mapped || mapped < int64(len(data)) {
		t.Errorf("%d of %d bytes shared (%v)", shared, mapped, err)
	}
	// Changes to the parent after the snapshot stay out of the child.
	if err := os.WriteFile(filepath.Join(base, "later"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(child, "later")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("parent's later file seen in the child: %v", err)
	}
	st2 := map[string]string{}
	for _, s := range d.Status() {
		st2[s.Key] = s.Value
	}
	if st2["Layer Copies"] != "btrfs snapshot" {
		t.Errorf("Status = %v", st2)
	}
	want := []string{"home/dir/" + "base", "home/dir/" + "child"}
	if l := subvoltest.Listed(t, mnt); strings.Join(l, " ") != strings.Join(want, " ") {
		t.Fatalf("subvolumes %q, want %q", l, want)
	}
	// An immutable file (a container may chattr +i) cannot be unlinked,
	// so only the deletion of the whole subvolume removes the layer.
	f, err := os.Open(filepath.Join(child, "usr/bin/big"))
	if err != nil {
		t.Fatal(err)
	}
	err = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, fsImmutableFl)
	f.Close()
	if err != nil {
		t.Fatalf("chattr +i: %v", err)
	}
	if err := d.Remove("child"); err != nil {
		t.Fatal(err)
	}
	if d.Exists("child") {
		t.Fatal("child exists after Remove")
	}
	if l := subvoltest.Listed(t, mnt); len(l) != 1 || l[0] != "home/dir/base" {
		t.Fatalf("after Remove: subvolumes %q, want only the base", l)
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "tmp")); len(ents) != 0 {
		t.Errorf("left in HOME/tmp: %v", ents)
	}
}

// A parent made as a plain directory (vfs.subvolumes=false, or an older
// version) gets a child that is a new subvolume filled by a copy, whose
// own children are snapshots again; with vfs.subvolumes=false nothing is
// a subvolume.
func TestSubvolumesMixed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop filesystems need root")
	}
	mnt := loopfs.New(t, "btrfs", 1<<30)
	home := filepath.Join(mnt, "home")
	plain := newDriver(t, home, map[string]string{"vfs.subvolumes": "false"})
	if err := plain.Create("p", "", nil); err != nil {
		t.Fatal(err)
	}
	pp, _ := plain.Get("p", graphdriver.MountOpts{})
	if err := os.WriteFile(filepath.Join(pp, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := plain.Create("p2", "p", nil); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"p", "p2"} {
		if isSubvolume(t, filepath.Join(home, "dir", id)) {
			t.Errorf("%s is a subvolume with vfs.subvolumes=false", id)
		}
	}
	for _, s := range plain.Status() {
		if s.Key == "Layer Copies" && s.Value != "reflink" {
			t.Errorf("Layer Copies = %q with vfs.subvolumes=false", s.Value)
		}
	}
	d := newDriver(t, home, nil)
	if err := d.Create("c", "p", nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Create("gc", "c", nil); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c", "gc"} {
		p := filepath.Join(home, "dir", id)
		if !isSubvolume(t, p) {
			t.Errorf("%s is not a subvolume", id)
		}
		if got, err := os.ReadFile(filepath.Join(p, "f")); err != nil || string(got) != "x" {
			t.Errorf("%s/f = %q, %v", id, got, err)
		}
	}
	// Removal works on both kinds, whichever driver made them.
	for _, id := range []string{"gc", "c", "p2", "p"} {
		if err := d.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	if l := subvoltest.Listed(t, mnt); len(l) != 0 {
		t.Errorf("subvolumes left: %q", l)
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "dir")); len(ents) != 0 {
		t.Errorf("layers left: %v", ents)
	}
}

// A subvolume left under HOME/tmp by a killed process is deleted by New.
func TestNewDeletesStaleSubvolume(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop filesystems need root")
	}
	mnt := loopfs.New(t, "btrfs", 1<<30)
	home := filepath.Join(mnt, "home")
	newDriver(t, home, nil)
	stale := filepath.Join(home, "tmp", "new-x-0011223344556677")
	if err := subvol.Create(stale); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	newDriver(t, home, nil)
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale subvolume kept: %v", err)
	}
	if l := subvoltest.Listed(t, mnt); len(l) != 0 {
		t.Errorf("subvolumes left: %q", l)
	}
}

// fsImmutableFl is FS_IMMUTABLE_FL (linux/fs.h), which x/sys lacks.
const fsImmutableFl = 0x10
