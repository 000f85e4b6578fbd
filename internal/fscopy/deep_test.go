package fscopy

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// deepDirs makes under root a chain of 18 directories of 250-byte names
// (about 4.5 KB of path, beyond PATH_MAX) with mkdirat and returns an fd of
// the deepest, to be closed by the caller.
func deepDirs(t *testing.T, root string) int {
	t.Helper()
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	for i := range 18 {
		name := strings.Repeat(string(rune('a'+i)), 250)
		must(t, unix.Mkdirat(fd, name, 0o755))
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		must(t, err)
		unix.Close(fd)
		fd = next
	}
	return fd
}

// A tree deeper than PATH_MAX (diff.Apply accepts such paths) is copied
// with its symlinks, fifos, xattrs on them and hardlinks: nothing may use
// a whole path from the root.
func TestCopyBeyondPathMax(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	must(t, os.Mkdir(src, 0o755))
	fd := deepDirs(t, src)
	must(t, unix.Symlinkat("target-of-deep-link", fd, "link"))
	must(t, unix.Mkfifoat(fd, "fifo", 0o640))
	fifo := "/proc/self/fd/" + itoa(fd) + "/fifo"
	must(t, unix.Lsetxattr(fifo, "trusted.deep", []byte("fifo"), 0))
	must(t, unix.Lsetxattr("/proc/self/fd/"+itoa(fd)+"/link", "trusted.deep", []byte("link"), 0))
	f, err := unix.Openat(fd, "one", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
	must(t, err)
	_, err = unix.Write(f, []byte("linked deep"))
	must(t, err)
	unix.Close(f)
	must(t, unix.Linkat(fd, "one", fd, "two", 0))
	must(t, unix.Linkat(fd, "link", fd, "link2", 0))
	unix.Close(fd)

	st, err := Copy(context.Background(), src, dst, Options{})
	if err != nil {
		t.Fatalf("copy beyond PATH_MAX: %v", err)
	}
	if st.Hardlinks != 2 || st.Symlinks != 1 || st.Specials != 1 {
		t.Errorf("stats %+v: want 2 extra hardlinks, 1 symlink, 1 special", st)
	}
	// Walk down dst by fds and check the deep entries.
	cur, err := unix.Open(dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	for i := range 18 {
		next, err := unix.Openat(cur, strings.Repeat(string(rune('a'+i)), 250), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		must(t, err)
		unix.Close(cur)
		cur = next
	}
	defer unix.Close(cur)
	buf := make([]byte, 100)
	n, err := unix.Readlinkat(cur, "link", buf)
	if err != nil || string(buf[:n]) != "target-of-deep-link" {
		t.Errorf("deep symlink: %q, %v", buf[:n], err)
	}
	var a, b, l1, l2, ff unix.Stat_t
	must(t, unix.Fstatat(cur, "one", &a, unix.AT_SYMLINK_NOFOLLOW))
	must(t, unix.Fstatat(cur, "two", &b, unix.AT_SYMLINK_NOFOLLOW))
	must(t, unix.Fstatat(cur, "link", &l1, unix.AT_SYMLINK_NOFOLLOW))
	must(t, unix.Fstatat(cur, "link2", &l2, unix.AT_SYMLINK_NOFOLLOW))
	must(t, unix.Fstatat(cur, "fifo", &ff, unix.AT_SYMLINK_NOFOLLOW))
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("deep hardlinks not one inode: %d/%d nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	if l1.Ino != l2.Ino || l1.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("deep hardlinked symlink split or not a symlink: %d/%d mode %#o", l1.Ino, l2.Ino, l1.Mode)
	}
	if ff.Mode != unix.S_IFIFO|0o640 {
		t.Errorf("deep fifo mode %#o", ff.Mode)
	}
	for name, want := range map[string]string{"fifo": "fifo", "link": "link"} {
		v := make([]byte, 16)
		n, err := unix.Lgetxattr("/proc/self/fd/"+itoa(cur)+"/"+name, "trusted.deep", v)
		if err != nil || string(v[:n]) != want {
			t.Errorf("deep %s xattr: %q, %v", name, v[:max(n, 0)], err)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// The /proc fallback of linkTo (used without CAP_DAC_READ_SEARCH) links
// the entry an O_PATH fd refers to, a symlink itself rather than its
// target.
func TestLinkProcLinksSymlinkItself(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "target"), nil, 0o644))
	must(t, os.Symlink("target", filepath.Join(dir, "link")))
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, "link", unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	must(t, linkProc(fd, dfd, "link2"))
	var a, b unix.Stat_t
	must(t, unix.Lstat(filepath.Join(dir, "link"), &a))
	must(t, unix.Lstat(filepath.Join(dir, "link2"), &b))
	if a.Ino != b.Ino || b.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("link2 is inode %d mode %#o, want the symlink %d", b.Ino, b.Mode, a.Ino)
	}
}
