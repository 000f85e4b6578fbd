package store_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/store"
)

// containerTree mounts container ref and snapshots its tree.
func containerTree(t *testing.T, s *store.Store, ref string) fixtures.Tree {
	t.Helper()
	p, err := s.Mount(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Unmount(ref, false); err != nil {
			t.Error(err)
		}
	}()
	tree, err := fixtures.Snapshot(p, fixtures.WithoutOverlayXattrs())
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// changeContainer mounts container ref, runs f on its root and unmounts.
func changeContainer(t *testing.T, s *store.Store, ref string, f func(root string) error) {
	t.Helper()
	p, err := s.Mount(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := f(p); err != nil {
		t.Fatal(err)
	}
	if err := s.Unmount(ref, false); err != nil {
		t.Fatal(err)
	}
}

// diffDigest is the digest of container or layer ref's Diff.
func diffDigest(t *testing.T, s *store.Store, ref string) digest.Digest {
	t.Helper()
	return streamDigest(t)(s.Diff(context.Background(), ref))
}

// layerTarDigest is the digest of layer ref's LayerTar.
func layerTarDigest(t *testing.T, s *store.Store, ref string) digest.Digest {
	t.Helper()
	return streamDigest(t)(s.LayerTar(context.Background(), ref))
}

// streamDigest hashes and closes the stream an opener returned.
func streamDigest(t *testing.T) func(io.ReadCloser, error) digest.Digest {
	return func(rc io.ReadCloser, err error) digest.Digest {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		d, err := digest.FromReader(rc)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
}

// firstChanges is what the commit tests change in a container first.
func firstChanges(root string) error {
	if err := os.WriteFile(filepath.Join(root, "etc/hello"), []byte("changed\n"), 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(root, "srv/data"), 0o750); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "srv/data/file"), make([]byte, 200<<10), 0o600); err != nil {
		return err
	}
	return os.Remove(filepath.Join(root, "etc/extra"))
}

// CommitContainer stores a container's changes as a layer on its image,
// with the diffID of the container's diff, whichever way the driver does
// it: in place where it can (the container then sits on the new layer,
// with the same tree), by copy elsewhere (the container unchanged). A
// second commit holds only what changed since the first, and removing
// the container and the images leaves no layer behind.
func TestCommitContainer(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root)
		_, inPlace := s.Driver().(graphdriver.ReadWriteCommitter)
		img := mustImage(t, s, []string{"base"}, baseTar, upperTar)
		c, err := s.CreateContainer("base", &store.ContainerOptions{Name: "c"})
		if err != nil {
			t.Fatal(err)
		}
		changeContainer(t, s, "c", firstChanges)
		before := containerTree(t, s, "c")
		want := diffDigest(t, s, "c")

		l, err := s.CommitContainer(ctx, "c", nil)
		if err != nil {
			t.Fatal(err)
		}
		if l.DiffID != want || l.Parent != img.TopLayer || l.Kind != store.KindImage {
			t.Errorf("committed layer: diffID %s parent %s kind %s; want %s on %s, an image layer", l.DiffID, l.Parent, l.Kind, want, img.TopLayer)
		}
		if got := layerTarDigest(t, s, l.ID); got != l.DiffID {
			t.Errorf("LayerTar of the committed layer hashes to %s, its diffID is %s", got, l.DiffID)
		}
		rw, err := s.Layer(c.Layer)
		if err != nil {
			t.Fatal(err)
		}
		if inPlace && rw.Parent != l.ID {
			t.Errorf("driver %s commits in place, but the container's layer is on %s, not on the commit %s", driver, rw.Parent, l.ID)
		}
		if !inPlace && rw.Parent != img.TopLayer {
			t.Errorf("a commit by copy moved the container's layer onto %s", rw.Parent)
		}
		fixtures.AssertTreesEqual(t, before, containerTree(t, s, "c"))

		// The commit is an ordinary layer: an image of it gives
		// containers the committed tree.
		committed, err := s.CreateImage(store.ImageOptions{Config: []byte(`{"rootfs":{"type":"layers","diff_ids":[]},"commit":1}`), TopLayer: l.ID, Names: []string{"committed"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateContainer("committed", &store.ContainerOptions{Name: "c2"}); err != nil {
			t.Fatal(err)
		}
		fixtures.AssertTreesEqual(t, before, containerTree(t, s, "c2"), fixtures.IgnorePaths("/"))

		// A second commit, with the container mounted: always by copy,
		// and on the first commit when that was in place.
		changeContainer(t, s, "c", func(root string) error {
			return os.WriteFile(filepath.Join(root, "etc/second"), []byte("2\n"), 0o644)
		})
		before = containerTree(t, s, "c")
		if _, err := s.Mount("c"); err != nil {
			t.Fatal(err)
		}
		l2, err := s.CommitContainer(ctx, "c", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Unmount("c", false); err != nil {
			t.Fatal(err)
		}
		if rw2, err := s.Layer(c.Layer); err != nil || rw2.Parent != rw.Parent {
			t.Errorf("a commit of a mounted container moved it: parent %s, was %s (%v)", rw2.Parent, rw.Parent, err)
		}
		if l2.Parent != rw.Parent {
			t.Errorf("second commit on %s, want on the container's parent %s", l2.Parent, rw.Parent)
		}
		changes, err := s.Changes(ctx, l2.ID)
		if err != nil {
			t.Fatal(err)
		}
		if inPlace {
			// Only what changed since the first commit: /etc/second and
			// its directory.
			for _, ch := range changes {
				if ch.Path != "/etc" && ch.Path != "/etc/second" {
					t.Errorf("second commit in place holds %v, want only /etc/second", changes)
					break
				}
			}
		}
		fixtures.AssertTreesEqual(t, before, containerTree(t, s, "c"))
		assertClean(t, s)

		// Nothing is left once the containers and the images made by
		// the commits go, whatever the order.
		if err := s.RemoveContainer("c2", false); err != nil {
			t.Fatal(err)
		}
		if err := s.RemoveLayer(l2.ID, false); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RemoveImage(committed.ID, false); err != nil {
			t.Fatal(err)
		}
		if err := s.RemoveContainer("c", false); err != nil {
			t.Fatal(err)
		}
		ls, err := s.Layers()
		if err != nil {
			t.Fatal(err)
		}
		if len(ls) != 2 {
			t.Errorf("%d layers left, want the base image's 2", len(ls))
		}
		assertClean(t, s)
	})
}

// A commit whose content is stored already returns that layer, and a
// commit in place then puts the container back as it was.
func TestCommitContainerKnownContent(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root)
		img := mustImage(t, s, []string{"base"}, baseTar, upperTar)
		for _, name := range []string{"c1", "c2"} {
			if _, err := s.CreateContainer("base", &store.ContainerOptions{Name: name}); err != nil {
				t.Fatal(err)
			}
		}
		changeContainer(t, s, "c1", firstChanges)
		l1, err := s.CommitContainer(ctx, "c1", nil)
		if err != nil {
			t.Fatal(err)
		}
		// c2 gets the very same changes, times included: the tar of the
		// commit applied on its root.
		changeContainer(t, s, "c2", func(root string) error {
			rc, err := s.LayerTar(ctx, l1.ID)
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = diff.Apply(ctx, root, rc, diff.ApplyOptions{})
			return err
		})
		if got := diffDigest(t, s, "c2"); got != l1.DiffID {
			t.Fatalf("the applied tar does not give c2 the same diff (%s, want %s): no duplicate to test with", got, l1.DiffID)
		}
		c2, err := s.Container("c2")
		if err != nil {
			t.Fatal(err)
		}
		before := containerTree(t, s, "c2")
		l, err := s.CommitContainer(ctx, "c2", nil)
		if err != nil {
			t.Fatal(err)
		}
		if l.ID != l1.ID {
			t.Errorf("commit of known content made layer %s, want the stored %s", l.ID, l1.ID)
		}
		if rw, err := s.Layer(c2.Layer); err != nil || rw.Parent != img.TopLayer {
			t.Errorf("container of a commit of known content is on %s, want its image's top %s (%v)", rw.Parent, img.TopLayer, err)
		}
		fixtures.AssertTreesEqual(t, before, containerTree(t, s, "c2"))
		assertClean(t, s)
	})
}

// A commit's Rewrite always copies, and stores what the rewritten tar says.
func TestCommitContainerRewrite(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		ctx := context.Background()
		s := open(t, driver, root)
		img := mustImage(t, s, []string{"base"}, baseTar, upperTar)
		c, err := s.CreateContainer("base", nil)
		if err != nil {
			t.Fatal(err)
		}
		changeContainer(t, s, c.ID, firstChanges)
		rewrote := false
		l, err := s.CommitContainer(ctx, c.ID, &store.CommitOptions{Rewrite: func(r io.Reader) io.ReadCloser {
			rewrote = true
			return io.NopCloser(r)
		}})
		if err != nil {
			t.Fatal(err)
		}
		if !rewrote {
			t.Error("Rewrite was not called")
		}
		if rw, err := s.Layer(c.Layer); err != nil || rw.Parent != img.TopLayer {
			t.Errorf("a commit with Rewrite moved the container onto %s (%v)", rw.Parent, err)
		}
		if l.DiffID != diffDigest(t, s, c.ID) {
			t.Error("diffID of the rewritten commit differs from the container's diff")
		}
		if _, err := s.CommitContainer(ctx, "nothing", nil); !errors.Is(err, store.ErrContainerUnknown) {
			t.Errorf("commit of an unknown container: %v, want ErrContainerUnknown", err)
		}
	})
}
