package diff

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layers-storage/layers/internal/loopfs"
)

// BenchmarkExportSmallFiles exports what a container typically changes:
// 10,000 tiny files (3 to 9 bytes, as overlay's BenchmarkDiffer writes)
// in 100 directories, on tmpfs. Export is compared in the same run with
// refExport (the serial exporter it replaced, the oracle of
// TestExportMatchesReference), Export without its reader goroutines
// ("serial") and GNU tar archiving the same files; "pipe"
// streams through an io.Pipe to another goroutine, as a driver's Diff
// does, "discard" writes to io.Discard.
func BenchmarkExportSmallFiles(b *testing.B) {
	root := loopfs.New(b, "tmpfs", 256<<20)
	var changes []Change
	for d := range 100 {
		dir := fmt.Sprintf("d%03d", d)
		if err := os.Mkdir(filepath.Join(root, dir), 0o755); err != nil {
			b.Fatal(err)
		}
		for f := range 100 {
			content := "rewritten"
			if f%2 == 1 {
				content = "new"
			}
			p := fmt.Sprintf("%s/f%05d", dir, d*100+f)
			if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o644); err != nil {
				b.Fatal(err)
			}
			changes = append(changes, Change{Kind: ChangeAdd, Path: "/" + p})
		}
	}
	ctx := context.Background()
	exporters := []struct {
		name string
		f    func(context.Context, io.Writer, string, []Change, ExportOptions) error
	}{
		{"export", Export},
		{"serial", func(ctx context.Context, w io.Writer, root string, c []Change, o ExportOptions) error {
			return export(ctx, w, root, c, o, 0)
		}},
		{"reference", refExport},
	}
	for _, ex := range exporters {
		b.Run(ex.name+"/discard", func(b *testing.B) {
			for b.Loop() {
				if err := ex.f(ctx, io.Discard, root, changes, ExportOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, len(changes), "files/s")
		})
		b.Run(ex.name+"/pipe", func(b *testing.B) {
			for b.Loop() {
				pr, pw := io.Pipe()
				go func() { pw.CloseWithError(ex.f(ctx, pw, root, changes, ExportOptions{})) }()
				if _, err := io.Copy(io.Discard, pr); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, len(changes), "files/s")
		})
	}
	b.Run("gnutar", func(b *testing.B) {
		for b.Loop() {
			cmd := exec.Command("tar", "--format=pax", "-C", root, "-cf", "-", ".")
			var stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &ctCountWriter{}, &stderr
			if err := cmd.Run(); err != nil {
				b.Fatalf("%v: %s", err, stderr.String())
			}
		}
		reportRate(b, len(changes), "files/s")
	})
}
