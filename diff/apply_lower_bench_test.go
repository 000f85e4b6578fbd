package diff_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
)

// BenchmarkApplyOverlayLowers measures what giving ApplyOptions.Lowers
// costs in the overlay format, on tmpfs, against the same Apply without
// them, in the same iterations (alternating which goes first); ns/op is
// the Apply with lowers, "nolowers-ns/op" the baseline and "x-nolowers"
// their ratio.
//
//   - listed: 20,000 small files whose parent directories the tar lists
//     (as GNU tar and image builders write layers): no entry needs a lower
//     lookup, Ready is never called (checked), and the ratio should be 1.
//   - implicit: the same files in a tar that lists no directory, every
//     directory being in a lower: each of the 313 directories is looked up
//     once in the lowers and made with their attributes (the baseline makes
//     it 0755), the price of rule 3 of "one tree per image".
func BenchmarkApplyOverlayLowers(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: tmpfs mount, chown")
	}
	fs := loopfs.New(b, "tmpfs", 4<<30)
	tree := filepath.Join(fs, "tree")
	if err := fixtures.SmallFiles(tree, 20000, 1); err != nil {
		b.Fatal(err)
	}
	listed := filepath.Join(fs, "listed.tar")
	if out, err := exec.Command("tar", "--format=pax", "--sort=name", "-C", tree, "-cf", listed, ".").CombinedOutput(); err != nil {
		b.Fatalf("tar: %v: %s", err, out)
	}
	implicit := filepath.Join(fs, "implicit.tar")
	script := `cd "$1" && find . -type f | sort | tar --format=pax --no-recursion -T - -cf "$2"`
	if out, err := exec.Command("sh", "-c", script, "sh", tree, implicit).CombinedOutput(); err != nil {
		b.Fatalf("tar: %v: %s", err, out)
	}
	// Three lowers: the bottom one has every directory of the tree (mode
	// 0750), the others a little content of their own.
	var lowerDirs []string
	for i := range 3 {
		d := filepath.Join(fs, fmt.Sprintf("lower%d", i))
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
		lowerDirs = append(lowerDirs, d)
	}
	for i := range 313 {
		if err := os.Mkdir(filepath.Join(lowerDirs[0], fmt.Sprintf("d%03d", i)), 0o750); err != nil {
			b.Fatal(err)
		}
	}
	for _, d := range lowerDirs[1:] {
		if err := fixtures.SmallFiles(filepath.Join(d, "etc"), 100, 3); err != nil {
			b.Fatal(err)
		}
	}
	for _, w := range []struct {
		name, tar string
		lookups   bool
	}{{"listed", listed, false}, {"implicit", implicit, true}} {
		b.Run(w.name, func(b *testing.B) {
			var calls atomic.Int32
			var lowers []diff.Lower
			for i := len(lowerDirs) - 1; i >= 0; i-- {
				lowers = append(lowers, diff.Lower{Dir: lowerDirs[i], Ready: func(context.Context) error { calls.Add(1); return nil }})
			}
			benchLowersOne(b, fs, w.tar, lowers)
			if !w.lookups && calls.Load() != 0 {
				b.Fatalf("a layer that needs no lookup waited for lowers %d times", calls.Load())
			}
		})
	}
}

func benchLowersOne(b *testing.B, fs, input string, lowers []diff.Lower) {
	st, err := os.Stat(input)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(st.Size())
	var with, without time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		order := []bool{true, false}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, useLowers := range order {
			dest := filepath.Join(fs, fmt.Sprintf("dest-%v-%d", useLowers, i))
			if err := os.Mkdir(dest, 0o755); err != nil {
				b.Fatal(err)
			}
			opts := diff.ApplyOptions{Whiteouts: diff.OverlayWhiteouts(false)}
			if useLowers {
				opts.Lowers = lowers
			}
			f, err := os.Open(input)
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if useLowers {
				b.StartTimer()
			}
			_, err = diff.Apply(context.Background(), dest, f, opts)
			if useLowers {
				b.StopTimer()
				with += time.Since(start)
			} else {
				without += time.Since(start)
			}
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
			if err := os.RemoveAll(dest); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(without.Nanoseconds())/float64(b.N), "nolowers-ns/op")
	b.ReportMetric(with.Seconds()/without.Seconds(), "x-nolowers")
}
