// Package xattr reads and writes extended attributes without following
// symlinks, the way layer code needs them: on the entry itself, whatever it is.
package xattr

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"

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
