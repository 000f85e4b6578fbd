package store_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/store"
)

func TestNormalizeName(t *testing.T) {
	good := map[string]string{
		"busybox":                        "docker.io/library/busybox:latest",
		"busybox:1.36":                   "docker.io/library/busybox:1.36",
		"library/busybox":                "docker.io/library/busybox:latest",
		"docker.io/busybox":              "docker.io/library/busybox:latest",
		"index.docker.io/library/debian": "docker.io/library/debian:latest",
		"user/app:v1":                    "docker.io/user/app:v1",
		"quay.io/org/app":                "quay.io/org/app:latest",
		"localhost/app":                  "localhost/app:latest",
		"localhost:5000/a/b:t":           "localhost:5000/a/b:t",
		"127.0.0.1:5000/app":             "127.0.0.1:5000/app:latest",
		"app@sha256:" + hex64('a'):       "docker.io/library/app@sha256:" + hex64('a'),
		"app:v2@sha256:" + hex64('b'):    "docker.io/library/app:v2@sha256:" + hex64('b'),
		"a-b_c__e/f.g":                   "docker.io/a-b_c__e/f.g:latest",
	}
	for in, want := range good {
		if got, err := store.NormalizeName(in); err != nil || got != want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "Busybox", "app:", "app:-x", "/app", "app/", "a//b", "app@sha256:zz", hex64('c'), "bad host!/x", "app::t", "a b"} {
		if got, err := store.NormalizeName(in); !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("NormalizeName(%q) = %q, %v; want ErrInvalidName", in, got, err)
		}
	}
}

func hex64(c byte) string { return string(bytes.Repeat([]byte{c}, 64)) }

func TestImages(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		manifest := []byte(`{"schemaVersion":2}`)
		ls := mustApply(t, s, "", baseTar, upperTar)
		cfg, err := fixtures.ImageConfig([][]byte{baseTar, upperTar}, "/bin/sh")
		if err != nil {
			t.Fatal(err)
		}
		img, err := s.CreateImage(store.ImageOptions{Config: cfg, Manifest: manifest, TopLayer: ls[1].ID[:16], Names: []string{"app", "quay.io/x/app:v1"}})
		if err != nil {
			t.Fatal(err)
		}
		if img.ID != digest.FromBytes(cfg).Encoded() || img.Digest != digest.FromBytes(manifest) || img.TopLayer != ls[1].ID {
			t.Fatalf("image %+v", img)
		}
		if want := []string{ls[0].ID, ls[1].ID}; len(img.Layers) != 2 || img.Layers[0] != want[0] || img.Layers[1] != want[1] {
			t.Fatalf("layers %v, want %v", img.Layers, want)
		}
		if want := []string{"docker.io/library/app:latest", "quay.io/x/app:v1"}; len(img.Names) != 2 || img.Names[0] != want[0] || img.Names[1] != want[1] {
			t.Fatalf("names %v", img.Names)
		}
		if img.Size != ls[0].Size+ls[1].Size {
			t.Fatalf("size %d", img.Size)
		}
		for _, ref := range []string{img.ID, "sha256:" + img.ID, img.ID[:5], "app", "app:latest", "docker.io/library/app", "quay.io/x/app:v1", img.Digest.String(), "app@" + img.Digest.String()} {
			if got, err := s.Image(ref); err != nil || got.ID != img.ID {
				t.Errorf("Image(%q): %v %v", ref, got, err)
			}
		}
		for _, ref := range []string{"nosuch", "quay.io/x/app:v2", "", "sha256:" + hex64('0'), "UPPER"} {
			if _, err := s.Image(ref); !errors.Is(err, store.ErrImageUnknown) {
				t.Errorf("Image(%q): %v, want ErrImageUnknown", ref, err)
			}
		}
		if b, err := s.ImageConfig("app"); err != nil || !bytes.Equal(b, cfg) {
			t.Fatalf("config %q %v", b, err)
		}
		if b, err := s.ImageManifest("app"); err != nil || !bytes.Equal(b, manifest) {
			t.Fatalf("manifest %q %v", b, err)
		}
		// A second image on the base layer only, without manifest.
		cfg2, _ := fixtures.ImageConfig([][]byte{baseTar}, "/bin/true")
		img2, err := s.CreateImage(store.ImageOptions{Config: cfg2, TopLayer: ls[0].ID})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ImageManifest(img2.ID); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("no manifest: %v", err)
		}
		// Storing it again adds names.
		again, err := s.CreateImage(store.ImageOptions{Config: cfg2, TopLayer: ls[0].ID, Names: []string{"base"}})
		if err != nil || again.ID != img2.ID || len(again.Names) != 1 {
			t.Fatalf("again: %+v %v", again, err)
		}
		// Tag moves a name; Untag removes it.
		if err := s.Tag(img2.ID[:12], "app"); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Image("app"); got == nil || got.ID != img2.ID {
			t.Fatalf("app after tag: %v", got)
		}
		if err := s.Tag("nosuch", "x"); !errors.Is(err, store.ErrImageUnknown) {
			t.Fatalf("tag unknown: %v", err)
		}
		if err := s.Tag(img2.ID, "Bad Name"); !errors.Is(err, store.ErrInvalidName) {
			t.Fatalf("tag bad name: %v", err)
		}
		if err := s.Untag("app"); err != nil {
			t.Fatal(err)
		}
		if err := s.Untag("app"); !errors.Is(err, store.ErrImageUnknown) {
			t.Fatalf("untag twice: %v", err)
		}
		imgs, err := s.Images()
		if err != nil || len(imgs) != 2 {
			t.Fatalf("images %v %v", imgs, err)
		}
		// Bad input.
		if _, err := s.CreateImage(store.ImageOptions{}); err == nil {
			t.Fatal("image without config")
		}
		if _, err := s.CreateImage(store.ImageOptions{Config: []byte("{")}); err == nil {
			t.Fatal("bad config JSON")
		}
		if _, err := s.CreateImage(store.ImageOptions{Config: cfg, TopLayer: ls[0].ID}); !errors.Is(err, store.ErrDigestMismatch) {
			t.Fatalf("diff IDs not matching the chain: %v", err)
		}
		if _, err := s.CreateImage(store.ImageOptions{Config: []byte(`{}`), TopLayer: "abcdef"}); !errors.Is(err, store.ErrLayerUnknown) {
			t.Fatalf("unknown top layer: %v", err)
		}
		if _, err := s.CreateImage(store.ImageOptions{Config: []byte(`{}`), Names: []string{"BAD"}}); !errors.Is(err, store.ErrInvalidName) {
			t.Fatalf("bad name: %v", err)
		}
		// Removal: in use by a container, then forced; shared layers stay.
		c, err := s.CreateContainer(img.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.RemoveImage(img.ID, false); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("remove used image: %v", err)
		}
		if err := s.RemoveContainer(c.ID, false); err != nil {
			t.Fatal(err)
		}
		removed, err := s.RemoveImage(img.ID, false)
		if err != nil || len(removed) != 1 || removed[0] != ls[1].ID {
			t.Fatalf("removed %v %v; want only the upper layer (base is img2's)", removed, err)
		}
		if _, err := s.Image("quay.io/x/app:v1"); !errors.Is(err, store.ErrImageUnknown) {
			t.Fatalf("name of removed image: %v", err)
		}
		if _, err := os.Stat(filepath.Join(root, "blobs", "sha256", img.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("config blob of removed image: %v", err)
		}
		c2, err := s.CreateContainer("base", nil)
		if err != nil {
			t.Fatal(err)
		}
		if removed, err := s.RemoveImage("base", true); err != nil || len(removed) != 0 {
			t.Fatalf("force remove: %v %v (the container's parent stays)", removed, err)
		}
		if got, err := s.Container(c2.ID); err != nil || got.Image != img2.ID {
			t.Fatalf("container after its image went: %v %v", got, err)
		}
		if _, err := s.RemoveImage("base", false); !errors.Is(err, store.ErrImageUnknown) {
			t.Fatalf("remove again: %v", err)
		}
		assertClean(t, s)
	})
}

func TestContainersAndMounts(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		img := mustImage(t, s, []string{"app"}, baseTar, upperTar)
		meta := json.RawMessage(`{"state":"created"}`)
		c, err := s.CreateContainer("app", &store.ContainerOptions{Name: "web", Metadata: meta})
		if err != nil {
			t.Fatal(err)
		}
		if c.Name != "web" || c.Image != img.ID || c.Mounted || string(c.Metadata) != string(meta) {
			t.Fatalf("container %+v", c)
		}
		l, err := s.Layer(c.Layer)
		if err != nil || l.Kind != store.KindContainer || l.Parent != img.TopLayer {
			t.Fatalf("container layer %+v %v", l, err)
		}
		for _, bad := range []string{"-x", "a b", "x/y", hex64('a')} {
			if _, err := s.CreateContainer("app", &store.ContainerOptions{Name: bad}); !errors.Is(err, store.ErrInvalidName) {
				t.Errorf("name %q: %v, want ErrInvalidName", bad, err)
			}
		}
		if _, err := s.CreateContainer("app", &store.ContainerOptions{Name: "web"}); !errors.Is(err, store.ErrNameInUse) {
			t.Fatalf("duplicate name: %v", err)
		}
		if _, err := s.CreateContainer("nosuch", nil); !errors.Is(err, store.ErrImageUnknown) {
			t.Fatalf("unknown image: %v", err)
		}
		for _, ref := range []string{"web", c.ID, c.ID[:8]} {
			if got, err := s.Container(ref); err != nil || got.ID != c.ID {
				t.Errorf("Container(%q): %v %v", ref, got, err)
			}
		}
		if _, err := s.Container("nosuch"); !errors.Is(err, store.ErrContainerUnknown) {
			t.Fatalf("unknown container: %v", err)
		}
		if err := s.SetContainerMetadata("web", json.RawMessage(`{"state":"running"}`)); err != nil {
			t.Fatal(err)
		}
		if err := s.SetContainerMetadata("web", json.RawMessage(`{`)); err == nil {
			t.Fatal("bad metadata taken")
		}

		// Mount counts: two mounts, one path; the file written shows in the layer.
		p1, err := s.Mount("web")
		if err != nil {
			t.Fatal(err)
		}
		p2, err := s.Mount(c.ID)
		if err != nil || p2 != p1 {
			t.Fatalf("second mount %q %v, want %q", p2, err, p1)
		}
		if n, p, err := s.Mounted("web"); n != 2 || p != p1 || err != nil {
			t.Fatalf("Mounted: %d %q %v", n, p, err)
		}
		if b, err := os.ReadFile(filepath.Join(p1, "etc/extra")); err != nil || string(b) != "more\n" {
			t.Fatalf("image content in container: %q %v", b, err)
		}
		if err := os.WriteFile(filepath.Join(p1, "new"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if cs, err := s.Containers(); err != nil || len(cs) != 1 || !cs[0].Mounted {
			t.Fatalf("Containers: %v %v", cs, err)
		}
		if err := s.Unmount("web", false); err != nil {
			t.Fatal(err)
		}
		if n, _, _ := s.Mounted("web"); n != 1 {
			t.Fatalf("after one unmount: %d", n)
		}
		if err := s.Unmount("web", false); err != nil {
			t.Fatal(err)
		}
		if n, _, _ := s.Mounted("web"); n != 0 {
			t.Fatalf("after two unmounts: %d", n)
		}
		if ok, _ := isMountpoint(p1); ok {
			t.Fatalf("%s still mounted", p1)
		}
		if err := s.Unmount("web", false); err != nil {
			t.Fatalf("unmount of unmounted: %v", err)
		}
		if _, err := s.Mount("nosuch"); !errors.Is(err, store.ErrContainerUnknown) || !errors.Is(err, store.ErrLayerUnknown) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("mount unknown: %q", err)
		}
		// Changes and Diff against the image.
		changes, err := s.Changes(context.Background(), "web")
		if err != nil || len(changes) != 1 || changes[0].String() != "A /new" {
			t.Fatalf("changes %v %v", changes, err)
		}
		rc, err := s.Diff(context.Background(), "web")
		if err != nil {
			t.Fatal(err)
		}
		names := tarNames(t, rc)
		if len(names) != 1 || names[0] != "new" {
			t.Fatalf("diff entries %v", names)
		}
		if n, _, _ := s.Mounted("web"); n != 0 {
			t.Fatalf("diff left %d mounts counted", n)
		}
		// A removed container is gone with its layer, even when mounted.
		if _, err := s.Mount("web"); err != nil {
			t.Fatal(err)
		}
		if err := s.RemoveContainer("web", false); err != nil {
			t.Fatal(err)
		}
		if ok, _ := isMountpoint(p1); ok {
			t.Fatalf("%s mounted after rm", p1)
		}
		if _, err := s.Layer(c.Layer); !errors.Is(err, store.ErrLayerUnknown) {
			t.Fatalf("container layer after rm: %v", err)
		}
		if _, err := s.Mount("web"); !errors.Is(err, store.ErrContainerUnknown) {
			t.Fatalf("mount removed container: %v", err)
		}
		if err := s.RemoveContainer("web", false); !errors.Is(err, store.ErrContainerUnknown) {
			t.Fatalf("rm twice: %v", err)
		}
		assertClean(t, s)
	})
}

func tarNames(t *testing.T, rc io.ReadCloser) []string {
	t.Helper()
	defer rc.Close()
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	return names
}

// Mount counts outlive the process that made them: a mount made through
// one Store stays after its Close, and another Store balances it.
func TestMountsAcrossOpens(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		s1 := open(t, driver, root)
		mustImage(t, s1, []string{"app"}, baseTar)
		c, err := s1.CreateContainer("app", nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := s1.Mount(c.ID)
		if err != nil {
			t.Fatal(err)
		}
		kernel, _ := isMountpoint(p)
		if err := s1.Close(); err != nil {
			t.Fatal(err)
		}
		if ok, _ := isMountpoint(p); ok != kernel {
			t.Fatalf("Close changed the mount of %s", p)
		}
		s2 := open(t, "", root)
		if n, p2, err := s2.Mounted(c.ID); n != 1 || p2 != p || err != nil {
			t.Fatalf("Mounted in a new store: %d %q %v", n, p2, err)
		}
		if p2, err := s2.Mount(c.ID); err != nil || p2 != p {
			t.Fatalf("mount again: %q %v", p2, err)
		}
		if err := s2.Unmount(c.ID, false); err != nil {
			t.Fatal(err)
		}
		if ok, _ := isMountpoint(p); ok != kernel {
			t.Fatalf("still counted once, but mounted=%v", ok)
		}
		if err := s2.Unmount(c.ID, false); err != nil {
			t.Fatal(err)
		}
		if ok, _ := isMountpoint(p); ok {
			t.Fatalf("%s still mounted at count zero", p)
		}
		if !kernel {
			return // the driver mounts nothing: no kernel state to drift
		}
		// Unmounted behind the store's back: the count reads as zero,
		// Check reports it, and a new Mount mounts again.
		if _, err := s2.Mount(c.ID); err != nil {
			t.Fatal(err)
		}
		if err := unix.Unmount(p, 0); err != nil {
			t.Fatal(err)
		}
		if n, _, _ := s2.Mounted(c.ID); n != 0 {
			t.Fatalf("stale count read as %d", n)
		}
		r, err := s2.Check(context.Background(), store.CheckOptions{})
		if err != nil || len(r.Problems) != 1 || r.Problems[0].Kind != store.ProblemStaleMount {
			t.Fatalf("check: %v %v", r, err)
		}
		if p2, err := s2.Mount(c.ID); err != nil || p2 != p {
			t.Fatalf("mount after stale: %q %v", p2, err)
		}
		if ok, _ := isMountpoint(p); !ok {
			t.Fatal("not mounted again")
		}
		if err := s2.Unmount(c.ID, true); err != nil {
			t.Fatal(err)
		}
		if ok, _ := isMountpoint(p); ok {
			t.Fatal("force unmount left it mounted")
		}
		assertClean(t, s2)
	})
}

func TestCheckAndRepair(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root)
		img := mustImage(t, s, []string{"app"}, baseTar, upperTar)
		c, err := s.CreateContainer("app", nil)
		if err != nil {
			t.Fatal(err)
		}
		assertClean(t, s)
		// Damage: a file of the base layer changes (as a power loss may do),
		// data appears that no row knows, a blob appears that no image uses.
		// Image layers may mount read-only: the damage goes straight into
		// the driver's copy of the file.
		if err := os.WriteFile(layerFile(t, root, img.Layers[0], "etc/hello"), []byte("HI\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		orphan := hex64('e')
		if err := s.Driver().Create(orphan, "", nil); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "blobs", "sha256", hex64('f')), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		strayLayout := filepath.Join(root, "tar-layout", hex64('9')+".gz")
		if err := os.WriteFile(strayLayout, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := s.Check(ctx, store.CheckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := kinds(r); got != "orphan-blob orphan-layer-data orphan-layer-data" {
			t.Fatalf("check without digests: %v", r.Problems)
		}
		r, err = s.Check(ctx, store.CheckOptions{Digests: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := kinds(r); got != "layer-digest-mismatch orphan-blob orphan-layer-data orphan-layer-data" {
			t.Fatalf("check with digests: %v", r.Problems)
		}
		// Repair without RemoveDamaged fixes what loses nothing.
		r, err = s.Repair(ctx, store.RepairOptions{CheckOptions: store.CheckOptions{Digests: true}})
		if err != nil {
			t.Fatal(err)
		}
		if r.Clean() {
			t.Fatal("repair says clean with a damaged layer left")
		}
		if s.Driver().Exists(orphan) {
			t.Fatal("orphan data not removed")
		}
		if _, err := os.Stat(strayLayout); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stray tar layout not removed: %v", err)
		}
		if _, err := s.Container(c.ID); err != nil {
			t.Fatalf("repair without RemoveDamaged removed a container: %v", err)
		}
		// With RemoveDamaged, the layer goes with everything above it.
		r, err = s.Repair(ctx, store.RepairOptions{CheckOptions: store.CheckOptions{Digests: true}, RemoveDamaged: true})
		if err != nil || !r.Clean() {
			t.Fatalf("repair: %v %v", r, err)
		}
		if _, err := s.Container(c.ID); !errors.Is(err, store.ErrContainerUnknown) {
			t.Fatalf("container on a damaged layer: %v", err)
		}
		if _, err := s.Image("app"); !errors.Is(err, store.ErrImageUnknown) {
			t.Fatalf("image on a damaged layer: %v", err)
		}
		if ls, _ := s.Layers(); len(ls) != 0 {
			t.Fatalf("layers left: %v", ls)
		}
		assertClean(t, s)
		// A layer whose data vanished, and an image whose config vanished.
		img = mustImage(t, s, []string{"app"}, baseTar)
		if err := s.Driver().Remove(img.Layers[0]); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(root, "blobs", "sha256", img.ID)); err != nil {
			t.Fatal(err)
		}
		r, err = s.Check(ctx, store.CheckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := kinds(r); got != "blob-missing layer-data-missing" {
			t.Fatalf("check: %v", r.Problems)
		}
		if r, err := s.Repair(ctx, store.RepairOptions{RemoveDamaged: true}); err != nil || !r.Clean() {
			t.Fatalf("repair: %v %v", r, err)
		}
		assertClean(t, s)
	})
}

func kinds(r *store.Report) string {
	var ks []string
	for _, p := range r.Problems {
		ks = append(ks, string(p.Kind))
	}
	sort.Strings(ks)
	out := ""
	for i, k := range ks {
		if i > 0 {
			out += " "
		}
		out += k
	}
	return out
}

func TestPrune(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root)
		img := mustImage(t, s, []string{"app"}, baseTar)
		loose := mustApply(t, s, img.Layers[0], upperTar)[0]
		looseChild, err := s.CreateLayer(loose.ID, nil)
		if err != nil {
			t.Fatal(err)
		}
		mounted, err := s.CreateLayer("", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Mount(mounted.ID); err != nil {
			t.Fatal(err)
		}
		rep, err := s.Prune(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(rep.Layers)
		want := []string{loose.ID, looseChild.ID}
		sort.Strings(want)
		if len(rep.Layers) != 2 || rep.Layers[0] != want[0] || rep.Layers[1] != want[1] || rep.Size != loose.Size {
			t.Fatalf("pruned %+v, want %v", rep, want)
		}
		if _, err := s.Layer(img.Layers[0]); err != nil {
			t.Fatalf("image layer pruned: %v", err)
		}
		if _, err := s.Layer(mounted.ID); err != nil {
			t.Fatalf("mounted layer pruned: %v", err)
		}
		if rep, err := s.Prune(ctx); err != nil || len(rep.Layers) != 0 {
			t.Fatalf("second prune: %+v %v", rep, err)
		}
		assertClean(t, s)
	})
}

// LayerTar gives back the applied tar byte for byte, also compressed
// input, also tars with padding after the end marker.
func TestLayerTarRoundTrip(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root)
		padded := append(append([]byte{}, baseTar...), make([]byte, 10240)...)
		gz, err := fixtures.Compress(upperTar, diff.Gzip)
		if err != nil {
			t.Fatal(err)
		}
		base, err := s.ApplyDiff(ctx, "", bytes.NewReader(padded), nil)
		if err != nil {
			t.Fatal(err)
		}
		upper, err := s.ApplyDiff(ctx, base.ID, bytes.NewReader(gz), nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			l    *store.Layer
			want []byte
		}{{base, padded}, {upper, upperTar}} {
			if c.l.DiffID != digest.FromBytes(c.want) {
				t.Fatalf("diff ID %s, want %s", c.l.DiffID, digest.FromBytes(c.want))
			}
			rc, err := s.LayerTar(ctx, c.l.ID)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			if err := rc.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.want) {
				t.Fatalf("layer tar: %d bytes, want the %d applied", len(got), len(c.want))
			}
		}
		assertClean(t, s)
	})
}

// A tar naming a file outside the root in its layout cannot make LayerTar
// read outside the layer.
func TestLayerTarStaysInRoot(t *testing.T) {
	root := filepath.Join(loopfs.New(t, "tmpfs", 0), "root")
	s := open(t, "vfs", root)
	l := mustApply(t, s, "", tarOf(fixtures.Symlink("escape", "/"), fixtures.Dir("etc", 0o755), fixtures.File("etc/f", "data", 0o644)))[0]
	// Swap the layer's file for a symlink to a host file.
	p, err := s.Mount(l.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(p, "etc/f")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", filepath.Join(p, "etc/f")); err != nil {
		t.Fatal(err)
	}
	s.Unmount(l.ID, false)
	rc, err := s.LayerTar(context.Background(), l.ID)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rc)
	rc.Close()
	if err == nil {
		t.Fatal("LayerTar followed a symlink out of the layer")
	}
}

// layerFile finds the file rel of layer id in the driver's data under
// root, whatever the driver's layout: the one path below a directory
// named id that ends in rel.
func layerFile(t *testing.T, root, id, rel string) string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, "/"+rel) && strings.Contains(p, "/"+id+"/") && !strings.Contains(p, "/merged/") {
			found = append(found, p)
		}
		return nil
	})
	if err != nil || len(found) != 1 {
		t.Fatalf("file %s of layer %s: found %v (%v)", rel, id, found, err)
	}
	return found[0]
}

// One Store used by many goroutines at once: containers churned, layers
// applied (the same tar by several: one layer is kept), lists read.
func TestConcurrentGoroutines(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		mustImage(t, s, []string{"base"}, baseTar)
		ctx := context.Background()
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		ids := make(chan string, 64)
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 8 {
					c, err := s.CreateContainer("base", nil)
					if err != nil {
						errs <- err
						return
					}
					if _, err := s.Mount(c.ID); err != nil {
						errs <- err
						return
					}
					if _, err := s.Containers(); err != nil {
						errs <- err
						return
					}
					if err := s.Unmount(c.ID, false); err != nil {
						errs <- err
						return
					}
					if err := s.RemoveContainer(c.ID, false); err != nil {
						errs <- err
						return
					}
				}
				if g%2 == 0 {
					l, err := s.ApplyDiff(ctx, "", bytes.NewReader(upperTar), nil)
					if err != nil {
						errs <- err
						return
					}
					ids <- l.ID
				}
			}()
		}
		wg.Wait()
		close(errs)
		close(ids)
		for err := range errs {
			t.Error(err)
		}
		var first string
		for id := range ids {
			if first == "" {
				first = id
			} else if id != first {
				t.Errorf("the same tar applied at once gave layers %s and %s", first, id)
			}
		}
		if ls, _ := s.Layers(); len(ls) != 2 {
			t.Fatalf("%d layers, want the image's and one applied", len(ls))
		}
		assertClean(t, s)
	})
}

// A mount kept busy (an open file in it) makes Unmount and RemoveContainer
// fail with ErrInUse, counts and all kept; force detaches it.
func TestBusyMount(t *testing.T) {
	forEachDriverThat(t, "mount layers", mountsLayers, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		mustImage(t, s, []string{"app"}, baseTar)
		c, err := s.CreateContainer("app", nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.Mount(c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := isMountpoint(p); !ok {
			t.Fatalf("%s is not mounted", p)
		}
		f, err := os.Open(filepath.Join(p, "etc", "hello"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := s.Unmount(c.ID, false); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("unmount of a busy mount: %v, want ErrInUse", err)
		}
		if n, _, _ := s.Mounted(c.ID); n != 1 {
			t.Fatalf("count after a failed unmount: %d, want 1", n)
		}
		if err := s.RemoveContainer(c.ID, false); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("rm of a busy container: %v, want ErrInUse", err)
		}
		if _, err := s.Container(c.ID); err != nil {
			t.Fatalf("container gone after a failed rm: %v", err)
		}
		if err := s.RemoveContainer(c.ID, true); err != nil {
			t.Fatalf("rm -f: %v", err)
		}
		if ok, _ := isMountpoint(p); ok {
			t.Fatal("still mounted after rm -f")
		}
		f.Close()
		assertClean(t, s)
	})
}

// Tars the layout must give back too: GNU sparse entries in both GNU
// formats (made by GNU tar), long names (PAX), hardlinks, devices; and a
// tar listing a path twice, whose first content the layer no longer has:
// LayerTar exports it instead, and Check does not call it damaged.
func TestLayerTarHardCases(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("data in the middle"), 3<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var sparseTars [][]byte
	for _, format := range []string{"gnu", "posix"} {
		out, err := exec.Command("tar", "--format="+format, "-S", "-C", src, "-cf", "-", ".").Output()
		if err != nil {
			t.Skipf("GNU tar: %v", err)
		}
		sparseTars = append(sparseTars, out)
	}
	long := strings.Repeat("d", 120) + "/" + strings.Repeat("f", 150)
	other := tarOf(
		fixtures.Dir(strings.Repeat("d", 120), 0o755),
		fixtures.File(long, "long name", 0o644, fixtures.Xattr("user.k", "v")),
		fixtures.Hardlink("link", long),
		fixtures.CharDev("null", 1, 3, 0o666),
		fixtures.Fifo("fifo", 0o644),
		fixtures.File("empty", "", 0o644),
	)
	twice := tarOf(fixtures.File("f", "first", 0o644), fixtures.File("f", "second", 0o644))
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root)
		for i, tb := range append(sparseTars, other, twice) {
			l, err := s.ApplyDiff(ctx, "", bytes.NewReader(tb), nil)
			if err != nil {
				t.Fatalf("tar %d: %v", i, err)
			}
			rc, err := s.LayerTar(ctx, l.ID)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			if cerr := rc.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatalf("tar %d: %v", i, err)
			}
			if &tb[0] == &twice[0] {
				if names := tarNames(t, io.NopCloser(bytes.NewReader(got))); len(names) != 1 || names[0] != "f" {
					t.Fatalf("export of the twice-listed tar: %v", names)
				}
				continue
			}
			if !bytes.Equal(got, tb) {
				t.Fatalf("tar %d: got %d bytes back, want the %d applied", i, len(got), len(tb))
			}
		}
		assertClean(t, s)
	})
}

// markLockBusy makes root's lock file say that a locked operation is
// under way, as a process killed with the lock held leaves it.
func markLockBusy(t *testing.T, root string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(root, "store.lock"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("1"), 0); err != nil {
		t.Fatal(err)
	}
}

// Open's recovery reads mountinfo once for all mounted containers; the
// counts that hold must stay, a count whose mount went behind the store's
// back is reset, and a mount no count covers (a process killed between
// the driver's Get and recording it) is undone, also when the root is
// reached through a symlink (mountinfo names resolved paths).
func TestRecoveryMountsThroughSymlink(t *testing.T) {
	forEachDriverThat(t, "mount layers", mountsLayers, func(t *testing.T, driver, root string) {
		if err := os.MkdirAll(root, 0o700); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(filepath.Dir(root), "link")
		if err := os.Symlink(filepath.Base(root), link); err != nil {
			t.Fatal(err)
		}
		s1 := open(t, driver, link)
		mustImage(t, s1, []string{"app"}, baseTar)
		var ids, paths []string
		for range 4 {
			c, err := s1.CreateContainer("app", nil)
			if err != nil {
				t.Fatal(err)
			}
			p, err := s1.Mount(c.ID)
			if err != nil {
				t.Fatal(err)
			}
			ids, paths = append(ids, c.ID), append(paths, p)
		}
		if ok, _ := isMountpoint(paths[0]); !ok {
			t.Fatalf("%s is not mounted", paths[0])
		}
		if err := unix.Unmount(paths[3], 0); err != nil { // behind the store's back
			t.Fatal(err)
		}
		// A leaked mount: the driver's Get without the store counting it.
		leak, err := s1.CreateContainer("app", nil)
		if err != nil {
			t.Fatal(err)
		}
		leakPath, err := s1.Driver().Get(leak.Layer, graphdriver.MountOpts{})
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := isMountpoint(leakPath); !ok {
			t.Fatalf("driver Get did not mount %s", leakPath)
		}
		if err := s1.Close(); err != nil {
			t.Fatal(err)
		}
		// As a process killed in the middle of an operation leaves the
		// lock file (busy), so that Open reconciles the counts; after
		// operations that all ended it trusts them (TestOpenTrustsMountCounts).
		markLockBusy(t, root)

		s2 := open(t, "", link)
		for i, id := range ids {
			want := 1
			if i == 3 {
				want = 0
			}
			if n, _, err := s2.Mounted(id); n != want || err != nil {
				t.Errorf("container %d after reopen: mounted %d times (%v), want %d", i, n, err, want)
			}
		}
		if ok, _ := isMountpoint(leakPath); ok {
			t.Errorf("leaked mount %s survived Open's recovery", leakPath)
		}
		cs, err := s2.Containers()
		if err != nil {
			t.Fatal(err)
		}
		mounted := 0
		for _, c := range cs {
			if c.Mounted {
				mounted++
			}
		}
		if mounted != 3 {
			t.Errorf("Containers lists %d mounted, want 3", mounted)
		}
		assertClean(t, s2)
		for _, id := range ids[:3] {
			if err := s2.Unmount(id, false); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range paths {
			if ok, _ := isMountpoint(p); ok {
				t.Errorf("%s still mounted", p)
			}
		}
	})
}

// CreateContainer returns what the rows say (it builds the Container
// without reading it back): the same as a lookup of it.
func TestCreateContainerReturnsTheRecord(t *testing.T) {
	root := filepath.Join(loopfs.New(t, "tmpfs", 0), "root")
	s := open(t, "vfs", root)
	img := mustImage(t, s, []string{"app"}, baseTar)
	for _, opts := range []*store.ContainerOptions{nil, {Name: "web", Metadata: json.RawMessage(`{"a":1}`)}} {
		c, err := s.CreateContainer("app", opts)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Container(c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(c, got) {
			t.Errorf("CreateContainer returned %+v, the lookup %+v", c, got)
		}
		if c.Image != img.ID || c.Layer == "" {
			t.Errorf("container %+v: want image %s and a layer", c, img.ID)
		}
		l, err := s.Layer(c.Layer)
		if err != nil || l.Parent != img.TopLayer || l.Kind != store.KindContainer {
			t.Errorf("container layer %+v %v: want a read-write layer on %s", l, err, img.TopLayer)
		}
	}
}
