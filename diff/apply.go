package diff

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/xattr"
)

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// Whiteouts is how deletions are stored; nil means DeleteWhiteouts.
	Whiteouts WhiteoutFormat
	// RejectDevices makes character and block device entries an error
	// (0/0 whiteout devices of the overlay format are not entries).
	RejectDevices bool
	// Warn receives notes about entries that were changed on the way in,
	// such as overlay xattrs dropped; nil discards them.
	Warn func(msg string)
	// Lowers are the layers below this one, top-most first, for the
	// overlay format only (an error with the delete format, whose root is
	// a copy of the parent already). With them Apply follows DESIGN.md's
	// "one tree per image" rules across layers while writing only into
	// root (this layer's own dir):
	//   - a parent path resolves in the merged view of root and the lowers
	//     (whiteouts and opaque dirs honoured, root's own entries first),
	//     through symlinks of any layer, inside the image;
	//   - a parent directory the tar does not list but the lowers have is
	//     made in root with the attributes of the top-most lower that has
	//     it (owner, mode, xattrs, times); one nobody has is made 0755
	//     as without lowers; an entry under a lower non-directory is an
	//     error;
	//   - a hardlink to a lower file copies the file up into root, at its
	//     path, and links to the copy (as overlayfs' copy-up does, the copy
	//     is not linked to other names the file had in the lower layer);
	//   - a whiteout or opaque marker whose directory the merged view
	//     lacks is dropped (it hides nothing), one whose directory only a
	//     lower has gets that directory made as above;
	//   - when the tar does not list the root and root was empty, root
	//     takes the top-most lower's root attributes at the end.
	// Lower lookups happen only for entries whose parent directory is not
	// in root already; entries are applied in tar order, so an entry that
	// waits for a lower (see Lower.Ready) holds back the entries after it,
	// not those before. Without Lowers, root is taken as the whole image.
	Lowers []Lower

	// noOpenat2 makes Apply resolve paths with its userspace walk, as on
	// kernels without openat2, so that tests cover both paths.
	noOpenat2 bool
	// noWriters makes Apply write every file itself, as on one CPU, so
	// that tests cover both paths.
	noWriters bool
}

// ApplyResult describes an applied layer.
type ApplyResult struct {
	// DiffID is the sha256 digest of the whole uncompressed stream.
	DiffID digest.Digest
	// Compression is what the input stream was compressed with.
	Compression Compression
	// TarSize is the length of the uncompressed stream in bytes.
	TarSize int64
	// Size is the number of bytes of regular file content written.
	Size int64
}

// Apply reads a layer tar (uncompressed, gzip or zstd: detected) from r and
// applies it to the tree at root.
//
// root is trusted (symlinks in it are followed); nothing in the tar is. No
// entry creates, modifies or follows anything outside root: every entry's
// parent directory is resolved inside root with symlinks read as if root
// were "/" (openat2 RESOLVE_IN_ROOT, or an equivalent userspace walk where
// the kernel lacks it), and the last component is created with *at calls
// that never follow it. Whiteouts are stored as opts.Whiteouts says, with
// the rules of DESIGN.md's "one tree per image".
//
// Bounds: a GNU sparse entry may declare at most 256 GiB (its holes are
// expanded as zeros to read); everything else is bounded by the stream
// itself, and ctx bounds the time.
//
// On error the root is left half-applied: the caller discards the layer.
// Errors say what failed and why (`entry "../x": path climbs above the
// layer root`), one line, but not the operation: the caller knows which
// layer it was applying and names it once ("apply layer ID: ...").
func Apply(ctx context.Context, root string, r io.Reader, opts ApplyOptions) (ApplyResult, error) {
	var res ApplyResult
	wf := opts.Whiteouts
	if wf == nil {
		wf = deleteFormat{}
	}
	rootfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, fmt.Errorf("open root %s: %w", root, err)
	}
	defer unix.Close(rootfd)
	lowers, err := openLowers(opts, wf)
	if err != nil {
		return res, err
	}
	defer closeLowers(lowers)

	a := &applier{
		lowers:     lowers,
		ctx:        ctx,
		opts:       opts,
		wf:         wf,
		rootHandle: dirHandle{fd: rootfd},
		cache:      make(map[string]*dirHandle),
		touched:    make(map[string]struct{}),
		whited:     make(map[string]struct{}),
		dirTimes:   make(map[string][2]unix.Timespec),
		created:    make(map[string]struct{}),
		umask:      processUmask(),
		euid:       os.Geteuid(),
	}
	defer a.closeAll()
	a.rootReal, _ = os.Readlink("/proc/self/fd/" + strconv.Itoa(rootfd))
	if empty, err := dirEmpty(rootfd); err != nil {
		return res, fmt.Errorf("read root %s: %w", root, err)
	} else if empty {
		a.created[""] = struct{}{}
	}
	rootEmpty := len(a.created) > 0
	if !opts.noWriters {
		a.startWriters(writerCount())
		defer a.stopWriters() // runs before closeAll: writers use the cached fds
	}
	a.openat2 = !opts.noOpenat2 && haveOpenat2(rootfd)

	dr, comp, err := DecompressStream(r)
	if err != nil {
		return res, err
	}
	defer dr.Close()
	res.Compression = comp

	rd := startReader(ctx, dr)
	stopped := false
	defer func() {
		if !stopped {
			rd.stop()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if err := a.writerErr(); err != nil {
			return res, err
		}
		a.closeStale()
		m, ok := rd.next()
		if !ok {
			// The reader only stops without a message when ctx is done.
			if err := ctx.Err(); err != nil {
				return res, err
			}
			return res, errors.New("tar reader stopped")
		}
		if m.err != nil {
			if m.dataErr {
				return res, fmt.Errorf("entry %q: %w", m.hdr.Name, dataError(m.err))
			}
			return res, m.err
		}
		if m.end {
			break
		}
		body := newBodyReader(rd, m)
		if err := a.entry(m.hdr, body); err != nil {
			return res, fmt.Errorf("entry %q: %w", m.hdr.Name, err)
		}
		if err := body.finish(); err != nil {
			return res, fmt.Errorf("entry %q: %w", m.hdr.Name, dataError(err))
		}
	}
	// The reader has sent its last message; wait for it to close the
	// channel so that its hash is final.
	rd.stop()
	stopped = true
	if err := a.barrier(); err != nil {
		return res, err
	}
	a.closeStale()
	if a.lowers != nil && !a.rootListed && rootEmpty {
		if err := a.rootFromLower(); err != nil {
			return res, err
		}
	}
	if err := a.setDirTimes(); err != nil {
		return res, err
	}
	hc := rd.hc
	res.DiffID = digest.NewDigestFromBytes(digest.SHA256, hc.h.Sum(nil))
	res.TarSize = hc.n
	res.Size = a.size
	return res, nil
}

// applier holds the state of one Apply.
type applier struct {
	ctx  context.Context
	opts ApplyOptions
	wf   WhiteoutFormat

	rootHandle dirHandle
	rootReal   string // the root's path as /proc/self/fd shows it
	openat2    bool   // resolve with openat2, else walkInRoot

	cache map[string]*dirHandle // lexical parent path -> handle
	stale []int                 // fds of forgotten handles, closed between entries

	// touched holds the canonical paths this layer wrote and their
	// ancestors: whiteouts and opaque markers never remove them.
	touched map[string]struct{}
	// whited holds the paths where the overlay format placed a whiteout
	// device; a directory this layer creates there must hide the lower one.
	whited map[string]struct{}
	// dirTimes are set at the end, after every child is in place.
	dirTimes map[string][2]unix.Timespec

	// created holds the canonical paths of the directories this Apply
	// made: nothing of a lower layer can be in them, which is what lets
	// new files there go to the writers.
	created map[string]struct{}
	writers *writers // nil: every file is written by the applier
	queued  int      // files given to writers since they were last drained

	// lowers are the layers below (ApplyOptions.Lowers), nil without.
	lowers []*lowerLayer
	// lowerPaths holds the canonical paths (and their ancestors) where
	// merged lookups used a lower layer's entry (see lowerChanged).
	lowerPaths map[string]struct{}
	// copiedUp holds the paths of lower files this layer copied up as
	// hardlink targets: lower content an opaque marker must remove.
	copiedUp   map[string]struct{}
	rootListed bool // the tar listed the root directory

	umask  uint32
	euid   int // owner of the files this process creates
	size   int64
	warnMu sync.Mutex // writers warn too
}

// forgetNewOwners drops what the cached directories taught about the group
// of new files: a directory's owner or setgid bit has just changed. The
// writers are idle (the caller is at a barrier).
func (a *applier) forgetNewOwners() {
	a.rootHandle.newGid.Store(0)
	a.rootHandle.acl.Store(0)
	for _, h := range a.cache {
		h.newGid.Store(0)
		h.acl.Store(0)
	}
}

// defaultACL reports whether directory ph has a default ACL. New entries
// there inherit it: their modes do not follow the umask, and they carry
// ACL xattrs of their own. Learned once per directory.
func (a *applier) defaultACL(ph *dirHandle) bool {
	switch ph.acl.Load() {
	case aclNone:
		return false
	case aclDefault:
		return true
	}
	_, err := unix.Getxattr("/proc/self/fd/"+strconv.Itoa(ph.fd), "system.posix_acl_default", nil)
	has := err == nil
	if has {
		ph.acl.Store(aclDefault)
	} else {
		ph.acl.Store(aclNone)
	}
	return has
}

// tailReader counts what the tar reader consumed and keeps its last block,
// to tell a real end-of-archive marker from a cut-off stream.
type tailReader struct {
	r    io.Reader
	n    int64
	tail [512]byte
}

func (t *tailReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n >= len(t.tail) {
		copy(t.tail[:], p[n-len(t.tail):n])
	} else if n > 0 {
		copy(t.tail[:], t.tail[n:])
		copy(t.tail[len(t.tail)-n:], p[:n])
	}
	t.n += int64(n)
	return n, err
}

func (t *tailReader) tailZero() bool { return t.n >= 512 && isZeroBlock(t.tail[:]) }

type hashCounter struct {
	h hash.Hash
	n int64
}

func (c *hashCounter) Write(p []byte) (int, error) {
	c.h.Write(p)
	c.n += int64(len(p))
	return len(p), nil
}

// haveOpenat2 reports whether the kernel (and any seccomp filter) allows
// openat2.
func haveOpenat2(rootfd int) bool {
	fd, err := unix.Openat2(rootfd, ".", &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM)
	}
	unix.Close(fd)
	return true
}

// processUmask returns the process's umask, read afresh for every Apply
// since an embedding program may change it. Reading it with umask(2) would
// change it for a moment for the whole process; /proc/self/status shows it
// without side effects.
func processUmask() uint32 {
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return uint32(m)
				}
			}
		}
	}
	return 0o777 // unknown: always chmod
}

func (a *applier) warn(format string, args ...any) {
	a.warnMu.Lock()
	defer a.warnMu.Unlock()
	if a.opts.Warn != nil {
		a.opts.Warn(fmt.Sprintf(format, args...))
	}
}

// dataError words an error met while reading an entry's data.
func dataError(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("truncated data: %w", io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("read data: %w", err)
}

var errEscapes = errors.New("path climbs above the layer root")

// cleanEntryPath turns a tar name into a clean path relative to the root,
// "" for the root itself. Leading slashes are dropped (tar paths are
// relative to the root, wherever they start); a path that lexically climbs
// above the root is an error rather than silently clamped, because no
// honest tool writes one.
func cleanEntryPath(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", errors.New("path contains a NUL byte")
	}
	n := strings.TrimLeft(name, "/")
	if n == "" {
		return "", nil
	}
	c := path.Clean(n)
	if c == "." {
		return "", nil
	}
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", errEscapes
	}
	return c, nil
}

// inAUFSMeta reports whether a parent path lies in an AUFS-internal
// directory (.wh..wh.plnk and the like), whose content is not layer data.
func inAUFSMeta(parent string) bool {
	return strings.HasPrefix(parent, WhiteoutMetaPrefix) || strings.Contains(parent, "/"+WhiteoutMetaPrefix)
}

type xattrKV struct {
	name  string
	value []byte
}

const paxXattrPrefix = "SCHILY.xattr."

// entryXattrs returns the xattrs an entry carries, minus the overlay ones:
// those steer the kernel (redirects, opaque, metacopy) and only the overlay
// whiteout format may write them.
func (a *applier) entryXattrs(hdr *tar.Header) []xattrKV {
	var xs []xattrKV
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattrPrefix)
		if !ok {
			continue
		}
		if xattr.IsOverlayInternal(name) {
			a.warn("entry %q: dropped overlay xattr %s", hdr.Name, name)
			continue
		}
		xs = append(xs, xattrKV{name, []byte(v)})
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i].name < xs[j].name })
	return xs
}

// entry applies one tar entry.
func (a *applier) entry(hdr *tar.Header, tr io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil // archive-wide PAX defaults: nothing to create
	}
	rel, err := cleanEntryPath(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "" {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("names the layer root but is not a directory")
		}
		return a.rootDir(hdr)
	}
	parent, name := splitRel(rel)
	if inAUFSMeta(parent) {
		return nil
	}
	if strings.HasPrefix(parent, WhiteoutPrefix) || strings.Contains(parent, "/"+WhiteoutPrefix) {
		// Appliers read such a name as a whiteout: a layer holding it as a
		// directory could never be exported again.
		for _, c := range strings.Split(parent, "/") {
			if strings.HasPrefix(c, WhiteoutPrefix) {
				return fmt.Errorf("%q is a whiteout name and cannot be a directory", c)
			}
		}
	}
	if strings.HasPrefix(name, WhiteoutPrefix) {
		return a.whiteoutEntry(parent, name)
	}
	if err := a.wf.checkEntry(hdr); err != nil {
		return err
	}
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > 0xfffffffe || hdr.Gid > 0xfffffffe {
		return fmt.Errorf("invalid owner %d:%d", hdr.Uid, hdr.Gid)
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeCont, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo:
	case tar.TypeChar, tar.TypeBlock:
		if a.opts.RejectDevices {
			return errors.New("device nodes are not allowed here")
		}
	default:
		return fmt.Errorf("unsupported entry type %q", hdr.Typeflag)
	}

	ph, err := a.lookupDir(parent, true)
	if err != nil {
		return fmt.Errorf("parent directory: %w", err)
	}
	canon := ph.child(name)
	if a.lowerPaths != nil {
		a.lowerChanged(canon)
	}
	if a.canDispatch(ph, canon) {
		// A new path in a directory this Apply made: nothing there to
		// replace or to race with.
		if br, ok := tr.(*bodyReader); ok && hdr.Typeflag == tar.TypeReg && !br.more {
			a.dispatch(hdr, br.cur, ph, name)
			br.cur = nil
			a.size += hdr.Size
			a.markTouched(canon)
			return nil
		}
		if hdr.Typeflag != tar.TypeDir && hdr.Typeflag != tar.TypeSymlink && hdr.Typeflag != tar.TypeReg {
			a.waitWriters() // hardlinks may name a file still being written
		}
	} else {
		a.waitWriters()
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		err = a.dir(hdr, ph, name, canon)
	case tar.TypeLink:
		err = a.hardlink(hdr, ph, name)
	case tar.TypeSymlink:
		err = a.symlink(hdr, ph, name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		err = a.special(hdr, ph, name)
	default:
		err = a.regular(hdr, tr, ph, name)
	}
	if err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeDir {
		// A later-listed non-directory replaced whatever was there; a
		// directory time recorded for that path no longer applies.
		delete(a.dirTimes, canon)
		delete(a.whited, canon)
	}
	a.markTouched(canon)
	return nil
}

// markTouched records canon and its ancestors as written by this layer.
func (a *applier) markTouched(canon string) {
	for p := canon; p != ""; p, _ = splitRel(p) {
		if _, ok := a.touched[p]; ok {
			return // its ancestors are in already
		}
		a.touched[p] = struct{}{}
	}
}

func isMissing(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP)
}

// whiteoutEntry handles ".wh.NAME" and ".wh..wh..opq" in directory parent.
// A whiteout affects lower layers only: what this layer wrote stays,
// whichever order the entries come in.
func (a *applier) whiteoutEntry(parent, name string) error {
	a.waitWriters()
	if name == WhiteoutOpaqueDir {
		return a.opaqueEntry(parent)
	}
	if strings.HasPrefix(name, WhiteoutMetaPrefix) {
		return nil // AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs), not a deletion
	}
	target := name[len(WhiteoutPrefix):]
	if target == "" || target == "." || target == ".." {
		return fmt.Errorf("whiteout %q names no entry of its directory", name)
	}
	create := a.wf.createsParents()
	ph, err := a.lookupDirMode(parent, a.markerLookMode(create))
	if err != nil {
		if (!create || a.lowers != nil) && isMissing(err) {
			return nil // nothing below a missing directory to delete
		}
		return fmt.Errorf("whiteout parent directory: %w", err)
	}
	canon := ph.child(target)
	if a.lowerPaths != nil {
		a.lowerChanged(canon)
	}
	if _, mine := a.touched[canon]; !mine {
		return a.wf.whiteout(a, ph, target, canon)
	}
	// This layer wrote the path: the whiteout only removes the lower
	// layers' content, which for a directory is everything below it that
	// this layer did not write.
	var st unix.Stat_t
	if err := unix.Fstatat(ph.fd, target, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil
	}
	fd, err := unix.Openat(ph.fd, target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("whiteout: open %q: %w", target, err)
	}
	defer unix.Close(fd)
	return a.wf.opaque(a, fd, canon)
}

// opaqueEntry handles ".wh..wh..opq" in directory dir.
func (a *applier) opaqueEntry(dir string) error {
	create := a.wf.createsParents()
	dh, err := a.lookupDirMode(dir, a.markerLookMode(create))
	if err != nil {
		if (!create || a.lowers != nil) && isMissing(err) {
			return nil // a missing directory hides nothing
		}
		return fmt.Errorf("opaque directory: %w", err)
	}
	if a.lowerPaths != nil {
		a.lowerChanged(dh.canon)
	}
	fd, err := unix.Openat(dh.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opaque directory: %w", err)
	}
	defer unix.Close(fd)
	if err := a.wf.opaque(a, fd, dh.canon); err != nil {
		return err
	}
	if create {
		a.markTouched(dh.canon) // the marker makes the directory this layer's
	}
	return nil
}

// markerLookMode is how a whiteout or opaque marker finds its directory:
// with lowers, one that no layer has hides nothing and is not made.
func (a *applier) markerLookMode(create bool) lookMode {
	switch {
	case !create:
		return lookTop
	case a.lowers != nil:
		return lookLower
	}
	return lookCreate
}

// removeExisting removes whatever is at name in ph (a whole tree for a
// directory) to make room for a new entry.
func (a *applier) removeExisting(ph *dirHandle, name string) error {
	a.waitWriters()
	if err := a.removeAt(ph, name); err != nil {
		return fmt.Errorf("replace existing entry: %w", err)
	}
	return nil
}

// removeAt removes name in ph, a whole tree for a directory, never
// following a symlink; nothing there is no error. Removing a directory or
// symlink forgets the cached directories, which may have been reached
// through it.
func (a *applier) removeAt(ph *dirHandle, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(ph.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	if err := removeAllAt(ph.fd, name); err != nil {
		return err
	}
	if isDirOrLink(st.Mode) {
		a.invalidate()
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		// Times recorded for the directory and below must not be set on
		// whatever takes its place (through a symlink, on a lower tree),
		// and what takes its place was not made by this Apply.
		canon := ph.child(name)
		deleteSubtree(a.dirTimes, canon)
		deleteSubtree(a.created, canon)
	}
	return nil
}

// deleteSubtree deletes the keys of m that are canon or lie below it.
func deleteSubtree[V any](m map[string]V, canon string) {
	for k := range m {
		if k == canon || strings.HasPrefix(k, canon+"/") {
			delete(m, k)
		}
	}
}

// replaceAt runs mk, and when the name is taken, removes what is there and
// runs mk once more: an entry replaces what a lower layer (or an earlier
// entry) had at its path.
func (a *applier) replaceAt(ph *dirHandle, name string, mk func() error) error {
	err := mk()
	if !errors.Is(err, unix.EEXIST) {
		return err
	}
	if err := a.removeExisting(ph, name); err != nil {
		return err
	}
	return mk()
}

func entryPerm(hdr *tar.Header) uint32 { return uint32(hdr.Mode) & 0o7777 }

// needChmod reports whether a node created with mode perm&0777 under the
// umask lacks bits of perm, so that an explicit chmod is needed.
func (a *applier) needChmod(perm uint32) bool {
	return perm&0o7000 != 0 || perm&a.umask != 0
}

func entryTimes(hdr *tar.Header) [2]unix.Timespec {
	at := hdr.AccessTime
	if at.IsZero() {
		at = hdr.ModTime
	}
	// Unix() floors and Nanosecond() is never negative, so times before
	// 1970 come out right too.
	return [2]unix.Timespec{
		{Sec: at.Unix(), Nsec: int64(at.Nanosecond())},
		{Sec: hdr.ModTime.Unix(), Nsec: int64(hdr.ModTime.Nanosecond())},
	}
}

// futimens sets the times of an open file (utimensat with a NULL path).
func futimens(fd int, ts *[2]unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func (a *applier) regular(hdr *tar.Header, tr io.Reader, ph *dirHandle, name string) error {
	perm := entryPerm(hdr)
	var fd int
	err := a.replaceAt(ph, name, func() error {
		var err error
		fd, err = unix.Openat(ph.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm&0o777)
		return err
	})
	if err != nil {
		return fmt.Errorf("create file: %w", err)
	}
	if err := a.fileBody(hdr, tr, fd, perm, ph); err != nil {
		unix.Close(fd)
		return err
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close file: %w", err)
	}
	a.size += hdr.Size
	return nil
}

func (a *applier) fileBody(hdr *tar.Header, tr io.Reader, fd int, perm uint32, ph *dirHandle) error {
	if err := a.writeData(fd, tr, hdr.Size); err != nil {
		return err
	}
	// chown before chmod and xattrs: chown clears setuid/setgid and
	// security.capability. Most image files belong to root, as the new file
	// already does: skipping that chown saves a syscall per file, which
	// is what keeps Apply level with GNU tar on small files.
	newGid := ph.newGid.Load()
	if newGid == 0 {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("stat: %w", err)
		}
		newGid = int64(st.Gid) + 1
		ph.newGid.Store(newGid)
	}
	if hdr.Uid != a.euid || int64(hdr.Gid)+1 != newGid {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	acl := a.defaultACL(ph)
	if acl {
		// The file inherited an ACL the image did not ask for.
		if err := a.removeUnlisted(hdr, fd, a.entryXattrs(hdr)); err != nil {
			return err
		}
	}
	if acl || a.needChmod(perm) {
		if err := unix.Fchmod(fd, perm); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := a.setXattrs(hdr, fd, "", false, true); err != nil {
		return err
	}
	ts := entryTimes(hdr)
	if err := futimens(fd, &ts); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

var applyBufPool = sync.Pool{New: func() any {
	b := make([]byte, 1<<20)
	return &b
}}

const holeBlock = 4096

var applyZeroBlock [holeBlock]byte

func isZeroBlock(b []byte) bool { return string(b) == string(applyZeroBlock[:len(b)]) }

// writeData copies size bytes from r into the new file fd. All-zero 4 KiB
// blocks are skipped rather than written and the file is extended with
// ftruncate at the end, so runs of zeros (sparse files in the tar, or just
// zeros) become holes.
func (a *applier) writeData(fd int, r io.Reader, size int64) error {
	if size <= 0 {
		return nil
	}
	var off, end int64
	if br, ok := r.(*bodyReader); ok {
		// Write the reader goroutine's chunks as they are: no copy.
		for off < size {
			c, err := br.chunk()
			if err != nil {
				return dataError(err)
			}
			if int64(len(c)) > size-off {
				return errors.New("internal error: more data than the header declares")
			}
			e, err := writeSkippingZeros(fd, c, off)
			if err != nil {
				return err
			}
			if e > 0 {
				end = e
			}
			off += int64(len(c))
		}
	} else {
		bp := applyBufPool.Get().(*[]byte)
		defer applyBufPool.Put(bp)
		buf := *bp
		for off < size {
			n := min(int64(len(buf)), size-off)
			m, err := io.ReadFull(r, buf[:n])
			if err != nil {
				return dataError(err)
			}
			e, err := writeSkippingZeros(fd, buf[:m], off)
			if err != nil {
				return err
			}
			if e > 0 {
				end = e
			}
			off += int64(m)
			if off < size {
				if err := a.ctx.Err(); err != nil {
					return err
				}
			}
		}
	}
	if end < size {
		if err := unix.Ftruncate(fd, size); err != nil {
			return fmt.Errorf("extend file: %w", err)
		}
	}
	return nil
}

// writeSkippingZeros writes b at file offset off (a multiple of 4 KiB),
// leaving out all-zero 4 KiB blocks. It returns the end offset of the last
// byte written, 0 if none.
func writeSkippingZeros(fd int, b []byte, off int64) (int64, error) {
	var end int64
	for i := 0; i < len(b); {
		for i < len(b) && isZeroBlock(b[i:min(i+holeBlock, len(b))]) {
			i = min(i+holeBlock, len(b))
		}
		if i >= len(b) {
			break
		}
		j := i
		for j < len(b) && !isZeroBlock(b[j:min(j+holeBlock, len(b))]) {
			j = min(j+holeBlock, len(b))
		}
		if err := pwriteAll(fd, b[i:j], off+int64(i)); err != nil {
			return 0, fmt.Errorf("write data: %w", err)
		}
		end = off + int64(j)
		i = j
	}
	return end, nil
}

func pwriteAll(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(fd, b, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		b = b[n:]
		off += int64(n)
	}
	return nil
}

// dir creates or updates a directory. A directory listed again (in this
// layer or over a lower one) keeps its children and takes the new
// attributes; anything else at the path is replaced.
func (a *applier) dir(hdr *tar.Header, ph *dirHandle, name, canon string) error {
	relisted := false
	err := unix.Mkdirat(ph.fd, name, 0o700)
	if errors.Is(err, unix.EEXIST) {
		var st unix.Stat_t
		if err = unix.Fstatat(ph.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				relisted = true
			} else if err = a.removeExisting(ph, name); err == nil {
				err = unix.Mkdirat(ph.fd, name, 0o700)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	if relisted {
		a.waitWriters() // its new attributes change what files there get
	} else {
		a.created[canon] = struct{}{}
	}
	fd, err := unix.Openat(ph.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory: %w", err)
	}
	defer unix.Close(fd)
	if err := a.dirAttrs(hdr, fd, relisted || a.defaultACL(ph)); err != nil {
		return err
	}
	if _, ok := a.whited[canon]; ok && !relisted {
		// This layer deleted the lower entry and made a new directory
		// there: in a format that keeps lower layers apart the new one
		// must hide the lower one's content.
		delete(a.whited, canon)
		if err := a.wf.opaque(a, fd, canon); err != nil {
			return err
		}
	}
	a.dirTimes[canon] = entryTimes(hdr)
	return nil
}

func (a *applier) rootDir(hdr *tar.Header) error {
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > 0xfffffffe || hdr.Gid > 0xfffffffe {
		return fmt.Errorf("invalid owner %d:%d", hdr.Uid, hdr.Gid)
	}
	a.waitWriters()
	a.rootListed = true
	if err := a.dirAttrs(hdr, a.rootHandle.fd, true); err != nil {
		return err
	}
	a.dirTimes[""] = entryTimes(hdr)
	return nil
}

func (a *applier) dirAttrs(hdr *tar.Header, fd int, relisted bool) error {
	if relisted {
		a.forgetNewOwners()
	}
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	// Always chmod a directory: it may have inherited setgid from its
	// parent, and mkdir's mode went through the umask.
	if err := unix.Fchmod(fd, entryPerm(hdr)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return a.setXattrs(hdr, fd, "", relisted, true)
}

func (a *applier) symlink(hdr *tar.Header, ph *dirHandle, name string) error {
	// The target is stored as it is: it is only ever followed inside the
	// root, by this function's lookups or by a container's.
	err := a.replaceAt(ph, name, func() error { return unix.Symlinkat(hdr.Linkname, ph.fd, name) })
	if err != nil {
		return fmt.Errorf("create symlink: %w", err)
	}
	return a.nodeAttrs(hdr, ph, name, false)
}

func (a *applier) special(hdr *tar.Header, ph *dirHandle, name string) error {
	perm := entryPerm(hdr)
	mode := perm & 0o777
	var dev uint64
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode |= unix.S_IFCHR
		dev = unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	case tar.TypeBlock:
		mode |= unix.S_IFBLK
		dev = unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	default:
		mode |= unix.S_IFIFO
	}
	if hdr.Devmajor < 0 || hdr.Devminor < 0 || hdr.Devmajor > 0xffffffff || hdr.Devminor > 0xffffffff {
		return fmt.Errorf("invalid device number %d:%d", hdr.Devmajor, hdr.Devminor)
	}
	err := a.replaceAt(ph, name, func() error { return unix.Mknodat(ph.fd, name, mode, int(dev)) })
	if err != nil {
		return fmt.Errorf("create node: %w", err)
	}
	return a.nodeAttrs(hdr, ph, name, a.needChmod(perm) || a.defaultACL(ph))
}

// nodeAttrs sets owner, mode, xattrs and times of a symlink or special file
// by name in ph, never following it. Such nodes are not opened: opening a
// device or fifo has side effects.
func (a *applier) nodeAttrs(hdr *tar.Header, ph *dirHandle, name string, chmod bool) error {
	if err := unix.Fchownat(ph.fd, name, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if chmod {
		// The node was made by mknodat a moment ago in a directory only
		// this apply writes to: it is not a symlink, so following is moot.
		if err := unix.Fchmodat(ph.fd, name, entryPerm(hdr), 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if len(hdr.PAXRecords) > 0 {
		p := "/proc/self/fd/" + strconv.Itoa(ph.fd) + "/" + name
		if err := a.setXattrs(hdr, -1, p, false, false); err != nil {
			return err
		}
	}
	ts := entryTimes(hdr)
	if err := unix.UtimesNanoAt(ph.fd, name, ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// setXattrs writes the entry's xattrs on fd, or, when fd < 0, on the node
// at lpath without following it. With relisted, xattrs the node has and
// the entry does not list are removed (but never overlay ones: only the
// whiteout format writes those). fileOrDir tells whether the node is a
// regular file or directory, the only kinds the kernel allows user.* on.
func (a *applier) setXattrs(hdr *tar.Header, fd int, lpath string, relisted, fileOrDir bool) error {
	xs := a.entryXattrs(hdr)
	if relisted && fd >= 0 {
		if err := a.removeUnlisted(hdr, fd, xs); err != nil {
			return err
		}
	}
	for _, x := range xs {
		var err error
		if fd >= 0 {
			err = unix.Fsetxattr(fd, x.name, x.value, 0)
		} else {
			err = unix.Lsetxattr(lpath, x.name, x.value, 0)
		}
		switch {
		case err == nil:
		case errors.Is(err, unix.ENOTSUP):
			a.warn("entry %q: xattr %s not stored: the filesystem does not support it", hdr.Name, x.name)
		case errors.Is(err, unix.EPERM) && !fileOrDir && strings.HasPrefix(x.name, "user."):
			a.warn("entry %q: xattr %s not stored: user xattrs exist only on files and directories", hdr.Name, x.name)
		default:
			return fmt.Errorf("set xattr %s: %w", x.name, err)
		}
	}
	return nil
}

func (a *applier) removeUnlisted(hdr *tar.Header, fd int, keep []xattrKV) error {
	buf := make([]byte, 1024)
	var n int
	for {
		var err error
		n, err = unix.Flistxattr(fd, buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err2 := unix.Flistxattr(fd, nil)
			if err2 != nil {
				return fmt.Errorf("list xattrs: %w", err2)
			}
			buf = make([]byte, sz+256)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("list xattrs: %w", err)
		}
		break
	}
next:
	for _, nm := range strings.Split(string(buf[:n]), "\x00") {
		// Overlay attributes belong to the whiteout format, and the
		// SELinux label to the host (Export never writes it).
		if nm == "" || xattr.IsOverlayInternal(nm) || nm == "security.selinux" {
			continue
		}
		for _, k := range keep {
			if k.name == nm {
				continue next
			}
		}
		if err := unix.Fremovexattr(fd, nm); err != nil && !errors.Is(err, unix.ENODATA) {
			return fmt.Errorf("remove xattr %s: %w", nm, err)
		}
	}
	return nil
}

func (a *applier) hardlink(hdr *tar.Header, ph *dirHandle, name string) error {
	trel, err := cleanEntryPath(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
	}
	if trel == "" {
		return fmt.Errorf("hardlink target %q is the layer root", hdr.Linkname)
	}
	tparent, tname := splitRel(trel)
	th, err := a.lookupDir(tparent, false)
	if err != nil {
		if isMissing(err) {
			if a.lowers != nil {
				return a.hardlinkLower(hdr.Linkname, ph, name, trel)
			}
			return fmt.Errorf("hardlink target %q does not exist", hdr.Linkname)
		}
		return fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
	}
	var tst unix.Stat_t
	if err := unix.Fstatat(th.fd, tname, &tst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			if a.lowers != nil {
				return a.hardlinkLower(hdr.Linkname, ph, name, trel)
			}
			return fmt.Errorf("hardlink target %q does not exist", hdr.Linkname)
		}
		return fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
	}
	if tst.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("hardlink target %q is a directory", hdr.Linkname)
	}
	if _, ok := a.whited[th.child(tname)]; ok {
		return fmt.Errorf("hardlink target %q does not exist (whited out)", hdr.Linkname)
	}
	return a.linkAt(hdr.Linkname, th.fd, tname, &tst, ph, name)
}

// linkAt makes name in ph a hardlink to tname in directory tfd, whose lstat
// is tst (nil: read here), replacing what is at name unless it is that
// file already.
func (a *applier) linkAt(linkname string, tfd int, tname string, tst *unix.Stat_t, ph *dirHandle, name string) error {
	if tst == nil {
		tst = new(unix.Stat_t)
		if err := unix.Fstatat(tfd, tname, tst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("hardlink target %q: %w", linkname, err)
		}
	}
	// linkat without AT_SYMLINK_FOLLOW: a symlink target is linked itself,
	// never what it points to.
	err := unix.Linkat(tfd, tname, ph.fd, name, 0)
	if errors.Is(err, unix.EEXIST) {
		var st unix.Stat_t
		if err = unix.Fstatat(ph.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			if st.Dev == tst.Dev && st.Ino == tst.Ino {
				return nil // already that file
			}
			if err = a.removeExisting(ph, name); err == nil {
				err = unix.Linkat(tfd, tname, ph.fd, name, 0)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("hardlink to %q: %w", linkname, err)
	}
	return nil
}

// setDirTimes sets directory times, deepest first, after all children
// are in place (creating a child changes its directory's mtime).
func (a *applier) setDirTimes() error {
	keys := make([]string, 0, len(a.dirTimes))
	for k := range a.dirTimes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		di, dj := strings.Count(keys[i], "/"), strings.Count(keys[j], "/")
		if keys[i] == "" {
			di = -1
		}
		if keys[j] == "" {
			dj = -1
		}
		if di != dj {
			return di > dj
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		ts := a.dirTimes[k]
		if k == "" {
			if err := unix.UtimesNanoAt(a.rootHandle.fd, ".", ts[:], 0); err != nil {
				return fmt.Errorf("set times of the root: %w", err)
			}
			continue
		}
		parent, name := splitRel(k)
		ph, err := a.lookupDir(parent, false)
		if err != nil {
			if isMissing(err) {
				continue // replaced later in the layer
			}
			return fmt.Errorf("set times of %q: %w", k, err)
		}
		if err := unix.UtimesNanoAt(ph.fd, name, ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("set times of %q: %w", k, err)
		}
		a.closeStale()
	}
	return nil
}
