package diff

// The serial Export as it was before the fast exporter (commit 2d19fac),
// kept verbatim as the oracle of TestExportMatchesReference: the fast one
// must write the same bytes for every tree.

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func refExport(ctx context.Context, w io.Writer, root string, changes []Change, opts ExportOptions) error {
	sorted := make([]Change, len(changes))
	copy(sorted, changes)
	SortChanges(sorted)

	ds, err := openDirStack(root)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	e := &refExporter{
		ctx:     ctx,
		tw:      tar.NewWriter(w),
		root:    root,
		ds:      ds,
		opts:    opts,
		dirs:    make(map[string]bool),
		links:   make(map[inodeKey]string),
		changes: sorted,
		buf:     make([]byte, 128<<10),
	}
	defer e.ds.close()
	last := "" // path of the last change written, to write duplicates once
	for i := 0; i < len(sorted); i++ {
		if err := ctx.Err(); err != nil {
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
	if err := e.tw.Close(); err != nil {
		return fmt.Errorf("export: finish tar: %w", err)
	}
	return nil
}

// refExporter holds the state of one Export.
type refExporter struct {
	ctx  context.Context
	tw   *tar.Writer
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
	buf   []byte

	changes []Change
	// unchangedLinks maps the inode of each hardlinked regular file of
	// root that is not in changes to its first name in walk order; it is
	// built on the first hardlinked file exported, since only then is the
	// walk of all of root worth it.
	unchangedLinks map[inodeKey]string
}

// unchangedName returns the tar name of a name of inode key that is not in
// the exported set, or "" when every name of it is exported.
func (e *refExporter) unchangedName(key inodeKey) (string, error) {
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
func (e *refExporter) walkLinks(s *dirStack, exported map[string]bool) error {
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
func (e *refExporter) deleted(p string, replaced bool) error {
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
func (e *refExporter) marker(name string) error {
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		ModTime:  whiteoutTime,
		Format:   tar.FormatPAX,
	}
	if err := e.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("export %s: %w", name, err)
	}
	return nil
}

// enter moves e.ds to the parent directory of p, writing every ancestor
// directory of p not written yet, and returns the parent's descriptor and
// p's name in it.
func (e *refExporter) enter(p string) (int, string, error) {
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
func (e *refExporter) entry(p string) error {
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

// writeEntry writes the header (and content) of p, whose lstat is st and
// which is entry name of the directory e.ds is on.
func (e *refExporter) writeEntry(p, name string, st *unix.Stat_t) error {
	dirfd := e.ds.fd()
	typ := st.Mode & unix.S_IFMT
	if typ == unix.S_IFDIR {
		e.dirs[p] = true
	}
	hdr := &tar.Header{
		Name:    tarName(p, typ == unix.S_IFDIR),
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: e.mtime(st),
		Format:  tar.FormatPAX,
	}
	switch typ {
	case unix.S_IFDIR:
		hdr.Typeflag = tar.TypeDir
	case unix.S_IFREG:
		hdr.Typeflag = tar.TypeReg
		hdr.Size = st.Size
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
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				hdr.Size = 0
				// The link shares the first entry's inode: its
				// xattrs were written there.
				if err := e.tw.WriteHeader(hdr); err != nil {
					return fmt.Errorf("export %s: %w", p, err)
				}
				return nil
			}
			e.links[key] = hdr.Name
		}
	case unix.S_IFLNK:
		hdr.Typeflag = tar.TypeSymlink
		target, err := readlinkAt(dirfd, name)
		if err != nil {
			return fmt.Errorf("export %s: readlink: %w", p, err)
		}
		hdr.Linkname = target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if typ == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor = int64(unix.Major(uint64(st.Rdev)))
		hdr.Devminor = int64(unix.Minor(uint64(st.Rdev)))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	case unix.S_IFSOCK:
		return nil // a tar cannot hold a socket; it is recreated by whoever binds it
	default:
		return fmt.Errorf("export %s: unsupported file type %#o", p, typ)
	}
	xattrs, err := exportXattrs(e.ds.procPath(name))
	if err != nil {
		return fmt.Errorf("export %s: %w", p, err)
	}
	if len(xattrs) > 0 {
		hdr.PAXRecords = make(map[string]string, len(xattrs))
		for k, v := range xattrs {
			// archive/tar sorts PAX records when writing, so map order
			// does not leak into the bytes.
			hdr.PAXRecords["SCHILY.xattr."+k] = string(v)
		}
	}
	if err := e.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("export %s: %w", p, err)
	}
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		return e.copyContent(p, dirfd, name, hdr.Size)
	}
	return nil
}

// copyContent writes exactly size bytes of file name of directory dirfd
// (layer path p). A file that shrank
// since it was stat'ed is an error (the header already promised size
// bytes); growth past size is not seen, as with any tar of a live tree.
func (e *refExporter) copyContent(p string, dirfd int, name string, size int64) error {
	// O_NOFOLLOW: the entry was lstat'ed as a regular file; if it has
	// been swapped for a symlink since, fail rather than read whatever it
	// points to (possibly outside root). A raw descriptor rather than an
	// os.File: os.OpenFile tries to register every file with the poller,
	// a wasted syscall per file that BenchmarkExport showed at ~10%.
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("export %s: open: %w", p, err)
	}
	defer unix.Close(fd)
	var n int64
	for n < size {
		if err := e.ctx.Err(); err != nil {
			return fmt.Errorf("export %s: %w", p, err)
		}
		buf := e.buf
		if rest := size - n; rest < int64(len(buf)) {
			buf = buf[:rest]
		}
		m, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("export %s: read: %w", p, err)
		}
		if m == 0 {
			return fmt.Errorf("export %s: file shrank while being read (%d of %d bytes): %w", p, n, size, io.ErrUnexpectedEOF)
		}
		if _, err := e.tw.Write(buf[:m]); err != nil {
			return fmt.Errorf("export %s: %w", p, err)
		}
		n += int64(m)
	}
	return nil
}

// mtime returns st's mtime, clamped to SourceDateEpoch when set.
func (e *refExporter) mtime(st *unix.Stat_t) time.Time {
	t := time.Unix(int64(st.Mtim.Sec), int64(st.Mtim.Nsec))
	if e.opts.SourceDateEpoch != nil && t.After(*e.opts.SourceDateEpoch) {
		t = *e.opts.SourceDateEpoch
	}
	return t
}
