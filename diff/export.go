package diff

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ExportOptions tune Export.
type ExportOptions struct {
	// SourceDateEpoch, when set, clamps every mtime later than it down to
	// it (the SOURCE_DATE_EPOCH convention of reproducible builds, as
	// buildkit and umoci apply it): rebuilding the same content at another
	// time then gives the same layer digest. Earlier mtimes are kept.
	SourceDateEpoch *time.Time
}

// whiteoutTime is the mtime of whiteout and opaque marker entries. They are
// never materialised as files, so any fixed value will do; a fixed one
// (the epoch) keeps the tar a function of the tree alone.
var whiteoutTime = time.Unix(0, 0)

// Export writes changes as an uncompressed OCI layer tar to w, reading the
// content of added and modified paths from root (the upper tree the changes
// were computed against).
//
// The tar is deterministic: the same tree and changes give the same bytes,
// hence the same diffID. Entries come in component order (ComparePaths);
// changes are sorted first, so callers may pass them in any order. Headers
// are PAX with numeric owners only (no user or group names, which depend on
// the host's databases), mtimes to the nanosecond, no atime or ctime, and
// xattrs as SCHILY.xattr records (overlay-internal ones and security.selinux
// are never written, see exportXattr).
//
// Entries are read relative to open directory descriptors, one name at a
// time, so paths longer than PATH_MAX below root are handled; nothing below
// root is followed, and a path component that is not a directory (a
// symlink included) is an error naming it.
//
// On several CPUs, entries' xattrs and small files' content are read by
// a few goroutines ahead of the one writing the tar (export_pipeline.go);
// that changes no byte, and Export returns only once all of them have
// stopped and closed what they opened, so a caller may unmount root right
// after.
//
// Every parent directory of a changed path is written too, with its
// attributes from root, even when unchanged, so that the tar is
// self-contained for any applier (containerd does the same).
//
// A Delete is written as a ".wh.NAME" whiteout. A Delete followed by an Add
// of the same path (a replacement, as Changes reports a directory replaced
// by a file or the reverse, and as overlay's native differ reports an
// opaque directory) becomes, when the new entry is a directory, the
// directory followed by its ".wh..wh..opq" opaque marker, so that nothing
// of the old directory shows through; when the new entry is not a
// directory, the whiteout is written right before the new entry.
//
// Regular files that are hardlinked to each other within the exported set
// are written once, by the first in order; the others become hardlink
// entries naming it. A hardlinked file that also has a name outside the
// exported set (an unchanged file, present in the lower tree with the same
// content) is written as a hardlink to that name instead, so the applied
// layer keeps the link; containerd and moby write a copy and lose it. Sockets cannot be represented in a tar and are skipped
// silently, as is a change of "/" itself (the root has no entry in a layer
// tar). A path in changes that no longer exists in root, that is not
// absolute and clean, or that has a name starting with ".wh." (which no
// layer tar can carry) is an error.
func Export(ctx context.Context, w io.Writer, root string, changes []Change, opts ExportOptions) error {
	return export(ctx, w, root, changes, opts, exportWorkers(len(changes)))
}

// export is Export with workers goroutines reading entries ahead of the
// writer (0: all on the caller's goroutine).
func export(ctx context.Context, w io.Writer, root string, changes []Change, opts ExportOptions, workers int) error {
	sorted := make([]Change, len(changes))
	copy(sorted, changes)
	SortChanges(sorted)

	ds, err := openDirStack(root)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	e := &exporter{
		ctx:     ctx,
		root:    root,
		ds:      ds,
		opts:    opts,
		dirs:    make(map[string]bool),
		links:   make(map[inodeKey]string),
		changes: sorted,
	}
	defer e.ds.close()
	return e.run(w, workers)
}

// plan walks the sorted changes and emits, in tar order, every entry to
// write, until done or an error (which is returned, not emitted).
func (e *exporter) plan() error {
	sorted := e.changes
	last := "" // path of the last change written, to write duplicates once
	for i := 0; i < len(sorted); i++ {
		if err := e.ctx.Err(); err != nil {
			return fmt.Errorf("export: %w", err)
		}
		c := sorted[i]
		if c.Path == "/" && c.Kind != ChangeDelete {
			// The layer root has no entry of its own in a layer tar (its
			// attributes are the mount point's); a native differ may
			// still report it.
			continue
		}
		if err := checkChangePath(c.Path); err != nil {
			return err
		}
		if c.Kind == ChangeDelete {
			// Several Deletes of one path (callers may merge lists) are one.
			for i+1 < len(sorted) && sorted[i+1].Path == c.Path && sorted[i+1].Kind == ChangeDelete {
				i++
			}
			replaced := i+1 < len(sorted) && sorted[i+1].Path == c.Path
			if replaced {
				i++
			}
			if err := e.deleted(c.Path, replaced); err != nil {
				return err
			}
			last = c.Path
			continue
		}
		if c.Path == last || e.dirs[c.Path] {
			continue // Add and Modify of one path: write it once
		}
		if err := e.entry(c.Path); err != nil {
			return err
		}
		last = c.Path
	}
	return nil
}

// WriteDiff writes the changes from lower to upper as an uncompressed layer
// tar to w: Changes followed by Export of upper. lower "" is an empty tree,
// so the tar holds all of upper.
func WriteDiff(ctx context.Context, w io.Writer, lower, upper string, opts ExportOptions) error {
	changes, err := Changes(ctx, lower, upper)
	if err != nil {
		return err
	}
	return Export(ctx, w, upper, changes, opts)
}

// checkChangePath rejects paths that would not name an entry inside the
// layer: the tar names are derived from them, and a ".." or a relative path
// would write outside it on some appliers. A name starting with ".wh." is
// rejected too: every applier would read it as a whiteout (or, for
// ".wh..wh.", as AUFS metadata), so such a file cannot travel in a layer;
// an error beats a layer that silently deletes something else.
func checkChangePath(p string) error {
	if !strings.HasPrefix(p, "/") || p == "/" || path.Clean(p) != p {
		return fmt.Errorf("export %q: change path must be absolute, clean and not /", p)
	}
	for _, name := range strings.Split(p[1:], "/") {
		if strings.HasPrefix(name, WhiteoutPrefix) {
			return fmt.Errorf("export %q: name %q would be read as a whiteout by appliers", p, name)
		}
	}
	return nil
}

type inodeKey struct{ dev, ino uint64 }

// exporter holds the state of one Export. Its walk of the changes (plan
// and what it calls) runs on one goroutine: it stats each entry, decides
// what the tar holds (parents, hardlinks, whiteouts) and emits the entries
// in order; reading their xattrs and content, and writing the tar, happen
// in exportItem.prepare and tarOut.write (export_pipeline.go).
type exporter struct {
	ctx  context.Context
	root string
	// ds is open on the directory of the last entry written: entries come
	// in component order, so most entries only need their parent's
	// descriptor, already open, and moving to the next directory opens
	// (and closes) one level at a time. Entries are read relative to it,
	// so paths of any length are handled and nothing below root is
	// followed.
	ds   *dirStack
	opts ExportOptions
	// dirs holds the directories already in the tar, so parents are
	// written once; files are not remembered, so memory follows the
	// number of directories, not of files.
	dirs  map[string]bool
	links map[inodeKey]string // first tar name of each hardlinked regular file written

	changes []Change
	// unchangedLinks maps the inode of each hardlinked regular file of
	// root that is not in changes to its first name in walk order; it is
	// built on the first hardlinked file exported, since only then is the
	// walk of all of root worth it.
	unchangedLinks map[inodeKey]string

	// emit hands one entry to the writer, in order; false means the
	// export is being abandoned (the writer failed) and plan must stop.
	emit func(*exportItem) bool
	// shared: items read relative to other descriptors than ds's own,
	// duplicated, since ds closes its own while they are still read.
	shared bool
	ref    *dirRef // the descriptor of ds's top directory that items hold
}

// errAbandoned stops plan when the writer has failed; the writer's error
// is the one Export returns.
var errAbandoned = errors.New("export abandoned")

// unchangedName returns the tar name of a name of inode key that is not in
// the exported set, or "" when every name of it is exported.
func (e *exporter) unchangedName(key inodeKey) (string, error) {
	if e.unchangedLinks == nil {
		exported := make(map[string]bool, len(e.changes))
		for _, c := range e.changes {
			if c.Kind != ChangeDelete {
				exported[c.Path] = true
			}
		}
		e.unchangedLinks = make(map[inodeKey]string)
		s, err := openDirStack(e.root)
		if err == nil {
			err = e.walkLinks(s, exported)
			s.close()
		}
		if err != nil {
			return "", fmt.Errorf("export: find unchanged hardlinks: %w", err)
		}
	}
	return e.unchangedLinks[key], nil
}

// walkLinks records in e.unchangedLinks the hardlinked regular files below
// the top directory of s that are not exported, depth first in name order.
func (e *exporter) walkLinks(s *dirStack, exported map[string]bool) error {
	if err := e.ctx.Err(); err != nil {
		return err
	}
	ents, err := s.list()
	if err != nil {
		return err
	}
	for i := range ents {
		st := &ents[i].st
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if st.Nlink < 2 {
				continue
			}
			p := joinLayerPath(s.cur, ents[i].name)
			if exported[p] {
				continue
			}
			k := inodeKey{uint64(st.Dev), st.Ino}
			if _, seen := e.unchangedLinks[k]; !seen {
				e.unchangedLinks[k] = tarName(p, false)
			}
		case unix.S_IFDIR:
			if err := s.push(ents[i].name); err != nil {
				return err
			}
			err := e.walkLinks(s, exported)
			if perr := s.pop(); err == nil {
				err = perr
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// deleted writes the whiteout of p, or, when p was replaced by a new entry,
// the new entry with what hides the old one.
func (e *exporter) deleted(p string, replaced bool) error {
	dirfd, name, err := e.enter(p)
	if err != nil {
		return err
	}
	if replaced {
		st, err := lstatAt(dirfd, name)
		if err != nil {
			return fmt.Errorf("export %s: lstat %s: %w", p, e.ds.hostPath(p), err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := e.writeEntry(p, name, &st); err != nil {
				return err
			}
			return e.marker(tarName(p, true) + WhiteoutOpaqueDir)
		}
	}
	if err := e.marker(tarName(e.ds.cur, true) + WhiteoutPrefix + name); err != nil {
		return err
	}
	if replaced {
		return e.entry(p)
	}
	return nil
}

// marker writes a whiteout or opaque marker: an empty regular file with
// mode 0, owner 0:0 and a fixed mtime, as the image-spec describes them.
func (e *exporter) marker(name string) error {
	it := &exportItem{
		hdr:     tarHeader{typeflag: tar.TypeReg, name: name, mtime: whiteoutTime},
		errName: name,
	}
	if !e.emit(it) {
		return errAbandoned
	}
	return nil
}

// enter moves e.ds to the parent directory of p, writing every ancestor
// directory of p not written yet, and returns the parent's descriptor and
// p's name in it.
func (e *exporter) enter(p string) (int, string, error) {
	name := lastName(p)
	dir := p[:len(p)-len(name)-1]
	if dir == "" {
		dir = "/"
	}
	s := e.ds
	if dir == s.cur {
		return s.fd(), name, nil
	}
	for !isUnder(dir, s.cur) {
		if err := s.pop(); err != nil {
			return -1, "", fmt.Errorf("export %s: %w", p, err)
		}
	}
	// rest is "/c1/c2...", the components still to enter, or "".
	rest := dir[len(s.cur):]
	if s.cur == "/" && dir != "/" {
		rest = dir
	}
	for rest != "" {
		rest = rest[1:] // the slash before the next component
		c := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			c, rest = rest[:i], rest[i:]
		} else {
			rest = ""
		}
		sub := joinLayerPath(s.cur, c)
		if !e.dirs[sub] {
			st, err := lstatAt(s.fd(), c)
			if err != nil {
				return -1, "", fmt.Errorf("export %s: parent: lstat %s: %w", p, s.hostPath(sub), err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return -1, "", fmt.Errorf("export %s: parent %s is not a directory in %s", p, sub, e.root)
			}
			if err := e.writeEntry(sub, c, &st); err != nil {
				return -1, "", err
			}
		}
		if err := s.push(c); err != nil {
			return -1, "", fmt.Errorf("export %s: parent: %w", p, err)
		}
	}
	return s.fd(), name, nil
}

// entry writes path p of root with its parents.
func (e *exporter) entry(p string) error {
	dirfd, name, err := e.enter(p)
	if err != nil {
		return err
	}
	st, err := lstatAt(dirfd, name)
	if err != nil {
		return fmt.Errorf("export %s: lstat %s: %w", p, e.ds.hostPath(p), err)
	}
	return e.writeEntry(p, name, &st)
}

// writeEntry emits the entry of p, whose lstat is st and which is entry
// name of the directory e.ds is on.
func (e *exporter) writeEntry(p, name string, st *unix.Stat_t) error {
	dirfd := e.ds.fd()
	typ := st.Mode & unix.S_IFMT
	if typ == unix.S_IFDIR {
		e.dirs[p] = true
	}
	it := &exportItem{
		hdr: tarHeader{
			name:  tarName(p, typ == unix.S_IFDIR),
			mode:  int64(st.Mode & 0o7777),
			uid:   int(st.Uid),
			gid:   int(st.Gid),
			mtime: e.mtime(st),
		},
		path:    p,
		errName: p,
		name:    name,
		xattrs:  true,
	}
	hdr := &it.hdr
	switch typ {
	case unix.S_IFDIR:
		hdr.typeflag = tar.TypeDir
	case unix.S_IFREG:
		hdr.typeflag = tar.TypeReg
		hdr.size = st.Size
		if st.Nlink > 1 {
			key := inodeKey{uint64(st.Dev), st.Ino}
			first, ok := e.links[key]
			if !ok {
				unchanged, err := e.unchangedName(key)
				if err != nil {
					return fmt.Errorf("export %s: %w", p, err)
				}
				if unchanged != "" {
					first, ok = unchanged, true
					e.links[key] = unchanged
				}
			}
			if ok {
				hdr.typeflag = tar.TypeLink
				hdr.linkname = first
				hdr.size = 0
				// The link shares the first entry's inode: its
				// xattrs were written there.
				it.xattrs = false
				break
			}
			e.links[key] = hdr.name
		}
	case unix.S_IFLNK:
		hdr.typeflag = tar.TypeSymlink
		target, err := readlinkAt(dirfd, name)
		if err != nil {
			return fmt.Errorf("export %s: readlink: %w", p, err)
		}
		hdr.linkname = target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.typeflag = tar.TypeChar
		if typ == unix.S_IFBLK {
			hdr.typeflag = tar.TypeBlock
		}
		hdr.devmajor = int64(unix.Major(uint64(st.Rdev)))
		hdr.devminor = int64(unix.Minor(uint64(st.Rdev)))
	case unix.S_IFIFO:
		hdr.typeflag = tar.TypeFifo
	case unix.S_IFSOCK:
		return nil // a tar cannot hold a socket; it is recreated by whoever binds it
	default:
		return fmt.Errorf("export %s: unsupported file type %#o", p, typ)
	}
	if it.xattrs || (hdr.typeflag == tar.TypeReg && hdr.size > 0) {
		ref, err := e.dirRef()
		if err != nil {
			return fmt.Errorf("export %s: %w", p, err)
		}
		ref.refs.Add(1)
		it.dir = ref
	}
	if !e.emit(it) {
		return errAbandoned
	}
	return nil
}

// dirRef returns the reference of the directory e.ds is on, which items
// read their entries relative to.
func (e *exporter) dirRef() (*dirRef, error) {
	fd := e.ds.fd()
	if r := e.ref; r != nil && r.path == e.ds.cur && r.orig == fd {
		return r, nil
	}
	e.releaseRef()
	r := &dirRef{fd: fd, orig: fd, path: e.ds.cur}
	if e.shared {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("duplicate descriptor of %s: %w", e.ds.hostPath(e.ds.cur), err)
		}
		r.fd, r.owned = dup, true
	}
	r.refs.Store(1) // e's own, until it moves to another directory
	e.ref = r
	return r, nil
}

// releaseRef drops e's reference to the directory it was on.
func (e *exporter) releaseRef() {
	if e.ref != nil {
		e.ref.release()
		e.ref = nil
	}
}

// mtime returns st's mtime, clamped to SourceDateEpoch when set.
func (e *exporter) mtime(st *unix.Stat_t) time.Time {
	t := time.Unix(int64(st.Mtim.Sec), int64(st.Mtim.Nsec))
	if e.opts.SourceDateEpoch != nil && t.After(*e.opts.SourceDateEpoch) {
		t = *e.opts.SourceDateEpoch
	}
	return t
}

// tarName turns an absolute layer path into a tar entry name: relative,
// with a trailing slash for directories (what docker, containerd and GNU
// tar write, and what some appliers use to recognise directories).
func tarName(p string, dir bool) string {
	name := strings.TrimPrefix(p, "/")
	if dir && name != "" {
		name += "/"
	}
	return name
}
