package fscopy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/loopfs"
)

// openFds counts this process's open file descriptors.
func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// wideTree makes 300 directories (some nested, some empty, some 0555)
// with a few files each and old mtimes everywhere, so that the workers
// are still copying the files of many directories while the walker is
// already elsewhere.
func wideTree(t *testing.T, root string, fileSize int) {
	t.Helper()
	data := make([]byte, fileSize)
	for i := range 300 {
		dir := filepath.Join(root, fmt.Sprintf("d%d", i%30), fmt.Sprintf("e%d", i))
		must(t, os.MkdirAll(dir, 0o755))
		for f := range i % 7 {
			p := filepath.Join(dir, fmt.Sprintf("f%d", f))
			must(t, os.WriteFile(p, data, 0o644))
			must(t, unix.UtimesNano(p, []unix.Timespec{ts(1000, 1), ts(2000+int64(f), 3)}))
		}
		if i%5 == 0 {
			must(t, os.Symlink("f0", filepath.Join(dir, "l")))
		}
		if i%11 == 0 {
			must(t, os.Chmod(dir, 0o555))
		}
		must(t, unix.UtimesNano(dir, []unix.Timespec{ts(3000, 5), ts(4000+int64(i), 7)}))
	}
	for i := range 30 {
		must(t, unix.UtimesNano(filepath.Join(root, fmt.Sprintf("d%d", i)), []unix.Timespec{ts(5000, 0), ts(6000, 9)}))
	}
}

// Every directory gets its mode and times although its files are made by
// workers after the walker has moved on, and no fd stays open.
func TestWideTreeDirectoryAttributes(t *testing.T) {
	needRoot(t)
	for _, workers := range []int{0, 2, 4} {
		t.Run(fmt.Sprintf("workers=%d", workers), func(t *testing.T) {
			old := testWorkers
			testWorkers = workers
			defer func() { testWorkers = old }()
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			must(t, os.Mkdir(src, 0o755))
			wideTree(t, src, 100)
			before := snapshot(t, src)
			fds := openFds(t)
			if _, err := Copy(context.Background(), src, dst, Options{}); err != nil {
				t.Fatal(err)
			}
			if n := openFds(t); n != fds {
				t.Errorf("%d fds open after the copy, %d before", n, fds)
			}
			compareTrees(t, src, dst, before, snapshot(t, dst))
		})
	}
}

// A copy that fails half way (the filesystem fills up) reports the error
// and leaves no fd open, whichever directories were pending.
func TestWideTreeFailureClosesFds(t *testing.T) {
	needRoot(t)
	small := loopfs.New(t, "tmpfs", 2<<20)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	must(t, os.Mkdir(src, 0o755))
	wideTree(t, src, 16<<10) // ~14 MiB of files into 2 MiB
	fds := openFds(t)
	_, err := Copy(context.Background(), src, filepath.Join(small, "dst"), Options{})
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("copy into a full tmpfs: %v, want ENOSPC", err)
	}
	if n := openFds(t); n != fds {
		t.Errorf("%d fds open after the failed copy, %d before", n, fds)
	}
}
