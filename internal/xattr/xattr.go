// Package xattr reads and writes extended attributes without following
// symlinks, the way layer code needs them: on the entry itself, whatever it is.
package xattr

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// List returns the names of the extended attributes of path, sorted, without
// following a final symlink. A filesystem without xattr support gives none.
func List(path string) ([]string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Llistxattr(path, buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err2 := unix.Llistxattr(path, nil)
			if err2 != nil {
				return nil, fmt.Errorf("list xattrs of %s: %w", path, err2)
			}
			buf = make([]byte, sz+64)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list xattrs of %s: %w", path, err)
		}
		return splitNames(buf[:n]), nil
	}
}

// Get returns the value of attribute name of path, without following a
// final symlink. A missing attribute is reported as unix.ENODATA.
func Get(path, name string) ([]byte, error) {
	buf := make([]byte, 128)
	for {
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err2 := unix.Lgetxattr(path, name, nil)
			if err2 != nil {
				return nil, fmt.Errorf("get xattr %s of %s: %w", name, path, err2)
			}
			buf = make([]byte, sz+16)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get xattr %s of %s: %w", name, path, err)
		}
		return buf[:n], nil
	}
}

// Set sets attribute name of path to value, without following a final symlink.
func Set(path, name string, value []byte) error {
	if err := unix.Lsetxattr(path, name, value, 0); err != nil {
		return fmt.Errorf("set xattr %s on %s: %w", name, path, err)
	}
	return nil
}

// Remove removes attribute name of path, without following a final symlink.
func Remove(path, name string) error {
	if err := unix.Lremovexattr(path, name); err != nil {
		return fmt.Errorf("remove xattr %s of %s: %w", name, path, err)
	}
	return nil
}

// All returns every attribute of path with its value. Attributes that vanish
// between listing and reading are skipped.
func All(path string) (map[string][]byte, error) {
	names, err := List(path)
	if err != nil || len(names) == 0 {
		return nil, err
	}
	m := make(map[string][]byte, len(names))
	for _, n := range names {
		v, err := Get(path, n)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, err
		}
		m[n] = v
	}
	return m, nil
}

// IsOverlayInternal reports whether name is an attribute overlayfs interprets
// (trusted.overlay.* or user.overlay.*). Such attributes steer the kernel
// (redirects, opaque dirs, metacopy) and must never travel inside a layer tar.
func IsOverlayInternal(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.")
}

func splitNames(b []byte) []string {
	var names []string
	for _, n := range bytes.Split(b, []byte{0}) {
		if len(n) > 0 {
			names = append(names, string(n))
		}
	}
	sort.Strings(names)
	return names
}

// Syscall numbers of listxattrat and getxattrat (Linux 6.13), the same on
// every architecture (new syscalls share one table); golang.org/x/sys does
// not wrap them yet.
const (
	sysGetxattrat  = 464
	sysListxattrat = 465
)

// ListAt is llistxattr(2) of entry name of directory dirfd, with
// listxattrat(2): the kernel resolves one name relative to dirfd rather
// than a path, so it works below PATH_MAX-long directories and costs one
// lookup. flags is unix.AT_SYMLINK_NOFOLLOW (or 0 to follow a final
// symlink). It returns the raw NUL-separated list in dest, or with a nil
// dest the size needed. On kernels before 6.13 it fails with unix.ENOSYS
// (or unix.EPERM under some seccomp filters); callers fall back to a path.
func ListAt(dirfd int, name string, flags int, dest []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	var d unsafe.Pointer
	if len(dest) > 0 {
		d = unsafe.Pointer(&dest[0])
	}
	n, _, errno := unix.Syscall6(sysListxattrat, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(flags),
		uintptr(d), uintptr(len(dest)), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// xattrArgs is the kernel's struct xattr_args on 64-bit platforms (value
// is an __aligned_u64 there, a pointer here so that the garbage collector
// and stack moves see it).
type xattrArgs struct {
	value *byte
	size  uint32
	flags uint32
}

// GetAt is lgetxattr(2) of attribute attr of entry name of directory
// dirfd, with getxattrat(2); flags and errors as for ListAt. With a nil
// dest it returns the size needed.
func GetAt(dirfd int, name string, flags int, attr string, dest []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	a, err := unix.BytePtrFromString(attr)
	if err != nil {
		return 0, err
	}
	if unsafe.Sizeof(uintptr(0)) != 8 {
		return 0, unix.ENOSYS // xattrArgs would not match the kernel's layout
	}
	args := xattrArgs{size: uint32(len(dest))}
	if len(dest) > 0 {
		args.value = &dest[0]
	}
	n, _, errno := unix.Syscall6(sysGetxattrat, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(flags),
		uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
	runtime.KeepAlive(&args)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
