package image

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/store"
)

// TestPushPullRoundTrip pushes a fixture image made with the store, pulls
// it into a second root and compares the root trees of containers of
// both; a second push uploads nothing and gives the same digest.
func TestPushPullRoundTrip(t *testing.T) {
	for _, driver := range []string{"overlay", "vfs"} {
		t.Run(driver, func(t *testing.T) {
			reg := startRegistry(t, registryOpts{})
			p := newProxy(t, reg)
			bb := busybox(t)
			src := newStore(t, driver)
			img := storeImage(t, src, [][]byte{bb, extraLayer("a"), extraLayer("b")}, "fixture:1")
			ctx := context.Background()
			ref := p.host + "/round/trip:1"
			d1, err := Push(ctx, src, img.ID, ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			if n := p.count("PUT upload"); n != 4 {
				t.Errorf("first push: %d uploads, want 4 (3 layers + config): %s", n, p)
			}
			// Blobs remembered, one gzip blob a layer.
			for _, id := range img.Layers {
				l, err := src.Layer(id)
				if err != nil {
					t.Fatal(err)
				}
				if len(l.Blobs) != 1 || l.Blobs[0].MediaType != string(types.OCILayer) {
					t.Errorf("layer %s blobs after push: %+v", id, l.Blobs)
				}
			}
			p.reset()
			d2, err := Push(ctx, src, img.ID, ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			if d1 != d2 {
				t.Errorf("second push digest %s, first %s", d2, d1)
			}
			if n := p.count("POST upload", "PUT upload", "PATCH upload", "POST mount"); n != 0 {
				t.Errorf("second push uploaded: %s", p)
			}

			dst := newStore(t, driver)
			pulled, err := Pull(ctx, dst, ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			if pulled.ID != img.ID || pulled.Digest != d1 {
				t.Errorf("pulled image %s digest %s, pushed %s digest %s", pulled.ID, pulled.Digest, img.ID, d1)
			}
			fixtures.AssertTreesEqual(t, rootTree(t, src, img.ID), rootTree(t, dst, pulled.ID), fixtures.IgnorePaths("/"))

			// Pushing the pulled image on elsewhere keeps its manifest.
			p.reset()
			d3, err := Push(ctx, dst, pulled.ID, p.host+"/round/again:1", nil)
			if err != nil {
				t.Fatal(err)
			}
			if d3 != d1 {
				t.Errorf("push of the pulled image gave %s, want the pulled manifest %s", d3, d1)
			}
			if n := p.count("PUT upload", "PATCH upload"); n != 0 {
				t.Errorf("pushing pulled blobs uploaded: %s", p)
			}
			if n := p.count("POST mount"); n != 4 {
				t.Errorf("%d mounts, want 4 (3 layers + config): %s", n, p)
			}
		})
	}
}

// TestPushMountsAcrossRepositories pushes an image named in one
// repository of a registry to another: the layers are mounted, not
// uploaded.
func TestPushMountsAcrossRepositories(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	p := newProxy(t, reg)
	bb := busybox(t)
	src := newStore(t, "")
	ctx := context.Background()
	first := p.host + "/mount/a:1"
	img := storeImage(t, src, [][]byte{bb, extraLayer("m")}, first)
	if _, err := Push(ctx, src, first, "", nil); err != nil {
		t.Fatal(err)
	}
	p.reset()
	d, err := Push(ctx, src, img.ID, p.host+"/mount/b:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := p.count("POST mount"); n != 3 {
		t.Errorf("%d mounts, want 3 (2 layers + config): %s", n, p)
	}
	if n := p.count("PUT upload", "PATCH upload"); n != 0 {
		t.Errorf("uploads: %s", p)
	}
	dst := newStore(t, "")
	pulled, err := Pull(ctx, dst, p.host+"/mount/b:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if pulled.Digest != d {
		t.Errorf("pulled %s, pushed %s", pulled.Digest, d)
	}
}

// TestPushCompressions pushes with each compression and checks the
// manifest's media types, the blobs' magic, and a pull's tree.
func TestPushCompressions(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	bb := busybox(t)
	src := newStore(t, "")
	img := storeImage(t, src, [][]byte{bb, extraLayer("c")})
	want := rootTree(t, src, img.ID)
	ctx := context.Background()
	for _, c := range []diff.Compression{diff.Gzip, diff.Zstd, diff.Uncompressed} {
		t.Run(c.String(), func(t *testing.T) {
			ref := reg.host + "/comp/push-" + c.String() + ":1"
			d, err := Push(ctx, src, img.ID, ref, &PushOptions{Compression: c.String()})
			if err != nil {
				t.Fatal(err)
			}
			dst := newStore(t, "")
			pulled, err := Pull(ctx, dst, ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			if pulled.Digest != d {
				t.Errorf("digest %s, pushed %s", pulled.Digest, d)
			}
			raw, err := dst.ImageManifest(pulled.ID)
			if err != nil {
				t.Fatal(err)
			}
			var m v1.Manifest
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			for _, l := range m.Layers {
				if l.MediaType != layerMediaType(c) {
					t.Errorf("layer media type %s, want %s", l.MediaType, layerMediaType(c))
				}
			}
			fixtures.AssertTreesEqual(t, want, rootTree(t, dst, pulled.ID), fixtures.IgnorePaths("/"))
		})
	}
	// Each layer now remembers three blobs; a push without a compression
	// reuses one and uploads nothing new.
	l, err := src.Layer(img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Blobs) != 3 {
		t.Errorf("layer remembers %d blobs, want 3: %+v", len(l.Blobs), l.Blobs)
	}
	if _, err := Push(ctx, src, img.ID, reg.host+"/comp/push-any:1", &PushOptions{Compression: "lz4"}); err == nil {
		t.Error("unknown compression accepted")
	}
}

// TestPushErrors: an unknown image, an image with several names and no
// destination, a digest destination.
func TestPushErrors(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	bb := busybox(t)
	st := newStore(t, "")
	img := storeImage(t, st, [][]byte{bb}, reg.host+"/e/a:1", reg.host+"/e/b:1")
	ctx := context.Background()
	if _, err := Push(ctx, st, "nosuchimage", reg.host+"/e/x:1", nil); !errors.Is(err, store.ErrImageUnknown) {
		t.Errorf("unknown image: %v", err)
	}
	if _, err := Push(ctx, st, img.ID, "", nil); err == nil {
		t.Error("push of an image with two names and no destination worked")
	}
	if _, err := Push(ctx, st, img.ID, reg.host+"/e/x@"+digest.FromString("x").String(), nil); err == nil {
		t.Error("push to a digest worked")
	}
	// The name it was asked by is the destination.
	if _, err := Push(ctx, st, reg.host+"/e/b:1", "", nil); err != nil {
		t.Errorf("push by name: %v", err)
	}
}
