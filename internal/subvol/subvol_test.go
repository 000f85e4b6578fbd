package subvol

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/internal/subvol/subvoltest"
)

func TestCreateSnapshotDelete(t *testing.T) {
	mnt := loopfs.New(t, "btrfs", 0)
	if ok, err := IsBtrfs(mnt); err != nil || !ok {
		t.Fatalf("IsBtrfs(%s) = %v, %v", mnt, ok, err)
	}
	a := filepath.Join(mnt, "a")
	if err := Create(a); err != nil {
		t.Fatal(err)
	}
	if ok, err := IsSubvolume(a); err != nil || !ok {
		t.Fatalf("IsSubvolume(new subvolume) = %v, %v", ok, err)
	}
	if err := os.MkdirAll(filepath.Join(a, "d/e"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a, "d/e/f"), []byte("data"), 0o640); err != nil {
		t.Fatal(err)
	}
	if ok, err := IsSubvolume(filepath.Join(a, "d")); err != nil || ok {
		t.Fatalf("IsSubvolume(plain dir) = %v, %v", ok, err)
	}
	b := filepath.Join(mnt, "b")
	if err := Snapshot(a, b); err != nil {
		t.Fatal(err)
	}
	if ok, err := IsSubvolume(b); err != nil || !ok {
		t.Fatalf("IsSubvolume(snapshot) = %v, %v", ok, err)
	}
	got, err := os.ReadFile(filepath.Join(b, "d/e/f"))
	if err != nil || string(got) != "data" {
		t.Fatalf("snapshot content %q, %v", got, err)
	}
	// The snapshot is writable and independent of its source.
	if err := os.WriteFile(filepath.Join(b, "d/e/f"), []byte("new"), 0o640); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(a, "d/e/f")); string(got) != "data" {
		t.Fatalf("source changed through its snapshot: %q", got)
	}
	if l := subvoltest.Listed(t, mnt); len(l) != 2 || l[0] != "a" || l[1] != "b" {
		t.Fatalf("subvolumes %q, want [a b]", l)
	}
	if err := Snapshot(a, b); !errors.Is(err, unix.EEXIST) {
		t.Errorf("snapshot onto an existing name: %v, want EEXIST", err)
	}
	for _, p := range []string{b, a} {
		if err := Delete(p); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s after Delete: %v", p, err)
		}
	}
	if l := subvoltest.Listed(t, mnt); len(l) != 0 {
		t.Fatalf("subvolumes left: %q", l)
	}
}

// Snapshotting a plain directory, or deleting one as a subvolume, fails
// and changes nothing.
func TestNotASubvolume(t *testing.T) {
	mnt := loopfs.New(t, "btrfs", 0)
	dir := filepath.Join(mnt, "plain")
	if err := os.MkdirAll(filepath.Join(dir, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := Snapshot(dir, filepath.Join(mnt, "snap"))
	if err == nil || !Unsupported(err) {
		t.Errorf("snapshot of a plain directory: %v, want an error Unsupported accepts", err)
	}
	if _, err := os.Lstat(filepath.Join(mnt, "snap")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed snapshot left something: %v", err)
	}
	if err := Delete(dir); err == nil {
		t.Error("Delete of a plain directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err != nil {
		t.Errorf("failed Delete changed the directory: %v", err)
	}
}

// Elsewhere than on btrfs the ioctls are refused in a way Unsupported
// recognises, so callers fall back to plain directories.
func TestElsewhere(t *testing.T) {
	for _, typ := range []string{"tmpfs", "xfs"} {
		t.Run(typ, func(t *testing.T) {
			mnt := loopfs.New(t, typ, 0)
			if ok, err := IsBtrfs(mnt); err != nil || ok {
				t.Fatalf("IsBtrfs = %v, %v", ok, err)
			}
			p := filepath.Join(mnt, "sv")
			err := Create(p)
			if err == nil || !Unsupported(err) {
				t.Fatalf("Create on %s: %v, want an error Unsupported accepts", typ, err)
			}
			if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("failed Create left something: %v", err)
			}
			if ok, err := IsSubvolume(mnt); err != nil || ok {
				t.Errorf("IsSubvolume(%s root) = %v, %v", typ, ok, err)
			}
		})
	}
}

func TestBadNames(t *testing.T) {
	for _, p := range []string{"/", ".", "..", "a/.."} {
		if err := Create(p); !errors.Is(err, unix.EINVAL) {
			t.Errorf("Create(%q): %v, want EINVAL", p, err)
		}
	}
	if err := Create(strings.Repeat("n", 5000)); !errors.Is(err, unix.EINVAL) {
		t.Errorf("Create(long name): %v, want EINVAL", err)
	}
	if err := Snapshot("/nonexistent-subvol-src", "/tmp/x"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Snapshot of a missing source: %v", err)
	}
}
