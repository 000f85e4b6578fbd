// Package fscopy copies files and directory trees preserving everything a
// layer needs: file types (regular files, directories, symlinks, device
// nodes, fifos, sockets), hardlink groups, owners, modes including
// setuid/setgid/sticky, every extended attribute (trusted.*, security.*,
// user.*) and access/modification times with nanoseconds.
//
// File data is cloned (FICLONE) where the filesystem can share extents (xfs
// with reflink, btrfs), so a copy costs no data blocks; otherwise it is
// copied in the kernel with copy_file_range, and with read/write as the last
// resort (across filesystems, or where the kernel refuses). Sparse files stay
// sparse: when a file is copied rather than cloned only its data segments
// (SEEK_DATA/SEEK_HOLE) are written.
//
// The tree walk works on directory file descriptors and *at system calls, so
// each entry costs a handful of system calls and no path lookups from the
// root; this is what makes copies of trees with many small files fast.
// Regular files are copied by a pool of workers while the walker makes
// directories, symlinks and special files; a directory's attributes are
// set by whoever makes its last entry, so nobody waits at the end of each
// directory. A chown or chmod that would change nothing is skipped (an
// lstat costs less than the metadata transaction it saves).
package fscopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ReflinkMode says whether file data may or must be shared with the source.
type ReflinkMode int

const (
	// ReflinkAuto clones file data when the filesystem can and copies it
	// otherwise. It is the default.
	ReflinkAuto ReflinkMode = iota
	// ReflinkRequire clones file data and fails with ErrReflinkUnsupported
	// when the filesystem cannot.
	ReflinkRequire
	// ReflinkNever always copies file data, so the copy shares no extents
	// with its source (benchmarks, or hosts that distrust shared extents).
	// It copies with read/write, since copy_file_range itself shares
	// extents on xfs and btrfs.
	ReflinkNever
)

// String returns the name used in options and status output.
func (m ReflinkMode) String() string {
	switch m {
	case ReflinkAuto:
		return "auto"
	case ReflinkRequire:
		return "reflink"
	case ReflinkNever:
		return "copy"
	}
	return fmt.Sprintf("ReflinkMode(%d)", int(m))
}

// ErrReflinkUnsupported is returned under ReflinkRequire when a file cannot
// be cloned.
var ErrReflinkUnsupported = errors.New("reflink not supported")

// Options tune a copy. The zero value is the usual choice.
type Options struct {
	// Reflink says whether file data may or must be cloned.
	Reflink ReflinkMode
}

// Stats counts what a copy did.
type Stats struct {
	Dirs      int64 // directories made, the root included
	Files     int64 // regular files made (not counting extra hardlinks)
	Symlinks  int64 // symbolic links made
	Specials  int64 // device nodes, fifos and sockets made
	Hardlinks int64 // extra names linked to an entry already copied
	Cloned    int64 // regular files whose data was cloned (FICLONE)
	Copied    int64 // regular files whose data was copied (not cloned)
	Bytes     int64 // bytes of file data cloned or copied (holes excluded when copied)
}

func (s *Stats) add(o *Stats) {
	s.Dirs += o.Dirs
	s.Files += o.Files
	s.Symlinks += o.Symlinks
	s.Specials += o.Specials
	s.Hardlinks += o.Hardlinks
	s.Cloned += o.Cloned
	s.Copied += o.Copied
	s.Bytes += o.Bytes
}

// CopyTree copies the directory src to dst with every attribute preserved.
// dst must not exist (it is created) or be an empty directory (its
// attributes are replaced by src's). Hardlink groups inside src become the
// same groups inside dst. On error dst is left as far as it got; callers
// that need all-or-nothing copy into a temporary name and rename.
func CopyTree(ctx context.Context, src, dst string) error {
	_, err := Copy(ctx, src, dst, Options{})
	return err
}

// Copy is CopyTree with options, returning what it did.
func Copy(ctx context.Context, src, dst string, opts Options) (Stats, error) {
	c := newCopier(opts)
	err := c.copyTree(ctx, src, dst)
	return c.stats, err
}

// CopyFile copies the single entry src (a regular file, symlink, device
// node, fifo or socket; not a directory) to dst, which must not exist, with
// every attribute preserved. Overlay uses it to copy a hardlink target up.
func CopyFile(src, dst string) error {
	c := newCopier(Options{})
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return fmt.Errorf("copy %s: %w", src, &os.PathError{Op: "lstat", Path: src, Err: err})
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("copy %s: is a directory (use CopyTree)", src)
	}
	// With AT_FDCWD and the whole paths as names, the *at calls of the tree
	// walk work unchanged on a single entry.
	// dst's directory may carry a default ACL: drop what dst inherits.
	err := c.copyEntry(context.Background(), dirRef{fd: unix.AT_FDCWD}, dirRef{fd: unix.AT_FDCWD, inherits: true}, src, dst, &st, 0, 0)
	c.sh.closeLinks()
	return err
}

// pathErr names the entry an error happened on, with the operation.
func pathErr(op, path string, err error) error {
	return &os.PathError{Op: op, Path: path, Err: err}
}

// isEmptyDir reports whether path is an empty directory.
func isEmptyDir(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) > 0 {
		return false, nil
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	return true, nil
}
