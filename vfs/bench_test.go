package vfs

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/loopfs"
)

// imageTree fills dir like a small distribution image (debian's has 5,221
// files): 5,000 files of 100 B to 16 KiB in 100 directories, 500 symlinks
// and one 32 MiB file.
func imageTree(b *testing.B, dir string) {
	b.Helper()
	rng := rand.New(rand.NewSource(5))
	buf := make([]byte, 32<<20)
	rng.Read(buf)
	for d := range 100 {
		sub := filepath.Join(dir, "usr", fmt.Sprintf("d%03d", d))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := range 50 {
			n := 100 + rng.Intn(16<<10)
			if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%02d", f)), buf[f*1000:f*1000+n], 0o644); err != nil {
				b.Fatal(err)
			}
		}
		for l := range 5 {
			if err := os.Symlink(fmt.Sprintf("f%02d", l), filepath.Join(sub, fmt.Sprintf("l%d", l))); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), buf, 0o644); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkCreate times Create of a child layer of an image-sized parent
// (Remove not counted): on btrfs a snapshot against the copy the driver
// made before subvolumes (vfs.subvolumes=false, reflinked files), the
// baseline of the same run; on xfs the reflinked copy.
func BenchmarkCreate(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("loop filesystems need root")
	}
	for _, c := range []struct {
		name, typ string
		opts      map[string]string
	}{
		{"btrfs/snapshot", "btrfs", nil},
		{"btrfs/copy", "btrfs", map[string]string{"vfs.subvolumes": "false"}},
		{"xfs/copy", "xfs", nil},
	} {
		b.Run(c.name, func(b *testing.B) {
			mnt := loopfs.New(b, c.typ, 2<<30)
			d, err := New(filepath.Join(mnt, "home"), c.opts)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = d.Cleanup() })
			if err := d.Create("parent", "", nil); err != nil {
				b.Fatal(err)
			}
			p, err := d.Get("parent", graphdriver.MountOpts{})
			if err != nil {
				b.Fatal(err)
			}
			imageTree(b, p)
			for i := 0; b.Loop(); i++ {
				id := fmt.Sprintf("c%d", i)
				if err := d.Create(id, "parent", nil); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := d.Remove(id); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
