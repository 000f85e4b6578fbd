package diff

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/xattr"
)

// Changes and Export read trees through directory descriptors rather than
// by full path: a layer may hold paths longer than PATH_MAX once joined to
// its root (Apply creates them relative to directory descriptors too), and
// resolving one name relative to an open directory is cheaper than
// resolving the whole path again for every entry.

// maxOpenDirs bounds the descriptors one dirStack keeps open below its
// root, whatever the depth of the tree.
const maxOpenDirs = 64

// dirStack holds open descriptors of the directories along one path below a
// root, the root first. Every directory below the root is opened from its
// parent's descriptor with O_NOFOLLOW|O_DIRECTORY, so no symlink is ever
// followed below the root, and a component that is not a directory is an
// error naming it.
//
// Only the root and the deepest maxOpenDirs levels stay open: on deeper
// trees the levels above are closed, their identity remembered, and
// reopened through ".." of their child when the walk comes back up (as
// fts does); a directory that is not the same one any more (moved during
// the walk) is then an error.
type dirStack struct {
	root string // the root's path, for messages only
	cur  string // the layer path of the top directory: "/" or "/a/b"
	// fds[i] is the descriptor of level i (fds[0] the root), or -1 while
	// closed; ids[i] is its identity, recorded when it is closed.
	fds []int
	ids []unix.Stat_t
	low int // the shallowest open level below the root (levels low..top are open)

	proc string // "/proc/self/fd/N/" for the top descriptor, or "" when not built
	buf  []byte // getdents buffer
}

// openDirStack opens root, which may be a symlink to a directory.
func openDirStack(root string) (*dirStack, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOTDIR {
			return nil, fmt.Errorf("%s is not a directory", root)
		}
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	return &dirStack{root: root, cur: "/", fds: []int{fd}, ids: make([]unix.Stat_t, 1), low: 1}, nil
}

// close closes every descriptor of the stack.
func (s *dirStack) close() {
	for _, fd := range s.fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	s.fds = nil
}

// fd returns the descriptor of the top directory.
func (s *dirStack) fd() int { return s.fds[len(s.fds)-1] }

// depth returns the number of levels below the root.
func (s *dirStack) depth() int { return len(s.fds) - 1 }

// hostPath returns the host path of layer path p below the root, for
// messages: it may be too long to open.
func (s *dirStack) hostPath(p string) string { return filepath.Join(s.root, p) }

// procPath returns a path naming entry name of the top directory without
// following it if it is a symlink: short whatever the depth, for the
// calls that have no *at variant (lgetxattr, llistxattr).
func (s *dirStack) procPath(name string) string {
	if s.proc == "" {
		s.proc = "/proc/self/fd/" + strconv.Itoa(s.fd()) + "/"
	}
	return s.proc + name
}

// push opens directory name of the top directory and makes it the top.
func (s *dirStack) push(name string) error {
	p := joinLayerPath(s.cur, name)
	fd, err := unix.Openat(s.fd(), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOTDIR || err == unix.ELOOP {
			// ELOOP: O_NOFOLLOW met a symlink.
			err = unix.ENOTDIR
		}
		return &os.PathError{Op: "open directory", Path: s.hostPath(p), Err: err}
	}
	s.fds = append(s.fds, fd)
	s.ids = append(s.ids, unix.Stat_t{})
	s.cur = p
	s.proc = ""
	if top := len(s.fds) - 1; top-s.low >= maxOpenDirs {
		l := s.low
		if err := unix.Fstat(s.fds[l], &s.ids[l]); err != nil {
			return &os.PathError{Op: "fstat", Path: s.hostPath(s.levelPath(l)), Err: err}
		}
		unix.Close(s.fds[l])
		s.fds[l] = -1
		s.low++
	}
	return nil
}

// pop closes the top directory and makes its parent the top, reopening the
// parent if it was closed.
func (s *dirStack) pop() error {
	top := len(s.fds) - 1
	if top == 0 {
		return errors.New("dirStack: pop of the root")
	}
	var err error
	if s.fds[top-1] < 0 {
		err = s.reopenParent(top)
	}
	unix.Close(s.fds[top])
	s.fds = s.fds[:top]
	s.ids = s.ids[:top]
	if i := len(s.cur) - 1 - len(lastName(s.cur)); i > 0 {
		s.cur = s.cur[:i]
	} else {
		s.cur = "/"
	}
	s.proc = ""
	if top-1 < s.low {
		s.low = max(top-1, 1)
	}
	return err
}

// reopenParent reopens closed level top-1 as ".." of level top and checks
// it is the directory that was closed.
func (s *dirStack) reopenParent(top int) error {
	pp := s.hostPath(s.levelPath(top - 1))
	fd, err := unix.Openat(s.fds[top], "..", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "reopen directory", Path: pp, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return &os.PathError{Op: "fstat", Path: pp, Err: err}
	}
	if st.Dev != s.ids[top-1].Dev || st.Ino != s.ids[top-1].Ino {
		unix.Close(fd)
		return fmt.Errorf("directory %s was moved during the walk", pp)
	}
	s.fds[top-1] = fd
	return nil
}

// levelPath returns the layer path of level l of the stack.
func (s *dirStack) levelPath(l int) string {
	p := s.cur
	for i := len(s.fds) - 1; i > l; i-- {
		p = p[:len(p)-1-len(lastName(p))]
	}
	if p == "" {
		return "/"
	}
	return p
}

// lastName returns the last component of layer path p ("" for "/").
func lastName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

// isUnder reports whether layer path p is dir or below it.
func isUnder(p, dir string) bool {
	if dir == "/" || p == dir {
		return true
	}
	return len(p) > len(dir) && p[len(dir)] == '/' && p[:len(dir)] == dir
}

// dirEntry is a directory entry with its lstat.
type dirEntry struct {
	name string
	st   unix.Stat_t
}

// list lists the top directory, which must have been freshly opened, in
// byte order of names, with each entry's lstat. The entries are stat'ed
// relative to the open directory (fstatat): the kernel resolves one name,
// not a whole path.
func (s *dirStack) list() ([]dirEntry, error) {
	fd := s.fd()
	if s.buf == nil {
		s.buf = make([]byte, 32<<10)
	}
	var names []string
	for {
		n, err := unix.Getdents(fd, s.buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read directory", Path: s.hostPath(s.cur), Err: err}
		}
		if n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(s.buf[:n], -1, names)
	}
	sort.Strings(names)
	ents := make([]dirEntry, len(names))
	for i, n := range names {
		ents[i].name = n
		if err := unix.Fstatat(fd, n, &ents[i].st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return nil, &os.PathError{Op: "lstat", Path: s.hostPath(joinLayerPath(s.cur, n)), Err: err}
		}
	}
	return ents, nil
}

// lstatAt lstats entry name of directory fd.
func lstatAt(fd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// readlinkAt returns the target of symlink name of directory fd.
func readlinkAt(fd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		b := make([]byte, size)
		n, err := unix.Readlinkat(fd, name, b)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(b[:n]), nil
		}
	}
}

// exportXattrs returns the attributes of path that belong in a layer;
// path is not followed if it is a symlink.
func exportXattrs(path string) (map[string][]byte, error) {
	all, err := xattr.All(path)
	if err != nil {
		return nil, err
	}
	for k := range all {
		if !exportXattr(k) {
			delete(all, k)
		}
	}
	return all, nil
}
