package diff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/xattr"
)

// ErrOverlayUnsupported means an overlay layer holds something the native
// differ does not interpret (a redirect or metacopy file in a lower layer,
// which the kernel writes only in an upper dir and ApplyDiff never
// writes): the caller falls back to the naive differ over mounts.
var ErrOverlayUnsupported = errors.New("overlay layer not supported by the native differ")

// OverlayOptions say how overlayfs reads a layer's directories, as the
// layer is mounted.
type OverlayOptions struct {
	// UserXattr: overlay's own attributes are user.overlay.* (the
	// userxattr mount option, user namespaces) instead of
	// trusted.overlay.*.
	UserXattr bool
}

// Names of overlay's own attributes without their namespace prefix
// (trusted.overlay. or user.overlay.).
const (
	ovlOpaque   = "opaque"
	ovlRedirect = "redirect"
	ovlMetacopy = "metacopy"
)

func (o OverlayOptions) xattr(name string) string {
	if o.UserXattr {
		return "user.overlay." + name
	}
	return "trusted.overlay." + name
}

// OverlayChanges lists what an overlay layer changes, reading its upper dir
// and looking up only those paths in its lower dirs (lowers top-most
// first, as in the lowerdir= mount option), so that the cost follows the
// size of the change, not of the image.
//
// The result is exactly what Changes returns for the lowers mounted alone
// (lower) and the layer mounted (upper): the same kinds, the same rules for
// deciding a Modify, the same order. In particular:
//
//   - A whiteout (a 0/0 character device) is a Delete when the lowers show
//     something at its path; a whiteout of a path no lower has (created
//     then removed in the container) is nothing.
//   - An entry of upper absent from the lowers is an Add (with every entry
//     of its merged content when a directory). One present in the lowers is
//     compared with it by Changes' rules: a directory copied up only
//     because a child changed (overlay keeps its attributes and restores
//     its mtime) is not reported, a directory replaced by a non-directory
//     or the reverse is a Delete then an Add.
//   - An opaque directory hides the lower directory's children: each child
//     the lowers had and upper has not is a Delete, as Changes reports it.
//   - A directory carrying overlay.redirect (a renamed directory, with
//     redirect_dir=on) shows the lower directory it names, merged with what
//     upper holds below it: its old path shows a whiteout and is a Delete,
//     its new path an Add of the directory and all of that merged content.
//   - A regular file carrying overlay.metacopy (metacopy=on: a
//     metadata-only copy-up) takes its attributes from upper and its data
//     from the lower file found at its path or at its overlay.redirect.
//
// Lookups in the lowers follow overlayfs: the first lower holding a name
// decides, a whiteout there hides it, and a directory merges with the same
// directory in the lowers below until one is opaque or holds something
// else. Attributes overlay keeps for itself (trusted.overlay.* or
// user.overlay.*, see opts) are never compared.
//
// The changes must be exported from the layer's merged mount, not from
// upper: renamed directories and metacopy files have their content in the
// lowers (WriteOverlayDiff does it, mounting only when needed).
//
// Redirects and metacopy files are interpreted in upper only: overlay
// writes them nowhere else and ApplyDiff drops them from layer tars. A
// lower directory carrying a redirect, or a metacopy file whose lower is a
// metacopy file too, is ErrOverlayUnsupported (callers fall back to the
// naive differ) rather than a wrong answer.
func OverlayChanges(ctx context.Context, upper string, lowers []string, opts OverlayOptions) ([]Change, error) {
	d, err := newOverlayDiffer(ctx, upper, lowers, opts)
	if err != nil {
		return nil, err
	}
	defer d.close()
	if err := d.run(); err != nil {
		return nil, err
	}
	return d.changes, nil
}

// WriteOverlayDiff writes the layer tar of an overlay layer to w:
// OverlayChanges of upper over lowers, then Export. When every changed
// entry's content is in upper itself (no renamed directory, no metacopy
// file among the changes) the tar is exported from upper directly and
// nothing is mounted; otherwise mount is called for the layer's merged
// view (the layer mounted as the kernel shows it: lowers and upper, with
// the options of the layer) and the tar is exported from there, then
// unmount is called. Both give the same bytes as Export of the merged
// view. mount may be nil when the caller knows the layer has no redirect
// or metacopy files (mounted with redirect_dir=nofollow, metacopy=off);
// if one turns up anyway, that is an error.
func WriteOverlayDiff(ctx context.Context, w io.Writer, upper string, lowers []string, opts OverlayOptions,
	mount func() (merged string, unmount func() error, err error), eopts ExportOptions) (err error) {
	d, err := newOverlayDiffer(ctx, upper, lowers, opts)
	if err != nil {
		return err
	}
	d.forExport = true
	err = d.run()
	d.close()
	if err != nil {
		return err
	}
	if !d.needsMerged {
		return Export(ctx, w, upper, d.changes, eopts)
	}
	if mount == nil {
		return fmt.Errorf("overlay diff of %s: renamed directories or metacopy files need the merged mount, and none was given", upper)
	}
	merged, unmount, err := mount()
	if err != nil {
		return fmt.Errorf("overlay diff of %s: mount merged view: %w", upper, err)
	}
	defer func() {
		if uerr := unmount(); uerr != nil && err == nil {
			err = fmt.Errorf("overlay diff of %s: unmount merged view: %w", upper, uerr)
		}
	}()
	return Export(ctx, w, merged, d.changes, eopts)
}

// layerDir is one directory of a lower layer, open for reading.
type layerDir struct {
	layer int // index in the lowers, 0 the top-most
	fd    int
	dev   uint64
	ino   uint64
}

// lowerChain is what the lower stack merges at one directory: the
// directories of the layers that contribute to it, top-most first. A nil
// chain is a directory with no lower content.
type lowerChain []layerDir

func (c lowerChain) close() {
	for _, l := range c {
		unix.Close(l.fd)
	}
}

func (c lowerChain) equal(o lowerChain) bool {
	if len(c) != len(o) {
		return false
	}
	for i := range c {
		if c[i].layer != o[i].layer || c[i].dev != o[i].dev || c[i].ino != o[i].ino {
			return false
		}
	}
	return true
}

// mergedDir is a directory as the layer's merged view shows it: an upper
// directory (up, or -1 when upper has none there) over lower content.
type mergedDir struct {
	up    int
	lower lowerChain
}

func (m mergedDir) close() {
	if m.up >= 0 {
		unix.Close(m.up)
	}
	m.lower.close()
}

// ovlEntry is an entry one view shows: entry name of directory dirfd, of
// the upper dir or of a lower layer.
type ovlEntry struct {
	dirfd int
	name  string
	st    unix.Stat_t
	upper bool
}

func (e *ovlEntry) proc() string {
	return "/proc/self/fd/" + strconv.Itoa(e.dirfd) + "/" + e.name
}

// overlayDiffer holds the state of one OverlayChanges.
type overlayDiffer struct {
	ctx    context.Context
	opts   OverlayOptions
	upper  string
	lowers []string
	upfd   int
	root   lowerChain // the lowers' roots, all of them (overlay ignores opaque roots)

	changes []Change
	// needsMerged is set when a change's content lives in a lower layer:
	// an entry shown through a renamed directory, or a metacopy file.
	// Looking for metacopy files costs an xattr read per changed file, so
	// it is done only when forExport is set.
	needsMerged bool
	forExport   bool
	n           int
	buf         []byte
}

func newOverlayDiffer(ctx context.Context, upper string, lowers []string, opts OverlayOptions) (*overlayDiffer, error) {
	d := &overlayDiffer{ctx: ctx, opts: opts, upper: upper, lowers: lowers, upfd: -1, buf: make([]byte, 32<<10)}
	fd, err := openRootDir(upper)
	if err != nil {
		return nil, fmt.Errorf("overlay changes: upper: %w", err)
	}
	d.upfd = fd
	for i, l := range lowers {
		fd, err := openRootDir(l)
		if err != nil {
			d.close()
			return nil, fmt.Errorf("overlay changes: lower %d: %w", i, err)
		}
		ld, err := d.layerDir(i, fd)
		if err != nil {
			d.close()
			return nil, fmt.Errorf("overlay changes: lower %s: %w", l, err)
		}
		d.root = append(d.root, ld)
	}
	return d, nil
}

func openRootDir(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ENOTDIR {
			return -1, fmt.Errorf("%s is not a directory", dir)
		}
		return -1, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return fd, nil
}

func (d *overlayDiffer) close() {
	if d.upfd >= 0 {
		unix.Close(d.upfd)
		d.upfd = -1
	}
	d.root.close()
	d.root = nil
}

func (d *overlayDiffer) run() error {
	// The roots themselves are not compared (a layer tar has no entry for
	// "/"), and overlay ignores opaque and redirect attributes on them.
	err := d.diffDir("/", d.root, mergedDir{up: d.upfd, lower: d.root}, true)
	if err != nil {
		return err
	}
	SortChanges(d.changes) // already in order; cheap insurance for Export
	return nil
}

func (d *overlayDiffer) emit(p string, k ChangeKind) {
	d.changes = append(d.changes, Change{Path: p, Kind: k})
}

func (d *overlayDiffer) checkCtx() error {
	d.n++
	if d.n&255 == 0 {
		if err := d.ctx.Err(); err != nil {
			return fmt.Errorf("overlay changes: %w", err)
		}
	}
	return nil
}

// layerDir records fd, a directory of lower layer i, and checks that it
// holds nothing overlay would read as a redirect.
func (d *overlayDiffer) layerDir(i, fd int) (layerDir, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return layerDir{}, err
	}
	return layerDir{layer: i, fd: fd, dev: uint64(st.Dev), ino: st.Ino}, nil
}

// list lists directory fd (layer path p, in tree where) in byte order of
// names with each entry's lstat.
func (d *overlayDiffer) list(fd int, p, where string) ([]dirEntry, error) {
	// A descriptor may be listed twice (a chain shared by both views).
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		return nil, &os.PathError{Op: "read directory", Path: where + p, Err: err}
	}
	s := dirStack{root: where, cur: p, fds: []int{fd}, buf: d.buf}
	ents, err := s.list()
	if err != nil {
		return nil, fmt.Errorf("overlay changes: %w", err)
	}
	return ents, nil
}

func isWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// xattr returns attribute name of the entry (not followed), or nil and no
// error when it is absent: with getxattrat relative to the entry's
// directory where the kernel has it (6.13), which spares resolving a
// /proc/self/fd path for every file, else through that path.
func (e *ovlEntry) xattr(name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := xattr.GetAt(e.dirfd, e.name, unix.AT_SYMLINK_NOFOLLOW, name, buf)
		switch {
		case err == nil:
			return buf[:n], nil
		case errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP):
			return nil, nil
		case errors.Is(err, unix.ERANGE) && len(buf) < 1<<16:
			buf = make([]byte, 1<<16)
		case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.ERANGE):
			return getXattr(e.proc(), name)
		default:
			return nil, fmt.Errorf("get xattr %s of %s: %w", name, e.name, err)
		}
	}
}

// getXattr returns attribute name of path (not followed), or nil and no
// error when it is absent.
func getXattr(path, name string) ([]byte, error) {
	v, err := xattr.Get(path, name)
	if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	return v, err
}

// fdXattr is getXattr on an open file.
func fdXattr(fd int, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Fgetxattr(fd, name, buf)
		switch {
		case err == nil:
			return buf[:n], nil
		case errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP):
			return nil, nil
		case errors.Is(err, unix.ERANGE):
			sz, err := unix.Fgetxattr(fd, name, nil)
			if err != nil {
				return nil, fmt.Errorf("get xattr %s: %w", name, err)
			}
			buf = make([]byte, sz+16)
		default:
			return nil, fmt.Errorf("get xattr %s: %w", name, err)
		}
	}
}

func (d *overlayDiffer) isOpaque(fd int) (bool, error) {
	v, err := fdXattr(fd, d.opts.xattr(ovlOpaque))
	// "y" is opaque; "x" (kernel 6.7+) only says the directory may hold
	// xwhiteouts, which overlay never writes in a layer we manage.
	return string(v) == "y", err
}

// lookup finds name in the merged lower directory c as overlayfs does:
// the first layer holding name decides and a whiteout there hides it; a
// directory merges with the directories of the same name in the layers
// below until one of them is opaque, or a layer holds a non-directory or
// a whiteout there. With chain set, the chain of a directory found is
// opened and returned; the caller closes it.
func (d *overlayDiffer) lookup(c lowerChain, name string, chain bool) (e ovlEntry, sub lowerChain, found bool, err error) {
	defer func() {
		if err != nil {
			sub.close()
			sub = nil
		}
	}()
	for _, ld := range c {
		st, err := lstatAt(ld.fd, name)
		if err == unix.ENOENT {
			continue
		}
		if err != nil {
			return e, sub, false, fmt.Errorf("overlay changes: lstat %s in lower %s: %w", name, d.lowers[ld.layer], err)
		}
		if !found {
			if isWhiteout(&st) {
				return e, nil, false, nil
			}
			e = ovlEntry{dirfd: ld.fd, name: name, st: st}
			found = true
			if !isDir(&st) || !chain {
				return e, nil, true, nil
			}
		} else if !isDir(&st) {
			break // a whiteout or a non-directory ends the merge
		}
		fd, err := unix.Openat(ld.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return e, sub, false, fmt.Errorf("overlay changes: open %s in lower %s: %w", name, d.lowers[ld.layer], err)
		}
		l, err := d.layerDir(ld.layer, fd)
		if err != nil {
			return e, sub, false, fmt.Errorf("overlay changes: %s in lower %s: %w", name, d.lowers[ld.layer], err)
		}
		sub = append(sub, l)
		if red, err := fdXattr(fd, d.opts.xattr(ovlRedirect)); err != nil {
			return e, sub, false, err
		} else if red != nil {
			return e, sub, false, fmt.Errorf("overlay changes: directory %s in lower %s carries a redirect: %w", name, d.lowers[ld.layer], ErrOverlayUnsupported)
		}
		opaque, err := d.isOpaque(fd)
		if err != nil {
			return e, sub, false, err
		}
		if opaque {
			break
		}
	}
	return e, sub, found, nil
}

// resolveDir returns the merged lower directory at absolute layer path
// dir ("/" for the root), as overlay follows an absolute redirect, or nil
// when the lowers show no directory there. The caller closes the chain
// unless it is d.root.
func (d *overlayDiffer) resolveDir(dir string) (lowerChain, error) {
	cur := d.root
	if dir == "/" {
		return cur, nil
	}
	for i, c := range strings.Split(dir[1:], "/") {
		e, sub, found, err := d.lookup(cur, c, true)
		if i > 0 {
			cur.close()
		}
		if err != nil {
			return nil, err
		}
		if !found || !isDir(&e.st) || sub == nil {
			return nil, nil
		}
		cur = sub
	}
	return cur, nil
}

// lookupRedirect finds what a redirect value red of an upper entry in
// merged directory parent names: a name in the same parent's lowers, or
// an absolute path in the lower stack. The returned chain holds the
// entry's directory (close it with closeChain); sub is as for lookup.
func (d *overlayDiffer) lookupRedirect(parent lowerChain, red string, chain bool) (e ovlEntry, sub, held lowerChain, found bool, err error) {
	if red[0] != '/' {
		e, sub, found, err = d.lookup(parent, red, chain)
		return e, sub, nil, found, err
	}
	i := strings.LastIndexByte(red, '/')
	dir := red[:i]
	if dir == "" {
		dir = "/"
	}
	held, err = d.resolveDir(dir)
	if err != nil {
		return e, nil, nil, false, err
	}
	e, sub, found, err = d.lookup(held, red[i+1:], chain)
	if dir == "/" {
		held = nil // d.root: not ours to close
	}
	if err != nil {
		held.close()
		return e, nil, nil, false, err
	}
	return e, sub, held, found, nil
}

// checkRedirect validates a redirect value as overlay does: an absolute
// path of non-empty components, or one name in the same parent.
func checkRedirect(v string) error {
	if v == "" {
		return errors.New("empty")
	}
	if v[0] != '/' {
		if strings.Contains(v, "/") || v == "." || v == ".." {
			return errors.New("not one name")
		}
		return nil
	}
	for _, c := range strings.Split(v[1:], "/") {
		if c == "" || c == "." || c == ".." {
			return errors.New("not a clean absolute path")
		}
	}
	return nil
}

// redirect returns the redirect of upper entry e, or "" without one.
func (d *overlayDiffer) redirect(e *ovlEntry, p string) (string, error) {
	v, err := e.xattr(d.opts.xattr(ovlRedirect))
	if err == nil {
		err = d.checkRedirect(v, p)
	}
	if err != nil {
		return "", fmt.Errorf("overlay changes: %s: %w", p, err)
	}
	return string(v), nil
}

// checkRedirect validates redirect value v (nil: none) of path p.
func (d *overlayDiffer) checkRedirect(v []byte, p string) error {
	if v == nil {
		return nil
	}
	if err := checkRedirect(string(v)); err != nil {
		return fmt.Errorf("invalid %s %q: %v", d.opts.xattr(ovlRedirect), v, err)
	}
	return nil
}

// child opens the merged directory shown by entry e (a directory) of the
// merged directory parent, at path p. The caller closes it.
func (d *overlayDiffer) child(parent mergedDir, e *ovlEntry, p string) (mergedDir, error) {
	if !e.upper {
		_, sub, _, err := d.lookup(parent.lower, e.name, true)
		return mergedDir{up: -1, lower: sub}, err
	}
	fd, err := unix.Openat(e.dirfd, e.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return mergedDir{up: -1}, fmt.Errorf("overlay changes: open %s%s: %w", d.upper, p, err)
	}
	m := mergedDir{up: fd}
	// Opaque wins over a redirect, as in overlay's lookup.
	opaque, err := d.isOpaque(fd)
	if err != nil {
		m.close()
		return mergedDir{up: -1}, fmt.Errorf("overlay changes: %s: %w", p, err)
	}
	if opaque {
		return m, nil
	}
	v, err := fdXattr(fd, d.opts.xattr(ovlRedirect))
	if err == nil {
		err = d.checkRedirect(v, p)
	}
	if err != nil {
		m.close()
		return mergedDir{up: -1}, fmt.Errorf("overlay changes: %s: %w", p, err)
	}
	red := string(v)
	var sub, held lowerChain
	if red == "" {
		_, sub, _, err = d.lookup(parent.lower, e.name, true)
	} else {
		_, sub, held, _, err = d.lookupRedirect(parent.lower, red, true)
		held.close()
	}
	if err != nil {
		m.close()
		return mergedDir{up: -1}, err
	}
	// A lower non-directory under an upper directory is hidden: lookup
	// returns no chain for it.
	m.lower = sub
	return m, nil
}

// diffDir emits the changes below directory p, which the lowers show as
// old and the layer as nd. same says old and nd.lower are the same lower
// directories: then what upper does not hold is the same in both views and
// only upper's entries are visited.
func (d *overlayDiffer) diffDir(p string, old lowerChain, nd mergedDir, same bool) error {
	if err := d.ctx.Err(); err != nil {
		return fmt.Errorf("overlay changes: %w", err)
	}
	var ups []dirEntry
	if nd.up >= 0 {
		var err error
		if ups, err = d.list(nd.up, p, d.upper); err != nil {
			return err
		}
	}
	if same {
		for i := range ups {
			if err := d.checkCtx(); err != nil {
				return err
			}
			u := &ups[i]
			oe, _, ofound, err := d.lookup(old, u.name, false)
			if err != nil {
				return err
			}
			var ope *ovlEntry
			if ofound {
				ope = &oe
			}
			var ne *ovlEntry
			if !isWhiteout(&u.st) {
				ne = &ovlEntry{dirfd: nd.up, name: u.name, st: u.st, upper: true}
			}
			if err := d.diffEntry(p, ope, ne, old, nd); err != nil {
				return err
			}
		}
		return nil
	}

	// The views differ below p (a renamed or opaque directory): merge the
	// three listings.
	newLow, err := d.listChain(nd.lower, p)
	if err != nil {
		return err
	}
	oldLow, err := d.listChain(old, p)
	if err != nil {
		return err
	}
	names := make(map[string]struct{}, len(ups)+len(newLow)+len(oldLow))
	upByName := make(map[string]*dirEntry, len(ups))
	for i := range ups {
		names[ups[i].name] = struct{}{}
		upByName[ups[i].name] = &ups[i]
	}
	for n := range newLow {
		names[n] = struct{}{}
	}
	for n := range oldLow {
		names[n] = struct{}{}
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, n := range sorted {
		if err := d.checkCtx(); err != nil {
			return err
		}
		var ne *ovlEntry
		if u, ok := upByName[n]; ok {
			if !isWhiteout(&u.st) {
				ne = &ovlEntry{dirfd: nd.up, name: n, st: u.st, upper: true}
			}
		} else if l, ok := newLow[n]; ok {
			ne = &l
		}
		var oe *ovlEntry
		if l, ok := oldLow[n]; ok {
			oe = &l
		}
		if err := d.diffEntry(p, oe, ne, old, nd); err != nil {
			return err
		}
	}
	return nil
}

// listChain lists what the merged lower directory c shows, by name.
func (d *overlayDiffer) listChain(c lowerChain, p string) (map[string]ovlEntry, error) {
	shown := make(map[string]ovlEntry)
	hidden := make(map[string]bool)
	for _, ld := range c {
		ents, err := d.list(ld.fd, p, d.lowers[ld.layer])
		if err != nil {
			return nil, err
		}
		for i := range ents {
			n := ents[i].name
			if _, ok := shown[n]; ok || hidden[n] {
				continue
			}
			if isWhiteout(&ents[i].st) {
				hidden[n] = true
				continue
			}
			shown[n] = ovlEntry{dirfd: ld.fd, name: n, st: ents[i].st}
		}
	}
	return shown, nil
}

// diffEntry emits the changes of entry name of directory p: oe is what the
// lowers show there (nil: nothing), ne what the layer shows (nil:
// nothing); old and nd are the directory p in both views.
func (d *overlayDiffer) diffEntry(p string, oe, ne *ovlEntry, old lowerChain, nd mergedDir) error {
	if oe == nil && ne == nil {
		return nil
	}
	name := ""
	if ne != nil {
		name = ne.name
	} else {
		name = oe.name
	}
	cp := joinLayerPath(p, name)
	if ne == nil {
		d.emit(cp, ChangeDelete)
		return nil
	}
	if !ne.upper {
		d.needsMerged = true // content from a lower: only the merged view has it here
	}
	if oe == nil || isDir(&oe.st) != isDir(&ne.st) {
		if oe != nil {
			d.emit(cp, ChangeDelete)
		}
		d.emit(cp, ChangeAdd)
		if isDir(&ne.st) {
			return d.addSubtree(nd, ne, cp)
		}
		return d.noteMetacopy(ne, cp)
	}
	same, err := d.sameEntry(oe, ne, nd, cp)
	if err != nil {
		return err
	}
	if !same {
		d.emit(cp, ChangeModify)
		if err := d.noteMetacopy(ne, cp); err != nil {
			return err
		}
	}
	if !isDir(&ne.st) {
		return nil
	}
	_, oc, _, err := d.lookup(old, name, true)
	if err != nil {
		return err
	}
	defer oc.close()
	nc, err := d.child(nd, ne, cp)
	if err != nil {
		return err
	}
	defer nc.close()
	sameChain := oc.equal(nc.lower)
	if nc.up < 0 && sameChain {
		return nil // the same lower directory in both views
	}
	return d.diffDir(cp, oc, nc, sameChain)
}

// noteMetacopy marks the diff as needing the merged view when ne, a
// changed entry of upper, is a metacopy file (its data is in a lower).
func (d *overlayDiffer) noteMetacopy(ne *ovlEntry, p string) error {
	if !d.forExport || d.needsMerged || !ne.upper || ne.st.Mode&unix.S_IFMT != unix.S_IFREG || ne.st.Size == 0 {
		return nil
	}
	mc, err := ne.xattr(d.opts.xattr(ovlMetacopy))
	if err != nil {
		return fmt.Errorf("overlay changes: %s: %w", p, err)
	}
	if mc != nil {
		d.needsMerged = true
	}
	return nil
}

// addSubtree reports every entry of the merged directory shown by ne
// (entry of nd at path p) as added.
func (d *overlayDiffer) addSubtree(nd mergedDir, ne *ovlEntry, p string) error {
	m, err := d.child(nd, ne, p)
	if err != nil {
		return err
	}
	defer m.close()
	return d.addDir(m, p)
}

func (d *overlayDiffer) addDir(m mergedDir, p string) error {
	if err := d.ctx.Err(); err != nil {
		return fmt.Errorf("overlay changes: %w", err)
	}
	var ups []dirEntry
	if m.up >= 0 {
		var err error
		if ups, err = d.list(m.up, p, d.upper); err != nil {
			return err
		}
	}
	var ents []ovlEntry
	if len(m.lower) == 0 {
		ents = make([]ovlEntry, 0, len(ups))
		for i := range ups {
			if !isWhiteout(&ups[i].st) {
				ents = append(ents, ovlEntry{dirfd: m.up, name: ups[i].name, st: ups[i].st, upper: true})
			}
		}
	} else {
		low, err := d.listChain(m.lower, p)
		if err != nil {
			return err
		}
		for i := range ups {
			// Upper's entries, whiteouts included, hide the lowers'.
			delete(low, ups[i].name)
			if !isWhiteout(&ups[i].st) {
				ents = append(ents, ovlEntry{dirfd: m.up, name: ups[i].name, st: ups[i].st, upper: true})
			}
		}
		for _, e := range low {
			ents = append(ents, e)
		}
		sort.Slice(ents, func(i, j int) bool { return ents[i].name < ents[j].name })
	}
	for i := range ents {
		if err := d.checkCtx(); err != nil {
			return err
		}
		e := &ents[i]
		cp := joinLayerPath(p, e.name)
		d.emit(cp, ChangeAdd)
		if !e.upper {
			d.needsMerged = true
		}
		if isDir(&e.st) {
			if err := d.addSubtree(m, e, cp); err != nil {
				return err
			}
		} else if err := d.noteMetacopy(e, cp); err != nil {
			return err
		}
	}
	return nil
}

// sameEntry compares oe (in the lowers) and ne (in the layer) at path p,
// both directories or both not, by the rules of Changes (see sameEntry in
// changes.go, which this follows line by line), reading a metacopy file's
// data from the lower file that holds it. nd is p's parent in the layer.
func (d *overlayDiffer) sameEntry(oe, ne *ovlEntry, nd mergedDir, p string) (bool, error) {
	ls, us := &oe.st, &ne.st
	if same, differ := compareStats(ls, us); same || differ {
		return same, nil
	}
	typ := us.Mode & unix.S_IFMT
	if eq, err := sameXattrs(oe.proc(), ne.proc()); err != nil || !eq {
		if err != nil {
			return false, fmt.Errorf("overlay changes: compare %s: %w", p, err)
		}
		return false, nil
	}
	switch typ {
	case unix.S_IFLNK:
		lt, err := readlinkAt(oe.dirfd, oe.name)
		if err != nil {
			return false, fmt.Errorf("overlay changes: compare %s: %w", p, err)
		}
		ut, err := readlinkAt(ne.dirfd, ne.name)
		if err != nil {
			return false, fmt.Errorf("overlay changes: compare %s: %w", p, err)
		}
		return lt == ut, nil
	case unix.S_IFREG:
		if us.Mtim.Nsec == 0 && us.Size > 0 {
			data := ne
			if ne.upper {
				var release func()
				var err error
				data, release, err = d.metacopyData(ne, nd, p)
				defer release()
				if err != nil {
					return false, err
				}
				if data.st.Dev == ls.Dev && data.st.Ino == ls.Ino {
					return true, nil
				}
			}
			eq, err := sameContentAt(oe.dirfd, oe.name, data.dirfd, data.name)
			if err != nil {
				return false, fmt.Errorf("overlay changes: compare %s: %w", p, err)
			}
			return eq, nil
		}
	}
	return true, nil
}

// metacopyData returns the entry holding the data of upper regular file
// ne (path p, in merged directory nd): ne itself, or for a metacopy file
// the lower file at its redirect or, without one, at its own name.
func (d *overlayDiffer) metacopyData(ne *ovlEntry, nd mergedDir, p string) (data *ovlEntry, release func(), err error) {
	release = func() {}
	mc, err := ne.xattr(d.opts.xattr(ovlMetacopy))
	if err != nil {
		return nil, release, fmt.Errorf("overlay changes: %s: %w", p, err)
	}
	if mc == nil {
		return ne, release, nil
	}
	red, err := d.redirect(ne, p)
	if err != nil {
		return nil, release, err
	}
	var e ovlEntry
	var found bool
	if red == "" {
		e, _, found, err = d.lookup(nd.lower, ne.name, false)
	} else {
		var held lowerChain
		e, _, held, found, err = d.lookupRedirect(nd.lower, red, false)
		// e's directory must stay open while its content is read.
		release = held.close
	}
	if err != nil {
		return nil, release, err
	}
	if !found || e.st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, release, fmt.Errorf("overlay changes: metacopy file %s: no lower file holds its data", p)
	}
	if mc, err := e.xattr(d.opts.xattr(ovlMetacopy)); err != nil {
		return nil, release, fmt.Errorf("overlay changes: %s: %w", p, err)
	} else if mc != nil {
		return nil, release, fmt.Errorf("overlay changes: metacopy file %s: its lower is a metacopy file too: %w", p, ErrOverlayUnsupported)
	}
	return &e, release, nil
}
