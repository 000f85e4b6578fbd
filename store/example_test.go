package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/store"
	_ "github.com/layers-storage/layers/store/all" // link in the drivers
)

// The common flow: open a store, apply a layer, make an image of it,
// create a container, mount it, change a file and list the changes.
func Example() {
	root, err := os.MkdirTemp("/var/tmp", "layers-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(root)
	ctx := context.Background()

	// Open (or create) the store; the driver is the best the host has,
	// recorded in the root for the next Open.
	s, err := store.Open(store.Options{Root: root})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	// Apply a layer tar (uncompressed, gzip or zstd) as a new layer.
	tar := fixtures.Tar(fixtures.Dir("etc", 0o755), fixtures.File("etc/motd", "hello\n", 0o644))
	layer, err := s.ApplyDiff(ctx, "", bytes.NewReader(tar), nil)
	if err != nil {
		log.Fatal(err)
	}

	// An image: a config whose rootfs lists the layers' diffIDs, a top
	// layer and names.
	config, err := fixtures.ImageConfig([][]byte{tar}, "/bin/sh")
	if err != nil {
		log.Fatal(err)
	}
	img, err := s.CreateImage(store.ImageOptions{Config: config, TopLayer: layer.ID, Names: []string{"example"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(img.Names[0])

	// A container: a read-write layer on the image, found by name later.
	c, err := s.CreateContainer("example", &store.ContainerOptions{Name: "web"})
	if err != nil {
		log.Fatal(err)
	}

	// Mount it, change it, unmount it.
	dir, err := s.Mount("web")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "motd"), []byte("bye\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	if err := s.Unmount("web", false); err != nil {
		log.Fatal(err)
	}

	// What changed against the image.
	changes, err := s.Changes(ctx, c.ID)
	if err != nil {
		log.Fatal(err)
	}
	for _, ch := range changes {
		fmt.Println(ch)
	}

	// Clean up: the container, then the image and its layers.
	if err := s.RemoveContainer("web", false); err != nil {
		log.Fatal(err)
	}
	removed, err := s.RemoveImage("example", false)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(removed), "layer removed")
	// Output:
	// docker.io/library/example:latest
	// C /etc/motd
	// 1 layer removed
}

// Opening a root with an explicit driver and storage options, as the CLI
// does with --driver and --storage-opt. A root keeps the driver it was
// made with: naming another fails with ErrDriverMismatch.
func ExampleOpen() {
	opts, err := store.ParseStorageOptions([]string{"sync=true"})
	if err != nil {
		log.Fatal(err)
	}
	s, err := store.Open(store.Options{Root: "/var/lib/layers", RunRoot: "/run/layers", Driver: "overlay", DriverOptions: opts})
	if errors.Is(err, store.ErrDriverMismatch) {
		log.Fatal("this root was made with another driver: ", err)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	fmt.Println(s.DriverName())
}

// Pulling an image layer by layer: with the diffIDs of the image config,
// layers already stored are neither fetched nor applied again.
func ExampleStore_ApplyDiff() {
	s, err := store.Open(store.Options{Root: "/var/lib/layers"})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	var diffIDs []digest.Digest // from the image config's rootfs.diff_ids
	var fetch func(i int) io.ReadCloser
	parent := ""
	for i, d := range diffIDs {
		chain := d
		if parent != "" {
			p, err := s.Layer(parent)
			if err != nil {
				log.Fatal(err)
			}
			chain = store.ChainID(p.ChainID, d)
		}
		if l, err := s.LayerByChainID(chain); err == nil {
			parent = l.ID // stored already: nothing to download
			continue
		}
		blob := fetch(i) // gzip or zstd: ApplyDiff detects it
		l, err := s.ApplyDiff(ctx, parent, blob, &store.ApplyOptions{DiffID: d})
		blob.Close()
		if err != nil {
			log.Fatal(err)
		}
		parent = l.ID
	}
}

// Checking a root after a power loss, and removing what is damaged.
func ExampleStore_Repair() {
	s, err := store.Open(store.Options{Root: "/var/lib/layers"})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	r, err := s.Repair(context.Background(), store.RepairOptions{CheckOptions: store.CheckOptions{Digests: true}, RemoveDamaged: true})
	if r != nil { // also on a partial failure: what was found and fixed
		for _, p := range r.Problems {
			fmt.Println(p)
		}
	}
	if err != nil {
		log.Fatal(err)
	}
}
