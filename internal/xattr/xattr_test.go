package xattr

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRoundTripOnFileAndSymlink(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("v"), 1000)
	if err := Set(f, "user.b", big); err != nil {
		t.Skipf("user xattrs not supported here: %v", err)
	}
	if err := Set(f, "user.a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	names, err := List(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 2 || names[0] != "user.a" || names[1] != "user.b" {
		t.Fatalf("List = %q, want [user.a user.b]", names)
	}
	v, err := Get(f, "user.b")
	if err != nil || !bytes.Equal(v, big) {
		t.Fatalf("Get user.b = %d bytes, %v; want 1000 bytes", len(v), err)
	}
	all, err := All(f)
	if err != nil || len(all) != 2 || string(all["user.a"]) != "1" {
		t.Fatalf("All = %v, %v", all, err)
	}
	if err := Remove(f, "user.a"); err != nil {
		t.Fatal(err)
	}
	if _, err := Get(f, "user.a"); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("Get after Remove: %v, want ENODATA", err)
	}

	// A symlink's own attributes are read, not its target's.
	l := filepath.Join(dir, "l")
	if err := os.Symlink("f", l); err != nil {
		t.Fatal(err)
	}
	names, err = List(l)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 0 {
		t.Fatalf("List(symlink) = %q, want none (target's attributes must not show)", names)
	}
}

func TestIsOverlayInternal(t *testing.T) {
	for name, want := range map[string]bool{
		"trusted.overlay.opaque":   true,
		"user.overlay.redirect":    true,
		"trusted.overlayfoo":       false,
		"security.capability":      false,
		"user.overlay":             false,
		"trusted.overlay.metacopy": true,
	} {
		if got := IsOverlayInternal(name); got != want {
			t.Errorf("IsOverlayInternal(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestListAtGetAt checks the *at calls against the path-based ones: on a
// file, on a symlink itself (not its target), sizes with a nil buffer,
// ERANGE on a short one, ENODATA for a missing attribute.
func TestListAtGetAt(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f", filepath.Join(dir, "l")); err != nil {
		t.Fatal(err)
	}
	if err := Set(f, "user.a", []byte("value-a")); err != nil {
		t.Skipf("user xattrs not supported here: %v", err)
	}
	if err := Set(f, "user.bb", []byte("b")); err != nil {
		t.Fatal(err)
	}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	n, err := ListAt(dfd, "f", unix.AT_SYMLINK_NOFOLLOW, nil)
	if errors.Is(err, unix.ENOSYS) {
		t.Skipf("no listxattrat on this kernel (before 6.13): %v", err)
	}
	if err != nil || n != len("user.a\x00user.bb\x00") {
		t.Fatalf("ListAt size = %d, %v", n, err)
	}
	buf := make([]byte, n)
	if n, err := ListAt(dfd, "f", unix.AT_SYMLINK_NOFOLLOW, buf); err != nil || !bytes.Equal(splitJoin(buf[:n]), splitJoin([]byte("user.a\x00user.bb\x00"))) {
		t.Fatalf("ListAt = %q, %v", buf[:n], err)
	}
	if _, err := ListAt(dfd, "f", unix.AT_SYMLINK_NOFOLLOW, buf[:3]); !errors.Is(err, unix.ERANGE) {
		t.Fatalf("ListAt into a short buffer: %v, want ERANGE", err)
	}
	if n, err := ListAt(dfd, "l", unix.AT_SYMLINK_NOFOLLOW, buf); err != nil || n != 0 {
		t.Fatalf("ListAt of the symlink itself = %q, %v; want nothing", buf[:n], err)
	}
	if n, err := ListAt(dfd, "l", 0, buf); err != nil || n != len(buf) {
		t.Fatalf("ListAt through the symlink = %q, %v; want the target's", buf[:n], err)
	}
	if n, err := GetAt(dfd, "f", unix.AT_SYMLINK_NOFOLLOW, "user.a", nil); err != nil || n != len("value-a") {
		t.Fatalf("GetAt size = %d, %v", n, err)
	}
	v := make([]byte, 64)
	if n, err := GetAt(dfd, "f", unix.AT_SYMLINK_NOFOLLOW, "user.a", v); err != nil || string(v[:n]) != "value-a" {
		t.Fatalf("GetAt = %q, %v", v[:n], err)
	}
	if _, err := GetAt(dfd, "f", unix.AT_SYMLINK_NOFOLLOW, "user.a", v[:2]); !errors.Is(err, unix.ERANGE) {
		t.Fatalf("GetAt into a short buffer: %v, want ERANGE", err)
	}
	if _, err := GetAt(dfd, "f", unix.AT_SYMLINK_NOFOLLOW, "user.none", v); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("GetAt of a missing attribute: %v, want ENODATA", err)
	}
	if _, err := GetAt(dfd, "missing", unix.AT_SYMLINK_NOFOLLOW, "user.a", v); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("GetAt of a missing file: %v, want ENOENT", err)
	}
}

// splitJoin sorts a NUL-separated list, which the kernel returns in any order.
func splitJoin(b []byte) []byte {
	names := splitNames(b)
	return []byte(fmt.Sprint(names))
}
