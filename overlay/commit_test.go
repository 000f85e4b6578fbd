package overlay

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/loopfs"
)

// committable makes image layers base and mid and a read-write layer rw
// on mid, changed through its mount the ways a container changes its
// root: new, modified and deleted files, a deleted directory, a directory
// replaced by a new one (opaque), a chmod of a lower directory.
func committable(t *testing.T, d *Driver) {
	t.Helper()
	layer(t, d, "base", "",
		fixtures.Dir("etc", 0o755),
		fixtures.File("etc/hostname", "base\n", 0o644),
		fixtures.File("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644),
		fixtures.Dir("usr", 0o755),
		fixtures.Dir("usr/share", 0o755),
		fixtures.Dir("usr/share/doc", 0o755),
		fixtures.File("usr/share/doc/README", "docs\n", 0o644),
		fixtures.Dir("var", 0o755),
		fixtures.Dir("var/cache", 0o755),
		fixtures.File("var/cache/old", "stale\n", 0o644),
	)
	layer(t, d, "mid", "base", fixtures.File("etc/motd", "hello\n", 0o644))
	if err := d.CreateReadWrite("rw", "mid", nil); err != nil {
		t.Fatal(err)
	}
	root, err := d.Get("rw", graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("container\n"), 0o644))
	must(os.MkdirAll(filepath.Join(root, "srv/data"), 0o750))
	must(os.WriteFile(filepath.Join(root, "srv/data/big"), make([]byte, 1<<20), 0o600))
	must(os.Symlink("../etc/hostname", filepath.Join(root, "srv/link")))
	must(os.Remove(filepath.Join(root, "etc/motd")))
	must(os.RemoveAll(filepath.Join(root, "usr/share/doc")))
	must(os.RemoveAll(filepath.Join(root, "var/cache")))
	must(os.Mkdir(filepath.Join(root, "var/cache"), 0o700))
	must(os.WriteFile(filepath.Join(root, "var/cache/new"), []byte("fresh\n"), 0o644))
	must(os.Chmod(filepath.Join(root, "etc"), 0o750))
	must(d.Put("rw"))
}

// diffBytes is layer id's tar against parent.
func diffBytes(t *testing.T, d *Driver, id, parent string) []byte {
	t.Helper()
	rc, err := d.Diff(context.Background(), id, parent)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A commit moves the read-write layer's changes into the new image layer
// without copying a file, and both show the tree the read-write layer
// showed; the new layer's diff is the read-write layer's diff before.
func TestCommitReadWrite(t *testing.T) {
	for _, typ := range []string{"tmpfs", "xfs"} {
		t.Run(typ, func(t *testing.T) {
			d := newDriver(t, loopfs.New(t, typ, 256<<20))
			committable(t, d)
			before := snapshotLayer(t, d, "rw")
			wantDiff := diffBytes(t, d, "rw", "mid")
			bigIno := inode(t, filepath.Join(d.dir("rw"), "diff/srv/data/big"))

			if err := d.CommitReadWrite("rw", "img"); err != nil {
				t.Fatal(err)
			}
			if err := d.ResolveCommit("rw", "img", true); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(d.dir("img"), commitMarker)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("commit marker left after keeping the commit: %v", err)
			}
			if got := inode(t, filepath.Join(d.dir("img"), "diff/srv/data/big")); got != bigIno {
				t.Errorf("the committed file was copied: inode %d, was %d", got, bigIno)
			}
			if ents, err := os.ReadDir(filepath.Join(d.dir("rw"), "diff")); err != nil || len(ents) != 0 {
				t.Errorf("read-write layer's diff dir after commit: %v entries, %v", len(ents), err)
			}
			if lowers, err := d.readLowers("rw"); err != nil || len(lowers) != 3 || lowers[0] != "img" || lowers[1] != "mid" {
				t.Errorf("read-write layer's chain after commit: %v, %v", lowers, err)
			}
			fixtures.AssertTreesEqual(t, before, snapshotLayer(t, d, "rw"))
			fixtures.AssertTreesEqual(t, before, snapshotLayer(t, d, "img"))
			if got := diffBytes(t, d, "img", "mid"); string(got) != string(wantDiff) {
				t.Errorf("diff of the committed layer (%d bytes) differs from the read-write layer's before (%d bytes)", len(got), len(wantDiff))
			}
			changes, err := d.Changes(context.Background(), "rw", "img")
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) != 0 {
				t.Errorf("read-write layer changes %v against its commit", changes)
			}

			// The container goes on: what it writes now is its own, and
			// the committed layer does not change.
			root, err := d.Get("rw", graphdriver.MountOpts{})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, "srv/data/big"), []byte("rewritten"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := d.Put("rw"); err != nil {
				t.Fatal(err)
			}
			fixtures.AssertTreesEqual(t, before, snapshotLayer(t, d, "img"))
			changes, err = d.Changes(context.Background(), "rw", "img")
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) != 1 || changes[0].Path != "/srv/data/big" {
				t.Errorf("changes after writing on the committed container: %v", changes)
			}
			// The committed layer is an ordinary image layer: a
			// container made on it shows the committed tree.
			if err := d.CreateReadWrite("rw2", "img", nil); err != nil {
				t.Fatal(err)
			}
			// (Its root's times are its own, as for every new layer.)
			fixtures.AssertTreesEqual(t, before, snapshotLayer(t, d, "rw2"), fixtures.IgnorePaths("/"))
		})
	}
}

// Undoing a commit from any point it reached gives back the read-write
// layer as it was (its tree, its diff, its parent) and no new layer.
func TestCommitUndo(t *testing.T) {
	steps := map[string]func(d *Driver) error{
		"nothing":   func(d *Driver) error { return nil },
		"published": func(d *Driver) error { _, err := publishOnly(d); return err },
		"rebased": func(d *Driver) error {
			lowers, err := publishOnly(d)
			if err != nil {
				return err
			}
			return d.writeLowers("rw", append([]string{"img"}, lowers...))
		},
		"exchanged": func(d *Driver) error { return d.CommitReadWrite("rw", "img") },
	}
	for name, step := range steps {
		t.Run(name, func(t *testing.T) {
			d := newDriver(t, loopfs.New(t, "xfs", 256<<20))
			committable(t, d)
			before := snapshotLayer(t, d, "rw")
			wantDiff := diffBytes(t, d, "rw", "mid")
			if err := step(d); err != nil {
				t.Fatal(err)
			}
			// Twice: undoing is idempotent.
			for range 2 {
				if err := d.ResolveCommit("rw", "img", false); err != nil {
					t.Fatal(err)
				}
			}
			if d.Exists("img") {
				t.Error("the new layer is still there after undoing the commit")
			}
			if lowers, err := d.readLowers("rw"); err != nil || len(lowers) != 2 || lowers[0] != "mid" {
				t.Errorf("read-write layer's chain after undo: %v, %v", lowers, err)
			}
			fixtures.AssertTreesEqual(t, before, snapshotLayer(t, d, "rw"))
			if got := diffBytes(t, d, "rw", "mid"); string(got) != string(wantDiff) {
				t.Error("the read-write layer's diff changed across a commit undone")
			}
		})
	}
}

// publishOnly is the first step of a commit of rw into img: img
// published, empty, with its marker. It returns rw's parent chain.
func publishOnly(d *Driver) ([]string, error) {
	upper := filepath.Join(d.dir("rw"), "diff")
	var st unix.Stat_t
	if err := unix.Lstat(upper, &st); err != nil {
		return nil, err
	}
	lowers, err := d.readLowers("rw")
	if err != nil {
		return nil, err
	}
	marker := "rw\n" + strconv.FormatUint(st.Dev, 10) + " " + strconv.FormatUint(st.Ino, 10) + "\n"
	return lowers, d.build("img", lowers, upper, kindImage, map[string]string{commitMarker: marker})
}

// What a commit refuses leaves everything as it was: a mounted read-write
// layer (ErrMounted), an image layer, an ID taken, changes that hold a
// renamed directory (ErrNotSupported); and a commit kept cannot be undone.
func TestCommitRefused(t *testing.T) {
	d := newDriver(t, loopfs.New(t, "tmpfs", 256<<20))
	committable(t, d)
	before := snapshotLayer(t, d, "rw")

	if _, err := d.Get("rw", graphdriver.MountOpts{}); err != nil {
		t.Fatal(err)
	}
	if err := d.CommitReadWrite("rw", "img"); !errors.Is(err, graphdriver.ErrMounted) {
		t.Errorf("commit of a mounted layer: %v, want ErrMounted", err)
	}
	if err := d.Put("rw"); err != nil {
		t.Fatal(err)
	}
	if err := d.CommitReadWrite("mid", "img"); err == nil {
		t.Error("commit of an image layer succeeded")
	}
	if err := d.CommitReadWrite("rw", "base"); !errors.Is(err, graphdriver.ErrLayerExists) {
		t.Errorf("commit into an existing layer: %v, want ErrLayerExists", err)
	}
	redirected := filepath.Join(d.dir("rw"), "diff/srv")
	if err := unix.Lsetxattr(redirected, "trusted.overlay.redirect", []byte("/usr"), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.CommitReadWrite("rw", "img"); !errors.Is(err, graphdriver.ErrNotSupported) {
		t.Errorf("commit of a layer with a redirect: %v, want ErrNotSupported", err)
	}
	if err := unix.Lremovexattr(redirected, "trusted.overlay.redirect"); err != nil {
		t.Fatal(err)
	}
	if d.Exists("img") {
		t.Fatal("a refused commit left its layer")
	}
	fixtures.AssertTreesEqual(t, before, snapshotLayer(t, d, "rw"))

	if err := d.CommitReadWrite("rw", "img"); err != nil {
		t.Fatal(err)
	}
	if err := d.ResolveCommit("rw", "img", true); err != nil {
		t.Fatal(err)
	}
	if err := d.ResolveCommit("rw", "img", false); err == nil {
		t.Error("a kept commit was undone")
	}
	fixtures.AssertTreesEqual(t, before, snapshotLayer(t, d, "img"))
}
