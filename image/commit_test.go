package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/store"
)

// testDrivers are the drivers the image flows run on: overlay's native
// differ and applier, and vfs through the naive ones.
var testDrivers = []string{"overlay", "vfs"}

// changeContainer creates a container of image ref in st and changes
// its tree: files added (one hardlinked, one in a new directory), a
// busybox file modified, one removed, a directory replaced. Every path
// it touches gets mtime (when not zero), so that two containers changed
// alike give the same tar. It returns the container and the tree its
// mount shows.
func changeContainer(t testing.TB, st *store.Store, ref string, mtime time.Time) (*store.Container, fixtures.Tree) {
	t.Helper()
	c, err := st.CreateContainer(ref, nil)
	if err != nil {
		t.Fatalf("create container: %v", err)
	}
	dir, err := st.Mount(c.ID)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	defer func() {
		if err := st.Unmount(c.ID, false); err != nil {
			t.Errorf("unmount: %v", err)
		}
	}()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "srv/app/data"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "srv/app/main.txt"), []byte(strings.Repeat("main\n", 1000)), 0o644))
	must(os.Link(filepath.Join(dir, "srv/app/main.txt"), filepath.Join(dir, "srv/app/data/link.txt")))
	must(os.Symlink("../srv/app/main.txt", filepath.Join(dir, "etc/app.txt")))
	must(os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644))
	must(os.Chown(filepath.Join(dir, "srv/app/data"), 1000, 1000))
	must(os.Remove(filepath.Join(dir, "etc/group")))
	must(os.RemoveAll(filepath.Join(dir, "home/app")))
	must(os.WriteFile(filepath.Join(dir, "home/app"), []byte("now a file\n"), 0o600))
	if !mtime.IsZero() {
		for _, p := range []string{"srv/app/data/link.txt", "srv/app/data", "srv/app", "srv", "etc/passwd", "etc", "home/app", "home"} {
			must(os.Chtimes(filepath.Join(dir, p), mtime, mtime))
		}
		must(lchtimes(filepath.Join(dir, "etc/app.txt"), mtime))
	}
	tree, err := fixtures.Snapshot(dir, fixtures.WithoutOverlayXattrs())
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return c, tree
}

// imageConfigOf returns image ref's config, parsed.
func imageConfigOf(t testing.TB, st *store.Store, ref string) imageConfig {
	t.Helper()
	raw, err := st.ImageConfig(ref)
	if err != nil {
		t.Fatal(err)
	}
	var cfg imageConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestCommit commits a changed container and checks the image: its tree
// is the container's, its config the base's with the changes, a new
// diffID that is the sha256 of the stored layer's tar, a history entry,
// the name.
func TestCommit(t *testing.T) {
	for _, driver := range testDrivers {
		t.Run(driver, func(t *testing.T) {
			st := newStore(t, driver)
			ctx := context.Background()
			base := storeImage(t, st, [][]byte{busybox(t)}, "localhost/base:1")
			c, want := changeContainer(t, st, base.ID, time.Time{})
			img, err := Commit(ctx, st, c.ID, "localhost/committed:1", &CommitOptions{
				Message: "my change", Author: "Ann <ann@example.com>",
				Changes: []string{`ENV A=1`, `CMD ["/bin/cat", "/srv/app/main.txt"]`, `WORKDIR /srv`, `LABEL x=y`, `EXPOSE 8080`},
			})
			if err != nil {
				t.Fatalf("commit: %v", err)
			}
			if !reflect.DeepEqual(img.Names, []string{"localhost/committed:1"}) {
				t.Errorf("names %q", img.Names)
			}
			if len(img.Layers) != 2 || img.Layers[0] != base.Layers[0] {
				t.Fatalf("layers %q, want the base's %q and a new one", img.Layers, base.Layers)
			}
			// The root directory has no entry in a layer tar.
			want["/"].IgnoreMtime = true
			fixtures.AssertTreesEqual(t, want, rootTree(t, st, img.ID))

			cfg := imageConfigOf(t, st, img.ID)
			baseCfg := imageConfigOf(t, st, base.ID)
			layer, err := st.Layer(img.Layers[1])
			if err != nil {
				t.Fatal(err)
			}
			if want := append(append([]digest.Digest{}, baseCfg.RootFS.DiffIDs...), layer.DiffID); !reflect.DeepEqual(cfg.RootFS.DiffIDs, want) {
				t.Errorf("diff_ids %v, want %v", cfg.RootFS.DiffIDs, want)
			}
			rc, err := st.LayerTar(ctx, layer.ID)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			if _, err := io.Copy(h, rc); err != nil {
				t.Fatal(err)
			}
			rc.Close()
			if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != layer.DiffID.String() {
				t.Errorf("layer tar hashes to %s, diffID %s", got, layer.DiffID)
			}
			if !reflect.DeepEqual(cfg.Config.Env, []string{"PATH=/bin", "A=1"}) || !reflect.DeepEqual(cfg.Config.Cmd, []string{"/bin/cat", "/srv/app/main.txt"}) ||
				cfg.Config.WorkingDir != "/srv" || cfg.Config.Labels["x"] != "y" || len(cfg.Config.ExposedPorts) != 1 {
				t.Errorf("config %+v", cfg.Config)
			}
			if cfg.Author != "Ann <ann@example.com>" || cfg.Architecture != baseCfg.Architecture || cfg.OS != "linux" {
				t.Errorf("author %q arch %q os %q", cfg.Author, cfg.Architecture, cfg.OS)
			}
			if len(cfg.History) != len(baseCfg.History)+1 {
				t.Fatalf("history has %d entries, base %d", len(cfg.History), len(baseCfg.History))
			}
			var hist historyEntry
			if err := json.Unmarshal(cfg.History[len(cfg.History)-1], &hist); err != nil {
				t.Fatal(err)
			}
			if hist.Comment != "my change" || hist.Author != "Ann <ann@example.com>" || hist.Created == nil || !hist.Created.Equal(*cfg.Created) {
				t.Errorf("history entry %+v", hist)
			}
			if time.Since(*cfg.Created) > time.Minute {
				t.Errorf("created %v, want now", cfg.Created)
			}
		})
	}
}

// A container committed twice gives an image whose layers and diff_ids
// hold both commits (a commit in place leaves the first under the
// container), with one history entry per layer, and the tree the
// container shows.
func TestCommitTwice(t *testing.T) {
	for _, driver := range testDrivers {
		t.Run(driver, func(t *testing.T) {
			st := newStore(t, driver)
			ctx := context.Background()
			base := storeImage(t, st, [][]byte{busybox(t)}, "localhost/base:1")
			c, _ := changeContainer(t, st, base.ID, time.Time{})
			first, err := Commit(ctx, st, c.ID, "localhost/first:1", nil)
			if err != nil {
				t.Fatal(err)
			}
			dir, err := st.Mount(c.ID)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "srv/second"), []byte("2\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			want, err := fixtures.Snapshot(dir, fixtures.WithoutOverlayXattrs())
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Unmount(c.ID, false); err != nil {
				t.Fatal(err)
			}
			second, err := Commit(ctx, st, c.ID, "localhost/second:1", &CommitOptions{Compression: "zstd"})
			if err != nil {
				t.Fatal(err)
			}
			for img, want := range map[*store.Image]diff.Compression{first: diff.Gzip, second: diff.Zstd} {
				if got, ok, err := ImageCompression(img); err != nil || !ok || got != want {
					t.Errorf("compression recorded for image %s: %v %v %v, want %v", img.ID, got, ok, err, want)
				}
			}
			if _, err := Commit(ctx, st, c.ID, "", &CommitOptions{Compression: "lzma"}); err == nil {
				t.Error("commit with an unknown compression succeeded")
			}
			want["/"].IgnoreMtime = true
			fixtures.AssertTreesEqual(t, want, rootTree(t, st, second.ID))
			cfg := imageConfigOf(t, st, second.ID)
			if len(cfg.RootFS.DiffIDs) != len(second.Layers) || len(cfg.History) != len(second.Layers) {
				t.Fatalf("%d layers, %d diff_ids, %d history entries: they must agree", len(second.Layers), len(cfg.RootFS.DiffIDs), len(cfg.History))
			}
			for i, id := range second.Layers {
				l, err := st.Layer(id)
				if err != nil {
					t.Fatal(err)
				}
				if cfg.RootFS.DiffIDs[i] != l.DiffID {
					t.Errorf("diff_ids[%d] = %s, layer %s has %s", i, cfg.RootFS.DiffIDs[i], id, l.DiffID)
				}
			}
			// Removing the first image keeps what the second needs.
			if _, err := st.RemoveImage(first.ID, false); err != nil {
				t.Fatal(err)
			}
			fixtures.AssertTreesEqual(t, want, rootTree(t, st, second.ID))
			r, err := st.Check(ctx, store.CheckOptions{Digests: true})
			if err != nil || !r.Clean() {
				t.Fatalf("check: %v %v", r, err)
			}
		})
	}
}

// TestCommitReproducible commits the same changes made in two containers
// at different times: with the same mtimes the layers are the same
// (one layer stored, same diffID); with SOURCE_DATE_EPOCH, whatever the
// mtimes, the layers and even the image IDs are.
func TestCommitReproducible(t *testing.T) {
	for _, driver := range testDrivers {
		t.Run(driver, func(t *testing.T) {
			st := newStore(t, driver)
			ctx := context.Background()
			base := storeImage(t, st, [][]byte{busybox(t)}, "localhost/base:1")
			mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
			c1, _ := changeContainer(t, st, base.ID, mtime)
			c2, _ := changeContainer(t, st, base.ID, mtime)
			img1, err := Commit(ctx, st, c1.ID, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			img2, err := Commit(ctx, st, c2.ID, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if img1.Layers[1] != img2.Layers[1] {
				t.Errorf("same content, layers %s and %s", img1.Layers[1], img2.Layers[1])
			}

			epoch, err := ParseSourceDateEpoch("1600000000")
			if err != nil {
				t.Fatal(err)
			}
			c3, _ := changeContainer(t, st, base.ID, time.Time{})
			time.Sleep(10 * time.Millisecond)
			c4, _ := changeContainer(t, st, base.ID, time.Time{})
			opts := &CommitOptions{SourceDateEpoch: epoch, Message: "pinned"}
			img3, err := Commit(ctx, st, c3.ID, "localhost/pinned:1", opts)
			if err != nil {
				t.Fatal(err)
			}
			img4, err := Commit(ctx, st, c4.ID, "localhost/pinned:2", opts)
			if err != nil {
				t.Fatal(err)
			}
			if img3.ID != img4.ID {
				t.Errorf("SOURCE_DATE_EPOCH: image IDs %s and %s", img3.ID, img4.ID)
			}
			cfg := imageConfigOf(t, st, img3.ID)
			if !cfg.Created.Equal(*epoch) {
				t.Errorf("created %v, want %v", cfg.Created, epoch)
			}
			// The clamped layer's tree: the same files, no mtime later
			// than the epoch.
			tree := rootTree(t, st, img3.ID)
			for p, n := range tree {
				if strings.HasPrefix(p, "/srv") && n.Mtime > epoch.UnixNano() {
					t.Errorf("%s mtime %v after the epoch", p, time.Unix(0, n.Mtime))
				}
			}
			if n := tree["/srv/app/main.txt"]; n == nil || n.Size != 5000 {
				t.Errorf("main.txt %+v", n)
			}
			if _, err := ParseSourceDateEpoch("yesterday"); err == nil {
				t.Error("SOURCE_DATE_EPOCH=yesterday accepted")
			}
		})
	}
}

// TestCommitErrors: a bad change, an unknown container, a bad name and a
// bad compression fail before anything is stored.
func TestCommitErrors(t *testing.T) {
	st := newStore(t, "overlay")
	ctx := context.Background()
	base := storeImage(t, st, [][]byte{busybox(t)}, "localhost/base:1")
	c, _ := changeContainer(t, st, base.ID, time.Time{})
	layers, _ := st.Layers()
	images, _ := st.Images()
	for _, tc := range []struct {
		cref, ref string
		opts      CommitOptions
		want      error
	}{
		{c.ID, "x:1", CommitOptions{Changes: []string{"RUN make"}}, ErrBadChange},
		{"nosuch", "x:1", CommitOptions{}, store.ErrContainerUnknown},
		{c.ID, "UPPER/Case:1", CommitOptions{}, store.ErrInvalidName},
		{c.ID, "x:1", CommitOptions{Compression: "lz4"}, nil},
	} {
		_, err := Commit(ctx, st, tc.cref, tc.ref, &tc.opts)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("commit %s %s %+v: want %v, got %v", tc.cref, tc.ref, tc.opts, tc.want, err)
		}
	}
	assertNothingNew(t, st, len(layers), len(images))
}

// lchtimes sets a symlink's own times.
func lchtimes(p string, t time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}
