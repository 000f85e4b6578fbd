package staging

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func open(t *testing.T, home string, opts Options) *Dir {
	t.Helper()
	d, err := Open(home, opts)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Debris of a killed process (no lock held: an entry without a lock file,
// or with an unlocked one, or a lock file alone) is removed by Open, while
// an entry whose lock is held is kept.
func TestOpenCleansStaleButNotLocked(t *testing.T) {
	home := t.TempDir()
	open(t, home, Options{})
	tmp := filepath.Join(home, "tmp")
	if fi, err := os.Stat(tmp); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("HOME/tmp: %v, %v", fi, err)
	}
	mk := func(rel string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(tmp, rel), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	touch := func(name string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(tmp, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mk("new-a-0000000000000001/usr/bin")
	mk("rm-b-0000000000000002/etc")
	touch("rm-b-0000000000000002.lock")
	touch("new-c-0000000000000003.lock")
	mk("new-busy-0000000000000004/usr")
	touch("new-busy-0000000000000004.lock")
	f, err := os.Open(filepath.Join(tmp, "new-busy-0000000000000004.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	open(t, home, Options{})
	if got := fmt.Sprint(names(t, tmp)); got != "[new-busy-0000000000000004 new-busy-0000000000000004.lock]" {
		t.Errorf("HOME/tmp after Open holds %v, want only the locked entry and its lock", got)
	}
	// Once the holder is gone, the next Open removes it too.
	f.Close()
	open(t, home, Options{})
	if got := names(t, tmp); len(got) != 0 {
		t.Errorf("left in HOME/tmp: %v", got)
	}
}

// An entry being built (its lock held by New) survives an Open of another
// instance, and publishes whole.
func TestOpenDuringBuild(t *testing.T) {
	home := t.TempDir()
	d := open(t, home, Options{})
	e, err := d.New("new-x")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(e.Path(), "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	called := false
	open(t, home, Options{Cleaner: func(string) error { called = true; return nil }})
	if called {
		t.Error("Open called the cleaner on an entry being built")
	}
	dst := filepath.Join(home, "x")
	if err := e.Publish(dst); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dst, "a", "b")); err != nil {
		t.Errorf("published entry: %v", err)
	}
	if err := e.Remove(); err != nil {
		t.Errorf("Remove after Publish: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dst, "a", "b")); err != nil {
		t.Errorf("Remove after Publish touched the published tree: %v", err)
	}
	if got := names(t, d.Path()); len(got) != 0 {
		t.Errorf("left in HOME/tmp: %v", got)
	}
}

// Open calls the cleaner on every stale entry, before deleting it, and
// fails with the cleaner's error.
func TestOpenCleaner(t *testing.T) {
	home := t.TempDir()
	tmp := filepath.Join(home, "tmp")
	stale := filepath.Join(tmp, "probe-0011223344556677")
	if err := os.MkdirAll(filepath.Join(stale, "merged"), 0o755); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	_, err := Open(home, Options{Cleaner: func(p string) error { return boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("Open with a failing cleaner: %v", err)
	}
	var seen []string
	open(t, home, Options{Cleaner: func(p string) error {
		if _, err := os.Stat(filepath.Join(p, "merged")); err != nil {
			t.Errorf("cleaner called after the delete: %v", err)
		}
		seen = append(seen, p)
		return nil
	}})
	if fmt.Sprint(seen) != fmt.Sprint([]string{stale}) {
		t.Errorf("cleaner saw %v, want [%s]", seen, stale)
	}
	if got := names(t, tmp); len(got) != 0 {
		t.Errorf("left in HOME/tmp: %v", got)
	}
}

// Publish never replaces: the second of two publishers of one name gets
// ErrExists and its entry stays for Remove.
func TestPublishNoReplace(t *testing.T) {
	home := t.TempDir()
	d := open(t, home, Options{})
	dst := filepath.Join(home, "layer")
	for i, want := range []error{nil, ErrExists} {
		e, err := d.New("new-layer")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(e.Path(), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(e.Path(), "f"), []byte{byte('0' + i)}, 0o644); err != nil {
			t.Fatal(err)
		}
		err = e.Publish(dst)
		if !errors.Is(err, want) || (want == nil && err != nil) {
			t.Fatalf("publish %d: %v, want %v", i, err, want)
		}
		if err := e.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dst, "f")); err != nil || string(b) != "0" {
		t.Errorf("published content %q, %v; want the first", b, err)
	}
	if got := names(t, d.Path()); len(got) != 0 {
		t.Errorf("left in HOME/tmp: %v", got)
	}
}

// RemoveTree deletes a tree, leaves nothing in HOME/tmp, and succeeds on
// a path that does not exist.
func TestRemoveTree(t *testing.T) {
	home := t.TempDir()
	d := open(t, home, Options{})
	p := filepath.Join(home, "layer")
	if err := os.MkdirAll(filepath.Join(p, "usr", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := d.RemoveTree("rm-layer", p); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Fatalf("after RemoveTree: %v", err)
		}
		if got := names(t, d.Path()); len(got) != 0 {
			t.Errorf("left in HOME/tmp: %v", got)
		}
	}
}

// Concurrent instances building, publishing and removing in one home
// while others Open it never lose a published tree nor fail.
func TestConcurrentOpen(t *testing.T) {
	home := t.TempDir()
	d := open(t, home, Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 8 {
		wg.Go(func() {
			for j := range 20 {
				e, err := d.New(fmt.Sprintf("new-%d", i))
				if err != nil {
					errs <- err
					return
				}
				if err := os.MkdirAll(filepath.Join(e.Path(), "a", "b", "c"), 0o755); err != nil {
					errs <- err
					return
				}
				dst := filepath.Join(home, fmt.Sprintf("l%d-%d", i, j))
				if err := e.Publish(dst); err != nil {
					errs <- err
					return
				}
				if _, err := os.Stat(filepath.Join(dst, "a", "b", "c")); err != nil {
					errs <- fmt.Errorf("published tree not whole: %w", err)
					return
				}
				if err := d.RemoveTree(fmt.Sprintf("rm-%d", i), dst); err != nil {
					errs <- err
					return
				}
			}
		})
		wg.Go(func() {
			for range 20 {
				if _, err := Open(home, Options{}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := names(t, d.Path()); len(got) != 0 {
		t.Errorf("left in HOME/tmp: %v", got)
	}
}
