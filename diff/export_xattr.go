package diff

import (
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/xattr"
)

// xattrPair is one extended attribute of an exported entry.
type xattrPair struct{ name, value string }

// xattrReader reads the exported attributes of entries relative to their
// directory's descriptor with listxattrat/getxattrat (Linux 6.13): one
// name resolved per call, where the path-based calls resolve
// /proc/self/fd/N/name, several lookups through procfs each time. On older
// kernels it falls back to those paths. Its buffers are reused from entry
// to entry, so one xattrReader serves one goroutine.
type xattrReader struct {
	noAt bool // the kernel has no *xattrat calls: use /proc paths
	list []byte
	val  []byte
}

// read returns the attributes of entry name of directory dirfd that belong
// in a layer (exportXattr), sorted by name; proc names the entry by path
// for the fallback.
func (r *xattrReader) read(dirfd int, name string, proc func() string) ([]xattrPair, error) {
	if r.noAt {
		return r.readPath(proc())
	}
	if r.list == nil {
		r.list = make([]byte, 1024)
	}
	var n int
	for {
		var err error
		n, err = xattr.ListAt(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, r.list)
		if err == nil {
			break
		}
		switch {
		case errors.Is(err, unix.ERANGE):
			sz, err2 := xattr.ListAt(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, nil)
			if err2 != nil {
				return nil, fmt.Errorf("list xattrs of %s: %w", proc(), err2)
			}
			r.list = make([]byte, sz+256)
			continue
		case errors.Is(err, unix.ENOTSUP):
			return nil, nil
		case errors.Is(err, unix.ENOSYS):
			r.noAt = true
			return r.readPath(proc())
		case errors.Is(err, unix.EPERM):
			// A seccomp filter may refuse syscalls it does not know
			// with EPERM: ask again the old way, which answers either.
			return r.readPath(proc())
		}
		return nil, fmt.Errorf("list xattrs of %s: %w", proc(), err)
	}
	if n == 0 {
		return nil, nil
	}
	var out []xattrPair
	for rest := r.list[:n]; len(rest) > 0; {
		i := 0
		for i < len(rest) && rest[i] != 0 {
			i++
		}
		k := rest[:i]
		rest = rest[min(i+1, len(rest)):]
		if len(k) == 0 {
			continue
		}
		attr := string(k)
		if !exportXattr(attr) {
			continue
		}
		v, ok, err := r.get(dirfd, name, attr, proc)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, xattrPair{attr, v})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// get returns the value of attr, or false when it vanished since listed.
func (r *xattrReader) get(dirfd int, name, attr string, proc func() string) (string, bool, error) {
	if r.val == nil {
		r.val = make([]byte, 4096)
	}
	for {
		n, err := xattr.GetAt(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, attr, r.val)
		switch {
		case err == nil:
			return string(r.val[:n]), true, nil
		case errors.Is(err, unix.ENODATA):
			return "", false, nil
		case errors.Is(err, unix.ERANGE):
			sz, err2 := xattr.GetAt(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, attr, nil)
			if err2 != nil {
				return "", false, fmt.Errorf("get xattr %s of %s: %w", attr, proc(), err2)
			}
			r.val = make([]byte, sz+256)
			continue
		}
		return "", false, fmt.Errorf("get xattr %s of %s: %w", attr, proc(), err)
	}
}

// readPath is read through a path that is not followed.
func (r *xattrReader) readPath(path string) ([]xattrPair, error) {
	m, err := exportXattrs(path)
	if err != nil || len(m) == 0 {
		return nil, err
	}
	out := make([]xattrPair, 0, len(m))
	for k, v := range m {
		out = append(out, xattrPair{k, string(v)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}
