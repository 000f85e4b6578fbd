package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/store"
	_ "github.com/layers-storage/layers/store/all"
)

// drivers are the drivers every case runs with.
func drivers() []string { return graphdriver.Names() }

// forEachDriver runs f as a subtest per driver, each on a fresh tmpfs root.
func forEachDriver(t *testing.T, f func(t *testing.T, driver, root string)) {
	t.Helper()
	for _, d := range drivers() {
		t.Run(d, func(t *testing.T) {
			root := filepath.Join(loopfs.New(t, "tmpfs", 0), "root")
			f(t, d, root)
		})
	}
}

// open opens a store on root with driver, closing it when the test ends;
// a driver the host cannot carry skips the test.
func open(t testing.TB, driver, root string, kv ...string) *store.Store {
	t.Helper()
	opts, err := store.ParseStorageOptions(kv)
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(store.Options{Root: root, Driver: driver, DriverOptions: opts})
	if errors.Is(err, graphdriver.ErrNotSupported) {
		t.Skipf("driver %s: %v", driver, err)
	}
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		unmountAll(t, s)
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// unmountAll undoes every mount the store counts, so that no test leaves
// a mount behind.
func unmountAll(t testing.TB, s *store.Store) {
	t.Helper()
	ls, err := s.Layers()
	if err != nil {
		return // closed already
	}
	for _, l := range ls {
		if n, _, err := s.Mounted(l.ID); err == nil && n > 0 {
			if err := s.Unmount(l.ID, true); err != nil {
				t.Errorf("unmount %s: %v", l.ID, err)
			}
		}
	}
}

func tarOf(entries ...fixtures.Entry) []byte { return fixtures.Tar(entries...) }

func TestOpenApplyLayers(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		if s.DriverName() != driver {
			t.Fatalf("driver %s, want %s", s.DriverName(), driver)
		}
		base := tarOf(fixtures.Dir("etc", 0o755), fixtures.File("etc/hello", "hi\n", 0o644))
		l, err := s.ApplyDiff(context.Background(), "", bytes.NewReader(base), nil)
		if err != nil {
			t.Fatal(err)
		}
		if l.DiffID != digest.FromBytes(base) || l.ChainID != l.DiffID || l.Parent != "" || l.Kind != store.KindImage {
			t.Fatalf("layer %+v", l)
		}
		ls, err := s.Layers()
		if err != nil || len(ls) != 1 || ls[0].ID != l.ID {
			t.Fatalf("layers %v %v", ls, err)
		}
		e, err := s.CreateLayer(l.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if e.Parent != l.ID || e.DiffID != "" {
			t.Fatalf("empty layer %+v", e)
		}
		if _, err := os.Stat(root); err != nil {
			t.Fatal(err)
		}
	})
}
