package fscopy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/internal/xattr"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown, mknod, trusted.* xattrs)")
	}
}

// roots returns, per filesystem, a fresh directory to build trees in: the
// test's temp dir (the host's /) plus loop ext4, xfs, btrfs and tmpfs.
func roots(t *testing.T, fn func(t *testing.T, dir string)) {
	t.Run("tempdir", func(t *testing.T) { fn(t, t.TempDir()) })
	for _, typ := range []string{"ext4", "xfs", "btrfs", "tmpfs"} {
		t.Run(typ, func(t *testing.T) { fn(t, loopfs.New(t, typ, 0)) })
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// capability returns a v2 security.capability value granting
// CAP_NET_BIND_SERVICE (permitted and effective).
func capability() []byte {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000001)
	binary.LittleEndian.PutUint32(b[4:], 1<<unix.CAP_NET_BIND_SERVICE)
	return b
}

func ts(sec, nsec int64) unix.Timespec { return unix.Timespec{Sec: sec, Nsec: nsec} }

// setMeta sets owner, mode (unless a symlink) and times of p.
func setMeta(t testing.TB, p string, uid, gid int, mode os.FileMode, atime, mtime unix.Timespec) {
	t.Helper()
	must(t, os.Lchown(p, uid, gid))
	if mode != 0 {
		must(t, unix.Chmod(p, uint32(mode)))
	}
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{atime, mtime}, unix.AT_SYMLINK_NOFOLLOW))
}

// buildTree makes a tree with every kind of entry and attribute.
func buildTree(t testing.TB, root string) {
	t.Helper()
	p := func(rel string) string { return filepath.Join(root, rel) }
	for _, d := range []string{"a", "a/b/c/d/e", "sticky", "locked", "hl"} {
		must(t, os.MkdirAll(p(d), 0o755))
	}
	must(t, os.WriteFile(p("a/f"), []byte("hello"), 0o644))
	must(t, os.WriteFile(p("empty"), nil, 0o600))
	must(t, os.WriteFile(p("setuid"), []byte("#!/bin/sh\n"), 0o755))
	must(t, os.WriteFile(p("setgid"), []byte("x"), 0o755))
	must(t, os.WriteFile(p("cap"), []byte("binary"), 0o755))
	must(t, os.WriteFile(p("locked/inside"), []byte("secret"), 0o600))
	must(t, os.WriteFile(p("a/b/c/d/e/deep"), []byte("deep"), 0o640))
	big := make([]byte, 3<<20+17)
	rand.New(rand.NewSource(1)).Read(big)
	must(t, os.WriteFile(p("big"), big, 0o644))
	must(t, os.WriteFile(p("hl/one"), []byte("linked"), 0o644))
	must(t, os.Link(p("hl/one"), p("a/two")))
	must(t, os.Link(p("hl/one"), p("hl/three")))
	must(t, os.WriteFile(p("hl/other"), []byte("other group"), 0o644))
	must(t, os.Link(p("hl/other"), p("a/b/other2")))
	must(t, os.Symlink("f", p("a/l")))
	must(t, os.Symlink("../../nowhere", p("a/dangling")))
	must(t, os.Symlink("f", p("a/lnk-linked")))
	must(t, os.Link(p("a/lnk-linked"), p("lnk-linked2"))) // a hardlinked symlink
	must(t, unix.Mknod(p("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, unix.Mknod(p("blk"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 200))))
	must(t, unix.Mknod(p("whiteout"), unix.S_IFCHR, 0))
	must(t, unix.Mkfifo(p("fifo"), 0o620))
	must(t, unix.Mknod(p("sock"), unix.S_IFSOCK|0o755, 0))

	must(t, xattr.Set(p("a/f"), "user.x", []byte("1")))
	must(t, xattr.Set(p("a/f"), "trusted.y", bytes.Repeat([]byte("v"), 700)))
	must(t, xattr.Set(p("a"), "trusted.overlay.opaque", []byte("y")))
	must(t, xattr.Set(p("a"), "user.dir", []byte("d")))
	must(t, xattr.Set(p("a/l"), "trusted.sym", []byte("s")))
	must(t, xattr.Set(p("whiteout"), "trusted.wh", []byte("w")))
	must(t, xattr.Set(p("fifo"), "trusted.fifo", []byte("f")))

	old, future, neg := ts(946684800, 123456789), ts(4102444800, 987654321), ts(-86400*365, 5)
	setMeta(t, p("a/f"), 1234, 5678, 0o640, old, future)
	setMeta(t, p("empty"), 70000, 70001, 0o600, neg, neg) // uid > 65535, before 1970
	setMeta(t, p("setuid"), 0, 0, 0o4755, old, old)
	setMeta(t, p("setgid"), 0, 50, 0o2711, old, old)
	setMeta(t, p("cap"), 0, 0, 0o755, old, old)
	must(t, xattr.Set(p("cap"), "security.capability", capability())) // after chown: chown drops it
	setMeta(t, p("big"), 1, 1, 0, old, ts(1000000000, 1))
	setMeta(t, p("hl/one"), 42, 43, 0o604, old, ts(1100000000, 7))
	setMeta(t, p("a/l"), 7, 8, 0, ts(1200000000, 3), ts(1300000000, 4))
	setMeta(t, p("a/dangling"), 9, 9, 0, old, old)
	setMeta(t, p("null"), 0, 5, 0o666, old, old)
	setMeta(t, p("whiteout"), 0, 0, 0, old, old)
	setMeta(t, p("fifo"), 100, 100, 0o620, old, ts(1400000000, 9))
	setMeta(t, p("sock"), 3, 3, 0o755, old, old)
	setMeta(t, p("locked/inside"), 0, 0, 0o600, old, old)
	// Directories last, after their children changed their mtimes.
	setMeta(t, p("a/b/c/d/e"), 5, 5, 0o700, old, ts(1500000000, 11))
	setMeta(t, p("a"), 1000, 1001, 0o750, old, ts(1600000000, 12))
	setMeta(t, p("sticky"), 0, 0, 0o1777, old, old)
	setMeta(t, p("locked"), 0, 0, 0o000, old, old)
	setMeta(t, root, 0, 0, 0o711, old, ts(1700000000, 13))
}

// entry is what is compared of one path.
type entry struct {
	mode         uint32
	uid, gid     uint32
	rdev         uint64
	size         int64
	atime, mtime unix.Timespec
	target       string
	xattrs       string
	ino          uint64
}

// snapshot records every entry under root in two passes: stats first,
// walking directories opened with O_NOATIME and reading no symlink, so it
// does not disturb the atimes it records; then, with details, the link
// targets and xattrs (readlink does update a symlink's atime). Tests take
// all the stat passes they need before any details pass.
func snapshot(t testing.TB, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	var walk func(rel string)
	walk = func(rel string) {
		path := filepath.Join(root, rel)
		var st unix.Stat_t
		must(t, unix.Lstat(path, &st))
		e := entry{mode: st.Mode, uid: st.Uid, gid: st.Gid, rdev: st.Rdev, atime: st.Atim, mtime: st.Mtim, ino: st.Ino}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			e.size = st.Size
			out[rel] = e
			return
		}
		out[rel] = e
		f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOATIME|unix.O_DIRECTORY, 0)
		must(t, err)
		names, err := f.Readdirnames(-1)
		f.Close()
		must(t, err)
		for _, n := range names {
			walk(filepath.Join(rel, n))
		}
	}
	walk(".")
	return out
}

// details adds link targets and xattrs to a snapshot of root.
func details(t testing.TB, root string, snap map[string]entry) map[string]entry {
	t.Helper()
	for rel, e := range snap {
		path := filepath.Join(root, rel)
		if e.mode&unix.S_IFMT == unix.S_IFLNK {
			e.target, _ = os.Readlink(path)
		}
		all, err := xattr.All(path)
		must(t, err)
		var kv []string
		for k, v := range all {
			kv = append(kv, fmt.Sprintf("%s=%q", k, v))
		}
		sort.Strings(kv)
		e.xattrs = strings.Join(kv, ",")
		snap[rel] = e
	}
	return snap
}

// compareTrees checks dst is a faithful copy of src: same entries, types,
// modes, owners, devices, sizes, times, xattrs, link targets, contents and
// hardlink groups.
func compareTrees(t testing.TB, src, dst string, ss, ds map[string]entry) {
	t.Helper()
	if len(ss) != len(ds) {
		t.Errorf("%d entries in source, %d in copy", len(ss), len(ds))
	}
	srcToDst := map[uint64]uint64{}
	dstToSrc := map[uint64]uint64{}
	for rel, s := range ss {
		d, ok := ds[rel]
		if !ok {
			t.Errorf("%s: missing in copy", rel)
			continue
		}
		if s.mode != d.mode || s.uid != d.uid || s.gid != d.gid || s.rdev != d.rdev || s.size != d.size || s.target != d.target {
			t.Errorf("%s: copy %+v, source %+v", rel, d, s)
		}
		if s.mtime != d.mtime {
			t.Errorf("%s: mtime %v, want %v", rel, d.mtime, s.mtime)
		}
		if s.atime != d.atime {
			t.Errorf("%s: atime %v, want %v", rel, d.atime, s.atime)
		}
		if s.xattrs != d.xattrs {
			t.Errorf("%s: xattrs %s, want %s", rel, d.xattrs, s.xattrs)
		}
		if s.mode&unix.S_IFMT != unix.S_IFDIR {
			if prev, ok := srcToDst[s.ino]; ok && prev != d.ino {
				t.Errorf("%s: hardlink group split in copy", rel)
			}
			if prev, ok := dstToSrc[d.ino]; ok && prev != s.ino {
				t.Errorf("%s: distinct files linked together in copy", rel)
			}
			srcToDst[s.ino], dstToSrc[d.ino] = d.ino, s.ino
		}
		if s.mode&unix.S_IFMT == unix.S_IFREG {
			a, err1 := os.ReadFile(filepath.Join(src, rel))
			b, err2 := os.ReadFile(filepath.Join(dst, rel))
			if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
				t.Errorf("%s: content differs (%v, %v)", rel, err1, err2)
			}
		}
	}
	for rel := range ds {
		if _, ok := ss[rel]; !ok {
			t.Errorf("%s: extra in copy", rel)
		}
	}
}

func TestCopyTreeRoundTrip(t *testing.T) {
	needRoot(t)
	roots(t, testRoundTrip)
}

// TestCopyTreeSequential runs the round trip with the walker copying every
// file itself, the path workers() == 0 takes.
func TestCopyTreeSequential(t *testing.T) {
	needRoot(t)
	old := testWorkers
	testWorkers = 0
	defer func() { testWorkers = old }()
	testRoundTrip(t, t.TempDir())
}

func testRoundTrip(t *testing.T, dir string) {
	{
		src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
		must(t, os.Mkdir(src, 0o755))
		buildTree(t, src)
		before := snapshot(t, src)
		st, err := Copy(context.Background(), src, dst, Options{})
		must(t, err)
		after := snapshot(t, dst)
		again := snapshot(t, src)
		// The copy must not have touched the source (atimes included,
		// except symlinks': readlink updates them and cannot be told not to).
		for rel, e := range again {
			if e.mode&unix.S_IFMT == unix.S_IFLNK {
				e.atime = before[rel].atime
				again[rel] = e
			}
		}
		details(t, src, before)
		details(t, src, again)
		details(t, dst, after)
		compareTrees(t, src, src, before, again)
		compareTrees(t, src, dst, before, after)
		if st.Hardlinks != 4 || st.Symlinks != 3 || st.Specials != 5 {
			t.Errorf("stats %+v: want 4 extra hardlinks, 3 symlinks, 5 specials", st)
		}
		t.Logf("stats %+v", st)
	}
}

func TestCopyIntoEmptyDir(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	must(t, os.Mkdir(src, 0o755))
	must(t, os.Mkdir(dst, 0o755))
	buildTree(t, src)
	want := snapshot(t, src)
	must(t, CopyTree(context.Background(), src, dst))
	got := snapshot(t, dst)
	compareTrees(t, src, dst, details(t, src, want), details(t, dst, got))

	// Not empty now: refused.
	err := CopyTree(context.Background(), src, dst)
	if err == nil || !strings.Contains(err.Error(), "not an empty directory") {
		t.Fatalf("copy into non-empty dir: %v", err)
	}
	// A file as source: refused.
	if err := CopyTree(context.Background(), filepath.Join(src, "big"), filepath.Join(dir, "x")); err == nil {
		t.Fatal("copy of a file as tree succeeded")
	}
}

func TestCopyFile(t *testing.T) {
	needRoot(t)
	roots(t, func(t *testing.T, dir string) {
		src := filepath.Join(dir, "src")
		must(t, os.Mkdir(src, 0o755))
		buildTree(t, src)
		for _, name := range []string{"cap", "setuid", "a/f", "a/l", "null", "fifo", "sock", "big", "empty"} {
			s, d := filepath.Join(src, name), filepath.Join(dir, "copy-"+filepath.Base(name))
			want := snapshot(t, s)
			must(t, CopyFile(s, d))
			got := snapshot(t, d)
			compareTrees(t, s, d, details(t, s, want), details(t, d, got))
		}
		if err := CopyFile(filepath.Join(src, "a/f"), filepath.Join(dir, "copy-f")); !errors.Is(err, unix.EEXIST) {
			t.Errorf("CopyFile onto an existing file: %v, want EEXIST", err)
		}
		if err := CopyFile(filepath.Join(src, "a"), filepath.Join(dir, "copy-a")); err == nil {
			t.Error("CopyFile of a directory succeeded")
		}
	})
}

func TestReflinkUsed(t *testing.T) {
	needRoot(t)
	for _, typ := range []string{"xfs", "btrfs"} {
		t.Run(typ, func(t *testing.T) {
			dir := loopfs.New(t, typ, 0)
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			must(t, os.Mkdir(src, 0o755))
			data := make([]byte, 8<<20)
			rand.New(rand.NewSource(2)).Read(data)
			must(t, os.WriteFile(filepath.Join(src, "f"), data, 0o644))
			ok, err := ReflinkSupported(dir)
			must(t, err)
			if !ok {
				t.Fatalf("ReflinkSupported(%s) = false", typ)
			}
			st, err := Copy(context.Background(), src, dst, Options{Reflink: ReflinkRequire})
			must(t, err)
			if st.Cloned != 1 || st.Copied != 0 {
				t.Errorf("stats %+v, want 1 cloned", st)
			}
			shared, mapped, err := SharedBytes(filepath.Join(dst, "f"))
			must(t, err)
			if mapped < int64(len(data)) || shared != mapped {
				t.Errorf("copy: %d of %d mapped bytes shared, want all of %d", shared, mapped, len(data))
			}
			// Copy mode: nothing shared.
			st, err = Copy(context.Background(), src, filepath.Join(dir, "dst2"), Options{Reflink: ReflinkNever})
			must(t, err)
			if st.Cloned != 0 || st.Copied != 1 {
				t.Errorf("ReflinkNever stats %+v", st)
			}
			if got, _ := os.ReadFile(filepath.Join(dir, "dst2", "f")); !bytes.Equal(got, data) {
				t.Error("ReflinkNever copy differs")
			}
			if shared, _, err := SharedBytes(filepath.Join(dir, "dst2", "f")); err != nil || shared != 0 {
				t.Errorf("ReflinkNever copy shares %d bytes (%v)", shared, err)
			}
		})
	}
}

func TestReflinkRequireFails(t *testing.T) {
	needRoot(t)
	for _, typ := range []string{"ext4", "tmpfs"} {
		t.Run(typ, func(t *testing.T) {
			dir := loopfs.New(t, typ, 0)
			src := filepath.Join(dir, "src")
			must(t, os.Mkdir(src, 0o755))
			must(t, os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o644))
			if ok, err := ReflinkSupported(dir); err != nil || ok {
				t.Fatalf("ReflinkSupported = %v, %v; want false", ok, err)
			}
			_, err := Copy(context.Background(), src, filepath.Join(dir, "dst"), Options{Reflink: ReflinkRequire})
			if !errors.Is(err, ErrReflinkUnsupported) {
				t.Fatalf("err = %v, want ErrReflinkUnsupported", err)
			}
		})
	}
}

// makeSparse writes 4 KiB of data at 0, 32 MiB and just before 64 MiB,
// holes elsewhere, and a trailing hole of 1 MiB.
func makeSparse(t testing.TB, p string) []int64 {
	f, err := os.Create(p)
	must(t, err)
	defer f.Close()
	offs := []int64{0, 32 << 20, 64<<20 - 4096}
	for _, off := range offs {
		_, err := f.WriteAt(bytes.Repeat([]byte{0xab}, 4096), off)
		must(t, err)
	}
	must(t, f.Truncate(65<<20))
	return offs
}

func TestSparseStaysSparse(t *testing.T) {
	needRoot(t)
	cases := []struct {
		typ  string
		mode ReflinkMode
	}{{"ext4", ReflinkAuto}, {"tmpfs", ReflinkAuto}, {"xfs", ReflinkNever}, {"btrfs", ReflinkNever}}
	for _, c := range cases {
		t.Run(c.typ, func(t *testing.T) {
			dir := loopfs.New(t, c.typ, 0)
			src := filepath.Join(dir, "src")
			must(t, os.Mkdir(src, 0o755))
			makeSparse(t, filepath.Join(src, "sparse"))
			st, err := Copy(context.Background(), src, filepath.Join(dir, "dst"), Options{Reflink: c.mode})
			must(t, err)
			if st.Copied != 1 {
				t.Errorf("stats %+v, want a copy", st)
			}
			var s unix.Stat_t
			must(t, unix.Stat(filepath.Join(dir, "dst", "sparse"), &s))
			if s.Size != 65<<20 {
				t.Errorf("size %d", s.Size)
			}
			if used := s.Blocks * 512; used > 1<<20 {
				t.Errorf("copy uses %d bytes on disk for 12 KiB of data: not sparse", used)
			}
			a, _ := os.ReadFile(filepath.Join(src, "sparse"))
			b, _ := os.ReadFile(filepath.Join(dir, "dst", "sparse"))
			if !bytes.Equal(a, b) {
				t.Error("content differs")
			}
		})
	}
}

func TestCrossFilesystem(t *testing.T) {
	needRoot(t)
	from := loopfs.New(t, "tmpfs", 0)
	to := loopfs.New(t, "xfs", 0)
	src := filepath.Join(from, "src")
	must(t, os.Mkdir(src, 0o755))
	buildTree(t, src)
	makeSparse(t, filepath.Join(src, "sparse"))
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, src, []unix.Timespec{ts(1, 1), ts(2, 2)}, 0))
	want := snapshot(t, src)
	dst := filepath.Join(to, "dst")
	st, err := Copy(context.Background(), src, dst, Options{})
	must(t, err)
	got := snapshot(t, dst)
	compareTrees(t, src, dst, details(t, src, want), details(t, dst, got))
	if st.Cloned != 0 {
		t.Errorf("cloned across filesystems? %+v", st)
	}
	var s unix.Stat_t
	must(t, unix.Stat(filepath.Join(dst, "sparse"), &s))
	if s.Blocks*512 > 1<<20 {
		t.Errorf("cross-fs copy of sparse file uses %d bytes", s.Blocks*512)
	}
}

func TestCancel(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	must(t, os.Mkdir(src, 0o755))
	buildTree(t, src)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := CopyTree(ctx, src, filepath.Join(dir, "dst")); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestMissingSource(t *testing.T) {
	dir := t.TempDir()
	err := CopyTree(context.Background(), filepath.Join(dir, "nope"), filepath.Join(dir, "dst"))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("err = %v", err)
	}
}

// Modes come out right whatever the umask (the copier skips fchmod only
// when the new file's mode, read back, is already right).
func TestCopyUnderUmask(t *testing.T) {
	needRoot(t)
	for _, mask := range []int{0o077, 0o000, 0o022} {
		t.Run(fmt.Sprintf("%03o", mask), func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			must(t, os.Mkdir(src, 0o755))
			buildTree(t, src)
			must(t, os.WriteFile(filepath.Join(src, "rw-all"), []byte("x"), 0o666))
			must(t, unix.Chmod(filepath.Join(src, "rw-all"), 0o666))
			old := unix.Umask(mask)
			want := snapshot(t, src)
			err := CopyTree(context.Background(), src, dst)
			unix.Umask(old)
			must(t, err)
			got := snapshot(t, dst)
			compareTrees(t, src, dst, details(t, src, want), details(t, dst, got))
		})
	}
}

// Many hardlink groups spread over directories, copied by several workers
// at once: every group stays one group.
func TestManyHardlinkGroups(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	for d := range 5 {
		must(t, os.MkdirAll(filepath.Join(src, fmt.Sprint("d", d)), 0o755))
	}
	for g := range 40 {
		first := filepath.Join(src, "d0", fmt.Sprint("g", g))
		must(t, os.WriteFile(first, []byte(fmt.Sprint("group ", g)), 0o644))
		for l := range 12 {
			must(t, os.Link(first, filepath.Join(src, fmt.Sprint("d", l%5), fmt.Sprintf("g%d-%d", g, l))))
		}
	}
	want := snapshot(t, src)
	st, err := Copy(context.Background(), src, dst, Options{})
	must(t, err)
	got := snapshot(t, dst)
	compareTrees(t, src, dst, details(t, src, want), details(t, dst, got))
	if st.Files != 40 || st.Hardlinks != 40*12 {
		t.Errorf("stats %+v: want 40 files, 480 extra links", st)
	}
}
