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

func TestRefCounter(t *testing.T) {
	var r RefCounter
	if n := r.Decrement("a"); n != 0 {
		t.Fatalf("Decrement of unknown id = %d, want 0", n)
	}
	if n := r.Increment("a"); n != 1 {
		t.Fatalf("first Increment = %d", n)
	}
	if n := r.Increment("a"); n != 2 {
		t.Fatalf("second Increment = %d", n)
	}
	if n := r.Increment("b"); n != 1 {
		t.Fatalf("Increment of another id = %d", n)
	}
	if n := r.Decrement("a"); n != 1 {
		t.Fatalf("Decrement = %d, want 1", n)
	}
	if n := r.Decrement("a"); n != 0 {
		t.Fatalf("last Decrement = %d, want 0", n)
	}
	if n := r.Decrement("a"); n != 0 || r.Count("a") != 0 {
		t.Fatalf("extra Decrement = %d, Count %d; want 0, 0", n, r.Count("a"))
	}
	r.Forget("b")
	if r.Count("b") != 0 {
		t.Fatal("Forget kept a count")
	}

	// Concurrent use: exactly one goroutine sees 1 on the way up and one
	// sees 0 on the way down.
	var wg sync.WaitGroup
	var mu sync.Mutex
	ups, downs := 0, 0
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r.Increment("c") == 1 {
				mu.Lock()
				ups++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if r.Count("c") != 100 || ups != 1 {
		t.Fatalf("count %d, %d first increments", r.Count("c"), ups)
	}
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r.Decrement("c") == 0 {
				mu.Lock()
				downs++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if downs != 1 {
		t.Fatalf("%d goroutines saw the last reference go", downs)
	}
}
