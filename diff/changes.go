package diff

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/xattr"
)

// Changes walks lower and upper together and returns what changed from lower
// to upper, sorted by path. lower "" stands for an empty tree.
//
// The two trees are read directory by directory in name order and merged,
// so besides the result only the listings of the directories on the
// current path are held, never a whole tree. The roots themselves are not
// compared (a layer tar has no entry for "/"), and may be symlinks to the
// directories; nothing below them is ever followed. Entries are read
// relative to open directory descriptors, one name at a time, so paths
// longer than PATH_MAX below the roots are handled, and a directory
// swapped for a symlink or a file during the walk is an error naming it.
//
// What counts as a change:
//
//   - Add: a path only in upper. Under an added directory every descendant
//     is an Add too.
//   - Delete: a path only in lower. Under a deleted directory nothing more
//     is reported, as in moby: the whiteout of the directory covers it.
//   - A directory replaced by a non-directory, or the reverse, is a Delete
//     followed by an Add of the same path (and Adds of all the new
//     directory's children): a tar must hide the old children, and Export
//     turns that pair into an opaque directory or a whiteout plus entry.
//     Other type changes (file to symlink, ...) are a Modify: the tar entry
//     simply replaces the old one.
//   - Modify: both exist with the same kind and differ in type bits,
//     permissions (setuid, setgid and sticky included), owner, mtime (to
//     the nanosecond), xattrs, and for non-directories size, device number
//     or symlink target. A directory's size is not looked at (it depends on
//     the filesystem's history, not on content), but its mtime is: a
//     directory whose mtime changed is a Modify, so that an export restores
//     it and a diff/apply round trip reproduces the tree exactly.
//
// Content is not read in general. Like moby and continuity we trust that
// any write changes the mtime: reading both copies of every file would make
// the naive differ cost a full read of both trees. The one exception, taken
// from continuity, is a regular file whose size and mtime match but whose
// mtime has no sub-second part on both sides: such a timestamp may have
// been truncated (a tar without PAX times, a filesystem with coarse
// timestamps), so equal times prove little and the content decides. A file
// rewritten with the same size and its nanosecond mtime restored on purpose
// (touch -r) is thus reported unchanged: a known limit shared with the
// peers. Inode and device numbers are never compared (a copy or snapshot
// of the parent has new ones), nor the link count, so hardlinked files
// whose metadata matches are unchanged; when both sides are the same inode
// nothing can differ and nothing more is read.
//
// Xattrs are compared by name and value, ignoring overlay-internal ones and
// security.selinux, which Export never writes (see exportXattr): a
// difference in them alone would produce a change whose tar entry is
// identical to the lower one.
//
// The result is sorted in component order (see ComparePaths): a parent
// comes before its children, and "/a/b" before "/a.b". Export writes its tar
// in the same order.
func Changes(ctx context.Context, lower, upper string) ([]Change, error) {
	d := differ{ctx: ctx}
	var err error
	if d.u, err = openRoot("upper", upper); err != nil {
		return nil, err
	}
	defer d.u.close()
	if lower != "" {
		if d.l, err = openRoot("lower", lower); err != nil {
			return nil, err
		}
		defer d.l.close()
		err = d.compareDir()
	} else {
		err = d.addTree()
	}
	if err != nil {
		return nil, err
	}
	return d.changes, nil
}

// openRoot opens a tree root, making sure it exists and is a directory, so
// that a wrong path is reported as such rather than as an empty tree.
func openRoot(which, dir string) (*dirStack, error) {
	s, err := openDirStack(dir)
	if err != nil {
		return nil, fmt.Errorf("changes: %s: %w", which, err)
	}
	return s, nil
}

// differ holds the state of one double walk. The trees are read through
// directory descriptors (see dirStack): l and u are open on the directory
// being compared, so paths of any length are handled and no symlink below
// the roots is followed.
type differ struct {
	ctx     context.Context
	l, u    *dirStack // lower and upper; l is nil for an empty lower
	changes []Change
	n       int // entries visited, to check ctx now and then
}

func (d *differ) emit(p string, k ChangeKind) {
	d.changes = append(d.changes, Change{Path: p, Kind: k})
}

// checkCtx looks at the context every 256 entries: cheap enough for huge
// flat directories, responsive enough for cancellation.
func (d *differ) checkCtx() error {
	d.n++
	if d.n&255 == 0 {
		if err := d.ctx.Err(); err != nil {
			return fmt.Errorf("changes: %w", err)
		}
	}
	return nil
}

// compareDir merges the sorted listings of the directory both stacks are
// on, a directory in both trees.
func (d *differ) compareDir() error {
	if err := d.ctx.Err(); err != nil {
		return fmt.Errorf("changes: %w", err)
	}
	lents, err := d.l.list()
	if err != nil {
		return fmt.Errorf("changes: %w", err)
	}
	uents, err := d.u.list()
	if err != nil {
		return fmt.Errorf("changes: %w", err)
	}
	rel := d.u.cur
	i, j := 0, 0
	for i < len(lents) || j < len(uents) {
		if err := d.checkCtx(); err != nil {
			return err
		}
		switch {
		case j == len(uents) || (i < len(lents) && lents[i].name < uents[j].name):
			d.emit(joinLayerPath(rel, lents[i].name), ChangeDelete)
			i++
		case i == len(lents) || uents[j].name < lents[i].name:
			d.emit(joinLayerPath(rel, uents[j].name), ChangeAdd)
			if isDir(&uents[j].st) {
				if err := d.addSubtree(uents[j].name); err != nil {
					return err
				}
			}
			j++
		default:
			if err := d.compareEntry(uents[j].name, &lents[i].st, &uents[j].st); err != nil {
				return err
			}
			i++
			j++
		}
	}
	return nil
}

// compareEntry handles entry name of the current directory, present in both
// trees, with stats ls and us.
func (d *differ) compareEntry(name string, ls, us *unix.Stat_t) error {
	p := joinLayerPath(d.u.cur, name)
	ldir, udir := isDir(ls), isDir(us)
	if ldir != udir {
		d.emit(p, ChangeDelete)
		d.emit(p, ChangeAdd)
		if udir {
			return d.addSubtree(name)
		}
		return nil
	}
	same, err := sameEntry(d.l, d.u, name, ls, us)
	if err != nil {
		return fmt.Errorf("changes: compare %s: %w", p, err)
	}
	if !same {
		d.emit(p, ChangeModify)
	}
	if !udir {
		return nil
	}
	if err := d.l.push(name); err != nil {
		return fmt.Errorf("changes: %w", err)
	}
	if err := d.u.push(name); err != nil {
		return errors.Join(fmt.Errorf("changes: %w", err), d.l.pop())
	}
	err = d.compareDir()
	if perr := errors.Join(d.l.pop(), d.u.pop()); perr != nil && err == nil {
		err = fmt.Errorf("changes: %w", perr)
	}
	return err
}

// addSubtree reports every descendant of directory name of the current
// upper directory as added.
func (d *differ) addSubtree(name string) error {
	if err := d.u.push(name); err != nil {
		return fmt.Errorf("changes: %w", err)
	}
	err := d.addTree()
	if perr := d.u.pop(); perr != nil && err == nil {
		err = fmt.Errorf("changes: %w", perr)
	}
	return err
}

// addTree reports every descendant of the directory the upper stack is on
// as added, in component order.
func (d *differ) addTree() error {
	if err := d.ctx.Err(); err != nil {
		return fmt.Errorf("changes: %w", err)
	}
	ents, err := d.u.list()
	if err != nil {
		return fmt.Errorf("changes: %w", err)
	}
	p := d.u.cur
	for i := range ents {
		if err := d.checkCtx(); err != nil {
			return err
		}
		d.emit(joinLayerPath(p, ents[i].name), ChangeAdd)
		if isDir(&ents[i].st) {
			if err := d.addSubtree(ents[i].name); err != nil {
				return err
			}
		}
	}
	return nil
}

func isDir(st *unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFDIR }

// compareStats is the part of Changes' rules that stat alone decides, for
// a lower and an upper entry of the same kind: same is one inode (nothing
// changed), differ is a mode, owner, mtime, size or device number that
// moved. Neither means xattrs and perhaps content decide.
func compareStats(ls, us *unix.Stat_t) (same, differ bool) {
	if ls.Dev == us.Dev && ls.Ino == us.Ino {
		return true, false
	}
	if ls.Mode != us.Mode || ls.Uid != us.Uid || ls.Gid != us.Gid || ls.Mtim != us.Mtim {
		return false, true
	}
	if typ := us.Mode & unix.S_IFMT; typ != unix.S_IFDIR {
		if ls.Size != us.Size {
			return false, true
		}
		if (typ == unix.S_IFCHR || typ == unix.S_IFBLK) && ls.Rdev != us.Rdev {
			return false, true
		}
	}
	return false, false
}

// sameEntry compares entry name of the current directories of l and u, of
// the same kind (both directories or both not), by the rules documented on
// Changes.
func sameEntry(l, u *dirStack, name string, ls, us *unix.Stat_t) (bool, error) {
	if same, differ := compareStats(ls, us); same || differ {
		return same, nil
	}
	typ := us.Mode & unix.S_IFMT
	if eq, err := sameXattrs(l.procPath(name), u.procPath(name)); err != nil || !eq {
		return false, err
	}
	switch typ {
	case unix.S_IFLNK:
		// Same size means same target length only; reading two links is
		// cheap, so always compare the targets.
		lt, err := readlinkAt(l.fd(), name)
		if err != nil {
			return false, err
		}
		ut, err := readlinkAt(u.fd(), name)
		if err != nil {
			return false, err
		}
		return lt == ut, nil
	case unix.S_IFREG:
		if us.Mtim.Nsec == 0 && us.Size > 0 {
			return sameContent(l.fd(), u.fd(), name)
		}
	}
	return true, nil
}

// sameXattrs compares the attributes of two entries that Export would
// write.
func sameXattrs(lp, up string) (bool, error) {
	la, err := exportXattrs(lp)
	if err != nil {
		return false, err
	}
	ua, err := exportXattrs(up)
	if err != nil {
		return false, err
	}
	if len(la) != len(ua) {
		return false, nil
	}
	for k, v := range la {
		if w, ok := ua[k]; !ok || !bytes.Equal(v, w) {
			return false, nil
		}
	}
	return true, nil
}

// exportXattr says whether attribute name travels in a layer tar.
// Overlay-internal attributes steer the kernel and must never leave the
// host (DESIGN.md). security.selinux is a label the host's policy gave the
// file where it was built; it means nothing on another host (which labels
// files itself on apply or mount) and would make digests depend on the
// build host, so it is dropped as buildkit and containerd do.
func exportXattr(name string) bool {
	return !xattr.IsOverlayInternal(name) && name != "security.selinux"
}

// sameContent compares regular files name of directories lfd and ufd, of
// equal size, byte by byte.
func sameContent(lfd, ufd int, name string) (bool, error) {
	return sameContentAt(lfd, name, ufd, name)
}

// sameContentAt compares regular files aname of directory afd and bname
// of directory bfd, of equal size, byte by byte.
func sameContentAt(afd int, aname string, bfd int, bname string) (bool, error) {
	af, err := openFileAt(afd, aname)
	if err != nil {
		return false, err
	}
	defer af.Close()
	bf, err := openFileAt(bfd, bname)
	if err != nil {
		return false, err
	}
	defer bf.Close()
	const chunk = 64 << 10
	ab := make([]byte, chunk)
	bb := make([]byte, chunk)
	for {
		an, aerr := io.ReadFull(af, ab)
		bn, berr := io.ReadFull(bf, bb)
		if !bytes.Equal(ab[:an], bb[:bn]) {
			return false, nil
		}
		aend := aerr == io.EOF || aerr == io.ErrUnexpectedEOF
		bend := berr == io.EOF || berr == io.ErrUnexpectedEOF
		if aerr != nil && !aend {
			return false, aerr
		}
		if berr != nil && !bend {
			return false, berr
		}
		if aend || bend {
			return aend == bend, nil
		}
	}
}

// openFileAt opens entry name of directory fd for reading, without
// following it if it is a symlink.
func openFileAt(dirfd int, name string) (*os.File, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// joinLayerPath joins an absolute layer path and a name.
func joinLayerPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// ComparePaths orders absolute layer paths component by component: a
// directory sorts right before its descendants, and "/a/b" before "/a.b"
// and "/a-b" (a plain string sort would put "/a-b" and "/a.b" between "/a"
// and "/a/b", separating a directory from its children). This is the order
// of Changes, of Export's tar entries, and of a depth-first walk that lists
// each directory in byte order.
func ComparePaths(a, b string) int {
	for {
		if a == b {
			return 0
		}
		ca, ra, _ := strings.Cut(strings.TrimPrefix(a, "/"), "/")
		cb, rb, _ := strings.Cut(strings.TrimPrefix(b, "/"), "/")
		if ca != cb {
			// "" (the root, or a shorter path) sorts first.
			return strings.Compare(ca, cb)
		}
		if ra == "" || rb == "" {
			return strings.Compare(ra, rb)
		}
		a, b = ra, rb
	}
}

// SortChanges sorts changes in place into the order Changes returns: by
// path in component order (ComparePaths), and for one path a Delete before
// the Add or Modify that replaces it. Drivers that list changes natively
// sort with it before calling Export.
func SortChanges(changes []Change) {
	sort.SliceStable(changes, func(i, j int) bool {
		if c := ComparePaths(changes[i].Path, changes[j].Path); c != 0 {
			return c < 0
		}
		return changes[i].Kind == ChangeDelete && changes[j].Kind != ChangeDelete
	})
}
