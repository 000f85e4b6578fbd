package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/store"
)

// The benchmarks run every store operation next to the bare driver calls
// it is made of, alternately within each iteration, on one tmpfs: the
// ratio (x-driver) is the cost of the store's bookkeeping (SQLite
// transactions, the lock, mount counts, the tar layout), the absolute
// times are reported too (store-ns/op, driver-ns/op).

// benchStore opens a store for driver on a fresh tmpfs, with an image
// "base", and a bare driver instance on a home of its own there.
func benchStore(b *testing.B, driver string) (*store.Store, graphdriver.Driver, string) {
	b.Helper()
	fs := loopfs.New(b, "tmpfs", 1<<30)
	root := filepath.Join(fs, "root")
	s, err := store.Open(store.Options{Root: root, Driver: driver})
	if errors.Is(err, graphdriver.ErrNotSupported) {
		b.Skipf("driver %s: %v", driver, err)
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	mustImage(b, s, []string{"base"}, baseTar)
	d, err := graphdriver.New(driver, filepath.Join(fs, "bare"), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Cleanup() })
	return s, d, root
}

// timed runs the store and driver halves of an iteration alternately
// and reports both and their ratio.
func timed(b *testing.B, storeOp, driverOp func()) {
	b.Helper()
	var st, dt time.Duration
	for b.Loop() {
		t0 := time.Now()
		storeOp()
		t1 := time.Now()
		driverOp()
		dt += time.Since(t1)
		st += t1.Sub(t0)
	}
	n := float64(b.N)
	b.ReportMetric(float64(st.Nanoseconds())/n, "store-ns/op")
	b.ReportMetric(float64(dt.Nanoseconds())/n, "driver-ns/op")
	b.ReportMetric(float64(st)/float64(dt), "x-driver")
}

func forEachDriverBench(b *testing.B, f func(b *testing.B, driver string)) {
	for _, d := range drivers() {
		b.Run(d, func(b *testing.B) { f(b, d) })
	}
}

// A container's storage lifecycle: create, mount, unmount, remove.
func BenchmarkContainerLifecycle(b *testing.B) {
	forEachDriverBench(b, func(b *testing.B, driver string) {
		s, d, _ := benchStore(b, driver)
		img, err := s.Image("base")
		if err != nil {
			b.Fatal(err)
		}
		parent := filepath.Base(img.TopLayer)
		if err := d.Create(parent, "", nil); err != nil {
			b.Fatal(err)
		}
		timed(b, func() {
			c, err := s.CreateContainer("base", nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Mount(c.ID); err != nil {
				b.Fatal(err)
			}
			if err := s.Unmount(c.ID, false); err != nil {
				b.Fatal(err)
			}
			if err := s.RemoveContainer(c.ID, false); err != nil {
				b.Fatal(err)
			}
		}, func() {
			id := hex64('d')
			if err := d.CreateReadWrite(id, parent, nil); err != nil {
				b.Fatal(err)
			}
			if _, err := d.Get(id, graphdriver.MountOpts{}); err != nil {
				b.Fatal(err)
			}
			if err := d.Put(id); err != nil {
				b.Fatal(err)
			}
			if err := d.Remove(id); err != nil {
				b.Fatal(err)
			}
		})
	})
}

// What `layers create` then `layers mount` cost in the store: each as a
// new process would do it, Open, the operation, Close. The driver half
// makes a new driver instance for each, as a process would.
func BenchmarkCreateMountAsProcesses(b *testing.B) {
	forEachDriverBench(b, func(b *testing.B, driver string) {
		s, d, root := benchStore(b, driver)
		img, _ := s.Image("base")
		parent := img.TopLayer
		if err := d.Create(parent, "", nil); err != nil {
			b.Fatal(err)
		}
		bareHome := filepath.Join(filepath.Dir(root), "bare")
		var cids []string
		var dids []string
		timed(b, func() {
			s1, err := store.Open(store.Options{Root: root})
			if err != nil {
				b.Fatal(err)
			}
			c, err := s1.CreateContainer("base", nil)
			if err != nil {
				b.Fatal(err)
			}
			s1.Close()
			s2, err := store.Open(store.Options{Root: root})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s2.Mount(c.ID); err != nil {
				b.Fatal(err)
			}
			s2.Close()
			cids = append(cids, c.ID)
		}, func() {
			id := newHexID(len(dids))
			d1, err := graphdriver.New(driver, bareHome, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := d1.CreateReadWrite(id, parent, nil); err != nil {
				b.Fatal(err)
			}
			d2, err := graphdriver.New(driver, bareHome, nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := d2.Get(id, graphdriver.MountOpts{}); err != nil {
				b.Fatal(err)
			}
			dids = append(dids, id)
		})
		b.StopTimer()
		for _, id := range cids {
			if err := s.RemoveContainer(id, false); err != nil {
				b.Fatal(err)
			}
		}
		for _, id := range dids {
			_ = d.Put(id)
			if err := d.Remove(id); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func newHexID(i int) string {
	const hexd = "0123456789abcdef"
	id := []byte(hex64('0'))
	for j := 63; i > 0; j-- {
		id[j] = hexd[i%16]
		i /= 16
	}
	return string(id)
}

// Opening a store with a few objects, and closing it, against making the
// driver instance alone.
func BenchmarkOpen(b *testing.B) {
	forEachDriverBench(b, func(b *testing.B, driver string) {
		s, _, root := benchStore(b, driver)
		if _, err := s.CreateContainer("base", nil); err != nil {
			b.Fatal(err)
		}
		bareHome := filepath.Join(filepath.Dir(root), "bare")
		timed(b, func() {
			s, err := store.Open(store.Options{Root: root})
			if err != nil {
				b.Fatal(err)
			}
			s.Close()
		}, func() {
			if _, err := graphdriver.New(driver, bareHome, nil); err != nil {
				b.Fatal(err)
			}
		})
	})
}

// Applying a 300-file layer (about 1.3 MB), then removing it.
func BenchmarkApplyDiff(b *testing.B) {
	forEachDriverBench(b, func(b *testing.B, driver string) {
		s, d, _ := benchStore(b, driver)
		tarb := bigTar(42)
		ctx := context.Background()
		b.SetBytes(int64(len(tarb)))
		timed(b, func() {
			l, err := s.ApplyDiff(ctx, "", bytes.NewReader(tarb), nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.RemoveLayer(l.ID, false); err != nil {
				b.Fatal(err)
			}
		}, func() {
			id := hex64('a')
			if err := d.Create(id, "", nil); err != nil {
				b.Fatal(err)
			}
			if _, err := graphdriver.ApplyDiff(ctx, d, id, "", bytes.NewReader(tarb), diff.ApplyOptions{}); err != nil {
				b.Fatal(err)
			}
			if err := d.Remove(id); err != nil {
				b.Fatal(err)
			}
		})
	})
}

// A chain of four 300-file layers: ApplyLayers (at once, with a native
// applier) against four ApplyDiff calls one after the other.
func BenchmarkApplyLayers(b *testing.B) {
	forEachDriverBench(b, func(b *testing.B, driver string) {
		s, _, _ := benchStore(b, driver)
		ctx := context.Background()
		var tars [][]byte
		for i := range 4 {
			tars = append(tars, filesTar(uint64(100+i), 300))
		}
		srcs := make([]store.LayerSource, len(tars))
		for i, tb := range tars {
			srcs[i] = store.LayerSource{Open: func(context.Context) (io.ReadCloser, error) {
				return io.NopCloser(bytes.NewReader(tb)), nil
			}}
		}
		prune := func() {
			if _, err := s.Prune(ctx); err != nil {
				b.Fatal(err)
			}
		}
		var chainT, seqT time.Duration
		for b.Loop() {
			t0 := time.Now()
			if _, err := s.ApplyLayers(ctx, "", srcs); err != nil {
				b.Fatal(err)
			}
			chainT += time.Since(t0)
			prune()
			t1 := time.Now()
			parent := ""
			for _, tb := range tars {
				l, err := s.ApplyDiff(ctx, parent, bytes.NewReader(tb), nil)
				if err != nil {
					b.Fatal(err)
				}
				parent = l.ID
			}
			seqT += time.Since(t1)
			prune()
		}
		b.ReportMetric(float64(chainT.Nanoseconds())/float64(b.N), "chain-ns/op")
		b.ReportMetric(float64(seqT.Nanoseconds())/float64(b.N), "serial-ns/op")
		b.ReportMetric(float64(chainT)/float64(seqT), "x-serial")
	})
}

// A commit of the workload's change set, scaled down (the peers' commit
// workload: many new small files, modified files, a removed directory),
// once in place (the driver's ReadWriteCommitter) and once by copy
// (a Rewrite that passes the tar through forces it), alternately: the
// ratio x-copy is what committing in place saves. Making the changes is
// not timed.
func BenchmarkCommitContainer(b *testing.B) {
	for _, driver := range drivers() {
		d, err := graphdriver.New(driver, b.TempDir(), nil)
		if err != nil {
			b.Fatal(err)
		}
		_, inPlace := d.(graphdriver.ReadWriteCommitter)
		if err := d.Cleanup(); err != nil {
			b.Fatal(err)
		}
		if inPlace {
			b.Run(driver, func(b *testing.B) { benchCommit(b, driver) })
		}
	}
}

func benchCommit(b *testing.B, driver string) {
	// On a disk filesystem, as the peers' workload: on tmpfs, writing
	// the copy costs next to nothing.
	s, err := store.Open(store.Options{Root: filepath.Join(loopfs.New(b, "xfs", 2<<30), "root"), Driver: driver})
	if errors.Is(err, graphdriver.ErrNotSupported) {
		b.Skipf("driver %s: %v", driver, err)
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	base := mustImage(b, s, []string{"files"}, filesTar(3, 1000))
	payload := bytes.Repeat([]byte("0123456789abcdef"), 128) // 2 KiB
	changed := func() *store.Container {
		c, err := s.CreateContainer(base.ID, nil)
		if err != nil {
			b.Fatal(err)
		}
		root, err := s.Mount(c.ID)
		if err != nil {
			b.Fatal(err)
		}
		for d := range 20 {
			dir := filepath.Join(root, "bulk", fmt.Sprintf("d%02d", d))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
			for f := range 100 {
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", f)), payload, 0o644); err != nil {
					b.Fatal(err)
				}
			}
		}
		for f := range 500 {
			if err := os.WriteFile(filepath.Join(root, "data", fmt.Sprintf("f%03d", f)), payload, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.Remove(filepath.Join(root, "data", "f999")); err != nil {
			b.Fatal(err)
		}
		if err := s.Unmount(c.ID, false); err != nil {
			b.Fatal(err)
		}
		return c
	}
	clean := func(c *store.Container, l *store.Layer) {
		if err := s.RemoveContainer(c.ID, false); err != nil {
			b.Fatal(err)
		}
		if err := s.RemoveLayer(l.ID, false); err != nil && !errors.Is(err, store.ErrLayerUnknown) {
			b.Fatal(err)
		}
	}
	passThrough := &store.CommitOptions{Rewrite: func(r io.Reader) io.ReadCloser { return io.NopCloser(r) }}
	var inPlace, copied time.Duration
	for b.Loop() {
		b.StopTimer()
		c := changed()
		b.StartTimer()
		t0 := time.Now()
		l, err := s.CommitContainer(ctx, c.ID, nil)
		if err != nil {
			b.Fatal(err)
		}
		inPlace += time.Since(t0)
		b.StopTimer()
		clean(c, l)
		c = changed()
		b.StartTimer()
		t1 := time.Now()
		if l, err = s.CommitContainer(ctx, c.ID, passThrough); err != nil {
			b.Fatal(err)
		}
		copied += time.Since(t1)
		b.StopTimer()
		clean(c, l)
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(float64(inPlace.Nanoseconds())/n, "in-place-ns/op")
	b.ReportMetric(float64(copied.Nanoseconds())/n, "copy-ns/op")
	b.ReportMetric(float64(inPlace)/float64(copied), "x-copy")
}
