package diff

import (
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/xattr"
)

// Tree-building helpers for the Changes and Export tests. They use plain
// syscalls on purpose: the fixtures package is tested against this one.

// ctBaseTime is the mtime given to every entry of a lower tree, so that any
// later touch in the upper tree is a visible change regardless of the
// kernel's timestamp granularity.
var ctBaseTime = time.Date(2020, 1, 2, 3, 4, 5, 123456789, time.UTC)

func ctWriteFile(t testing.TB, root, rel, content string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(p, uint32(mode)); err != nil { // umask-proof; raw bits so 0o4755 means setuid
		t.Fatal(err)
	}
}

func ctMkdir(t testing.TB, root, rel string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(p, uint32(mode)); err != nil {
		t.Fatal(err)
	}
}

func ctSymlink(t testing.TB, root, target, rel string) {
	t.Helper()
	if err := os.Symlink(target, filepath.Join(root, rel)); err != nil {
		t.Fatal(err)
	}
}

func ctRemove(t testing.TB, root, rel string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(root, rel)); err != nil {
		t.Fatal(err)
	}
}

func ctLchtimes(t testing.TB, root, rel string, mtime time.Time) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(mtime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(root, rel), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

func ctSetXattr(t testing.TB, root, rel, name, value string) {
	t.Helper()
	if err := xattr.Set(filepath.Join(root, rel), name, []byte(value)); err != nil {
		t.Skipf("cannot set xattr %s here: %v", name, err)
	}
}

func ctMknod(t testing.TB, root, rel string, mode uint32, major, minor uint32) {
	t.Helper()
	if err := unix.Mknod(filepath.Join(root, rel), mode, int(unix.Mkdev(major, minor))); err != nil {
		t.Skipf("cannot mknod here: %v", err)
	}
	if err := unix.Chmod(filepath.Join(root, rel), mode&0o7777); err != nil { // umask-proof
		t.Fatal(err)
	}
}

// ctSetAllTimes gives every entry under root (root included) mtime tm, so a
// freshly built tree has stable, sub-second times.
func ctSetAllTimes(t testing.TB, root string, tm time.Time) {
	t.Helper()
	var paths []string
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Children first: setting a child's time does not touch its parent's
	// mtime, but be safe about order anyway.
	for i := len(paths) - 1; i >= 0; i-- {
		rel, _ := filepath.Rel(root, paths[i])
		ctLchtimes(t, root, rel, tm)
	}
}

// ctCopyTree copies src to dst (which must not exist) keeping types, modes,
// owners, xattrs, hardlinks and mtimes, so that Changes(src, dst) is empty.
func ctCopyTree(t testing.TB, src, dst string) {
	t.Helper()
	links := map[uint64]string{}
	type dirTime struct {
		path string
		st   unix.Stat_t
	}
	var dirs []dirTime
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := os.Mkdir(out, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, dirTime{out, st})
		case unix.S_IFREG:
			if st.Nlink > 1 {
				if first, ok := links[st.Ino]; ok {
					return os.Link(first, out)
				}
				links[st.Ino] = out
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, b, 0o600); err != nil {
				return err
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, out); err != nil {
				return err
			}
		default:
			if err := unix.Mknod(out, st.Mode, int(st.Rdev)); err != nil {
				return err
			}
		}
		if err := unix.Lchown(out, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			if err := unix.Chmod(out, st.Mode&0o7777); err != nil {
				return err
			}
		}
		all, err := xattr.All(p)
		if err != nil {
			return err
		}
		for k, v := range all {
			if err := xattr.Set(out, k, v); err != nil {
				return err
			}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			ts := []unix.Timespec{st.Atim, st.Mtim}
			return unix.UtimesNanoAt(unix.AT_FDCWD, out, ts, unix.AT_SYMLINK_NOFOLLOW)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Directory times last, deepest first, once their content is complete.
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i].path) > len(dirs[j].path) })
	for _, d := range dirs {
		ts := []unix.Timespec{d.st.Atim, d.st.Mtim}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, d.path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
}

// ctLowerUpper builds a lower tree with build, stamps it with ctBaseTime, and
// returns it with an identical upper copy for the test to change.
func ctLowerUpper(t testing.TB, build func(root string)) (lower, upper string) {
	t.Helper()
	base := t.TempDir()
	lower = filepath.Join(base, "lower")
	upper = filepath.Join(base, "upper")
	if err := os.Mkdir(lower, 0o755); err != nil {
		t.Fatal(err)
	}
	if build != nil {
		build(lower)
	}
	ctSetAllTimes(t, lower, ctBaseTime)
	ctCopyTree(t, lower, upper)
	return lower, upper
}
