package graphdriver

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func mountNeedRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount)")
	}
}

func TestMountUnmountTmpfs(t *testing.T) {
	mountNeedRoot(t)
	dir := t.TempDir()
	if ok, err := IsMountpoint(dir); err != nil || ok {
		t.Fatalf("IsMountpoint before mount = %v, %v", ok, err)
	}
	if err := Mount("layers-test", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = UnmountDetach(dir) })
	if ok, err := IsMountpoint(dir); err != nil || !ok {
		t.Fatalf("IsMountpoint after mount = %v, %v", ok, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Unmount(dir); err != nil {
		t.Fatal(err)
	}
	if ok, _ := IsMountpoint(dir); ok {
		t.Fatal("still mounted")
	}
	if _, err := os.Stat(filepath.Join(dir, "f")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file of the tmpfs still visible: %v", err)
	}
	// Not mounted, missing: not errors.
	if err := Unmount(dir); err != nil {
		t.Errorf("Unmount of a plain dir: %v", err)
	}
	if err := Unmount(filepath.Join(dir, "nope")); err != nil {
		t.Errorf("Unmount of a missing path: %v", err)
	}
	if err := UnmountDetach(dir); err != nil {
		t.Errorf("UnmountDetach of a plain dir: %v", err)
	}
}

func TestBindMountIsMountpoint(t *testing.T) {
	mountNeedRoot(t)
	dir := t.TempDir()
	if err := Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer Unmount(dir)
	if ok, err := IsMountpoint(dir); err != nil || !ok {
		t.Fatalf("bind mount of a dir on itself: IsMountpoint = %v, %v", ok, err)
	}
}

func TestUnmountBusyThenDetach(t *testing.T) {
	mountNeedRoot(t)
	dir := t.TempDir()
	if err := Mount("tmpfs", dir, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	// An open directory fd inside keeps the mount busy.
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = Unmount(dir)
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Unmount of a busy mount: %v, want EBUSY naming %s", err, dir)
	}
	if err := UnmountDetach(dir); err != nil {
		t.Fatal(err)
	}
	if ok, _ := IsMountpoint(dir); ok {
		t.Fatal("still mounted after detach")
	}
}

func TestMountErrorSaysWhat(t *testing.T) {
	dir := t.TempDir()
	err := Mount("/nonexistent-src", dir, "no-such-fs", 0, "a=b")
	if err == nil {
		t.Fatal("mount of an unknown filesystem type succeeded")
	}
	for _, want := range []string{"/nonexistent-src", dir, "no-such-fs", "a=b"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestIsMountpointMissing(t *testing.T) {
	if _, err := IsMountpoint(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Fatal("IsMountpoint of a missing path gave no error")
	}
}

func TestMountCount(t *testing.T) {
	mountNeedRoot(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "m")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	c := NewMountCount(filepath.Join(dir, "count"), target)
	mounts, unmounts := 0, 0
	mount := func() error { mounts++; return Mount("layers-test", target, "tmpfs", 0, "size=1m") }
	unmount := func() error { unmounts++; return Unmount(target) }
	t.Cleanup(func() { _ = UnmountDetach(target) })
	count := func() int {
		t.Helper()
		n, err := c.Count()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	if _, err := c.Release(unmount); err != nil || unmounts != 0 || count() != 0 {
		t.Fatalf("Release at zero: err %v, %d unmounts, count %d; want a no-op", err, unmounts, count())
	}
	for i := 1; i <= 3; i++ {
		if _, err := c.Acquire(mount); err != nil {
			t.Fatal(err)
		}
		if count() != i {
			t.Fatalf("count %d after %d Acquires", count(), i)
		}
	}
	if mounts != 1 {
		t.Fatalf("%d mounts for 3 Acquires, want 1", mounts)
	}
	// Another holder of the same file (another process) sees the count.
	if n, err := NewMountCount(filepath.Join(dir, "count"), target).Count(); err != nil || n != 3 {
		t.Fatalf("second handle: count %d, %v", n, err)
	}
	for i := 2; i >= 0; i-- {
		if _, err := c.Release(unmount); err != nil {
			t.Fatal(err)
		}
		if count() != i {
			t.Fatalf("count %d, want %d", count(), i)
		}
	}
	if unmounts != 1 {
		t.Fatalf("%d unmounts, want 1", unmounts)
	}
	if ok, _ := IsMountpoint(target); ok {
		t.Fatal("still mounted after the last Release")
	}

	// A failed mount leaves the count as it was.
	if _, err := c.Acquire(func() error { return errors.New("no") }); err == nil || count() != 0 {
		t.Fatalf("failed mount: err %v, count %d", err, count())
	}

	// A count whose mount vanished (unmounted behind its back, as after
	// a reboot or a crash) reads as zero, and the next Acquire mounts.
	if _, err := c.Acquire(mount); err != nil {
		t.Fatal(err)
	}
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}
	if count() != 0 {
		t.Fatalf("count %d after the mount vanished, want 0", count())
	}
	if did, err := c.Acquire(mount); err != nil || !did {
		t.Fatalf("Acquire after the mount vanished: mounted %v, %v", did, err)
	}
	// A failing unmount keeps the reference.
	if _, err := c.Release(func() error { return errors.New("busy") }); err == nil || count() != 1 {
		t.Fatalf("failed unmount: err %v, count %d; want an error and the count kept", err, count())
	}
	if err := c.Reset(); err != nil || count() != 0 {
		t.Fatalf("Reset: %v, count %d", err, count())
	}
	// A damaged file counts one reference while mounted.
	if err := os.WriteFile(filepath.Join(dir, "count"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if count() != 1 {
		t.Fatalf("damaged count while mounted reads %d, want 1", count())
	}
}

func TestMountCountConcurrent(t *testing.T) {
	mountNeedRoot(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "m")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = UnmountDetach(target) })
	var mu sync.Mutex
	mounts, unmounts := 0, 0
	done := make(chan error)
	for range 16 {
		go func() {
			// Each goroutine its own handle, as separate processes.
			c := NewMountCount(filepath.Join(dir, "count"), target)
			for range 10 {
				if _, err := c.Acquire(func() error {
					mu.Lock()
					mounts++
					mu.Unlock()
					return Mount("layers-test", target, "tmpfs", 0, "size=1m")
				}); err != nil {
					done <- err
					return
				}
				if ok, err := IsMountpoint(target); err != nil || !ok {
					done <- errors.New("not mounted while a reference is held")
					return
				}
				if _, err := c.Release(func() error {
					mu.Lock()
					unmounts++
					mu.Unlock()
					return Unmount(target)
				}); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 16 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if mounts != unmounts || mounts == 0 {
		t.Fatalf("%d mounts, %d unmounts", mounts, unmounts)
	}
	if ok, _ := IsMountpoint(target); ok {
		t.Fatal("mounted after every reference went")
	}
}
