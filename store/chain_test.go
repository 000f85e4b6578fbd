package store_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/store"
)

// chainLayers are four layers whose entries need their parents' content:
// a hardlink to a lower file, a file under a lower symlink, a whiteout of
// a lower file, an opaque directory.
var chainLayers = [][]fixtures.Entry{
	{fixtures.Dir("etc", 0o755), fixtures.File("etc/conf", "v1\n", 0o644), fixtures.Dir("real", 0o755), fixtures.Symlink("via", "real"), fixtures.Dir("opq", 0o755), fixtures.File("opq/old", "x", 0o644)},
	{fixtures.Hardlink("conf-link", "etc/conf"), fixtures.File("via/under-link", "through the symlink\n", 0o644)},
	{fixtures.Dir("etc", 0o755), fixtures.Whiteout("etc/conf"), fixtures.File("etc/new", "v2\n", 0o644)},
	{fixtures.Opaque("opq"), fixtures.File("opq/fresh", "y", 0o644), fixtures.File("top", "top\n", 0o600)},
}

// sources returns LayerSources of tars, counting Opens.
func sources(tars [][]byte, opens *atomic.Int32) []store.LayerSource {
	srcs := make([]store.LayerSource, len(tars))
	for i, tb := range tars {
		srcs[i] = store.LayerSource{
			DiffID: digest.FromBytes(tb),
			Open: func(context.Context) (io.ReadCloser, error) {
				opens.Add(1)
				return io.NopCloser(bytes.NewReader(tb)), nil
			},
		}
	}
	return srcs
}

func TestApplyLayers(t *testing.T) {
	var tars [][]byte
	for _, es := range chainLayers {
		tars = append(tars, fixtures.Tar(es...))
	}
	want, err := fixtures.Expect(chainLayers...)
	if err != nil {
		t.Fatal(err)
	}
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root)
		var opens atomic.Int32
		ls, err := s.ApplyLayers(ctx, "", sources(tars, &opens))
		if err != nil {
			t.Fatal(err)
		}
		if len(ls) != 4 || opens.Load() != 4 {
			t.Fatalf("%d layers, %d opens", len(ls), opens.Load())
		}
		var chain digest.Digest
		for i, l := range ls {
			chain = store.ChainID(chain, digest.FromBytes(tars[i]))
			if l.ChainID != chain || (i > 0 && l.Parent != ls[i-1].ID) {
				t.Fatalf("layer %d: %+v", i, l)
			}
		}
		p, err := s.Mount(ls[3].ID)
		if err != nil {
			t.Fatal(err)
		}
		fixtures.AssertTree(t, want, p, fixtures.IgnoreDirMtimes())
		if err := s.Unmount(ls[3].ID, false); err != nil {
			t.Fatal(err)
		}
		// Stored already: nothing is opened again.
		opens.Store(0)
		again, err := s.ApplyLayers(ctx, "", sources(tars, &opens))
		if err != nil || len(again) != 4 || again[3].ID != ls[3].ID || opens.Load() != 0 {
			t.Fatalf("again: %d layers, %d opens, %v", len(again), opens.Load(), err)
		}
		// Part stored: only the rest is opened, on the stored part.
		if err := s.RemoveLayer(ls[3].ID, false); err != nil {
			t.Fatal(err)
		}
		if err := s.RemoveLayer(ls[2].ID, false); err != nil {
			t.Fatal(err)
		}
		again, err = s.ApplyLayers(ctx, "", sources(tars, &opens))
		if err != nil || len(again) != 4 || again[1].ID != ls[1].ID || again[2].Parent != ls[1].ID || opens.Load() != 2 {
			t.Fatalf("partly stored: %d layers, %d opens, %v", len(again), opens.Load(), err)
		}
		assertClean(t, s)
	})
}

// A layer that fails (bad content, a wrong diffID, a failed download)
// keeps the layers below it, complete, and leaves nothing of itself and
// of those above it.
func TestApplyLayersFailure(t *testing.T) {
	var tars [][]byte
	for _, es := range chainLayers {
		tars = append(tars, fixtures.Tar(es...))
	}
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root)
		for _, breakIt := range []func(*store.LayerSource){
			func(src *store.LayerSource) {
				src.Open = func(context.Context) (io.ReadCloser, error) { return nil, errors.New("download failed") }
			},
			func(src *store.LayerSource) { src.DiffID = digest.FromString("something else") },
			func(src *store.LayerSource) {
				src.DiffID = ""
				src.Open = func(context.Context) (io.ReadCloser, error) {
					return io.NopCloser(bytes.NewReader([]byte("this is no tar, and it is long enough to be read as one......"))), nil
				}
			},
		} {
			var opens atomic.Int32
			srcs := sources(tars, &opens)
			breakIt(&srcs[2])
			ls, err := s.ApplyLayers(ctx, "", srcs)
			if err == nil {
				t.Fatal("a broken layer applied")
			}
			if len(ls) != 2 {
				t.Fatalf("%d layers returned, want the 2 below the broken one (%v)", len(ls), err)
			}
			all, _ := s.Layers()
			if len(all) != 2 {
				t.Fatalf("%d layers stored, want 2 (%v)", len(all), err)
			}
			assertClean(t, s)
		}
	})
}

// With a driver that applies natively, the layers of a chain download and
// apply at the same time: the bottom layer's download here finishes only
// once the top layer's has started.
func TestApplyLayersOverlap(t *testing.T) {
	var tars [][]byte
	for _, es := range chainLayers {
		tars = append(tars, fixtures.Tar(es...))
	}
	forEachDriverThat(t, "apply layers natively", appliesNatively, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		var opens atomic.Int32
		srcs := sources(tars, &opens)
		topStarted := make(chan struct{})
		bottom := srcs[0].Open
		srcs[0].Open = func(ctx context.Context) (io.ReadCloser, error) {
			select {
			case <-topStarted:
			case <-time.After(10 * time.Second):
				return nil, errors.New("the top layer's download never started while the bottom one's was running")
			}
			return bottom(ctx)
		}
		top := srcs[3].Open
		srcs[3].Open = func(ctx context.Context) (io.ReadCloser, error) {
			close(topStarted)
			return top(ctx)
		}
		ls, err := s.ApplyLayers(context.Background(), "", srcs)
		if err != nil || len(ls) != 4 {
			t.Fatalf("%d layers: %v", len(ls), err)
		}
		assertClean(t, s)
	})
}

// A failed chain says which layer of the chain failed, counted in the
// whole chain (reused layers too), names that layer and "apply layer" once
// and goes on with the cause, in one line, whether the driver applies the
// layers at once (overlay) or one after the other; sentinels stay
// reachable through the wrapping.
func TestApplyLayersErrorReadsOnce(t *testing.T) {
	hostile := fixtures.Tar(fixtures.Raw(tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}, "x"))
	tars := [][]byte{fixtures.Tar(chainLayers[0]...), fixtures.Tar(chainLayers[1]...), hostile}
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root)
		var opens atomic.Int32
		// The bottom layer stored before: the chain reuses it and
		// applies the two above it (at once, on overlay).
		if _, err := s.ApplyLayers(ctx, "", sources(tars[:1], &opens)); err != nil {
			t.Fatal(err)
		}
		check := func(t *testing.T, err error, want *regexp.Regexp) {
			t.Helper()
			if err == nil {
				t.Fatal("a broken layer applied")
			}
			msg := err.Error()
			if !want.MatchString(msg) {
				t.Fatalf("error %q, want it to match %s", msg, want)
			}
			if n := strings.Count(msg, "apply layer "); n != 1 {
				t.Errorf("error %q says \"apply layer\" %d times", msg, n)
			}
		}
		_, err := s.ApplyLayers(ctx, "", sources(tars, &opens))
		check(t, err, regexp.MustCompile(`^apply layers: layer 3 of 3: apply layer [0-9a-f]{64}: entry "\.\./escape": path climbs above the layer root$`))

		srcs := sources([][]byte{tars[0], tars[1], fixtures.Tar(chainLayers[2]...)}, &opens)
		srcs[1].DiffID = digest.FromString("something else")
		_, err = s.ApplyLayers(ctx, "", srcs)
		check(t, err, regexp.MustCompile(`^apply layers: layer 2 of 3: apply layer [0-9a-f]{64}: digest mismatch: content has diff ID sha256:[0-9a-f]{64}, expected `+regexp.QuoteMeta(srcs[1].DiffID.String())+`$`))
		if !errors.Is(err, store.ErrDigestMismatch) {
			t.Errorf("error %v is not ErrDigestMismatch", err)
		}
		// Kept: the bottom layer and the hostile chain's second one,
		// which is below its failure.
		if all, err := s.Layers(); err != nil || len(all) != 2 {
			t.Errorf("layers after the failed applies: %v %v", all, err)
		}
	})
}
