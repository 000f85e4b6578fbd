package fscopy

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/layers-storage/layers/internal/loopfs"
)

// benchTree writes a tree shaped like an image's root filesystem: 10,000
// small files (100 B to 16 KiB) in 100 directories, and 4 big files of
// 16 MiB. It returns the bytes of file data.
func benchTree(b *testing.B, root string) int64 {
	b.Helper()
	rng := rand.New(rand.NewSource(3))
	buf := make([]byte, 16<<20)
	rng.Read(buf)
	var total int64
	for d := range 100 {
		dir := filepath.Join(root, fmt.Sprintf("d%03d", d))
		must(b, os.MkdirAll(dir, 0o755))
		for f := range 100 {
			n := 100 + rng.Intn(16<<10)
			must(b, os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", f)), buf[f*1000:f*1000+n], 0o644))
			total += int64(n)
		}
	}
	for i := range 4 {
		must(b, os.WriteFile(filepath.Join(root, fmt.Sprintf("big%d", i)), buf, 0o644))
		total += int64(len(buf))
	}
	return total
}

// BenchmarkCopyTree copies the bench tree within one filesystem: ext4 (data
// copied in the kernel) and xfs and btrfs (data cloned), plus xfs with
// ReflinkNever for the cost of real copies there. The serial cases copy
// everything in the walking goroutine, the baseline of the worker pool in
// the same run; FSCOPY_WORKERS=N sets the pool's size for the others.
func BenchmarkCopyTree(b *testing.B) {
	needRoot(b)
	for _, c := range []struct {
		typ    string
		mode   ReflinkMode
		serial bool
	}{
		{"ext4", ReflinkAuto, false}, {"xfs", ReflinkAuto, false}, {"xfs", ReflinkAuto, true},
		{"btrfs", ReflinkAuto, false}, {"btrfs", ReflinkAuto, true}, {"xfs", ReflinkNever, false},
	} {
		name := c.typ + "/" + c.mode.String()
		if c.serial {
			name += "/serial"
		}
		b.Run(name, func(b *testing.B) {
			if v := os.Getenv("FSCOPY_WORKERS"); v != "" || c.serial {
				n := 0
				if !c.serial {
					var err error
					n, err = strconv.Atoi(v)
					must(b, err)
				}
				old := testWorkers
				testWorkers = n
				b.Cleanup(func() { testWorkers = old })
			}
			dir := loopfs.New(b, c.typ, 1<<30)
			src := filepath.Join(dir, "src")
			must(b, os.Mkdir(src, 0o755))
			bytes := benchTree(b, src)
			b.SetBytes(bytes)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				dst := filepath.Join(dir, fmt.Sprintf("dst%d", i))
				if _, err := Copy(context.Background(), src, dst, Options{Reflink: c.mode}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				must(b, os.RemoveAll(dst))
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/10004, "µs/file")
		})
	}
}
