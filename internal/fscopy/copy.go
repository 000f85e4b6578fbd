package fscopy

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/xattr"
)

// maxDepth bounds the recursion: PATH_MAX (4096) allows about 2048 levels,
// and a deeper walk can only mean a bind-mount loop.
const maxDepth = 2048

// rwBufSize is the read/write fallback's buffer; 1 MiB amortises the system
// calls on big files and is allocated only when the fallback is used.
const rwBufSize = 1 << 20

// dirRef is a directory open for *at calls plus its path, which is used only
// to name entries in errors and for the few calls that have no *at form
// (xattrs of symlinks and special files). With fd AT_FDCWD and path "",
// names are whole paths.
type dirRef struct {
	fd   int
	path string
	// inherits is set when entries made in this destination directory
	// may start with xattrs the source lacks: the directory has a default
	// ACL (a new entry inherits system.posix_acl_access, a new directory
	// system.posix_acl_default too), or nothing is known about it. Copies
	// made there then drop every xattr their source does not have.
	inherits bool
}

func (d dirRef) join(name string) string {
	if d.path == "" {
		return name
	}
	return d.path + "/" + name
}

// at returns a path for name in d that calls without an *at form can use
// however deep d is: "/proc/self/fd/<fd>/name", which resolves only name
// below the open directory (and, for l* calls, does not follow name). A
// path from the root may exceed PATH_MAX (diff.Apply makes such trees).
func (d dirRef) at(name string) string {
	if d.fd == unix.AT_FDCWD {
		return name
	}
	return "/proc/self/fd/" + strconv.Itoa(d.fd) + "/" + name
}

// inode identifies a source file for hardlink detection.
type inode struct{ dev, ino uint64 }

// devState remembers, per source filesystem, which data-copy methods work,
// so that a tree on ext4 does not try FICLONE once per file. A method is
// only marked bad if it failed before ever working on that filesystem: one
// odd file (say, a btrfs inline extent on an old kernel) must not switch
// cloning off for all the files after it.
type devState struct {
	cloneOK, cloneBad bool
	cfrOK, cfrBad     bool
}

// dent is one directory entry as getdents returns it.
type dent struct {
	name string
	typ  uint8
}

// copier holds the state of one copy: the hardlink map, the per-filesystem
// method memo and buffers reused across entries so small files cost no
// allocations beyond their names.
type copier struct {
	opts   Options
	stats  Stats
	sh     *shared
	pool   chan<- job // nil: copy every entry in this goroutine
	devs   map[uint64]*devState
	buf    []byte // read/write fallback
	names  []byte // xattr name list
	value  []byte // one xattr value
	dents  []byte // getdents
	link   []byte // readlink
	dnames []byte // xattr name list of a new entry
	ts     [2]unix.Timespec
}

func newCopier(opts Options) *copier {
	return &copier{
		opts:  opts,
		sh:    &shared{links: make(map[inode]*linkState)},
		devs:  make(map[uint64]*devState, 1),
		names: make([]byte, 1024),
		value: make([]byte, 1024),
		link:  make([]byte, 4096),
	}
}

// shared is the state the walker and its workers share.
type shared struct {
	mu    sync.Mutex
	links map[inode]*linkState // first copy of each multiply-linked inode
	err   error                // first error of a worker
}

// linkState is the first copy of a multiply-linked inode; done is closed
// once it exists (or failed, err set).
type linkState struct {
	path string // for errors only: it may be longer than PATH_MAX
	done chan struct{}
	err  error
	// fd is an O_PATH fd of the first copy, to link further names to
	// with linkat however deep it is; set before done is closed. It is
	// closed when the names left (the source's link count minus the names
	// made, guarded by shared.mu) reach 0, or by closeLinks at the end.
	fd   int
	left uint64
}

// claimLink returns the first copy of inode key, and whether the caller
// just became it (and must make it, at path, then close done).
func (sh *shared) claimLink(key inode, path string) (*linkState, bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if ls, ok := sh.links[key]; ok {
		return ls, false
	}
	ls := &linkState{path: path, done: make(chan struct{}), fd: -1}
	sh.links[key] = ls
	return ls, true
}

// linked counts one more name made for ls, closing its fd once every name
// the source has is made.
func (sh *shared) linked(ls *linkState) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if ls.left > 0 {
		ls.left--
	}
	if ls.left == 0 && ls.fd >= 0 {
		unix.Close(ls.fd)
		ls.fd = -1
	}
}

// closeLinks closes the fds of first copies whose other names were not all
// in the tree; the copy is over.
func (sh *shared) closeLinks() {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, ls := range sh.links {
		if ls.fd >= 0 {
			unix.Close(ls.fd)
			ls.fd = -1
		}
	}
}

func (sh *shared) fail(err error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.err == nil {
		sh.err = err
	}
}

func (sh *shared) failed() error {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.err
}

// job is one regular file for a worker to copy.
type job struct {
	s, d  dirRef
	name  string
	depth int
	dir   *pendingDir // d's state: told when the file is made
}

// pendingDir is a directory being copied whose attributes wait until every
// entry in it is made (a new entry changes a directory's mtime). Whoever
// makes the last one, the walker or a worker, sets them and closes the
// directory's fds; so the walker goes on to the next directory at once
// instead of waiting for the workers at the end of each one.
//
// Entries deeper down need not be waited for: making an entry inside a
// subdirectory changes the subdirectory, not this one, and every *at call
// below works on the subdirectory's own fds.
type pendingDir struct {
	left     atomic.Int64 // files in the workers' hands, +1 while the walker lists it
	sfd, dfd int
	path     string // destination, for errors
	src      string // source, for errors
	st       unix.Stat_t
	inherits bool
	// root is the copy's root: copyTree finishes it itself, after the
	// workers stop, and owns its fds.
	root bool
}

// done counts one entry of p as made; the last one finishes p with c's
// buffers.
func (p *pendingDir) done(ctx context.Context, c *copier) {
	if p.left.Add(-1) != 0 || p.root {
		return
	}
	defer unix.Close(p.sfd)
	defer unix.Close(p.dfd)
	if ctx.Err() != nil || c.sh.failed() != nil {
		return // the copy has failed: only the fds matter now
	}
	if err := c.dirMeta(p.sfd, p.dfd, p.path, &p.st, p.inherits); err != nil {
		c.sh.fail(err)
		return
	}
	if err := c.setTimesFd(p.dfd, &p.st); err != nil {
		c.sh.fail(fmt.Errorf("copy %s: %w", p.src, pathErr("futimens", p.path, err)))
	}
}

// workers is how many goroutines copy regular files while the walker goes
// on: one per CPU (at least 2, at most 8), so that a big tree uses the
// machine. On xfs and btrfs a reflinked copy costs about 75 µs of CPU per
// file, nearly all of it in the kernel's metadata transactions (create,
// clone, times), so on 2 busy CPUs the pool is within noise of copying in
// one goroutine (BenchmarkCopyTree's serial cases); more, idle CPUs are
// where it pays.
func workers() int {
	if testWorkers >= 0 {
		return testWorkers
	}
	return min(max(runtime.GOMAXPROCS(0), 2), 8)
}

// testWorkers overrides workers() in tests and benchmarks when >= 0; 0
// copies everything in the walking goroutine.
var testWorkers = -1

// startWorkers starts the file-copying goroutines and returns a function
// that stops them and adds their counts to c's.
func (c *copier) startWorkers(ctx context.Context) (stop func()) {
	n := workers()
	if n == 0 {
		return func() {}
	}
	jobs := make(chan job, 64)
	c.pool = jobs
	var done sync.WaitGroup
	ws := make([]*copier, n)
	for i := range ws {
		w := newCopier(c.opts)
		w.sh = c.sh
		ws[i] = w
		done.Add(1)
		go func() {
			defer done.Done()
			for j := range jobs {
				if ctx.Err() == nil && c.sh.failed() == nil {
					if err := w.copyEntry(ctx, j.s, j.d, j.name, j.name, nil, unix.DT_REG, j.depth); err != nil {
						c.sh.fail(err)
					}
				}
				j.dir.done(ctx, w)
			}
		}()
	}
	return func() {
		close(jobs)
		done.Wait()
		c.pool = nil
		for _, w := range ws {
			c.stats.add(&w.stats)
		}
	}
}

func (c *copier) copyTree(ctx context.Context, src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return fmt.Errorf("copy tree: %w", pathErr("lstat", src, err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("copy tree: source %s is not a directory", src)
	}
	if err := unix.Mkdir(dst, 0o700); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("copy tree: %w", pathErr("mkdir", dst, err))
		}
		empty, err := isEmptyDir(dst)
		if err != nil {
			return fmt.Errorf("copy tree: destination: %w", err)
		}
		if !empty {
			return fmt.Errorf("copy tree: destination %s is not an empty directory", dst)
		}
	}
	sfd, err := openDir(unix.AT_FDCWD, src)
	if err != nil {
		return fmt.Errorf("copy tree: %w", pathErr("open", src, err))
	}
	defer unix.Close(sfd)
	dfd, err := openDir(unix.AT_FDCWD, dst)
	if err != nil {
		return fmt.Errorf("copy tree: %w", pathErr("open", dst, err))
	}
	defer unix.Close(dfd)
	c.stats.Dirs++
	s := dirRef{fd: sfd, path: src}
	d := dirRef{fd: dfd, path: dst, inherits: hasDefaultACL(dfd)}
	stop := c.startWorkers(ctx)
	root := &pendingDir{root: true}
	err = c.copyDir(ctx, s, d, 0, root)
	stop()
	c.sh.closeLinks()
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = c.sh.failed()
	}
	if err != nil {
		return err
	}
	// The root may have inherited from its parent (or, when it existed,
	// carry anything): it always drops what src lacks.
	if err := c.dirMeta(sfd, dfd, dst, &st, true); err != nil {
		return err
	}
	if err := c.setTimes(unix.AT_FDCWD, dst, &st); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// copyDir copies the entries of directory s into the existing directory d,
// whose state is p: regular files go to the workers (when there are any)
// and count in p until made. Errors of the workers are collected in c.sh.
func (c *copier) copyDir(ctx context.Context, s, d dirRef, depth int, p *pendingDir) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if depth >= maxDepth {
		return fmt.Errorf("copy %s: deeper than %d levels (a mount loop?)", s.path, maxDepth)
	}
	ents, err := c.readDir(s.fd)
	if err != nil {
		return fmt.Errorf("copy: %w", pathErr("getdents", s.path, err))
	}
	for i, e := range ents {
		if i&63 == 63 {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := c.sh.failed(); err != nil {
				return err
			}
		}
		if e.typ == unix.DT_REG && c.pool != nil {
			p.left.Add(1)
			c.pool <- job{s: s, d: d, name: e.name, depth: depth, dir: p}
			continue
		}
		if e.typ == unix.DT_DIR {
			if err := c.copySubdir(ctx, s, d, e.name, nil, depth); err != nil {
				return err
			}
			continue
		}
		if err := c.copyEntry(ctx, s, d, e.name, e.name, nil, e.typ, depth); err != nil {
			return err
		}
	}
	return nil
}

// copySubdir makes directory name in d and fills it from s/name; its
// attributes are set once its last entry is made (see pendingDir), times
// last, after its entries changed it.
func (c *copier) copySubdir(ctx context.Context, s, d dirRef, name string, st *unix.Stat_t, depth int) error {
	sfd, err := openDir(s.fd, name)
	if err != nil {
		return fmt.Errorf("copy: %w", pathErr("open", s.join(name), err))
	}
	closeSfd := true
	defer func() {
		if closeSfd {
			unix.Close(sfd)
		}
	}()
	if st == nil {
		st = new(unix.Stat_t)
		if err := unix.Fstat(sfd, st); err != nil {
			return fmt.Errorf("copy: %w", pathErr("fstat", s.join(name), err))
		}
	}
	// Made with its final permissions (plus the owner's rwx, to fill it
	// as any user) so that dirMeta need not chmod it in the usual case;
	// nobody else reaches it before the copy ends, since the root of the
	// copy stays 0700 until then.
	if err := unix.Mkdirat(d.fd, name, st.Mode&0o777|0o700); err != nil {
		return fmt.Errorf("copy: %w", pathErr("mkdir", d.join(name), err))
	}
	dfd, err := openDir(d.fd, name)
	if err != nil {
		return fmt.Errorf("copy: %w", pathErr("open", d.join(name), err))
	}
	c.stats.Dirs++
	// From here the fds belong to p, closed by its last done.
	closeSfd = false
	p := &pendingDir{sfd: sfd, dfd: dfd, path: d.join(name), src: s.join(name), st: *st, inherits: d.inherits}
	p.left.Store(1) // the walker's own hold, until it has listed everything
	// A new directory has a default ACL only if it inherited one from d:
	// its own (the source's) is set by dirMeta after its entries are made.
	sub := dirRef{fd: dfd, path: d.join(name), inherits: d.inherits}
	err = c.copyDir(ctx, dirRef{fd: sfd, path: s.join(name)}, sub, depth+1, p)
	if err != nil {
		c.sh.fail(err) // so that p's last done only closes its fds
	}
	p.done(ctx, c)
	if err != nil {
		return err
	}
	// Serially (no workers) the directory is finished by now, and its
	// errors are this call's.
	return c.sh.failed()
}

// dirMeta sets owner, xattrs and mode of a copied directory (not times);
// with inherited, xattrs the source lacks are removed.
func (c *copier) dirMeta(sfd, dfd int, dpath string, st *unix.Stat_t, inherited bool) error {
	// A chown, even to the owner the directory has, is a metadata
	// transaction on most filesystems; an fstat is not.
	var got unix.Stat_t
	if err := unix.Fstat(dfd, &got); err != nil {
		return fmt.Errorf("copy: %w", pathErr("fstat", dpath, err))
	}
	chowned := false
	if got.Uid != st.Uid || got.Gid != st.Gid {
		if err := unix.Fchown(dfd, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("copy: %w", pathErr("chown", dpath, err))
		}
		chowned = true
	}
	aclChanged, err := c.copyXattrsFd(sfd, dfd, dpath, inherited)
	if err != nil {
		return err
	}
	// As for files: an ACL set or removed changes the mode, and chown
	// clears setgid; the umask, a default ACL or a setgid parent may have
	// given the new directory another mode than asked.
	if got.Mode&07777 != st.Mode&07777 || aclChanged || (chowned && st.Mode&06000 != 0) {
		if err := unix.Fchmod(dfd, st.Mode&07777); err != nil {
			return fmt.Errorf("copy: %w", pathErr("chmod", dpath, err))
		}
	}
	return nil
}

// chownNew gives the entry name just made in d the owner st has, unless it
// already has it (the usual case when root copies root's files): an lstat
// instead of a chown, which is a metadata transaction even when it changes
// nothing.
func chownNew(d dirRef, name string, st *unix.Stat_t) error {
	var got unix.Stat_t
	if err := unix.Fstatat(d.fd, name, &got, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return pathErr("lstat", d.join(name), err)
	}
	if got.Uid == st.Uid && got.Gid == st.Gid {
		return nil
	}
	if err := unix.Fchownat(d.fd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return pathErr("lchown", d.join(name), err)
	}
	return nil
}

// copyEntry copies one non-directory entry (or, when st says so, a
// directory) from s/sname to d/dname. st may be nil: it is then read here,
// from the opened file for regular files (saving one lstat each).
func (c *copier) copyEntry(ctx context.Context, s, d dirRef, sname, dname string, st *unix.Stat_t, typ uint8, depth int) error {
	sfd := -1
	defer func() {
		if sfd >= 0 {
			unix.Close(sfd)
		}
	}()
	var stBuf unix.Stat_t
	if st == nil && typ == unix.DT_REG {
		fd, err := openFile(s.fd, sname)
		if err == nil {
			sfd = fd
			if err := unix.Fstat(sfd, &stBuf); err != nil {
				return fmt.Errorf("copy: %w", pathErr("fstat", s.join(sname), err))
			}
			st = &stBuf
		} else if !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENXIO) {
			// ELOOP/ENXIO: replaced by a symlink or socket meanwhile;
			// the lstat below sees what it is now.
			return fmt.Errorf("copy: %w", pathErr("open", s.join(sname), err))
		}
	}
	if st == nil {
		if err := unix.Fstatat(s.fd, sname, &stBuf, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("copy: %w", pathErr("lstat", s.join(sname), err))
		}
		st = &stBuf
	}
	format := st.Mode & unix.S_IFMT
	if format == unix.S_IFDIR {
		// Only a walk whose getdents gave DT_UNKNOWN gets here with a
		// directory; CopyFile refuses directories before.
		if s.fd == unix.AT_FDCWD || sname != dname {
			return fmt.Errorf("copy %s: is a directory", s.join(sname))
		}
		return c.copySubdir(ctx, s, d, sname, nil, depth)
	}
	if st.Nlink > 1 {
		first, claimed := c.sh.claimLink(inode{st.Dev, st.Ino}, d.join(dname))
		if !claimed {
			// Another name of this inode was copied, or is being copied
			// by another worker: wait for it, then link to it.
			<-first.done
			if first.err != nil {
				return fmt.Errorf("copy %s: its hardlink %s failed", s.join(sname), first.path)
			}
			err := linkTo(first.fd, d.fd, dname)
			c.sh.linked(first)
			if err != nil {
				return fmt.Errorf("copy %s: hardlink to %s: %w", s.join(sname), first.path, pathErr("link", d.join(dname), err))
			}
			c.stats.Hardlinks++
			return nil
		}
		err := c.copyEntryData(s, d, sname, dname, st, format, sfd)
		sfd = -1 // closed by copyEntryData
		if err == nil {
			// O_PATH|O_NOFOLLOW opens the entry itself, symlinks too.
			first.fd, err = unix.Openat(d.fd, dname, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				err = fmt.Errorf("copy: %w", pathErr("open", d.join(dname), err))
			}
			first.left = st.Nlink - 1
		}
		first.err = err
		close(first.done)
		return err
	}
	err := c.copyEntryData(s, d, sname, dname, st, format, sfd)
	sfd = -1
	return err
}

// linkTo makes dname in dirfd a new name of the file open (O_PATH) as fd.
// linkat with AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it the
// fd's /proc magic link is followed instead, which also links the entry
// itself (a symlink is not followed through it).
func linkTo(fd, dirfd int, dname string) error {
	err := unix.Linkat(fd, "", dirfd, dname, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
		if err2 := linkProc(fd, dirfd, dname); err2 == nil || !errors.Is(err2, unix.ENOENT) {
			err = err2 // else no /proc: report the first error
		}
	}
	return err
}

// linkProc is linkTo through /proc/self/fd, for callers without
// CAP_DAC_READ_SEARCH.
func linkProc(fd, dirfd int, dname string) error {
	return unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), dirfd, dname, unix.AT_SYMLINK_FOLLOW)
}

// copyEntryData makes the new entry d/dname as a copy of s/sname, closing
// sfd (the open source when >= 0).
func (c *copier) copyEntryData(s, d dirRef, sname, dname string, st *unix.Stat_t, format uint32, sfd int) error {
	defer func() {
		if sfd >= 0 {
			unix.Close(sfd)
		}
	}()
	switch format {
	case unix.S_IFREG:
		if sfd < 0 {
			fd, err := openFile(s.fd, sname)
			if err != nil {
				return fmt.Errorf("copy: %w", pathErr("open", s.join(sname), err))
			}
			sfd = fd
		}
		return c.copyRegular(sfd, s, d, sname, dname, st)
	case unix.S_IFLNK:
		return c.copySymlink(s, d, sname, dname, st)
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
		return c.copySpecial(s, d, sname, dname, st)
	}
	return fmt.Errorf("copy %s: unsupported file type %#o", s.join(sname), format)
}

func (c *copier) copyRegular(sfd int, s, d dirRef, sname, dname string, st *unix.Stat_t) error {
	dpath := func() string { return d.join(dname) }
	perm := st.Mode & 0o777
	dfd, err := unix.Openat(d.fd, dname, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
	if err != nil {
		return fmt.Errorf("copy: %w", pathErr("create", dpath(), err))
	}
	closed := false
	defer func() {
		if !closed {
			unix.Close(dfd)
		}
	}()
	c.stats.Files++
	// What the new file got (owner from euid, egid or a setgid or grpid
	// directory's group; mode from the umask or a default ACL) is read
	// back, so fchown and fchmod run only when they change something:
	// one fstat instead of two calls that usually do nothing.
	var got unix.Stat_t
	if err := unix.Fstat(dfd, &got); err != nil {
		return fmt.Errorf("copy: %w", pathErr("fstat", dpath(), err))
	}
	if err := c.copyData(sfd, dfd, st); err != nil {
		return fmt.Errorf("copy %s to %s: %w", s.join(sname), dpath(), err)
	}
	// Owner before mode, because chown clears setuid/setgid; xattrs after
	// chown, because chown drops security.capability.
	chowned := false
	if got.Uid != st.Uid || got.Gid != st.Gid {
		if err := unix.Fchown(dfd, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("copy: %w", pathErr("chown", dpath(), err))
		}
		chowned = true
	}
	aclChanged, err := c.copyXattrsFd(sfd, dfd, dpath(), d.inherits)
	if err != nil {
		return err
	}
	// An access ACL set or removed changes the mode bits; chown cleared
	// setuid/setgid.
	if got.Mode&07777 != st.Mode&07777 || aclChanged || (chowned && st.Mode&06000 != 0) {
		if err := unix.Fchmod(dfd, st.Mode&07777); err != nil {
			return fmt.Errorf("copy: %w", pathErr("chmod", dpath(), err))
		}
	}
	// Times last, on the fd (no path lookup): closing the file does not
	// change them.
	if err := c.setTimesFd(dfd, st); err != nil {
		return fmt.Errorf("copy %s: %w", s.join(sname), pathErr("futimens", dpath(), err))
	}
	closed = true
	if err := unix.Close(dfd); err != nil {
		return fmt.Errorf("copy: %w", pathErr("close", dpath(), err))
	}
	return nil
}

// setTimesFd sets atime and mtime (ns) of the open file fd: futimens,
// which is utimensat with a NULL path (x/sys passes "" instead, which
// older kernels refuse).
func (c *copier) setTimesFd(fd int, st *unix.Stat_t) error {
	c.ts[0], c.ts[1] = st.Atim, st.Mtim
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&c.ts[0])), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func (c *copier) copySymlink(s, d dirRef, sname, dname string, st *unix.Stat_t) error {
	var target string
	for {
		n, err := unix.Readlinkat(s.fd, sname, c.link)
		if err != nil {
			return fmt.Errorf("copy: %w", pathErr("readlink", s.join(sname), err))
		}
		if n < len(c.link) {
			target = string(c.link[:n])
			break
		}
		c.link = make([]byte, 2*len(c.link))
	}
	if err := unix.Symlinkat(target, d.fd, dname); err != nil {
		return fmt.Errorf("copy: %w", pathErr("symlink", d.join(dname), err))
	}
	c.stats.Symlinks++
	if err := chownNew(d, dname, st); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	if err := copyXattrsPath(s.at(sname), d.at(dname), s.join(sname), d.inherits); err != nil {
		return err
	}
	if err := c.setTimes(d.fd, dname, st); err != nil {
		return fmt.Errorf("copy %s: %w", s.join(sname), err)
	}
	return nil
}

func (c *copier) copySpecial(s, d dirRef, sname, dname string, st *unix.Stat_t) error {
	// mknod's mode is cut by the umask; the chmod below sets the real one.
	if err := unix.Mknodat(d.fd, dname, st.Mode&(unix.S_IFMT|0o777), int(st.Rdev)); err != nil {
		return fmt.Errorf("copy: %w", pathErr("mknod", d.join(dname), err))
	}
	c.stats.Specials++
	if err := unix.Fchownat(d.fd, dname, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("copy: %w", pathErr("lchown", d.join(dname), err))
	}
	if err := copyXattrsPath(s.at(sname), d.at(dname), s.join(sname), d.inherits); err != nil {
		return err
	}
	if err := unix.Fchmodat(d.fd, dname, st.Mode&07777, 0); err != nil {
		return fmt.Errorf("copy: %w", pathErr("chmod", d.join(dname), err))
	}
	if err := c.setTimes(d.fd, dname, st); err != nil {
		return fmt.Errorf("copy %s: %w", s.join(sname), err)
	}
	return nil
}

// setTimes sets atime and mtime (ns) of dirfd/name without following a
// symlink. The kernel sets ctime itself; it cannot be copied.
func (c *copier) setTimes(dirfd int, name string, st *unix.Stat_t) error {
	c.ts[0], c.ts[1] = st.Atim, st.Mtim
	if err := unix.UtimesNanoAt(dirfd, name, c.ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return pathErr("utimensat", name, err)
	}
	return nil
}

// aclAccess is the xattr holding a file's access ACL; setting or removing
// it changes the file's mode bits.
const aclAccess = "system.posix_acl_access"

// copyXattrsFd copies every extended attribute from sfd to dfd, reusing the
// copier's buffers. With inherited, dfd's xattrs that sfd lacks (inherited
// from a default ACL) are removed. It reports whether dfd's access ACL was
// set or removed, which changes its mode.
func (c *copier) copyXattrsFd(sfd, dfd int, dpath string, inherited bool) (aclChanged bool, err error) {
	n, err := listXattrsFd(sfd, &c.names)
	if err != nil {
		return false, fmt.Errorf("copy xattrs to %s: list source: %w", dpath, err)
	}
	src := c.names[:n]
	for list := src; len(list) > 0; {
		var name string
		name, list = nextName(list)
		if name == "" {
			continue
		}
		v, err := c.getXattrFd(sfd, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed since it was listed
		}
		if err != nil {
			return aclChanged, fmt.Errorf("copy xattr %s to %s: %w", name, dpath, err)
		}
		if err := unix.Fsetxattr(dfd, name, v, 0); err != nil {
			return aclChanged, fmt.Errorf("copy xattr %s to %s: %w", name, dpath, err)
		}
		aclChanged = aclChanged || name == aclAccess
	}
	if !inherited {
		return aclChanged, nil
	}
	n, err = listXattrsFd(dfd, &c.dnames)
	if err != nil {
		return aclChanged, fmt.Errorf("copy xattrs to %s: list: %w", dpath, err)
	}
	for list := c.dnames[:n]; len(list) > 0; {
		var name string
		name, list = nextName(list)
		if name == "" || hasName(src, name) {
			continue
		}
		if err := removeExtraXattr(unix.Fremovexattr(dfd, name), name); err != nil {
			return aclChanged, fmt.Errorf("drop inherited xattr %s of %s: %w", name, dpath, err)
		}
		aclChanged = aclChanged || name == aclAccess
	}
	return aclChanged, nil
}

// listXattrsFd lists fd's xattr names into *buf, growing it as needed, and
// returns the list's length; a filesystem without xattrs gives none.
func listXattrsFd(fd int, buf *[]byte) (int, error) {
	if *buf == nil {
		*buf = make([]byte, 1024)
	}
	for {
		n, err := unix.Flistxattr(fd, *buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err := unix.Flistxattr(fd, nil)
			if err != nil {
				return 0, err
			}
			*buf = make([]byte, sz+256)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return 0, nil
		}
		return n, err
	}
}

// nextName splits the first name off a NUL-separated xattr name list.
func nextName(list []byte) (string, []byte) {
	i := 0
	for i < len(list) && list[i] != 0 {
		i++
	}
	name := string(list[:i])
	if i < len(list) {
		i++
	}
	return name, list[i:]
}

// hasName reports whether the NUL-separated name list holds name.
func hasName(list []byte, name string) bool {
	for len(list) > 0 {
		var n string
		n, list = nextName(list)
		if n == name {
			return true
		}
	}
	return false
}

// removeExtraXattr filters the error of removing an inherited xattr: gone
// already is fine, and a security label other than security.capability
// that the LSM refuses to drop is the policy's business, not the copy's.
func removeExtraXattr(err error, name string) error {
	if err == nil || errors.Is(err, unix.ENODATA) {
		return nil
	}
	if strings.HasPrefix(name, "security.") && name != "security.capability" &&
		(errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EACCES)) {
		return nil
	}
	return err
}

// hasDefaultACL reports whether the directory fd has a default ACL, so
// that entries made in it inherit an ACL; when that cannot be told it
// answers true, the safe side.
func hasDefaultACL(fd int) bool {
	_, err := unix.Fgetxattr(fd, "system.posix_acl_default", nil)
	return !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.EOPNOTSUPP)
}

func (c *copier) getXattrFd(fd int, name string) ([]byte, error) {
	for {
		n, err := unix.Fgetxattr(fd, name, c.value)
		if errors.Is(err, unix.ERANGE) {
			sz, err := unix.Fgetxattr(fd, name, nil)
			if err != nil {
				return nil, err
			}
			c.value = make([]byte, sz+256)
			continue
		}
		if err != nil {
			return nil, err
		}
		return c.value[:n], nil
	}
}

// copyXattrsPath copies the xattrs of entries that cannot be opened for
// f*xattr calls (symlinks, device nodes, fifos, sockets), by path without
// following symlinks; src and dst are dirRef.at paths and srcName names
// the source in errors. With inherited, dst's xattrs that src lacks are
// removed.
func copyXattrsPath(src, dst, srcName string, inherited bool) error {
	all, err := xattr.All(src)
	if err != nil {
		return fmt.Errorf("copy xattrs of %s: %w", srcName, err)
	}
	for name, v := range all {
		if err := xattr.Set(dst, name, v); err != nil {
			return fmt.Errorf("copy xattrs of %s: %w", srcName, err)
		}
	}
	if !inherited {
		return nil
	}
	names, err := xattr.List(dst)
	if err != nil {
		return fmt.Errorf("copy xattrs of %s: list copy: %w", srcName, err)
	}
	for _, name := range names {
		if _, ok := all[name]; ok {
			continue
		}
		if err := removeExtraXattr(unix.Lremovexattr(dst, name), name); err != nil {
			return fmt.Errorf("copy xattrs of %s: drop inherited xattr %s: %w", srcName, name, err)
		}
	}
	return nil
}

// readDir returns the entries of the open directory fd except . and ..,
// with their d_type (DT_UNKNOWN on filesystems that do not fill it in).
func (c *copier) readDir(fd int) ([]dent, error) {
	if c.dents == nil {
		c.dents = make([]byte, 32<<10)
	}
	var ents []dent
	for {
		n, err := unix.Getdents(fd, c.dents)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return ents, nil
		}
		buf := c.dents[:n]
		// struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name.
		for off := 0; off+19 <= len(buf); {
			reclen := int(buf[off+16]) | int(buf[off+17])<<8
			if reclen == 0 || off+reclen > len(buf) {
				return nil, fmt.Errorf("malformed directory entry")
			}
			rec := buf[off : off+reclen]
			off += reclen
			ino := uint64(rec[0]) | uint64(rec[1])<<8 | uint64(rec[2])<<16 | uint64(rec[3])<<24 |
				uint64(rec[4])<<32 | uint64(rec[5])<<40 | uint64(rec[6])<<48 | uint64(rec[7])<<56
			if ino == 0 {
				continue
			}
			name := rec[19:]
			for i, b := range name {
				if b == 0 {
					name = name[:i]
					break
				}
			}
			if len(name) == 0 || (name[0] == '.' && (len(name) == 1 || (len(name) == 2 && name[1] == '.'))) {
				continue
			}
			ents = append(ents, dent{name: string(name), typ: rec[18]})
		}
	}
}

// openDir opens a directory for reading entries and *at calls, with
// O_NOATIME (see openNoAtime) so that copying a layer leaves it as it was.
func openDir(dirfd int, name string) (int, error) {
	return openNoAtime(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
}

// openFile opens a regular file for reading without following symlinks and
// without blocking (a fifo swapped in must not hang the copy).
func openFile(dirfd int, name string) (int, error) {
	return openNoAtime(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK)
}

// openNoAtime opens name with flags plus O_NOATIME, which keeps reads from
// touching the source's atime; it needs ownership or CAP_FOWNER, so it is
// dropped when refused.
func openNoAtime(dirfd int, name string, flags int) (int, error) {
	flags |= unix.O_NOATIME
	for {
		fd, err := unix.Openat(dirfd, name, flags, 0)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EPERM) && flags&unix.O_NOATIME != 0:
			flags &^= unix.O_NOATIME
			continue
		}
		return fd, err
	}
}
