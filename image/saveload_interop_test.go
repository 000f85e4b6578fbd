package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/store"
)

// needTool skips the test when a peer tool is missing (hack/deps.sh
// installs them).
func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (hack/deps.sh installs it): %v", name, err)
	}
}

// runTool runs a peer tool and returns its stdout, failing on error.
func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// podman is a podman with a private root (vfs, on a tmpfs), so that the
// host's storage is never touched.
type podman struct {
	t    *testing.T
	args []string
}

func newPodman(t *testing.T) *podman {
	t.Helper()
	needTool(t, "podman")
	dir := loopfs.New(t, "tmpfs", 0)
	p := &podman{t: t, args: []string{"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"),
		"--storage-driver", "vfs", "--events-backend", "file", "--cgroup-manager", "cgroupfs"}}
	t.Cleanup(func() { _ = exec.Command("podman", append(p.args, "image", "umount", "-a", "-f")...).Run() })
	return p
}

func (p *podman) run(args ...string) string {
	p.t.Helper()
	return runTool(p.t, "podman", append(append([]string{}, p.args...), args...)...)
}

// tree is the root filesystem podman shows for image ref (podman image
// mount).
func (p *podman) tree(ref string) fixtures.Tree {
	p.t.Helper()
	mnt := strings.TrimSpace(p.run("image", "mount", ref))
	tree, err := fixtures.Snapshot(mnt)
	if err != nil {
		p.t.Fatal(err)
	}
	p.run("image", "umount", ref)
	return tree
}

// interopTree is a tree as compared across tools: the root directory's
// own attributes are in no layer tar, and tools differ on them (podman's
// vfs makes it 0555).
func interopTree(tr fixtures.Tree) fixtures.Tree {
	delete(tr, "/")
	return tr
}

// TestSaveLoadInteropPodman: images saved by layers (each format) load in
// podman with the same root filesystem, and podman's own saves of them
// load in layers with the tree podman shows.
func TestSaveLoadInteropPodman(t *testing.T) {
	ctx := context.Background()
	st := newStore(t, "overlay")
	committed, layered := srcImages(t, st)
	dir := loopfs.New(t, "tmpfs", 0)
	for _, img := range []*store.Image{committed, layered} {
		want := interopTree(rootTree(t, st, img.ID))
		name := img.Names[0]
		for _, format := range []string{FormatOCIArchive, FormatDockerArchive, FormatOCIDir} {
			t.Run(name+"/"+format, func(t *testing.T) {
				p := newPodman(t)
				archive := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(name)+"."+format)
				if err := Save(ctx, st, []string{name}, archive, &SaveOptions{Format: format}); err != nil {
					t.Fatal(err)
				}
				defer os.RemoveAll(archive)
				if format == FormatOCIDir {
					// podman pull names an oci: image after its path;
					// tag it as the archives name it.
					id := strings.TrimSpace(p.run("pull", "-q", "oci:"+archive+":"+name))
					p.run("tag", id, name)
				} else {
					p.run("load", "-q", "-i", archive)
				}
				if got := p.run("image", "inspect", "--format", "{{.Id}}", name); strings.TrimSpace(got) != img.ID {
					t.Errorf("podman has %s as %s, want %s", name, got, img.ID)
				}
				fixtures.AssertTreesEqual(t, want, interopTree(p.tree(name)))

				// Back: podman saves, layers loads.
				for _, pf := range []string{"docker-archive", "oci-archive"} {
					back := archive + ".podman-" + pf
					p.run("save", "-q", "--format", pf, "-o", back, name)
					dst := newStore(t, "vfs")
					imgs, err := Load(ctx, dst, back, nil)
					os.Remove(back)
					if err != nil {
						t.Fatalf("load podman's %s: %v", pf, err)
					}
					if len(imgs) != 1 || len(imgs[0].Names) != 1 || imgs[0].Names[0] != name {
						t.Fatalf("podman's %s loaded as %+v, want one image named %s", pf, imgs, name)
					}
					// podman's docker-archive keeps the config; its
					// oci-archive may convert it (another ID), never the
					// layers.
					if pf == "docker-archive" && imgs[0].ID != img.ID {
						t.Errorf("podman's %s loaded as %s, want %s", pf, imgs[0].ID, img.ID)
					}
					if got, want := layerDiffIDs(t, dst, imgs[0]), layerDiffIDs(t, st, img); !slices.Equal(got, want) {
						t.Errorf("podman's %s: diffIDs %v, want %v", pf, got, want)
					}
					fixtures.AssertTreesEqual(t, interopTree(p.tree(name)), interopTree(rootTree(t, dst, imgs[0].ID)))
				}
			})
		}
	}
}

// TestLoadPodmanImport: an image podman made itself (podman import of a
// tar) and saved loads in layers with the tree podman shows.
func TestLoadPodmanImport(t *testing.T) {
	ctx := context.Background()
	p := newPodman(t)
	dir := loopfs.New(t, "tmpfs", 0)
	layer := filepath.Join(dir, "layer.tar")
	if err := os.WriteFile(layer, busybox(t), 0o644); err != nil {
		t.Fatal(err)
	}
	p.run("import", "-q", layer, "localhost/imported:1")
	want := interopTree(p.tree("localhost/imported:1"))
	for _, pf := range []string{"docker-archive", "oci-archive", "oci-dir"} {
		out := filepath.Join(dir, pf)
		p.run("save", "-q", "--format", pf, "-o", out, "localhost/imported:1")
		dst := newStore(t, "overlay")
		imgs, err := Load(ctx, dst, out, nil)
		if err != nil {
			t.Fatalf("load podman's %s: %v", pf, err)
		}
		if len(imgs) != 1 {
			t.Fatalf("podman's %s: %d images", pf, len(imgs))
		}
		if pf != "oci-dir" && (len(imgs[0].Names) != 1 || imgs[0].Names[0] != "localhost/imported:1") {
			t.Errorf("podman's %s: names %q", pf, imgs[0].Names)
		}
		fixtures.AssertTreesEqual(t, want, interopTree(rootTree(t, dst, imgs[0].ID)))
	}
}

// TestSaveLoadInteropSkopeoUmoci: an oci-archive of layers copied by
// skopeo into an OCI layout unpacks with umoci to the same tree, umoci
// unpacks layers' own oci-dir too, and skopeo's copies (OCI layout,
// docker-archive) load back in layers as the same image.
func TestSaveLoadInteropSkopeoUmoci(t *testing.T) {
	needTool(t, "skopeo")
	needTool(t, "umoci")
	ctx := context.Background()
	st := newStore(t, "overlay")
	_, layered := srcImages(t, st)
	want := interopTree(rootTree(t, st, layered.ID))
	dir := loopfs.New(t, "tmpfs", 0)
	archive := filepath.Join(dir, "layered.tar")
	if err := Save(ctx, st, []string{"localhost/layered:latest"}, archive, nil); err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(dir, "skopeo-layout")
	runTool(t, "skopeo", "copy", "-q", "oci-archive:"+archive, "oci:"+layout+":copied")
	umociTree := func(image string) fixtures.Tree {
		bundle := filepath.Join(dir, "bundle")
		defer os.RemoveAll(bundle)
		runTool(t, "umoci", "unpack", "--image", image, bundle)
		tree, err := fixtures.Snapshot(filepath.Join(bundle, "rootfs"))
		if err != nil {
			t.Fatal(err)
		}
		return interopTree(tree)
	}
	fixtures.AssertTreesEqual(t, want, umociTree(layout+":copied"))

	ours := filepath.Join(dir, "ours")
	if err := Save(ctx, st, []string{"localhost/layered:latest"}, ours, &SaveOptions{Format: FormatOCIDir, Compression: "zstd"}); err != nil {
		t.Fatal(err)
	}
	// umoci 0.4 reads gzip layers only; the zstd layout is for skopeo.
	gz := filepath.Join(dir, "ours-gzip")
	if err := Save(ctx, st, []string{"localhost/layered:latest"}, gz, &SaveOptions{Format: FormatOCIDir}); err != nil {
		t.Fatal(err)
	}
	fixtures.AssertTreesEqual(t, want, umociTree(gz+":localhost/layered:latest"))

	// skopeo's copies load back in layers as the same image.
	dockerArchive := filepath.Join(dir, "skopeo-docker.tar")
	runTool(t, "skopeo", "copy", "-q", "oci:"+gz+":localhost/layered:latest", "docker-archive:"+dockerArchive+":localhost/layered:latest")
	zstdCopy := filepath.Join(dir, "skopeo-zstd")
	runTool(t, "skopeo", "copy", "-q", "oci:"+ours+":localhost/layered:latest", "oci:"+zstdCopy+":localhost/layered:latest")
	for _, p := range []string{layout, dockerArchive, zstdCopy} {
		dst := newStore(t, "vfs")
		imgs, err := Load(ctx, dst, p, nil)
		if err != nil {
			t.Fatalf("load skopeo's %s: %v", filepath.Base(p), err)
		}
		if len(imgs) != 1 || imgs[0].ID != layered.ID {
			t.Errorf("skopeo's %s loaded as %+v, want %s", filepath.Base(p), imgs, layered.ID)
		}
		fixtures.AssertTreesEqual(t, want, interopTree(rootTree(t, dst, imgs[0].ID)))
	}
}
