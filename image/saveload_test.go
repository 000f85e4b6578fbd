package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/store"
)

// srcImages stores two images sharing busybox in st: a committed one
// (a container's changes: added, modified, removed, replaced entries)
// and one of fixture layers, and returns them.
func srcImages(t testing.TB, st *store.Store) (committed, layered *store.Image) {
	t.Helper()
	bb := busybox(t)
	base := storeImage(t, st, [][]byte{bb}, "localhost/base:1")
	c, _ := changeContainer(t, st, base.ID, time.Date(2021, 5, 6, 7, 8, 9, 0, time.UTC))
	committed, err := Commit(context.Background(), st, c.ID, "localhost/committed:1", &CommitOptions{Message: "test"})
	if err != nil {
		t.Fatal(err)
	}
	layered = storeImage(t, st, [][]byte{bb, extraLayer("a"), extraLayer("b")}, "example.com/team/layered:2", "localhost/layered:latest")
	return committed, layered
}

// layerDiffIDs are the diffIDs of an image's layers, bottom first.
func layerDiffIDs(t testing.TB, st *store.Store, img *store.Image) []digest.Digest {
	t.Helper()
	var out []digest.Digest
	for _, id := range img.Layers {
		l, err := st.Layer(id)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l.DiffID)
	}
	return out
}

// TestSaveLoadRoundTrip saves two images in every format and
// compression, loads them into a fresh root and checks that each comes
// back with the same ID, names, diffIDs and root filesystem; a second
// load stores nothing new.
func TestSaveLoadRoundTrip(t *testing.T) {
	cases := []struct{ format, comp string }{
		{FormatOCIArchive, ""}, {FormatOCIArchive, "zstd"}, {FormatOCIDir, "none"}, {FormatDockerArchive, ""},
	}
	for _, driver := range testDrivers {
		t.Run(driver, func(t *testing.T) {
			ctx := context.Background()
			src := newStore(t, driver)
			committed, layered := srcImages(t, src)
			trees := map[string]fixtures.Tree{committed.ID: rootTree(t, src, committed.ID), layered.ID: rootTree(t, src, layered.ID)}
			for _, tr := range trees {
				// The root directory has no entry in a layer tar.
				tr["/"].IgnoreMtime = true
			}
			out := loopfs.New(t, "tmpfs", 0)
			for _, tc := range cases {
				t.Run(tc.format+"-"+tc.comp, func(t *testing.T) {
					dest := filepath.Join(out, tc.format+"-"+tc.comp)
					// By ID: all names; by name: that name.
					err := Save(ctx, src, []string{committed.ID, "localhost/layered:latest", "example.com/team/layered:2"}, dest, &SaveOptions{Format: tc.format, Compression: tc.comp})
					if err != nil {
						t.Fatalf("save: %v", err)
					}
					dst := newStore(t, driver)
					imgs, err := Load(ctx, dst, dest, nil)
					if err != nil {
						t.Fatalf("load: %v", err)
					}
					if len(imgs) != 2 || imgs[0].ID != committed.ID || imgs[1].ID != layered.ID {
						t.Fatalf("loaded %v, want %s and %s", imgs, committed.ID, layered.ID)
					}
					for i, want := range []*store.Image{committed, layered} {
						got := imgs[i]
						if !reflect.DeepEqual(sorted(got.Names), sorted(want.Names)) {
							t.Errorf("image %s: names %q, want %q", got.ID, got.Names, want.Names)
						}
						if g, w := layerDiffIDs(t, dst, got), layerDiffIDs(t, src, want); !reflect.DeepEqual(g, w) {
							t.Errorf("image %s: diffIDs %v, want %v", got.ID, g, w)
						}
						fixtures.AssertTreesEqual(t, trees[want.ID], rootTree(t, dst, got.ID))
					}
					// busybox is shared: 1 + 1 + 2 layers.
					if ls, _ := dst.Layers(); len(ls) != 4 {
						t.Errorf("%d layers stored, want 4", len(ls))
					}
					// Again: same images, nothing applied.
					again, err := Load(ctx, dst, dest, nil)
					if err != nil {
						t.Fatalf("second load: %v", err)
					}
					if len(again) != 2 || again[0].ID != committed.ID {
						t.Errorf("second load gave %v", again)
					}
					assertNothingNew(t, dst, 4, 2)
				})
			}
			// Compressed once, remembered: the layers have their gzip
			// and zstd blobs recorded, and saving again gives the same
			// bytes.
			l, err := src.Layer(layered.Layers[2])
			if err != nil {
				t.Fatal(err)
			}
			var mts []string
			for _, b := range l.Blobs {
				mts = append(mts, b.MediaType)
			}
			if !slices.Contains(mts, string(types.OCILayer)) || !slices.Contains(mts, string(types.OCILayerZStd)) {
				t.Errorf("blobs remembered: %v", mts)
			}
			a, b := filepath.Join(out, "again1"), filepath.Join(out, "again2")
			for _, p := range []string{a, b} {
				if err := Save(ctx, src, []string{layered.ID}, p, nil); err != nil {
					t.Fatal(err)
				}
			}
			ab, _ := os.ReadFile(a)
			bb, _ := os.ReadFile(b)
			if !bytes.Equal(ab, bb) {
				t.Error("saving the same image twice gave different archives")
			}
		})
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestSaveErrors: bad format, compression, destination, image.
func TestSaveErrors(t *testing.T) {
	ctx := context.Background()
	st := newStore(t, "vfs")
	img := storeImage(t, st, [][]byte{busybox(t)}, "localhost/base:1")
	dir := loopfs.New(t, "tmpfs", 0)
	exists := filepath.Join(dir, "exists")
	if err := os.WriteFile(exists, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		refs []string
		dest string
		opts SaveOptions
		want error
	}{
		{[]string{img.ID}, filepath.Join(dir, "a"), SaveOptions{Format: "tarball"}, ErrUnknownFormat},
		{[]string{img.ID}, filepath.Join(dir, "a"), SaveOptions{Compression: "lz4"}, nil},
		{[]string{img.ID}, filepath.Join(dir, "a"), SaveOptions{Format: FormatDockerArchive, Compression: "gzip"}, nil},
		{[]string{img.ID}, exists, SaveOptions{}, nil},
		{[]string{"nosuch"}, filepath.Join(dir, "a"), SaveOptions{}, store.ErrImageUnknown},
		{nil, filepath.Join(dir, "a"), SaveOptions{}, nil},
		{[]string{img.ID}, filepath.Join(dir, "no/such/dir/a"), SaveOptions{}, nil},
	} {
		err := Save(ctx, st, tc.refs, tc.dest, &tc.opts)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("save %v to %s %+v: want %v, got %v", tc.refs, tc.dest, tc.opts, tc.want, err)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("save errors left files: %v", ents)
	}
}

// tarFiles reads a tar's regular files, in order.
func tarFiles(t testing.TB, b []byte) ([]string, map[string][]byte) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		files[h.Name] = data
	}
	return names, files
}

// writeTarFiles writes files as a tar, in order names.
func writeTarFiles(t testing.TB, p string, names []string, files map[string][]byte) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		data, ok := files[n]
		if !ok {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Size: int64(len(data)), Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLoadCorrupt damages archives of each format in the ways an archive
// gets damaged and checks that Load fails with a one-line error naming
// the cause and stores nothing.
func TestLoadCorrupt(t *testing.T) {
	ctx := context.Background()
	src := newStore(t, "overlay")
	committed, layered := srcImages(t, src)
	dir := loopfs.New(t, "tmpfs", 0)
	dst := newStore(t, "overlay")

	type damage struct {
		name string
		// change edits the archive's files (names in order); it returns
		// the path to load.
		change func(names []string, files map[string][]byte) []string
		want   string
	}
	// The biggest layer blob, and the config, of each format.
	biggest := func(files map[string][]byte, suffix string) string {
		best := ""
		for n, b := range files {
			if strings.HasSuffix(n, suffix) && (best == "" || len(b) > len(files[best])) {
				best = n
			}
		}
		return best
	}
	configOf := func(files map[string][]byte) string {
		if b, ok := files["manifest.json"]; ok {
			var m []dockerManifestEntry
			json.Unmarshal(b, &m)
			return m[0].Config
		}
		var idx v1.IndexManifest
		json.Unmarshal(files["index.json"], &idx)
		var m v1.Manifest
		json.Unmarshal(files[blobPath(digest.Digest(idx.Manifests[0].Digest.String()))], &m)
		return blobPath(digest.Digest(m.Config.Digest.String()))
	}
	// The top layer of the archive's last image: the layers of the images
	// before it are stored by then, and must go.
	lastTop := func(files map[string][]byte) string {
		if b, ok := files["manifest.json"]; ok {
			var m []dockerManifestEntry
			json.Unmarshal(b, &m)
			return m[len(m)-1].Layers[len(m[len(m)-1].Layers)-1]
		}
		var idx v1.IndexManifest
		json.Unmarshal(files["index.json"], &idx)
		var m v1.Manifest
		json.Unmarshal(files[blobPath(digest.Digest(idx.Manifests[len(idx.Manifests)-1].Digest.String()))], &m)
		return blobPath(digest.Digest(m.Layers[len(m.Layers)-1].Digest.String()))
	}
	flip := func(b []byte) []byte {
		b = bytes.Clone(b)
		b[len(b)/2] ^= 0x40
		return b
	}
	for _, tc := range []struct{ format, comp string }{{FormatOCIArchive, "none"}, {FormatOCIArchive, "gzip"}, {FormatDockerArchive, ""}} {
		good := filepath.Join(dir, tc.format+"-"+tc.comp)
		if err := Save(ctx, src, []string{committed.ID, layered.ID}, good, &SaveOptions{Format: tc.format, Compression: tc.comp}); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(good)
		if err != nil {
			t.Fatal(err)
		}
		names, files := tarFiles(t, raw)
		suffix := ""
		if tc.format == FormatDockerArchive {
			suffix = ".tar"
		}
		layer := biggest(files, suffix)
		for _, d := range []damage{
			{"flipped byte in a layer", func(names []string, f map[string][]byte) []string {
				f[layer] = flip(f[layer])
				return names
			}, ""},
			{"flipped byte in the last image's top layer", func(names []string, f map[string][]byte) []string {
				top := lastTop(f)
				f[top] = flip(f[top])
				return names
			}, ""},
			{"wrong config digest", func(names []string, f map[string][]byte) []string {
				c := configOf(f)
				f[c] = bytes.Replace(f[c], []byte(`"os":"linux"`), []byte(`"os":"Linux"`), 1)
				return names
			}, "does not match"},
			{"missing blob", func(names []string, f map[string][]byte) []string {
				delete(f, layer)
				return names
			}, "not in the archive"},
			{"layer cut short", func(names []string, f map[string][]byte) []string {
				f[layer] = f[layer][:len(f[layer])/2]
				return names
			}, ""},
		} {
			t.Run(tc.format+"-"+tc.comp+"/"+d.name, func(t *testing.T) {
				f := map[string][]byte{}
				for k, v := range files {
					f[k] = v
				}
				p := filepath.Join(dir, "bad")
				writeTarFiles(t, p, d.change(slices.Clone(names), f), f)
				defer os.Remove(p)
				_, err := Load(ctx, dst, p, nil)
				if err == nil {
					t.Fatal("a damaged archive loaded")
				}
				if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), d.want) {
					t.Errorf("error %q: want one line containing %q", err, d.want)
				}
				t.Logf("%v", err)
				assertNothingNew(t, dst, 0, 0)
			})
		}
		t.Run(tc.format+"-"+tc.comp+"/truncated tar", func(t *testing.T) {
			p := filepath.Join(dir, "bad")
			defer os.Remove(p)
			// Cut in the middle of the biggest member.
			if err := os.WriteFile(p, raw[:bytes.Index(raw, files[layer])+len(files[layer])/2], 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Load(ctx, dst, p, nil)
			if err == nil || !strings.Contains(err.Error(), "unexpected EOF") {
				t.Errorf("want an unexpected EOF, got %v", err)
			}
			assertNothingNew(t, dst, 0, 0)
		})
	}
	// Not an archive at all.
	p := filepath.Join(dir, "junk")
	os.WriteFile(p, bytes.Repeat([]byte("junk"), 1000), 0o644)
	if _, err := Load(ctx, dst, p, nil); err == nil {
		t.Error("junk loaded")
	}
	empty := filepath.Join(dir, "emptydir")
	os.Mkdir(empty, 0o755)
	if _, err := Load(ctx, dst, empty, nil); !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("empty dir: want ErrUnknownFormat, got %v", err)
	}
	assertNothingNew(t, dst, 0, 0)
}

// TestLoadPlatformIndex loads an OCI layout whose one name is a
// multi-platform index (the image for the host and one for another
// architecture): the host's image is loaded unless --platform says
// otherwise, and a platform the index lacks is an error.
func TestLoadPlatformIndex(t *testing.T) {
	ctx := context.Background()
	src := newStore(t, "overlay")
	img := storeImage(t, src, [][]byte{busybox(t), extraLayer("x")}, "localhost/multi:1")
	dir := loopfs.New(t, "tmpfs", 0)
	layout := filepath.Join(dir, "layout")
	if err := Save(ctx, src, []string{img.ID}, layout, &SaveOptions{Format: FormatOCIDir}); err != nil {
		t.Fatal(err)
	}
	var idx v1.IndexManifest
	readJSON(t, filepath.Join(layout, "index.json"), &idx)
	hostDesc := idx.Manifests[0]
	var m v1.Manifest
	readJSON(t, filepath.Join(layout, blobPath(digest.Digest(hostDesc.Digest.String()))), &m)
	// The other architecture: the same layers, another config.
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	var cfg map[string]any
	readJSON(t, filepath.Join(layout, blobPath(digest.Digest(m.Config.Digest.String()))), &cfg)
	cfg["architecture"] = other
	otherCfg := writeBlobJSON(t, layout, cfg)
	m.Config.Digest, m.Config.Size = hashOf(otherCfg.d), otherCfg.size
	otherMan := writeBlobJSON(t, layout, m)
	nested := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{
		{MediaType: types.OCIManifestSchema1, Digest: hashOf(otherMan.d), Size: otherMan.size, Platform: &v1.Platform{OS: "linux", Architecture: other}},
		{MediaType: types.OCIManifestSchema1, Digest: hostDesc.Digest, Size: hostDesc.Size, Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}},
	}}
	nb := writeBlobJSON(t, layout, nested)
	idx.Manifests = []v1.Descriptor{{MediaType: types.OCIImageIndex, Digest: hashOf(nb.d), Size: nb.size,
		Annotations: map[string]string{annotationRefName: "localhost/multi:1"}}}
	writeJSON(t, filepath.Join(layout, "index.json"), idx)

	for _, tc := range []struct {
		platform string
		wantID   string
		err      error
	}{
		{"", img.ID, nil},
		{"linux/" + other, otherCfg.d.Encoded(), nil},
		{"linux/s390x", "", ErrNoPlatform},
	} {
		dst := newStore(t, "overlay")
		imgs, err := Load(ctx, dst, layout, &LoadOptions{Platform: tc.platform})
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("platform %q: want %v, got %v", tc.platform, tc.err, err)
			}
			assertNothingNew(t, dst, 0, 0)
			continue
		}
		if err != nil {
			t.Fatalf("platform %q: %v", tc.platform, err)
		}
		if len(imgs) != 1 || imgs[0].ID != tc.wantID || !reflect.DeepEqual(imgs[0].Names, []string{"localhost/multi:1"}) {
			t.Errorf("platform %q: loaded %+v, want %s", tc.platform, imgs, tc.wantID)
		}
	}
}

type writtenBlob struct {
	d    digest.Digest
	size int64
}

func writeBlobJSON(t testing.TB, layout string, v any) writtenBlob {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(b)
	if err := os.WriteFile(filepath.Join(layout, blobPath(d)), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return writtenBlob{d, int64(len(b))}
}

func readJSON(t testing.TB, p string, v any) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func writeJSON(t testing.TB, p string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
