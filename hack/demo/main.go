// Command demo walks through the layer core on built-in fixtures, with the
// best driver for the host (overlay where the kernel has it, else vfs), printing
// each step: the busybox layer applied, a read-write layer on top changed,
// its changes listed and exported, the export applied as a new layer, the
// two trees compared, and a hostile tar refused. The CLI replaces it once
// `layers` exists.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
	_ "github.com/layers-storage/layers/overlay" // the default where the kernel has it
	_ "github.com/layers-storage/layers/vfs"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run() error {
	ctx := context.Background()
	home, err := os.MkdirTemp("", "layers-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(home)

	step("driver: the best registered driver for %s", home)
	d, err := graphdriver.Default(filepath.Join(home, "storage"), nil)
	if err != nil {
		return err
	}
	defer d.Cleanup()
	for _, s := range d.Status() {
		fmt.Printf("    %-20s %s\n", s.Key, s.Value)
	}

	step("apply the busybox fixture layer (gzip) as layer base")
	layer, err := fixtures.BusyboxLayer()
	if err != nil {
		return err
	}
	gz, err := fixtures.Compress(layer, diff.Gzip)
	if err != nil {
		return err
	}
	if err := d.Create("base", "", nil); err != nil {
		return err
	}
	res, err := graphdriver.ApplyDiff(ctx, d, "base", "", bytes.NewReader(gz), diff.ApplyOptions{})
	if err != nil {
		return err
	}
	fmt.Printf("    compression %s, %d bytes compressed, %d uncompressed, %d bytes of files\n    diffID %s\n",
		res.Compression, len(gz), res.TarSize, res.Size, res.DiffID)

	step("create a read-write layer ctr on base, mount it and change it")
	if err := d.CreateReadWrite("ctr", "base", nil); err != nil {
		return err
	}
	root, err := d.Get("ctr", graphdriver.MountOpts{})
	if err != nil {
		return err
	}
	fmt.Printf("    mounted at %s\n", root)
	edits := []struct {
		what string
		do   func() error
	}{
		{"write /hello.txt", func() error { return os.WriteFile(filepath.Join(root, "hello.txt"), []byte("hello, layers\n"), 0o644) }},
		{"remove /etc/group", func() error { return os.Remove(filepath.Join(root, "etc/group")) }},
		{"chmod 0700 /home/app", func() error { return os.Chmod(filepath.Join(root, "home/app"), 0o700) }},
		{"mkdir /srv/data", func() error { return os.MkdirAll(filepath.Join(root, "srv/data"), 0o755) }},
	}
	for _, e := range edits {
		fmt.Printf("    %s\n", e.what)
		if err := e.do(); err != nil {
			return err
		}
	}

	step("changes of ctr against base")
	changes, err := graphdriver.Changes(ctx, d, "ctr", "base")
	if err != nil {
		return err
	}
	for _, c := range changes {
		fmt.Printf("    %s\n", c)
	}

	step("export them as an OCI layer tar and apply it as layer committed on base")
	rc, err := graphdriver.Diff(ctx, d, "ctr", "base")
	if err != nil {
		return err
	}
	var tarBuf bytes.Buffer
	_, err = io.Copy(&tarBuf, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := d.Create("committed", "base", nil); err != nil {
		return err
	}
	res, err = graphdriver.ApplyDiff(ctx, d, "committed", "base", bytes.NewReader(tarBuf.Bytes()), diff.ApplyOptions{})
	if err != nil {
		return err
	}
	fmt.Printf("    %d tar bytes, diffID %s\n", tarBuf.Len(), res.DiffID)

	step("compare the trees of ctr and committed")
	committed, err := d.Get("committed", graphdriver.MountOpts{})
	if err != nil {
		return err
	}
	a, err := fixtures.Snapshot(root)
	if err != nil {
		return err
	}
	b, err := fixtures.Snapshot(committed)
	if err != nil {
		return err
	}
	// The root directory itself is not part of a changeset (as in docker
	// and podman): its mtime moves with every top-level edit.
	if diffs := fixtures.Compare(a, b, fixtures.IgnorePaths("/")); len(diffs) > 0 {
		return fmt.Errorf("trees differ: %v", diffs)
	}
	fmt.Printf("    identical below /: %d entries (type, mode, owner, content, xattrs, mtimes, hardlinks)\n", len(a)-1)
	_ = d.Put("committed")
	_ = d.Put("ctr")

	step("apply a hostile tar (a symlink to / then a write through it, then ../escape)")
	if err := d.Create("hostile", "base", nil); err != nil {
		return err
	}
	hostile := fixtures.Tar(
		fixtures.Symlink("host", "/"),
		fixtures.File("host/tmp/layers-demo-canary", "pwned", 0o644),
		fixtures.Raw(tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}, "pwned"),
	)
	_, err = graphdriver.ApplyDiff(ctx, d, "hostile", "base", bytes.NewReader(hostile), diff.ApplyOptions{})
	fmt.Printf("    error: %v\n", err)
	if _, serr := os.Lstat("/tmp/layers-demo-canary"); serr == nil {
		return fmt.Errorf("hostile tar wrote outside the layer")
	}
	fmt.Printf("    nothing written outside the layer root\n")

	step("remove every layer")
	for _, id := range []string{"hostile", "committed", "ctr", "base"} {
		if err := d.Remove(id); err != nil {
			return err
		}
		fmt.Printf("    removed %s\n", id)
	}
	return nil
}
