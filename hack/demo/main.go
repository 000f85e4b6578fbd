// Command demo walks through the `layers` command on a temporary root with
// the built-in busybox fixture image, printing each command and its
// output: the image imported, listed, a container created, mounted and
// changed, its changes listed, exported and applied as a new layer, a
// hostile tar refused, the container committed as an image and commands
// run in that image, everything removed and the root checked.
//
// The fixture image is written as an OCI archive and loaded with `layers
// load`; every step runs the real `layers` binary as its own process,
// built for the occasion (or taken from $LAYERS_BIN). The driver is the default for the host (overlay where
// the kernel has it), or $LAYERS_DRIVER.
package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
)

// imageName is what the fixture image is called in the demo root.
const imageName = "localhost/busybox:demo"

// committedName is the image committed from the demo's container.
const committedName = "localhost/busybox:committed"

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// demo is one run: where it works and where it prints.
type demo struct {
	w                  io.Writer
	bin, root, runRoot string
	driver             string
}

func step(w io.Writer, format string, args ...any) { fmt.Fprintf(w, "\n==> "+format+"\n", args...) }

// run does the whole demo, printing to w, and leaves nothing behind: no
// mount, no file.
func run(w io.Writer) (err error) {
	tmp, err := os.MkdirTemp("", "layers-demo-")
	if err != nil {
		return err
	}
	defer func() {
		// After a failure half-way, a container may still be mounted.
		if derr := detachUnder(tmp); derr != nil && err == nil {
			err = derr
		}
		if rerr := os.RemoveAll(tmp); rerr != nil && err == nil {
			err = rerr
		}
	}()
	d := &demo{w: w, root: filepath.Join(tmp, "root"), runRoot: filepath.Join(tmp, "run"), driver: os.Getenv("LAYERS_DRIVER")}

	if d.bin = os.Getenv("LAYERS_BIN"); d.bin == "" {
		step(w, "build the layers command")
		d.bin = filepath.Join(tmp, "layers")
		out, err := exec.Command("go", "build", "-o", d.bin, "github.com/layers-storage/layers/cmd/layers").CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build: %w\n%s", err, out)
		}
		fmt.Fprintf(w, "    $ go build -o %s ./cmd/layers\n", d.bin)
	}
	fmt.Fprintf(w, "    $ export LAYERS_ROOT=%s LAYERS_RUNROOT=%s\n", d.root, d.runRoot)

	step(w, "load the busybox fixture image from an OCI archive")
	if _, err := d.importFixture(); err != nil {
		return fmt.Errorf("load the fixture image: %w", err)
	}

	step(w, "the store and the image")
	if _, err := d.layers(nil, "info"); err != nil {
		return err
	}
	if _, err := d.layers(nil, "images"); err != nil {
		return err
	}

	step(w, "create a container, mount it and change it")
	out, err := d.layers(nil, "create", "--name", "demo", imageName)
	if err != nil {
		return err
	}
	ctr := strings.TrimSpace(out)
	if out, err = d.layers(nil, "mount", "demo"); err != nil {
		return err
	}
	mnt := strings.TrimSpace(out)
	fmt.Fprintf(w, "    $ echo 'hello, layers' > %s/hello.txt\n", mnt)
	if err := os.WriteFile(filepath.Join(mnt, "hello.txt"), []byte("hello, layers\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(w, "    $ rm %s/etc/group\n", mnt)
	if err := os.Remove(filepath.Join(mnt, "etc/group")); err != nil {
		return err
	}
	fmt.Fprintf(w, "    $ mkdir -p %s/srv/data\n", mnt)
	if err := os.MkdirAll(filepath.Join(mnt, "srv/data"), 0o755); err != nil {
		return err
	}

	step(w, "its changes against the image, and the lists")
	for _, args := range [][]string{{"diff", "demo"}, {"ps"}, {"layers"}} {
		if _, err := d.layers(nil, args...); err != nil {
			return err
		}
	}

	step(w, "export the container's layer as a tar and apply it as a new layer on the image's")
	imageLayer, rwLayer, err := d.layersOf(imageName, ctr)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "    $ layers layer diff %s | layers layer apply --parent %s\n", short(rwLayer), short(imageLayer))
	tarball, err := d.quiet("layer", "diff", rwLayer)
	if err != nil {
		return err
	}
	if out, err = d.run([]byte(tarball), "layer", "apply", "--parent", imageLayer); err != nil {
		return err
	}
	fmt.Fprint(w, indent(out))
	if _, err := d.layers(nil, "inspect", strings.TrimSpace(out)); err != nil {
		return err
	}

	step(w, "apply a hostile tar (a symlink to / then a write through it): refused, nothing written")
	hostile := fixtures.Tar(
		fixtures.Symlink("host", "/"),
		fixtures.File("host/tmp/layers-demo-canary", "pwned", 0o644),
		fixtures.Raw(tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}, "pwned"),
	)
	fmt.Fprintf(w, "    $ layers layer apply < hostile.tar\n")
	if _, err := d.run(hostile, "layer", "apply"); err == nil {
		return errors.New("the hostile tar was applied")
	}
	if _, err := os.Lstat("/tmp/layers-demo-canary"); err == nil {
		return errors.New("the hostile tar wrote outside the layer")
	}

	step(w, "commit the container as an image (unmounted, on overlay: in place, its changes become the layer, nothing copied) and run commands in it (an OCI runtime: runc or crun)")
	fmt.Fprintf(w, "    $ echo 'written before commit' > %s/srv/data/note\n", mnt)
	if err := os.WriteFile(filepath.Join(mnt, "srv/data/note"), []byte("written before commit\n"), 0o644); err != nil {
		return err
	}
	for _, args := range [][]string{{"umount", "demo"}, {"commit", "-m", "demo changes", "demo", committedName}} {
		if _, err := d.layers(nil, args...); err != nil {
			return err
		}
	}
	if _, err := d.layers(nil, "run", "--rm", committedName, "cat", "/hello.txt", "/srv/data/note"); err != nil {
		return err
	}
	if _, err := d.layers(nil, "run", "--name", "ran", "-e", "WHO=layers", "-u", "app", "-w", "/srv/data", committedName,
		"sh", "-c", `echo "$(id -un) in $(pwd), for $WHO"; test ! -e /etc/group && echo "/etc/group is gone, as committed"`); err != nil {
		return err
	}
	if _, err := d.layers(nil, "ps"); err != nil {
		return err
	}

	step(w, "clean up: unmount, remove the containers, the images and the applied layer; check")
	for _, args := range [][]string{{"umount", "demo"}, {"rm", "demo", "ran"}, {"rmi", committedName}, {"rmi", imageName}, {"prune"}, {"layers"}, {"check"}} {
		if _, err := d.layers(nil, args...); err != nil {
			return err
		}
	}
	return nil
}

// layers runs the binary, printing the command line and its output.
func (d *demo) layers(stdin []byte, args ...string) (string, error) {
	fmt.Fprintf(d.w, "    $ layers %s\n", strings.Join(args, " "))
	out, err := d.run(stdin, args...)
	fmt.Fprint(d.w, indent(out))
	return out, err
}

// quiet runs the binary without printing.
func (d *demo) quiet(args ...string) (string, error) { return d.run(nil, args...) }

// run runs the binary with the demo's root; a failure is returned with
// its stderr line, which is also printed.
func (d *demo) run(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command(d.bin, args...)
	cmd.Env = append(os.Environ(), "LAYERS_ROOT="+d.root, "LAYERS_RUNROOT="+d.runRoot)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		fmt.Fprint(d.w, indent(errb.String()))
		return out.String(), fmt.Errorf("layers %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	fmt.Fprint(d.w, indent(errb.String()))
	return out.String(), nil
}

// importFixture stores the busybox fixture layer (gzip, as registries
// serve it) and its image config under imageName, and returns the image ID.
// importFixture writes the busybox fixture image as an OCI archive (an
// OCI image layout in a tar, as `podman save --format oci-archive`
// writes it) and loads it with `layers load`, which prints the image ID.
func (d *demo) importFixture() (string, error) {
	archive := filepath.Join(filepath.Dir(d.root), "busybox-oci.tar")
	if err := writeFixtureArchive(archive); err != nil {
		return "", err
	}
	out, err := d.layers(nil, "load", "-i", archive)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// writeFixtureArchive writes the busybox fixture image, named imageName,
// to path as an oci-archive with a gzip layer.
func writeFixtureArchive(path string) error {
	layer, err := fixtures.BusyboxLayer()
	if err != nil {
		return err
	}
	gz, err := fixtures.Compress(layer, diff.Gzip)
	if err != nil {
		return err
	}
	cfg, err := fixtures.ImageConfig([][]byte{layer}, "sh")
	if err != nil {
		return err
	}
	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      digest.Digest     `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	desc := func(mt string, b []byte) descriptor {
		return descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc("application/vnd.oci.image.config.v1+json", cfg),
		"layers":        []descriptor{desc("application/vnd.oci.image.layer.v1.tar+gzip", gz)},
	})
	if err != nil {
		return err
	}
	md := desc("application/vnd.oci.image.manifest.v1+json", manifest)
	md.Annotations = map[string]string{"org.opencontainers.image.ref.name": imageName}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []descriptor{md}})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
	}
	for _, b := range [][]byte{cfg, gz, manifest} {
		files = append(files, struct {
			name string
			data []byte
		}{"blobs/sha256/" + digest.FromBytes(b).Encoded(), b})
	}
	for _, f := range files {
		if err := add(f.name, f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// layersOf returns the top layer of image and the read-write layer of
// container ctr, read from `layers inspect` as a script would.
func (d *demo) layersOf(image, ctr string) (imageLayer, rwLayer string, err error) {
	out, err := d.quiet("inspect", image, ctr)
	if err != nil {
		return "", "", err
	}
	var objs []struct {
		TopLayer string `json:"top_layer"`
		Layer    string `json:"layer"`
	}
	if err := json.Unmarshal([]byte(out), &objs); err != nil || len(objs) != 2 || objs[0].TopLayer == "" || objs[1].Layer == "" {
		return "", "", fmt.Errorf("inspect %s %s: unexpected output (%v): %s", image, ctr, err, out)
	}
	return objs[0].TopLayer, objs[1].Layer, nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// indent prefixes every line of s with four spaces.
func indent(s string) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	return "    " + strings.Join(lines, "\n    ") + "\n"
}

// detachUnder detaches every mount below dir, deepest first.
func detachUnder(dir string) error {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return err
	}
	var errs []error
	for i := len(ms) - 1; i >= 0; i-- {
		if err := unix.Unmount(ms[i].Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", ms[i].Mountpoint, err))
		}
	}
	return errors.Join(errs...)
}
