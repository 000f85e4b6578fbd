package diff

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// dirHandle is a directory inside the layer root, opened O_PATH.
type dirHandle struct {
	fd int
	// canon is the directory's path relative to the root with every
	// symlink resolved ("" for the root). Bookkeeping (what this layer
	// wrote, directory times) is keyed by it, so that an entry written
	// through a symlinked parent and a whiteout naming the real path agree.
	canon string
	// newGid is the group the kernel gives files created here (the
	// caller's, or the directory's when it is setgid or the filesystem is
	// mounted grpid) plus one, learned from the first file, 0 until then:
	// files whose header asks for exactly that owner skip their chown.
	// Atomic: file writers and the applier may learn it at once (they
	// learn the same value).
	newGid atomic.Int64
	// acl is aclUnknown, aclNone or aclDefault (see defaultACL).
	acl atomic.Int32
}

// Whether a directory has a default ACL, as dirHandle.acl holds it.
const (
	aclUnknown = iota
	aclNone
	aclDefault
)

// child returns the canonical path of name inside d.
func (d *dirHandle) child(name string) string {
	if d.canon == "" {
		return name
	}
	return d.canon + "/" + name
}

// maxCachedDirs bounds the parent cache; tar entries come sorted, so a
// small cache catches nearly every lookup while keeping few fds open.
const maxCachedDirs = 128

// maxSymlinks is the kernel's limit on symlinks followed in one lookup.
const maxSymlinks = 40

// lookupDir returns a handle for the directory rel (a clean relative path,
// "" for the root), resolved inside the root. With create, missing
// directories are made (0755, owned by the caller) and marked as written.
// The handle stays valid until the next call of closeStale.
func (a *applier) lookupDir(rel string, create bool) (*dirHandle, error) {
	mode := lookTop
	if create {
		mode = lookCreate
	}
	return a.lookupDirMode(rel, mode)
}

// How lookupDirMode treats a directory missing from this layer's dir.
type lookMode int

const (
	lookTop    lookMode = iota // an error
	lookCreate                 // made, with its missing parents (with lowers: see lookupMerged)
	lookLower                  // with lowers, made if the merged view has it; else an error
)

// lookupDirMode is lookupDir with the mode spelt out.
func (a *applier) lookupDirMode(rel string, mode lookMode) (*dirHandle, error) {
	create := mode != lookTop
	if rel == "" || rel == "." {
		return &a.rootHandle, nil
	}
	if h, ok := a.cache[rel]; ok {
		return h, nil
	}
	h, err := a.resolve(rel)
	if err != nil && a.queued > 0 {
		// A file still queued for a writer may be what is missing (or in
		// the way) here. A lookup that succeeded needs no such wait:
		// writers only add regular files at paths nothing had.
		a.waitWriters()
		h, err = a.resolve(rel)
	}
	if err != nil && a.lowers != nil && create && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)) {
		// Not in this layer's own dir: the lowers decide what the path
		// is. createsParents formats only: this is the overlay format.
		h, err = a.lookupMerged(rel, mode == lookCreate)
	} else if err != nil && mode == lookCreate && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) && a.underWhiteout(rel)) {
		h, err = a.makeDir(rel)
	}
	if err != nil {
		return nil, err
	}
	if len(a.cache) >= maxCachedDirs {
		a.invalidate()
	}
	a.cache[rel] = h
	return h, nil
}

// underWhiteout reports whether rel or one of its parents is where this
// layer put a whiteout device (overlay format): a lookup there fails with
// ENOTDIR, and the directory the layer lists there replaces the device.
func (a *applier) underWhiteout(rel string) bool {
	if len(a.whited) == 0 {
		return false
	}
	for p := rel; p != ""; p, _ = splitRel(p) {
		if _, ok := a.whited[p]; ok {
			return true
		}
	}
	return false
}

// makeDir creates the missing directory rel and its missing parents, the
// way tar does for entries whose parents the archive does not list.
func (a *applier) makeDir(rel string) (*dirHandle, error) {
	parent, name := splitRel(rel)
	ph, err := a.lookupDir(parent, true)
	if err != nil {
		return nil, err
	}
	canon := ph.child(name)
	if _, ok := a.whited[canon]; ok {
		// This layer's own whiteout device (overlay format) is in the way
		// of a directory it lists below: the directory replaces it, opaque
		// so that the lower one stays hidden, as dir does for a listed one.
		if err := unix.Unlinkat(ph.fd, name, 0); err != nil {
			return nil, fmt.Errorf("replace whiteout with directory %q: %w", rel, err)
		}
	}
	if err := unix.Mkdirat(ph.fd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create parent directory %q: %w", rel, err)
	} else if err == nil {
		if _, ok := a.whited[canon]; ok {
			delete(a.whited, canon)
			fd, err := unix.Openat(ph.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil, fmt.Errorf("open parent directory %q: %w", rel, err)
			}
			err = a.wf.opaque(a, fd, canon)
			unix.Close(fd)
			if err != nil {
				return nil, err
			}
		}
		a.created[canon] = struct{}{}
		if a.umask&0o755 != 0 {
			if err := unix.Fchmodat(ph.fd, name, 0o755, 0); err != nil {
				return nil, fmt.Errorf("chmod parent directory %q: %w", rel, err)
			}
		}
		a.markTouched(ph.child(name))
	}
	h, err := a.resolve(rel)
	if err != nil {
		// EEXIST from mkdirat and still no directory: a dangling symlink
		// or a non-directory is in the way.
		return nil, fmt.Errorf("parent directory %q: %w", rel, err)
	}
	return h, nil
}

// resolve opens rel as a directory inside the root, following symlinks as
// if the root were "/", and never leaving it.
func (a *applier) resolve(rel string) (*dirHandle, error) {
	// openat2 takes at most PATH_MAX bytes; the walk goes one component
	// at a time, so entries nested deeper than that apply too.
	if !a.openat2 || len(rel) >= unix.PathMax {
		fd, canon, err := a.walkInRoot(rel)
		if err != nil {
			return nil, err
		}
		return &dirHandle{fd: fd, canon: canon}, nil
	}
	// Most paths hold no symlink: then the canonical path is rel itself,
	// and one syscall does the whole lookup.
	fd, err := openat2Retry(a.rootHandle.fd, rel, unix.RESOLVE_IN_ROOT|unix.RESOLVE_NO_SYMLINKS|unix.RESOLVE_NO_MAGICLINKS)
	if err == nil {
		return &dirHandle{fd: fd, canon: rel}, nil
	}
	if !errors.Is(err, unix.ELOOP) {
		return nil, err
	}
	fd, err = openat2Retry(a.rootHandle.fd, rel, unix.RESOLVE_IN_ROOT|unix.RESOLVE_NO_MAGICLINKS)
	if err != nil {
		return nil, err
	}
	canon, ok := a.canonOf(fd)
	if !ok {
		// /proc is not there or disagrees: let the userspace walk name it.
		cfd, c, err := a.walkInRoot(rel)
		if err != nil {
			unix.Close(fd)
			return nil, err
		}
		unix.Close(cfd)
		canon = c
	}
	return &dirHandle{fd: fd, canon: canon}, nil
}

func openat2Retry(dirfd int, rel string, resolve uint64) (int, error) {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: resolve}
	for i := 0; ; i++ {
		fd, err := unix.Openat2(dirfd, rel, &how)
		// EAGAIN: a concurrent rename or mount somewhere on the system
		// made the kernel unsure; it asks us to try again.
		if errors.Is(err, unix.EAGAIN) && i < 16 {
			continue
		}
		return fd, err
	}
}

// canonOf names the directory open as fd relative to the root, through
// /proc/self/fd.
func (a *applier) canonOf(fd int) (string, bool) {
	if a.rootReal == "" {
		return "", false
	}
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", false
	}
	if p == a.rootReal {
		return "", true
	}
	prefix := a.rootReal
	if prefix != "/" {
		prefix += "/"
	}
	if !strings.HasPrefix(p, prefix) {
		return "", false
	}
	return p[len(prefix):], true
}

// walkInRoot is the fallback for kernels without openat2: it walks rel one
// component at a time with O_PATH|O_NOFOLLOW, reading symlinks itself and
// resolving them as if the root were "/" ("/.." stays at the root). No
// component is ever opened with the kernel following a symlink, so the walk
// cannot leave the root. It returns an O_PATH fd of the directory and its
// canonical path.
func (a *applier) walkInRoot(rel string) (int, string, error) {
	type step struct {
		fd   int
		name string
	}
	var stack []step
	closeAll := func() {
		for _, s := range stack {
			unix.Close(s.fd)
		}
		stack = stack[:0]
	}
	todo := strings.Split(rel, "/")
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if n := len(stack); n > 0 {
				unix.Close(stack[n-1].fd)
				stack = stack[:n-1]
			}
			continue
		}
		cur := a.rootHandle.fd
		if n := len(stack); n > 0 {
			cur = stack[n-1].fd
		}
		fd, err := unix.Openat(cur, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			closeAll()
			return -1, "", err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			closeAll()
			return -1, "", err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			stack = append(stack, step{fd, c})
		case unix.S_IFLNK:
			links++
			target, err := readlinkFd(fd)
			unix.Close(fd)
			if err != nil {
				closeAll()
				return -1, "", err
			}
			if links > maxSymlinks {
				closeAll()
				return -1, "", unix.ELOOP
			}
			if target == "" {
				closeAll()
				return -1, "", unix.ENOENT
			}
			if strings.HasPrefix(target, "/") {
				closeAll() // absolute: start again at the root
			}
			todo = append(strings.Split(target, "/"), todo...)
		default:
			unix.Close(fd)
			closeAll()
			return -1, "", unix.ENOTDIR
		}
	}
	names := make([]string, len(stack))
	for i, s := range stack {
		names[i] = s.name
	}
	var fd int
	if n := len(stack); n > 0 {
		fd = stack[n-1].fd
		stack = stack[:n-1]
		closeAll()
	} else {
		var err error
		fd, err = unix.Openat(a.rootHandle.fd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, "", err
		}
	}
	return fd, strings.Join(names, "/"), nil
}

func readlinkFd(fd int) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		if len(buf) >= 1<<16 {
			return "", unix.ENAMETOOLONG
		}
		buf = make([]byte, 2*len(buf))
	}
}

// invalidate forgets every cached directory. It is called whenever an entry
// removes or replaces a directory or symlink, so that later entries resolve
// through the new tree. The fds are closed later (closeStale), because the
// caller may still be using a handle it looked up for the current entry.
func (a *applier) invalidate() {
	for k, h := range a.cache {
		a.stale = append(a.stale, h.fd)
		delete(a.cache, k)
	}
}

// closeStale closes the fds of forgotten handles; called between entries,
// once the writers, which may hold such handles, are done with them.
func (a *applier) closeStale() {
	if len(a.stale) > 0 {
		a.waitWriters()
	}
	for _, fd := range a.stale {
		unix.Close(fd)
	}
	a.stale = a.stale[:0]
}

func (a *applier) closeAll() {
	a.invalidate()
	a.closeStale()
}

// splitRel splits a clean relative path into its parent ("" for the root)
// and its last component.
func splitRel(rel string) (string, string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return "", rel
	}
	return rel[:i], rel[i+1:]
}

// removeAllAt removes name in dirfd and, if it is a directory, everything
// below it. It works through fds and never follows a symlink: a symlink is
// unlinked, never descended into.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) {
		return fmt.Errorf("remove %q: %w", name, err)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %q for removal: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	for {
		names, err := f.Readdirnames(1024)
		for _, n := range names {
			if rerr := removeAllAt(fd, n); rerr != nil {
				f.Close()
				return rerr
			}
		}
		if err != nil {
			break
		}
		// Entries were removed while reading: start the listing again so
		// none is skipped.
		if _, err := f.Seek(0, 0); err != nil {
			break
		}
	}
	f.Close()
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove directory %q: %w", name, err)
	}
	return nil
}

// removeLowerChildren removes, below the directory open as dirfd (canonical
// path canon), everything this layer did not write. A directory this layer
// wrote (or that holds something it wrote) stays, but loses its own
// lower-only children: an opaque parent hides the whole lower subtree.
func (a *applier) removeLowerChildren(dirfd int, canon string) error {
	nfd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %q: %w", canon, err)
	}
	f := os.NewFile(uintptr(nfd), canon)
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return fmt.Errorf("read directory %q: %w", canon, err)
	}
	removed := false
	for _, e := range ents {
		cc := path.Join(canon, e.Name())
		if _, mine := a.touched[cc]; mine {
			if !e.IsDir() {
				continue
			}
			cfd, err := unix.Openat(nfd, e.Name(), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open %q: %w", cc, err)
			}
			err = a.removeLowerChildren(cfd, cc)
			unix.Close(cfd)
			if err != nil {
				return err
			}
			continue
		}
		if err := removeAllAt(nfd, e.Name()); err != nil {
			return fmt.Errorf("in %q: %w", canon, err)
		}
		removed = true
	}
	if removed {
		a.invalidate()
	}
	return nil
}
