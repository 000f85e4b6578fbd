package diff_test

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/internal/loopfs"
)

// Benchmarks of the native overlay differ against the naive one, which is
// what a driver would otherwise run: Changes of the lowers mounted alone
// against the layer mounted. The image is 20,000 files in 200 directories
// on tmpfs; the layer changes 10,000 files (5,000 rewritten lower files,
// 5,000 new files in 50 new directories), or only 10. Every iteration runs
// both differs, one after the other, and reports the native time over the
// naive one as "x-naive" (0.2 = native is 5 times faster; the goal
// is at most that).

const (
	ovlBenchDirs     = 200
	ovlBenchFiles    = 100 // per directory
	ovlBenchMaxBytes = 4 << 10
)

type ovlBench struct {
	layer  *ovlLayer
	old    string // the lowers mounted alone
	merged string // the layer mounted read-only
	change int    // changes the layer makes, as both differs count them
}

var ovlBenchData = func() []byte {
	b := make([]byte, ovlBenchMaxBytes)
	rand.New(rand.NewSource(7)).Read(b)
	return b
}()

// newOvlBenchLower fills lower with the image: 20,000 files.
func newOvlBenchLower(b *testing.B, lower string) {
	rng := rand.New(rand.NewSource(42))
	for d := range ovlBenchDirs {
		dir := filepath.Join(lower, fmt.Sprintf("usr/share/pkg%03d", d))
		ovlMkdirAll(b, dir)
		for f := range ovlBenchFiles {
			p := filepath.Join(dir, fmt.Sprintf("file-%04d.dat", f))
			ovlMust(b, os.WriteFile(p, ovlBenchData[:rng.Intn(ovlBenchMaxBytes)], 0o644))
		}
	}
	ovlStampAll(b, lower, ovlBaseTime.Add(123456789))
}

// newOvlBench makes a layer over a shared lower on fs and changes files
// through an overlay mount: large makes it rewrite 5,000 lower files and
// add 5,000 new ones, otherwise it rewrites 5 and adds 5.
func newOvlBench(b *testing.B, fs, name string, lower string, large bool) *ovlBench {
	base := filepath.Join(fs, name)
	l := newOvlLayer(b, base, 0, ovlOptionSets[0].opts)
	l.lowers = []string{lower}
	rewriteDirs, rewritePer, addDirs, addPer := 50, ovlBenchFiles, 50, 100
	if !large {
		rewriteDirs, rewritePer, addDirs, addPer = 1, 5, 1, 5
	}
	later := time.Now()
	l.edit(func(m string) {
		for d := range rewriteDirs {
			for f := range rewritePer {
				p := filepath.Join(m, fmt.Sprintf("usr/share/pkg%03d/file-%04d.dat", d*(ovlBenchDirs/rewriteDirs), f))
				// A write copies the file up, data and all, as a
				// package upgrade would.
				fh, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
				ovlMust(b, err)
				_, err = fh.Write([]byte("x"))
				ovlMust(b, err)
				ovlMust(b, fh.Close())
			}
		}
		for d := range addDirs {
			dir := filepath.Join(m, fmt.Sprintf("opt/new%03d", d))
			ovlMkdirAll(b, dir)
			for f := range addPer {
				ovlMust(b, os.WriteFile(filepath.Join(dir, fmt.Sprintf("new-%04d.dat", f)), ovlBenchData[:(f*37)%ovlBenchMaxBytes], 0o644))
			}
		}
		ovlSetTime(b, m+"/usr/share", later)
	})
	ob := &ovlBench{layer: l}
	ob.old, _ = l.mount(l.lowerData(), unix.MS_RDONLY)
	ob.merged, _ = l.mount(l.layerData(), unix.MS_RDONLY)
	ctx := context.Background()
	naive, err := diff.Changes(ctx, ob.old, ob.merged)
	ovlMust(b, err)
	native, err := diff.OverlayChanges(ctx, l.upper, l.lowers, l.options())
	ovlMust(b, err)
	if d := ovlDiffChanges(naive, native); d != "" {
		b.Fatalf("native and naive changes differ:\n%s", d)
	}
	ob.change = len(native)
	return ob
}

// BenchmarkOverlayChanges: change lists only.
func BenchmarkOverlayChanges(b *testing.B) {
	ovlBenchRun(b, func(ctx context.Context, ob *ovlBench) error {
		_, err := diff.OverlayChanges(ctx, ob.layer.upper, ob.layer.lowers, ob.layer.options())
		return err
	}, func(ctx context.Context, ob *ovlBench) error {
		_, err := diff.Changes(ctx, ob.old, ob.merged)
		return err
	})
}

// BenchmarkOverlayDiff: the layer tar, to io.Discard. Native is
// WriteOverlayDiff (here exported from upper: no renamed directory, no
// metacopy file); naive is Changes then Export of the merged mount.
func BenchmarkOverlayDiff(b *testing.B) {
	ovlBenchRun(b, func(ctx context.Context, ob *ovlBench) error {
		return diff.WriteOverlayDiff(ctx, io.Discard, ob.layer.upper, ob.layer.lowers, ob.layer.options(), nil, diff.ExportOptions{})
	}, func(ctx context.Context, ob *ovlBench) error {
		changes, err := diff.Changes(ctx, ob.old, ob.merged)
		if err != nil {
			return err
		}
		return diff.Export(ctx, io.Discard, ob.merged, changes, diff.ExportOptions{})
	})
}

func ovlBenchRun(b *testing.B, native, naive func(context.Context, *ovlBench) error) {
	ovlNeedOverlay(b)
	fs := loopfs.New(b, "tmpfs", 2<<30)
	lower := filepath.Join(fs, "image")
	newOvlBenchLower(b, lower)
	for _, c := range []struct {
		name  string
		large bool
	}{{"change=10000", true}, {"change=10", false}} {
		ob := newOvlBench(b, fs, c.name, lower, c.large)
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			var tNative, tNaive time.Duration
			for b.Loop() {
				start := time.Now()
				if err := native(ctx, ob); err != nil {
					b.Fatal(err)
				}
				mid := time.Now()
				if err := naive(ctx, ob); err != nil {
					b.Fatal(err)
				}
				tNative += mid.Sub(start)
				tNaive += time.Since(mid)
			}
			b.ReportMetric(tNative.Seconds()/tNaive.Seconds(), "x-naive")
			b.ReportMetric(float64(tNative.Microseconds())/float64(b.N)/1000, "native-ms")
			b.ReportMetric(float64(tNaive.Microseconds())/float64(b.N)/1000, "naive-ms")
			b.ReportMetric(float64(ob.change), "changes")
		})
	}
}
