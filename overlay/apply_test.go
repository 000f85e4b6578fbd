package overlay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
)

// appliedSet runs the ApplyDiffs of one image's layers at once, as the
// store does: layer i waits for its parents only where an entry needs
// them, through diff.Lower.Ready.
type appliedSet struct {
	done []chan struct{}
	errs []error
}

func newAppliedSet(n int) *appliedSet {
	s := &appliedSet{done: make([]chan struct{}, n), errs: make([]error, n)}
	for i := range s.done {
		s.done[i] = make(chan struct{})
	}
	return s
}

// apply applies tarBytes to layer id, the i-th of the image from the
// bottom, and marks it done.
func (s *appliedSet) apply(d *Driver, id, parent string, i int, tarBytes []byte) error {
	var lowers []diff.Lower
	for p := i - 1; p >= 0; p-- {
		lowers = append(lowers, diff.Lower{Ready: func(ctx context.Context) error {
			select {
			case <-s.done[p]:
				return s.errs[p]
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
	}
	_, err := d.ApplyDiff(context.Background(), id, parent, bytes.NewReader(tarBytes), diff.ApplyOptions{Lowers: lowers})
	s.errs[i] = err
	close(s.done[i])
	return err
}

// The layers of one image applied all at once, the bottom one held back,
// give the same tree as applied one after another, also where entries
// need the lower layers (a path through a lower symlink, a hardlink to a
// lower file, implicit parents with lower attributes).
func TestParallelApply(t *testing.T) {
	layers := [][]fixtures.Entry{
		{
			fixtures.Dir("usr", 0o755), fixtures.Dir("usr/lib", 0o750, fixtures.Owner(1, 2)),
			fixtures.Symlink("lib", "usr/lib"), fixtures.File("usr/lib/libc.so", "libc", 0o644),
			fixtures.Dir("etc", 0o700), fixtures.File("etc/passwd", "root", 0o600),
		},
		{fixtures.File("lib/libm.so", "libm", 0o644), fixtures.Whiteout("etc/passwd")},
		{fixtures.Hardlink("lib/libc-again.so", "usr/lib/libc.so"), fixtures.File("etc/group", "g", 0o644)},
	}
	tars := make([][]byte, len(layers))
	for i, l := range layers {
		tars[i] = fixtures.Tar(l...)
	}
	build := func(d *Driver, parallel bool) string {
		t.Helper()
		ids := make([]string, len(tars))
		for i := range tars {
			ids[i] = fmt.Sprintf("l%d", i)
			parent := ""
			if i > 0 {
				parent = ids[i-1]
			}
			if err := d.Create(ids[i], parent, nil); err != nil {
				t.Fatal(err)
			}
		}
		s := newAppliedSet(len(tars))
		var wg sync.WaitGroup
		for i := range tars {
			parent := ""
			if i > 0 {
				parent = ids[i-1]
			}
			if !parallel {
				if err := s.apply(d, ids[i], parent, i, tars[i]); err != nil {
					t.Fatal(err)
				}
				continue
			}
			wg.Go(func() {
				if i == 0 {
					time.Sleep(50 * time.Millisecond) // the others start first
				}
				if err := s.apply(d, ids[i], parent, i, tars[i]); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		return ids[len(ids)-1]
	}
	serial, parallel := newDriver(t, ""), newDriver(t, "")
	want := snapshotLayer(t, serial, build(serial, false))
	got := snapshotLayer(t, parallel, build(parallel, true))
	// The roots differ in mtime only: each driver made its bottom root now.
	fixtures.AssertTreesEqual(t, want, got, fixtures.IgnorePaths("/"))
	if _, ok := got["/usr/lib/libm.so"]; !ok {
		t.Errorf("libm.so did not land through the lower symlink: %v", got)
	}
	exp, err := fixtures.Expect(layers...)
	if err != nil {
		t.Fatal(err)
	}
	fixtures.AssertTreesEqual(t, exp, got, fixtures.IgnorePaths("/"))

	// A lower that fails fails the layers that need it, with its error.
	d := newDriver(t, "")
	for i := range tars {
		parent := ""
		if i > 0 {
			parent = fmt.Sprintf("l%d", i-1)
		}
		if err := d.Create(fmt.Sprintf("l%d", i), parent, nil); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("download failed")
	_, err = d.ApplyDiff(context.Background(), "l1", "l0", bytes.NewReader(tars[1]), diff.ApplyOptions{
		Lowers: []diff.Lower{{Ready: func(context.Context) error { return boom }}},
	})
	if !errors.Is(err, boom) {
		t.Errorf("apply over a failed lower: %v, want it to wrap %v", err, boom)
	}
	// Callers give only Ready: the dirs are the driver's.
	_, err = d.ApplyDiff(context.Background(), "l2", "l1", bytes.NewReader(tars[2]), diff.ApplyOptions{Lowers: []diff.Lower{{Dir: "/"}}})
	if err == nil {
		t.Error("ApplyDiff took a caller's lower dir")
	}
}

func snapshotLayer(t *testing.T, d *Driver, id string) fixtures.Tree {
	t.Helper()
	root, err := d.Get(id, graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put(id)
	tree, err := fixtures.Snapshot(root, fixtures.WithoutOverlayXattrs())
	if err != nil {
		t.Fatal(err)
	}
	return tree
}
