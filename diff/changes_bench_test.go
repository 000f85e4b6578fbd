package diff

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layers-storage/layers/internal/loopfs"
)

// Benchmarks of the naive differ and the exporter on a 10,000-file change.
//
// The trees live on a fresh filesystem from internal/loopfs: tmpfs by
// default (measures our code, not a disk), or the type named by
// LAYERS_DIFF_BENCH_FS (ext4, xfs, btrfs) to see the filesystem's part.

const (
	benchDirs         = 100
	benchFilesPerDir  = 100
	benchMaxFileBytes = 16 << 10 // sizes uniform in [0, 16 KiB): ~80 MB per tree
)

type benchTrees struct {
	lower, upper string // upper: lower with every file's mtime changed
	files        int    // regular files in a tree
	entries      int    // files and directories in a tree
	bytes        int64  // content bytes of a tree
	changes      []Change
}

func newBenchTrees(b *testing.B) *benchTrees {
	b.Helper()
	fstype := os.Getenv("LAYERS_DIFF_BENCH_FS")
	if fstype == "" {
		fstype = "tmpfs"
	}
	root := loopfs.New(b, fstype, 1<<30)
	bt := &benchTrees{lower: filepath.Join(root, "lower"), upper: filepath.Join(root, "upper")}
	rng := rand.New(rand.NewSource(42))
	buf := make([]byte, benchMaxFileBytes)
	rng.Read(buf)
	for d := 0; d < benchDirs; d++ {
		dir := filepath.Join(bt.lower, fmt.Sprintf("usr/share/pkg%03d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := 0; f < benchFilesPerDir; f++ {
			n := rng.Intn(benchMaxFileBytes)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("file-%04d.dat", f)), buf[:n], 0o644); err != nil {
				b.Fatal(err)
			}
			bt.bytes += int64(n)
			bt.files++
		}
	}
	ctSetAllTimes(b, bt.lower, ctBaseTime)
	ctCopyTree(b, bt.lower, bt.upper)
	later := ctBaseTime.Add(time.Hour)
	for d := 0; d < benchDirs; d++ {
		for f := 0; f < benchFilesPerDir; f++ {
			ctLchtimes(b, bt.upper, fmt.Sprintf("usr/share/pkg%03d/file-%04d.dat", d, f), later)
		}
	}
	bt.entries = bt.files + benchDirs + 2 // + usr, usr/share
	var err error
	bt.changes, err = Changes(context.Background(), bt.lower, bt.upper)
	if err != nil {
		b.Fatal(err)
	}
	if len(bt.changes) != bt.files {
		b.Fatalf("%d changes, want %d", len(bt.changes), bt.files)
	}
	return bt
}

func reportRate(b *testing.B, n int, unit string) {
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), unit)
}

// BenchmarkChanges: "modified" compares two 10,100-entry trees in which
// every file's mtime differs (10,000 Modify); "added" walks one tree
// against an empty lower (10,102 Add). files/s counts entries walked per
// side; MB/s is the tree's content covered per second (not read: Changes
// reads content only for truncated mtimes).
func BenchmarkChanges(b *testing.B) {
	bt := newBenchTrees(b)
	ctx := context.Background()
	b.Run("modified", func(b *testing.B) {
		b.SetBytes(bt.bytes)
		for i := 0; i < b.N; i++ {
			if _, err := Changes(ctx, bt.lower, bt.upper); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, bt.entries, "files/s")
	})
	b.Run("added", func(b *testing.B) {
		b.SetBytes(bt.bytes)
		for i := 0; i < b.N; i++ {
			if _, err := Changes(ctx, "", bt.upper); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, bt.entries, "files/s")
	})
}

// BenchmarkExport writes the 10,000 modified files (and their parents) as a
// tar to io.Discard (and, in "layer-gzip" and "layer-zstd", through a
// LayerWriter: tar, compression and both digests, as a commit does). MB/s
// is file content per second, files/s files per second.
func BenchmarkExport(b *testing.B) {
	bt := newBenchTrees(b)
	ctx := context.Background()
	b.Run("tar", func(b *testing.B) {
		b.SetBytes(bt.bytes)
		var tarBytes int64
		for i := 0; i < b.N; i++ {
			cw := &ctCountWriter{}
			if err := Export(ctx, cw, bt.upper, bt.changes, ExportOptions{}); err != nil {
				b.Fatal(err)
			}
			tarBytes = cw.n
		}
		reportRate(b, bt.files, "files/s")
		b.ReportMetric(float64(tarBytes), "tar-bytes")
	})
	// The baseline: GNU tar archiving the same tree into a pipe we drain
	// (not /dev/null, which GNU tar detects and then skips reading files).
	b.Run("gnutar", func(b *testing.B) {
		b.SetBytes(bt.bytes)
		for i := 0; i < b.N; i++ {
			cmd := exec.Command("tar", "--format=pax", "-C", bt.upper, "-cf", "-", ".")
			var stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &ctCountWriter{}, &stderr
			if err := cmd.Run(); err != nil {
				b.Fatalf("%v: %s", err, stderr.String())
			}
		}
		reportRate(b, bt.files, "files/s")
	})
	for _, c := range []Compression{Gzip, Zstd} {
		b.Run("layer-"+c.String(), func(b *testing.B) {
			b.SetBytes(bt.bytes)
			for i := 0; i < b.N; i++ {
				lw, err := NewLayerWriter(io.Discard, c)
				if err != nil {
					b.Fatal(err)
				}
				if err := Export(ctx, lw, bt.upper, bt.changes, ExportOptions{}); err != nil {
					b.Fatal(err)
				}
				if err := lw.Close(); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, bt.files, "files/s")
		})
	}
}

type ctCountWriter struct{ n int64 }

func (w *ctCountWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}
