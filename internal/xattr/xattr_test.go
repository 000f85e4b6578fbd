package xattr

import (
	"bytes"
	"errors"
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
