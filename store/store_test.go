package store_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// forEachDriverThat is forEachDriver for a case about something only some
// drivers do (has says which); the others do not run it at all, since it
// says nothing about them, and the test logs which were left out.
func forEachDriverThat(t *testing.T, what string, has func(t *testing.T, d graphdriver.Driver) bool, f func(t *testing.T, driver, root string)) {
	t.Helper()
	for _, name := range drivers() {
		d, err := graphdriver.New(name, t.TempDir(), nil)
		if err != nil {
			t.Fatalf("driver %s: %v", name, err)
		}
		ok := has(t, d)
		if err := d.Cleanup(); err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Logf("driver %s does not %s: not a case for it", name, what)
			continue
		}
		t.Run(name, func(t *testing.T) {
			root := filepath.Join(loopfs.New(t, "tmpfs", 0), "root")
			f(t, name, root)
		})
	}
}

// appliesNatively: the driver writes a layer's tar without mounting, so
// the layers of a chain may be applied at once.
func appliesNatively(_ *testing.T, d graphdriver.Driver) bool {
	_, ok := d.(graphdriver.Applier)
	return ok
}

// mountsLayers: Get mounts something (vfs hands out a plain directory).
func mountsLayers(t *testing.T, d graphdriver.Driver) bool {
	t.Helper()
	if err := d.CreateReadWrite("probe", "", nil); err != nil {
		t.Fatal(err)
	}
	p, err := d.Get("probe", graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Put("probe")
	ok, err := graphdriver.IsMountpoint(p)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

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

// mustApply applies tars as a chain and returns the layers, bottom first.
func mustApply(t testing.TB, s *store.Store, parent string, tars ...[]byte) []*store.Layer {
	t.Helper()
	var ls []*store.Layer
	for _, tb := range tars {
		l, err := s.ApplyDiff(context.Background(), parent, bytes.NewReader(tb), nil)
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
		ls = append(ls, l)
		parent = l.ID
	}
	return ls
}

// mustImage applies tars as a chain and makes an image of them.
func mustImage(t testing.TB, s *store.Store, names []string, tars ...[]byte) *store.Image {
	t.Helper()
	ls := mustApply(t, s, "", tars...)
	cfg, err := fixtures.ImageConfig(tars, "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.CreateImage(store.ImageOptions{Config: cfg, TopLayer: ls[len(ls)-1].ID, Names: names})
	if err != nil {
		t.Fatalf("create image: %v", err)
	}
	return img
}

// assertClean fails unless Check (with digests) finds nothing.
func assertClean(t testing.TB, s *store.Store) {
	t.Helper()
	r, err := s.Check(context.Background(), store.CheckOptions{Digests: true})
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if !r.Clean() {
		t.Fatalf("check found problems: %v", r.Problems)
	}
}

var (
	baseTar  = tarOf(fixtures.Dir("etc", 0o755), fixtures.File("etc/hello", "hi\n", 0o644), fixtures.Dir("bin", 0o755), fixtures.File("bin/tool", "#!/bin/sh\n", 0o755))
	upperTar = tarOf(fixtures.Dir("etc", 0o755), fixtures.File("etc/extra", "more\n", 0o644), fixtures.Whiteout("bin/tool"))
)

func TestOpenErrors(t *testing.T) {
	root := filepath.Join(loopfs.New(t, "tmpfs", 0), "root")
	s := open(t, "vfs", root)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Layers(); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Layers after Close: %v, want ErrClosed", err)
	}
	if _, err := s.CreateLayer("", nil); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("CreateLayer after Close: %v, want ErrClosed", err)
	}
	// The recorded driver is used when none is named, and another is refused.
	s2, err := store.Open(store.Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if s2.DriverName() != "vfs" {
		t.Fatalf("reopened with %s, want the recorded vfs", s2.DriverName())
	}
	s2.Close()
	for _, other := range drivers() {
		if other == "vfs" {
			continue
		}
		_, err := store.Open(store.Options{Root: root, Driver: other})
		if !errors.Is(err, store.ErrDriverMismatch) {
			t.Fatalf("open with %s: %v, want ErrDriverMismatch", other, err)
		}
	}
	cases := []struct {
		opts store.Options
		want error
	}{
		{store.Options{Root: filepath.Join(root, "x"), Driver: "nosuch"}, graphdriver.ErrUnknownDriver},
		{store.Options{Root: root, DriverOptions: map[string]string{"sync": "maybe"}}, store.ErrInvalidOption},
		{store.Options{Root: root, DriverOptions: map[string]string{"bogus": "1"}}, graphdriver.ErrUnknownOption},
	}
	for _, c := range cases {
		if _, err := store.Open(c.opts); !errors.Is(err, c.want) {
			t.Errorf("Open(%+v): %v, want %v", c.opts, err, c.want)
		}
	}
	if _, err := store.Open(store.Options{}); err == nil {
		t.Error("Open without root succeeded")
	}
	if _, err := store.ParseStorageOptions([]string{"novalue"}); !errors.Is(err, store.ErrInvalidOption) {
		t.Errorf("ParseStorageOptions(novalue): %v", err)
	}
	if m, err := store.ParseStorageOptions([]string{"sync=true", "vfs.copy=copy"}); err != nil || m["sync"] != "true" || m["vfs.copy"] != "copy" {
		t.Errorf("ParseStorageOptions: %v %v", m, err)
	}
}

// errReader fails the test if anything reads it.
type errReader struct{ t testing.TB }

func (r errReader) Read([]byte) (int, error) {
	r.t.Error("the layer was read although it is stored already")
	return 0, errors.New("must not be read")
}

func TestApplyDiff(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root, "sync=true")
		if !s.Sync() {
			t.Fatal("sync=true not taken")
		}
		ls := mustApply(t, s, "", baseTar, upperTar)
		base, upper := ls[0], ls[1]
		if upper.Parent != base.ID || upper.ChainID != store.ChainID(base.ChainID, digest.FromBytes(upperTar)) {
			t.Fatalf("upper %+v", upper)
		}
		if base.TarSize != int64(len(baseTar)) || base.Size != int64(len("hi\n#!/bin/sh\n")) {
			t.Errorf("sizes: tar %d size %d", base.TarSize, base.Size)
		}
		// Same tar on the same parent: the stored layer, not a new one.
		again := mustApply(t, s, "", baseTar)[0]
		if again.ID != base.ID {
			t.Fatalf("re-applied layer got a new ID %s, want %s", again.ID, base.ID)
		}
		// With the expected diffID, it is not even read; its blob is recorded.
		blob := &store.Blob{Digest: digest.FromString("gz"), MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Size: 2}
		known, err := s.ApplyDiff(ctx, base.ID[:12], errReader{t}, &store.ApplyOptions{DiffID: digest.FromBytes(upperTar), Blob: blob})
		if err != nil || known.ID != upper.ID || len(known.Blobs) != 1 || known.Blobs[0] != *blob {
			t.Fatalf("known layer: %+v %v", known, err)
		}
		// A wrong expected diffID fails and leaves nothing.
		_, err = s.ApplyDiff(ctx, "", bytes.NewReader(upperTar), &store.ApplyOptions{DiffID: digest.FromString("other")})
		if !errors.Is(err, store.ErrDigestMismatch) {
			t.Fatalf("wrong diff ID: %v", err)
		}
		// A cancelled apply fails and leaves nothing.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.ApplyDiff(cctx, "", bytes.NewReader(bigTar(3)), nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled apply: %v", err)
		}
		// Garbage fails and leaves nothing.
		if _, err := s.ApplyDiff(ctx, "", bytes.NewReader([]byte("not a tar at all, not even close........")), nil); err == nil {
			t.Fatal("garbage applied")
		}
		if _, err := s.ApplyDiff(ctx, "0000", bytes.NewReader(baseTar), nil); !errors.Is(err, store.ErrLayerUnknown) {
			t.Fatalf("unknown parent: %v", err)
		}
		if _, err := s.ApplyDiff(ctx, "", bytes.NewReader(baseTar), &store.ApplyOptions{ID: "bad"}); err == nil {
			t.Fatal("bad ID taken")
		}
		all, err := s.Layers()
		if err != nil || len(all) != 2 {
			t.Fatalf("layers after failures: %d %v", len(all), err)
		}
		// The data is there: mount the upper layer and look.
		p, err := s.Mount(upper.ID)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(p, "etc/hello")); err != nil || string(b) != "hi\n" {
			t.Fatalf("etc/hello: %q %v", b, err)
		}
		if _, err := os.Lstat(filepath.Join(p, "bin/tool")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("whited-out bin/tool: %v", err)
		}
		if err := s.Unmount(upper.ID, false); err != nil {
			t.Fatal(err)
		}
		assertClean(t, s)
	})
}

func TestLayerLookups(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		base := mustApply(t, s, "", baseTar)[0]
		for _, ref := range []string{base.ID, base.ID[:10]} {
			if l, err := s.Layer(ref); err != nil || l.ID != base.ID {
				t.Fatalf("Layer(%s): %v %v", ref, l, err)
			}
		}
		for _, ref := range []string{"", "zz", "not-hex", base.ID + "0"} {
			if _, err := s.Layer(ref); !errors.Is(err, store.ErrLayerUnknown) {
				t.Errorf("Layer(%q): %v, want ErrLayerUnknown", ref, err)
			}
		}
		// 17 layers: two share their first hex digit.
		byFirst := map[byte]bool{}
		var shared byte
		for i := 0; i < 17; i++ {
			l, err := s.CreateLayer("", nil)
			if err != nil {
				t.Fatal(err)
			}
			if byFirst[l.ID[0]] {
				shared = l.ID[0]
			}
			byFirst[l.ID[0]] = true
		}
		if _, err := s.Layer(string(shared)); !errors.Is(err, store.ErrAmbiguous) {
			t.Fatalf("Layer(%c): %v, want ErrAmbiguous", shared, err)
		}
		if ls, err := s.LayersByDiffID(base.DiffID); err != nil || len(ls) != 1 || ls[0].ID != base.ID {
			t.Fatalf("LayersByDiffID: %v %v", ls, err)
		}
		if l, err := s.LayerByChainID(base.ChainID); err != nil || l.ID != base.ID {
			t.Fatalf("LayerByChainID: %v %v", l, err)
		}
		if _, err := s.LayerByChainID(digest.FromString("x")); !errors.Is(err, store.ErrLayerUnknown) {
			t.Fatalf("LayerByChainID(unknown): %v", err)
		}
		b := store.Blob{Digest: digest.FromString("blob"), MediaType: "application/vnd.oci.image.layer.v1.tar+zstd", Size: 4}
		if err := s.AddLayerBlob(base.ID[:8], b); err != nil {
			t.Fatal(err)
		}
		if err := s.AddLayerBlob(base.ID, store.Blob{Digest: "bad"}); err == nil {
			t.Fatal("bad blob digest taken")
		}
		if ls, err := s.LayersByBlobDigest(b.Digest); err != nil || len(ls) != 1 || ls[0].ID != base.ID || ls[0].Blobs[0] != b {
			t.Fatalf("LayersByBlobDigest: %v %v", ls, err)
		}
		rw, err := s.CreateLayer(base.ID, &store.LayerOptions{ReadWrite: true})
		if err != nil || rw.Kind != store.KindContainer || rw.Parent != base.ID {
			t.Fatalf("read-write layer: %+v %v", rw, err)
		}
		if _, err := s.CreateLayer("", &store.LayerOptions{ID: rw.ID}); err == nil {
			t.Fatal("duplicate layer ID taken")
		}
		if _, err := s.CreateLayer("feed", nil); !errors.Is(err, store.ErrLayerUnknown) {
			t.Fatalf("unknown parent: %v", err)
		}
		assertClean(t, s)
	})
}

func TestRemoveLayer(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		img := mustImage(t, s, []string{"app"}, baseTar, upperTar)
		base, top := img.Layers[0], img.Layers[1]
		if err := s.RemoveLayer(base, false); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("remove parent: %v, want ErrInUse", err)
		}
		if err := s.RemoveLayer(top, true); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("remove image's top layer: %v, want ErrInUse", err)
		}
		c, err := s.CreateContainer("app", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RemoveLayer(c.Layer, false); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("remove container layer: %v, want ErrInUse", err)
		}
		if err := s.RemoveLayer("abc", false); !errors.Is(err, store.ErrLayerUnknown) {
			t.Fatalf("remove unknown: %v", err)
		}
		free, err := s.CreateLayer(top, nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.Mount(free.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RemoveLayer(free.ID, false); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("remove mounted: %v, want ErrInUse", err)
		}
		if err := s.RemoveLayer(free.ID, true); err != nil {
			t.Fatalf("force remove mounted: %v", err)
		}
		if ok, _ := isMountpoint(p); ok {
			t.Fatalf("%s still mounted after removal", p)
		}
		if _, err := s.Layer(free.ID); !errors.Is(err, store.ErrLayerUnknown) {
			t.Fatalf("removed layer still there: %v", err)
		}
		if s.Driver().Exists(free.ID) {
			t.Fatal("removed layer's data still there")
		}
		assertClean(t, s)
	})
}

// A first Open that fails (unknown driver, options the driver refuses)
// leaves nothing but the root and its empty lock file: no database
// without a driver, no directories, no driver home. An Open that fails on
// a root in use removes nothing.
func TestFailedFirstOpenLeavesNothing(t *testing.T) {
	base := loopfs.New(t, "tmpfs", 0)
	listing := func(dir string) []string {
		var out []string
		_ = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
			if err == nil && p != dir {
				rel, _ := filepath.Rel(dir, p)
				out = append(out, rel)
			}
			return nil
		})
		return out
	}
	cases := []struct {
		name string
		opts store.Options
		want error
	}{
		{"unknown driver", store.Options{Driver: "nosuch"}, graphdriver.ErrUnknownDriver},
		{"bad driver option", store.Options{Driver: "vfs", DriverOptions: map[string]string{"bogus": "1"}}, graphdriver.ErrUnknownOption},
		{"bad option, default driver", store.Options{DriverOptions: map[string]string{"bogus": "1"}}, graphdriver.ErrUnknownOption},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := filepath.Join(base, fmt.Sprint(i), "root")
			runRoot := filepath.Join(base, fmt.Sprint(i), "run", "layers")
			for _, rr := range []string{"", runRoot} {
				opts := c.opts
				opts.Root, opts.RunRoot = root, rr
				if _, err := store.Open(opts); !errors.Is(err, c.want) {
					t.Fatalf("Open(%+v): %v, want %v", opts, err, c.want)
				}
				if got := listing(root); !slices.Equal(got, []string{"store.lock"}) {
					t.Errorf("run root %q: left in the root: %q, want only store.lock", rr, got)
				}
				if _, err := os.Lstat(filepath.Dir(runRoot)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("run root %q: the run root's parent %s was left behind (%v)", rr, filepath.Dir(runRoot), err)
				}
			}
			// The root is as good as new.
			s := open(t, "vfs", root)
			if s.DriverName() != "vfs" {
				t.Fatalf("driver %s", s.DriverName())
			}
		})
	}

	root := filepath.Join(base, "inuse")
	s := open(t, "vfs", root)
	mustImage(t, s, []string{"app"}, baseTar)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A root in use: a failed Open removes nothing.
	before := listing(root)
	if _, err := store.Open(store.Options{Root: root, DriverOptions: map[string]string{"bogus": "1"}}); !errors.Is(err, graphdriver.ErrUnknownOption) {
		t.Fatalf("open with a bad option: %v", err)
	}
	if after := listing(root); !slices.Equal(before, after) {
		t.Fatalf("a failed Open of a root in use changed it:\nbefore %q\nafter  %q", before, after)
	}
	s = open(t, "", root)
	if imgs, err := s.Images(); err != nil || len(imgs) != 1 {
		t.Fatalf("images after the failed open: %v %v", imgs, err)
	}
}

// A failed apply says once what failed, on which layer, and why: the
// layer's ID and "apply layer" appear once each, whatever the driver and
// diff.Apply add on their way up.
func TestApplyErrorReadsOnce(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		bad := tarOf(fixtures.Raw(tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}, "x"))
		_, err := s.ApplyDiff(context.Background(), "", bytes.NewReader(bad), nil)
		if err == nil {
			t.Fatal("a tar entry outside the layer was applied")
		}
		msg := err.Error()
		id, ok := strings.CutPrefix(msg, "apply layer ")
		if !ok || len(id) < 64 || !isHexString(id[:64]) {
			t.Fatalf("error %q: want \"apply layer ID: ...\"", msg)
		}
		id = id[:64]
		if n := strings.Count(msg, id); n != 1 {
			t.Errorf("error %q names the layer %d times", msg, n)
		}
		if n := strings.Count(msg, "apply layer"); n != 1 {
			t.Errorf("error %q says \"apply layer\" %d times", msg, n)
		}
		if !strings.HasPrefix(msg, "apply layer "+id+`: entry "../escape": `) {
			t.Errorf("error %q: want it to go on with the entry", msg)
		}
		if ls, err := s.Layers(); err != nil || len(ls) != 0 {
			t.Errorf("layers after the failed apply: %v %v", ls, err)
		}
	})
}

func isHexString(s string) bool {
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return s != ""
}

// A process that ends with CloseForExit leaves the write-ahead log to the
// next process instead of checkpointing it: what it committed is in the
// log, and the next Open reads it back.
func TestCloseForExit(t *testing.T) {
	root := filepath.Join(loopfs.New(t, "tmpfs", 0), "root")
	s := open(t, "vfs", root)
	img := mustImage(t, s, []string{"keep"}, baseTar)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := helperCmd(t, "close-for-exit", root).CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if fi, err := os.Stat(filepath.Join(root, "layers.db-wal")); err != nil || fi.Size() == 0 {
		t.Fatalf("the log was not left to the next process: %v", err)
	}
	s2 := open(t, "", root)
	if got, err := s2.Container("exited"); err != nil || got.Image != img.ID {
		t.Fatalf("container of the exited process: %+v %v", got, err)
	}
	assertClean(t, s2)
}
