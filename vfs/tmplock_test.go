package vfs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/loopfs"
)

// countEntries returns how many entries the tree under root holds.
func countEntries(t *testing.T, root string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(root, func(string, os.DirEntry, error) error { n++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A driver opened (New, which cleans HOME/tmp) while another instance is
// copying a layer under HOME/tmp must leave that copy alone: every Create
// that succeeds publishes a whole layer, and New never fails.
func TestNewDuringCreate(t *testing.T) {
	home := t.TempDir()
	if os.Geteuid() == 0 {
		home = loopfs.New(t, "tmpfs", 256<<20) // the host's / is slow at this churn
	}
	d := newDriver(t, home, nil)
	if err := d.Create("p", "", nil); err != nil {
		t.Fatal(err)
	}
	p, err := d.Get("p", graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		dir := filepath.Join(p, fmt.Sprintf("d%03d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for j := range 20 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d", j)), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	d.Put("p")
	want := countEntries(t, p)
	const runs = 10
	okCreates := 0
	for i := range runs {
		id := fmt.Sprintf("c%d", i)
		done := make(chan error, 1)
		go func() { done <- d.Create(id, "p", nil) }()
		time.Sleep(time.Duration(i) * time.Millisecond)
		d2, err := New(home, nil)
		if err != nil {
			t.Errorf("run %d: New during Create: %v", i, err)
		} else {
			_ = d2.Cleanup()
		}
		if err := <-done; err != nil {
			t.Logf("run %d: Create failed (allowed): %v", i, err)
			continue
		}
		okCreates++
		cp, err := d.Get(id, graphdriver.MountOpts{})
		if err != nil {
			t.Fatal(err)
		}
		if got := countEntries(t, cp); got != want {
			t.Errorf("run %d: Create returned nil but layer %s holds %d entries, want %d", i, id, got, want)
		}
		d.Put(id)
	}
	t.Logf("%d of %d Creates succeeded", okCreates, runs)
	if ents, _ := os.ReadDir(filepath.Join(home, "tmp")); len(ents) != 0 {
		t.Errorf("left in HOME/tmp: %v", ents)
	}
}
