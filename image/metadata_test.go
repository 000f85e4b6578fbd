package image

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// An image committed with --compression zstd is saved with zstd layers
// when the save asks for no compression, and a compression asked for wins.
func TestSaveUsesRecordedCompression(t *testing.T) {
	st := newStore(t, "overlay")
	ctx := context.Background()
	base := storeImage(t, st, [][]byte{busybox(t)}, "localhost/base:1")
	c, _ := changeContainer(t, st, base.ID, time.Time{})
	img, err := Commit(ctx, st, c.ID, "localhost/zstd:1", &CommitOptions{Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ ask, want string }{{"", "zstd"}, {"gzip", "gzip"}} {
		dir := filepath.Join(t.TempDir(), "oci")
		if err := Save(ctx, st, []string{img.ID}, dir, &SaveOptions{Format: FormatOCIDir, Compression: tc.ask}); err != nil {
			t.Fatal(err)
		}
		idx, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			t.Fatal(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		oi, err := idx.Image(im.Manifests[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		m, err := oi.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range m.Layers {
			if !strings.HasSuffix(string(l.MediaType), tc.want) {
				t.Errorf("save asking for %q: layer %s has media type %s, want %s", tc.ask, l.Digest, l.MediaType, tc.want)
			}
		}
	}
}

// A push without --compression gives the layer a commit made the
// compression the commit recorded; the base's remembered blob is reused.
func TestPushUsesRecordedCompression(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	st := newStore(t, "overlay")
	ctx := context.Background()
	base := storeImage(t, st, [][]byte{busybox(t)}, "localhost/base:1")
	if _, err := Push(ctx, st, base.ID, reg.host+"/meta/base:1", &PushOptions{Compression: "gzip"}); err != nil {
		t.Fatal(err)
	}
	c, _ := changeContainer(t, st, base.ID, time.Time{})
	img, err := Commit(ctx, st, c.ID, "localhost/zstd:1", &CommitOptions{Compression: "zstd"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Push(ctx, st, img.ID, reg.host+"/meta/committed:1", nil); err != nil {
		t.Fatal(err)
	}
	top, err := st.Layer(img.TopLayer)
	if err != nil {
		t.Fatal(err)
	}
	if len(top.Blobs) != 1 || !strings.HasSuffix(top.Blobs[0].MediaType, "zstd") {
		t.Errorf("blobs of the committed layer after a push: %+v, want one zstd blob", top.Blobs)
	}
	bottom, err := st.Layer(img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(bottom.Blobs) != 1 {
		t.Errorf("the base layer's gzip blob was not reused: %+v", bottom.Blobs)
	}
}
