package diff

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/fscopy"
	"github.com/layers-storage/layers/internal/xattr"
)

// An overlay layer's diff dir holds only that layer's own content, but the
// rules of DESIGN.md's "one tree per image" depend on the lower layers: an
// entry below a lower symlink goes where the symlink points, a hardlink may
// name a lower file, and a directory the tar does not list takes the
// attributes the image already gives it. Apply answers those questions by
// looking the path up in the merged view of this layer and its lowers, in
// userspace, the way overlayfs itself would (whiteouts, opaque directories,
// a lower non-directory ending the merge of a directory above it).
//
// The lookup costs nothing for the usual entry: it runs only when the
// parent directory is not found in this layer's own dir (a fast kernel
// lookup, as without lowers), and each lower is consulted, and waited for,
// only when every layer above it lacked the path.

// ErrLowerFailed means a lower layer given in ApplyOptions.Lowers reported
// (through its Ready function) that it will never be complete; the layer
// being applied cannot be either.
var ErrLowerFailed = errors.New("lower layer failed")

// Lower is one layer below the layer that Apply writes, for the overlay
// whiteout format: its own dir (an overlay "diff" dir, holding only that
// layer's content in the overlay format), and how to wait for it.
type Lower struct {
	// Dir is the lower layer's directory. It is trusted as a path (it may
	// be a symlink), but nothing inside it is followed by the kernel:
	// symlinks in it resolve inside the image, like the tar's own.
	Dir string
	// Ready blocks until the lower layer is completely applied and then
	// returns nil. It returns an error if the layer will never be complete
	// (its own Apply failed: Apply then fails with ErrLowerFailed), and
	// ctx.Err() as soon as ctx is done. Apply calls it only when an entry
	// needs that layer, at most until it has returned nil once, and only
	// from one goroutine. nil means the layer is complete already.
	Ready func(ctx context.Context) error
}

// lowerLayer is a Lower as one Apply uses it.
type lowerLayer struct {
	Lower
	fd    int // O_PATH fd of Dir once ready, else -1
	ready bool
}

// openLowers checks opts.Lowers against the format.
func openLowers(opts ApplyOptions, wf WhiteoutFormat) ([]*lowerLayer, error) {
	if len(opts.Lowers) == 0 {
		return nil, nil
	}
	if _, ok := wf.(overlayFormat); !ok {
		return nil, fmt.Errorf("lower layers are only for the overlay whiteout format (the %s format applies onto a copy of its parent)", wf.Name())
	}
	ls := make([]*lowerLayer, len(opts.Lowers))
	for i, l := range opts.Lowers {
		if l.Dir == "" {
			return nil, fmt.Errorf("lower layer %d has no directory", i)
		}
		ls[i] = &lowerLayer{Lower: l, fd: -1}
	}
	return ls, nil
}

func closeLowers(ls []*lowerLayer) {
	for _, l := range ls {
		if l.fd >= 0 {
			unix.Close(l.fd)
			l.fd = -1
		}
	}
}

// lowerFd waits for lower i (0 the top-most) and returns its root fd.
func (a *applier) lowerFd(i int) (int, error) {
	l := a.lowers[i]
	if !l.ready {
		if l.Ready != nil {
			if err := l.Ready(a.ctx); err != nil {
				if cerr := a.ctx.Err(); cerr != nil {
					return -1, fmt.Errorf("waiting for lower layer %s: %w", l.Dir, cerr)
				}
				return -1, fmt.Errorf("%w: %s: %w", ErrLowerFailed, l.Dir, err)
			}
		}
		l.ready = true
	}
	if l.fd < 0 {
		fd, err := unix.Open(l.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("open lower layer %s: %w", l.Dir, err)
		}
		l.fd = fd
	}
	return l.fd, nil
}

// mnode is a directory of the merged view, by its canonical path (no
// symlink in it). fds[j] is its fd in layer j (0: the layer being applied,
// j > 0: lower j-1), or -1 where that layer does not contribute to it;
// layers are examined lazily, so that a lower is only waited for when
// everything above it lacked what a lookup wants.
type mnode struct {
	parent *mnode
	name   string
	canon  string
	fds    []int
	// closed: layers from len(fds) on are hidden here (an opaque dir, or a
	// whiteout or non-directory in a layer in between), or all are seen.
	closed bool
}

// mwalk is one lookup in the merged view; it owns the fds of its nodes.
type mwalk struct {
	a     *applier
	root  *mnode
	nodes []*mnode
}

func (a *applier) newWalk() *mwalk {
	w := &mwalk{a: a, root: &mnode{fds: []int{a.rootHandle.fd}}}
	return w
}

func (w *mwalk) close() {
	for _, n := range w.nodes {
		for _, fd := range n.fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		n.fds = nil
	}
}

func (w *mwalk) layers() int { return 1 + len(w.a.lowers) }

// layerFd returns n's fd in layer j, examining the layers down to j (and
// waiting for them) as needed; -1 when layer j does not contribute.
func (w *mwalk) layerFd(n *mnode, j int) (int, error) {
	for len(n.fds) <= j && !n.closed {
		k := len(n.fds)
		if k >= w.layers() {
			n.closed = true
			break
		}
		if n.parent == nil {
			// A layer's root is always part of the root of the image;
			// overlayfs reads no opaque marker on it.
			fd, err := w.a.lowerFd(k - 1)
			if err != nil {
				return -1, err
			}
			n.fds = append(n.fds, fd)
			continue
		}
		pfd, err := w.layerFd(n.parent, k)
		if err != nil {
			return -1, err
		}
		if pfd < 0 {
			if n.parent.closed && len(n.parent.fds) <= k {
				n.closed = true
				break
			}
			n.fds = append(n.fds, -1)
			continue
		}
		var st unix.Stat_t
		err = unix.Fstatat(pfd, n.name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) {
			n.fds = append(n.fds, -1)
			continue
		}
		if err != nil {
			return -1, w.layerErr(k, n.canon, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			// A whiteout or a non-directory below a directory: the
			// directory's merge ends here, as in overlayfs.
			n.closed = true
			break
		}
		fd, err := openDirNoFollow(pfd, n.name)
		if err != nil {
			return -1, w.layerErr(k, n.canon, err)
		}
		n.fds = append(n.fds, fd)
		if w.isOpaque(fd) {
			n.closed = true
		}
	}
	if j < len(n.fds) {
		return n.fds[j], nil
	}
	return -1, nil
}

func (w *mwalk) layerErr(k int, canon string, err error) error {
	if k == 0 {
		return fmt.Errorf("%q: %w", canon, err)
	}
	return fmt.Errorf("%q in lower layer %s: %w", canon, w.a.lowers[k-1].Dir, err)
}

func openDirNoFollow(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// isOpaque reports whether the directory open as fd carries the overlay
// format's opaque marker.
func (w *mwalk) isOpaque(fd int) bool {
	var b [4]byte
	n, err := unix.Getxattr("/proc/self/fd/"+strconv.Itoa(fd), w.a.wf.(overlayFormat).opaqueXattr(), b[:])
	return err == nil && n == 1 && b[0] == 'y'
}

// What a name is in the merged view.
const (
	mAbsent = iota // missing, or whited out
	mDir
	mSymlink
	mOther
)

// mchild is the merged view's entry name in a directory.
type mchild struct {
	kind   int
	layer  int    // the layer whose entry it is
	pfd    int    // the directory's fd in that layer (owned by the walk)
	node   *mnode // kind mDir
	target string // kind mSymlink
	st     unix.Stat_t
}

// child looks name up in directory n of the merged view: the top-most
// layer that has it decides what it is.
func (w *mwalk) child(n *mnode, name string) (mchild, error) {
	canon := joinCanon(n.canon, name)
	for j := 0; ; j++ {
		fd, err := w.layerFd(n, j)
		if err != nil {
			return mchild{}, err
		}
		if j >= len(n.fds) {
			return mchild{kind: mAbsent}, nil
		}
		if fd < 0 {
			continue
		}
		c := mchild{layer: j, pfd: fd}
		if err := unix.Fstatat(fd, name, &c.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return mchild{}, w.layerErr(j, canon, err)
		}
		if j > 0 {
			w.a.noteLowerPath(canon)
		}
		switch c.st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			cfd, err := openDirNoFollow(fd, name)
			if err != nil {
				return mchild{}, w.layerErr(j, canon, err)
			}
			fds := make([]int, j+1, w.layers())
			for i := range j {
				fds[i] = -1
			}
			fds[j] = cfd
			c.kind = mDir
			c.node = &mnode{parent: n, name: name, canon: canon, fds: fds}
			w.nodes = append(w.nodes, c.node)
			if w.isOpaque(cfd) {
				c.node.closed = true
			}
		case unix.S_IFLNK:
			t, err := readlinkAt(fd, name)
			if err != nil {
				return mchild{}, w.layerErr(j, canon, err)
			}
			c.kind, c.target = mSymlink, t
		case unix.S_IFCHR:
			if c.st.Rdev == 0 {
				return mchild{kind: mAbsent}, nil // a whiteout
			}
			c.kind = mOther
		default:
			c.kind = mOther
		}
		return c, nil
	}
}

func joinCanon(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// errMergedMissing is what a merged lookup of a missing path wraps.
var errMergedMissing = unix.ENOENT

// walk resolves the directory rel in the merged view, following symlinks
// of every layer as if the image root were "/". With create, components
// of rel itself that are missing (not those named by a symlink, as the
// kernel's mkdir would not make them either) become new directories of
// this layer's: nodes with no layer yet, made by materialize.
func (w *mwalk) walk(rel string, create bool) (*mnode, error) {
	type comp struct {
		name string
		link bool // from a symlink's target
	}
	var todo []comp
	for _, c := range strings.Split(rel, "/") {
		todo = append(todo, comp{c, false})
	}
	cur := w.root
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c.name {
		case "", ".":
			continue
		case "..":
			if cur.parent != nil {
				cur = cur.parent
			}
			continue
		}
		ch, err := w.child(cur, c.name)
		if err != nil {
			return nil, err
		}
		canon := joinCanon(cur.canon, c.name)
		switch ch.kind {
		case mDir:
			cur = ch.node
		case mSymlink:
			links++
			if links > maxSymlinks {
				return nil, fmt.Errorf("%q: %w", rel, unix.ELOOP)
			}
			if ch.target == "" {
				return nil, fmt.Errorf("%q: empty symlink: %w", canon, errMergedMissing)
			}
			if strings.HasPrefix(ch.target, "/") {
				cur = w.root
			}
			parts := strings.Split(ch.target, "/")
			next := make([]comp, 0, len(parts)+len(todo))
			for _, p := range parts {
				next = append(next, comp{p, true})
			}
			todo = append(next, todo...)
		case mOther:
			if ch.layer > 0 {
				return nil, fmt.Errorf("%q is not a directory in lower layer %s: %w", canon, w.a.lowers[ch.layer-1].Dir, unix.ENOTDIR)
			}
			return nil, fmt.Errorf("%q: %w", canon, unix.ENOTDIR)
		default:
			if !create || c.link {
				return nil, fmt.Errorf("%q: %w", canon, errMergedMissing)
			}
			n := &mnode{parent: cur, name: c.name, canon: canon, fds: []int{-1}, closed: true}
			w.nodes = append(w.nodes, n)
			cur = n
		}
	}
	return cur, nil
}

// materialize makes sure directory n exists in this layer's own dir and
// returns its fd there. A directory the lowers have is made with their
// attributes (the top-most lower that has it: what the merged view shows);
// a new one like tar makes a parent it was not given.
func (w *mwalk) materialize(n *mnode) (int, error) {
	if len(n.fds) > 0 && n.fds[0] >= 0 {
		return n.fds[0], nil
	}
	a := w.a
	pfd, err := w.materialize(n.parent)
	if err != nil {
		return -1, err
	}
	src := -1
	for _, fd := range n.fds[1:] {
		if fd >= 0 {
			src = fd
			break
		}
	}
	_, whited := a.whited[n.canon]
	if whited {
		// This layer's own whiteout device is in the way: the directory
		// replaces it, opaque so that the lower one stays hidden (makeDir).
		if err := unix.Unlinkat(pfd, n.name, 0); err != nil {
			return -1, fmt.Errorf("replace whiteout with directory %q: %w", n.canon, err)
		}
	}
	if err := unix.Mkdirat(pfd, n.name, 0o700); err != nil {
		return -1, fmt.Errorf("create parent directory %q: %w", n.canon, err)
	}
	fd, err := unix.Openat(pfd, n.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open parent directory %q: %w", n.canon, err)
	}
	n.fds[0] = fd
	a.created[n.canon] = struct{}{}
	if src >= 0 && !whited {
		if err := a.copyDirAttrs(src, fd, a.defaultACL(&dirHandle{fd: pfd}), n.canon); err != nil {
			return -1, err
		}
	} else {
		if err := unix.Fchmod(fd, 0o755); err != nil {
			return -1, fmt.Errorf("chmod parent directory %q: %w", n.canon, err)
		}
		a.markTouched(n.canon)
	}
	if whited {
		delete(a.whited, n.canon)
		if err := a.wf.opaque(a, fd, n.canon); err != nil {
			return -1, err
		}
	}
	return fd, nil
}

// copyDirAttrs gives the directory fd (canonical path canon) of this
// layer the owner, mode, xattrs and times of the lower directory src: the
// tar did not list it, so the image keeps what the lowers say. With
// replace, xattrs src lacks are removed from fd (it inherited or had
// some). Overlay markers are not copied: whether this layer's directory is
// opaque is this layer's business.
func (a *applier) copyDirAttrs(src, fd int, replace bool, canon string) error {
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return fmt.Errorf("stat lower directory %q: %w", canon, err)
	}
	if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown parent directory %q: %w", canon, err)
	}
	xs, err := lowerXattrs(src)
	if err != nil {
		return fmt.Errorf("read xattrs of lower directory %q: %w", canon, err)
	}
	if replace {
		if err := a.removeUnlisted(nil, fd, xs); err != nil {
			return fmt.Errorf("parent directory %q: %w", canon, err)
		}
	}
	for _, x := range xs {
		if err := unix.Fsetxattr(fd, x.name, x.value, 0); err != nil {
			if errors.Is(err, unix.ENOTSUP) {
				a.warn("directory %q: xattr %s of the lower directory not stored: the filesystem does not support it", canon, x.name)
				continue
			}
			return fmt.Errorf("parent directory %q: set xattr %s: %w", canon, x.name, err)
		}
	}
	if err := unix.Fchmod(fd, st.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod parent directory %q: %w", canon, err)
	}
	// Set at the end, after the children are in place.
	a.dirTimes[canon] = [2]unix.Timespec{st.Atim, st.Mtim}
	return nil
}

// lowerXattrs returns the xattrs of the directory open (O_PATH) as fd, but
// not overlay ones.
func lowerXattrs(fd int) ([]xattrKV, error) {
	p := "/proc/self/fd/" + strconv.Itoa(fd)
	buf := make([]byte, 1024)
	var n int
	for {
		var err error
		n, err = unix.Listxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err2 := unix.Listxattr(p, nil)
			if err2 != nil {
				return nil, err2
			}
			buf = make([]byte, sz+256)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		break
	}
	var xs []xattrKV
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || xattr.IsOverlayInternal(name) {
			continue
		}
		v, err := getxattrFollow(p, name)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", name, err)
		}
		xs = append(xs, xattrKV{name, v})
	}
	return xs, nil
}

func getxattrFollow(p, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Getxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err2 := unix.Getxattr(p, name, nil)
			if err2 != nil {
				return nil, err2
			}
			buf = make([]byte, sz+64)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// lookupMerged is lookupDir's answer when the directory is not in this
// layer's own dir and lowers are given: rel resolves in the merged view,
// and the directory it names is made in this layer (see materialize).
// Without create only directories the merged view has are made (for
// whiteouts and opaque markers: a missing one hides nothing).
func (a *applier) lookupMerged(rel string, create bool) (*dirHandle, error) {
	a.waitWriters() // queued files are part of this layer's view
	w := a.newWalk()
	defer w.close()
	n, err := w.walk(rel, create)
	if err != nil {
		return nil, err
	}
	fd, err := w.materialize(n)
	if err != nil {
		return nil, err
	}
	if n.parent == nil {
		return &a.rootHandle, nil
	}
	// The handle outlives the walk: take the fd out of the node.
	n.fds[0] = -1
	return &dirHandle{fd: fd, canon: n.canon}, nil
}

// noteLowerPath records that a lookup went through canon as a lower layer
// has it. An entry of this layer written there later changes what such
// lookups give without replacing anything in this layer's dir, so it must
// forget the cached directories (lowerChanged).
func (a *applier) noteLowerPath(canon string) {
	if a.lowerPaths == nil {
		a.lowerPaths = make(map[string]struct{})
	}
	for p := canon; ; p, _ = splitRel(p) {
		if _, ok := a.lowerPaths[p]; ok {
			return
		}
		a.lowerPaths[p] = struct{}{}
		if p == "" {
			return
		}
	}
}

// lowerChanged is called before this layer writes at canon (an entry, a
// whiteout, an opaque marker): if lookups went through canon or below it
// in a lower layer, the cached directories may no longer be what the
// merged view shows.
func (a *applier) lowerChanged(canon string) {
	if len(a.lowerPaths) == 0 {
		return
	}
	if _, ok := a.lowerPaths[canon]; ok {
		a.invalidate()
		clear(a.lowerPaths)
	}
}

// hardlinkLower makes name in ph a hardlink to target trel (a clean path)
// as the merged view has it, after the target was not found in this
// layer's own dir: a lower file is copied up into this layer, at its
// path, with everything it has, and the link made to the copy.
func (a *applier) hardlinkLower(linkname string, ph *dirHandle, name, trel string) error {
	a.waitWriters()
	tparent, tname := splitRel(trel)
	w := a.newWalk()
	defer w.close()
	n, err := w.walk(tparent, false)
	if err != nil {
		if isMissing(err) {
			return fmt.Errorf("hardlink target %q does not exist", linkname)
		}
		return fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	c, err := w.child(n, tname)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	switch c.kind {
	case mAbsent:
		return fmt.Errorf("hardlink target %q does not exist", linkname)
	case mDir:
		return fmt.Errorf("hardlink target %q is a directory", linkname)
	}
	tcanon := joinCanon(n.canon, tname)
	tfd, err := w.materialize(n)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	if c.layer > 0 {
		a.lowerChanged(tcanon)
		src := "/proc/self/fd/" + strconv.Itoa(c.pfd) + "/" + tname
		dst := "/proc/self/fd/" + strconv.Itoa(tfd) + "/" + tname
		if err := fscopy.CopyFile(src, dst); err != nil {
			return fmt.Errorf("hardlink target %q: copy up from lower layer %s: %w", linkname, a.lowers[c.layer-1].Dir, err)
		}
		if c.st.Mode&unix.S_IFMT == unix.S_IFREG {
			a.size += c.st.Size
		}
		if a.copiedUp == nil {
			a.copiedUp = make(map[string]struct{})
		}
		a.copiedUp[tcanon] = struct{}{}
	}
	return a.linkAt(linkname, tfd, tname, nil, ph, name)
}

// rootFromLower gives this layer's root, which the tar did not list, the
// attributes of the top-most lower's root, as a parent directory made for
// an entry gets them: the merged view shows this layer's root.
func (a *applier) rootFromLower() error {
	fd, err := a.lowerFd(0)
	if err != nil {
		return err
	}
	a.forgetNewOwners()
	if err := a.copyDirAttrs(fd, a.rootHandle.fd, true, ""); err != nil {
		return fmt.Errorf("root directory: %w", err)
	}
	return nil
}
