package overlay

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/loopfs"
)

// benchDriver is a driver on a fresh tmpfs: the root ext4 of the test
// machines slows down under file churn and would measure itself.
func benchDriver(b *testing.B) *Driver {
	b.Helper()
	needRoot(b)
	home := loopfs.New(b, "tmpfs", 4<<30)
	drv, err := New(home, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = drv.Cleanup() })
	return drv.(*Driver)
}

func benchLayer(b *testing.B, d *Driver, id, parent string, tarBytes []byte) {
	b.Helper()
	if err := d.Create(id, parent, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := d.ApplyDiff(context.Background(), id, parent, bytes.NewReader(tarBytes), diff.ApplyOptions{}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkContainerLifecycle is a container's storage life: create a
// read-write layer on a 10-layer image, mount, unmount, remove. The
// baseline sub-benchmark does the same with bare syscalls (mkdir, one
// overlay mount(2) with the same lowers, umount, rmdir): the driver's cost
// is the ratio between the two.
func BenchmarkContainerLifecycle(b *testing.B) {
	d := benchDriver(b)
	parent := ""
	for i := range 10 {
		id := fmt.Sprintf("img%02d", i)
		benchLayer(b, d, id, parent, fixtures.Tar(fixtures.File(fmt.Sprintf("f%d", i), "x", 0o644)))
		parent = id
	}
	b.Run("driver", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			id := fmt.Sprintf("c%d", i)
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
		}
	})
	b.Run("syscalls", func(b *testing.B) {
		lowers, _, err := d.lowerStack(append([]string{parent}, mustLowers(b, d, parent)...))
		if err != nil {
			b.Fatal(err)
		}
		base, err := os.MkdirTemp(d.home, "bench-syscalls-") // the same tmpfs
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; b.Loop(); i++ {
			dir := filepath.Join(base, fmt.Sprint(i))
			for _, sub := range []string{"", "diff", "work", "merged"} {
				if err := unix.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
					b.Fatal(err)
				}
			}
			data := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + dir + "/diff,workdir=" + dir + "/work,index=off,redirect_dir=nofollow"
			if err := unix.Mount("overlay", dir+"/merged", "overlay", 0, data); err != nil {
				b.Fatal(err)
			}
			if err := unix.Unmount(dir+"/merged", 0); err != nil {
				b.Fatal(err)
			}
			for _, sub := range []string{"work/work", "work", "diff", "merged", ""} {
				if err := unix.Rmdir(filepath.Join(dir, sub)); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

func mustLowers(b *testing.B, d *Driver, id string) []string {
	b.Helper()
	l, err := d.readLowers(id)
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkMountDeep mounts and unmounts a read-write layer on images of
// 10 and 500 layers: what depth costs.
func BenchmarkMountDeep(b *testing.B) {
	for _, n := range []int{10, 500} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			d := benchDriver(b)
			parent := ""
			for i := range n {
				id := fmt.Sprintf("img%03d", i)
				benchLayer(b, d, id, parent, fixtures.Tar(fixtures.File(fmt.Sprintf("f%d", i), "x", 0o644)))
				parent = id
			}
			if err := d.CreateReadWrite("c", parent, nil); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := d.Get("c", graphdriver.MountOpts{}); err != nil {
					b.Fatal(err)
				}
				if err := d.Put("c"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkApplyImage applies the 8 layers of an image (2,000 small files
// each) one after another and all at once: overlay's layers do not depend
// on their parent's content, so the store may apply them in parallel.
func BenchmarkApplyImage(b *testing.B) {
	const layers, files = 8, 2000
	tars := make([][]byte, layers)
	for l := range tars {
		var entries []fixtures.Entry
		for f := range files {
			if f%100 == 0 {
				entries = append(entries, fixtures.Dir(fmt.Sprintf("l%d/d%02d", l, f/100), 0o755))
			}
			entries = append(entries, fixtures.File(fmt.Sprintf("l%d/d%02d/f%04d", l, f/100, f), strings.Repeat(fmt.Sprint(f), 200), 0o644))
		}
		entries = append([]fixtures.Entry{fixtures.Dir(fmt.Sprintf("l%d", l), 0o755)}, entries...)
		tars[l] = fixtures.Tar(entries...)
	}
	run := func(b *testing.B, parallel bool) {
		d := benchDriver(b)
		for i := 0; b.Loop(); i++ {
			ids := make([]string, layers)
			for l := range ids {
				ids[l] = fmt.Sprintf("r%d-l%d", i, l)
				parent := ""
				if l > 0 {
					parent = ids[l-1]
				}
				if err := d.Create(ids[l], parent, nil); err != nil {
					b.Fatal(err)
				}
			}
			if parallel {
				var wg sync.WaitGroup
				errs := make([]error, layers)
				applied := newAppliedSet(layers)
				for l := range layers {
					wg.Go(func() {
						parent := ""
						if l > 0 {
							parent = ids[l-1]
						}
						errs[l] = applied.apply(d, ids[l], parent, l, tars[l])
					})
				}
				wg.Wait()
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			} else {
				for l := range layers {
					parent := ""
					if l > 0 {
						parent = ids[l-1]
					}
					if _, err := d.ApplyDiff(context.Background(), ids[l], parent, bytes.NewReader(tars[l]), diff.ApplyOptions{}); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			for l := layers - 1; l >= 0; l-- {
				if err := d.Remove(ids[l]); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
		}
	}
	b.Run("serial", func(b *testing.B) { run(b, false) })
	b.Run("parallel", func(b *testing.B) { run(b, true) })
}

// BenchmarkNew opens the driver on an existing home, as every CLI process
// does.
func BenchmarkNew(b *testing.B) {
	d := benchDriver(b)
	for b.Loop() {
		drv, err := New(d.home, nil)
		if err != nil {
			b.Fatal(err)
		}
		_ = drv.Cleanup()
	}
}

// BenchmarkDiffer compares the native differ with the naive one on a
// container that changed 10,000 files (5,000 rewritten, 5,000 new) of a
// 20,000-file image: Changes alone, and Diff read to the end. The issue's
// goal is native at least 5x faster.
func BenchmarkDiffer(b *testing.B) {
	d := benchDriver(b)
	var entries []fixtures.Entry
	for i := range 20000 {
		if i%200 == 0 {
			entries = append(entries, fixtures.Dir(fmt.Sprintf("d%03d", i/200), 0o755))
		}
		entries = append(entries, fixtures.File(fmt.Sprintf("d%03d/f%05d", i/200, i), strings.Repeat("x", 1000+i%3000), 0o644))
	}
	benchLayer(b, d, "image", "", fixtures.Tar(entries...))
	if err := d.CreateReadWrite("c", "image", nil); err != nil {
		b.Fatal(err)
	}
	root, err := d.Get("c", graphdriver.MountOpts{})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 5000 {
		p := filepath.Join(root, fmt.Sprintf("d%03d/f%05d", i*4/200, i*4))
		if err := os.WriteFile(p, []byte("rewritten"), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, fmt.Sprintf("d%03d/new%05d", i%100, i)), []byte("new"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := d.Put("c"); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	changes := func(b *testing.B, f func() ([]diff.Change, error)) {
		for b.Loop() {
			c, err := f()
			if err != nil {
				b.Fatal(err)
			}
			if len(c) < 10000 {
				b.Fatalf("%d changes, want 10,000 and their dirs", len(c))
			}
		}
	}
	tarOf := func(b *testing.B, f func() (io.ReadCloser, error)) {
		for b.Loop() {
			rc, err := f()
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, rc)
			if cerr := rc.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(n)
		}
	}
	b.Run("changes/native", func(b *testing.B) { changes(b, func() ([]diff.Change, error) { return d.Changes(ctx, "c", "image") }) })
	b.Run("changes/naive", func(b *testing.B) {
		changes(b, func() ([]diff.Change, error) { return graphdriver.NaiveChanges(ctx, d, "c", "image") })
	})
	b.Run("diff/native", func(b *testing.B) { tarOf(b, func() (io.ReadCloser, error) { return d.Diff(ctx, "c", "image") }) })
	b.Run("diff/naive", func(b *testing.B) {
		tarOf(b, func() (io.ReadCloser, error) { return graphdriver.NaiveDiff(ctx, d, "c", "image") })
	})
}
