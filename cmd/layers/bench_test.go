package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/store"
)

// BenchmarkCLI measures whole CLI processes, as a shell user or a script
// pays for them: `layers create IMAGE && layers mount ID` (the issue's
// goal: under 0.02 s with overlay), next to the parts of its cost:
//
//   - true: fork and exec of a tiny binary, the floor of any process;
//   - version: the layers binary starting, opening no store (Go runtime
//     and package initialisation);
//   - images: starting, opening the store (database, driver) and reading;
//   - create: one create process;
//   - in-process-open: store.Open+Close without a process;
//   - in-process-driver-new: the driver's New alone (overlay probes the
//     kernel with a mount there);
//   - in-process-create+mount: the store's work without any process;
//   - create+mount-100-mounted: create+mount with 100 other containers
//     mounted in the root.
//
// Roots are on tmpfs, so that the disk is not what is measured; vfs also on
// xfs, where it copies by reflink.
func BenchmarkCLI(b *testing.B) {
	for _, c := range []struct{ driver, fs string }{{"overlay", "tmpfs"}, {"vfs", "tmpfs"}, {"vfs", "xfs"}} {
		b.Run(c.driver+"-"+c.fs, func(b *testing.B) {
			r := newRootOn(b, c.driver, c.fs, 2<<30)
			img := importFixture(b, r, "localhost/busybox:fixture")
			// Containers made by a sub-benchmark are removed after it,
			// outside the timing, so that each starts from the same root.
			var ids []string
			removeAll := func() {
				for len(ids) > 0 {
					n := min(len(ids), 100)
					r.ok(b, append([]string{"rm"}, ids[:n]...)...)
					ids = ids[n:]
				}
			}
			b.Cleanup(removeAll)

			// create+mount on a root holding the image only: each
			// container is removed after it is measured.
			createMount := func(b *testing.B) {
				for b.Loop() {
					id := strings.TrimSpace(r.ok(b, "create", img.id))
					r.ok(b, "mount", id)
					b.StopTimer()
					r.ok(b, "rm", id)
					b.StartTimer()
				}
			}
			b.Run("create+mount", createMount)
			b.Run("create", func(b *testing.B) {
				for b.Loop() {
					id := strings.TrimSpace(r.ok(b, "create", img.id))
					b.StopTimer()
					r.ok(b, "rm", id)
					b.StartTimer()
				}
			})
			// The same with 100 other containers mounted: what a root in
			// use costs each process (the Go runtime reads mountinfo at
			// start; Open reconciles the mount counts with it only after
			// a killed operation or a reboot).
			b.Run("create+mount-100-mounted", func(b *testing.B) {
				for range 100 {
					id := strings.TrimSpace(r.ok(b, "create", img.id))
					ids = append(ids, id)
					r.ok(b, "mount", id)
				}
				b.ResetTimer()
				createMount(b)
				b.StopTimer()
				removeAll()
			})
			b.Run("images", func(b *testing.B) {
				for b.Loop() {
					r.ok(b, "images", "-q")
				}
			})
			b.Run("version", func(b *testing.B) {
				for b.Loop() {
					r.ok(b, "version")
				}
			})
			b.Run("true", func(b *testing.B) {
				for b.Loop() {
					if err := exec.Command("/bin/true").Run(); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("in-process-open", func(b *testing.B) {
				for b.Loop() {
					st, err := store.Open(store.Options{Root: r.dir, RunRoot: r.runDir})
					if err != nil {
						b.Fatal(err)
					}
					if err := st.Close(); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("in-process-driver-new", func(b *testing.B) {
				for b.Loop() {
					if _, err := graphdriver.New(c.driver, filepath.Join(r.dir, c.driver), nil); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("in-process-create+mount", func(b *testing.B) {
				st, err := store.Open(store.Options{Root: r.dir, RunRoot: r.runDir})
				if err != nil {
					b.Fatal(err)
				}
				for b.Loop() {
					c, err := st.CreateContainer(img.id, nil)
					if err != nil {
						b.Fatal(err)
					}
					ids = append(ids, c.ID)
					if _, err := st.Mount(c.ID); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				if err := st.Close(); err != nil {
					b.Fatal(err)
				}
				removeAll()
			})
		})
	}
}

// BenchmarkCLIBaseline compares this binary with another build of layers
// (LAYERS_BASELINE_BIN, e.g. one built from an older commit) process for
// process, each binary on its own overlay root (so that one's database
// state, such as a write-ahead log left for the next process, does not
// fall on the other), both roots on the same kind of filesystem: tmpfs,
// where syncs cost nothing, and ext4 on a loop device, where each commit's
// fsync is paid as on a disk. Each iteration runs every step with both
// binaries, alternating which goes first, so that the noise of a shared
// machine falls on both alike. It reports each binary's wall milliseconds
// per step, the CPU milliseconds (user + system) its processes used, which
// a loaded machine disturbs less, and both ratios new/base:
//
//   - create+mount: `create IMAGE` then `mount ID` (the container is
//     removed untimed);
//   - create+mount-100: the same with 100 other containers mounted;
//   - images: `images -q`;
//   - version: no store opened.
func BenchmarkCLIBaseline(b *testing.B) {
	base := os.Getenv("LAYERS_BASELINE_BIN")
	if base == "" {
		b.Skip("LAYERS_BASELINE_BIN names no baseline binary")
	}
	for _, fs := range []string{"tmpfs", "ext4"} {
		b.Run(fs, func(b *testing.B) { benchCLIBaseline(b, fs, base) })
	}
}

func benchCLIBaseline(b *testing.B, fs, base string) {
	bins := []string{layersBin, base}
	var roots [2]*root
	var imgs [2]fixtureImage
	for k := range bins {
		roots[k] = newRootOn(b, "overlay", fs, 1<<30)
		imgs[k] = importFixture(b, roots[k], "localhost/busybox:fixture")
	}
	// cost is what the processes of one step took.
	type cost struct{ wall, cpu time.Duration }
	// run runs binary k on its root; rm and the setup run with the
	// binary under test, untimed (c == nil).
	run := func(c *cost, k int, bin string, args ...string) string {
		b.Helper()
		r := roots[k]
		cmd := exec.Command(bin, append([]string{"--root", r.dir, "--runroot", r.runDir}, args...)...)
		cmd.Env = cleanEnv()
		var stderr strings.Builder
		cmd.Stderr = &stderr
		start := time.Now()
		out, err := cmd.Output()
		if c != nil {
			c.wall += time.Since(start)
			c.cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		if err != nil || stderr.Len() > 0 {
			b.Fatalf("%s %v: %v: %s", bin, args, err, stderr.String())
		}
		return strings.TrimSpace(string(out))
	}
	steps := []struct {
		name string
		do   func(c *cost, k int) (undo func())
	}{
		{"create+mount", func(c *cost, k int) func() {
			id := run(c, k, bins[k], "create", imgs[k].id)
			run(c, k, bins[k], "mount", id)
			return func() { run(nil, k, layersBin, "rm", id) }
		}},
		{"images", func(c *cost, k int) func() {
			run(c, k, bins[k], "images", "-q")
			return nil
		}},
		{"version", func(c *cost, k int) func() {
			run(c, k, bins[k], "version")
			return nil
		}},
	}
	bench := func(b *testing.B, do func(*cost, int) func()) {
		var total [2]cost
		i := 0
		for b.Loop() {
			for n := range 2 {
				k := (i + n) % 2
				if undo := do(&total[k], k); undo != nil {
					b.StopTimer()
					undo()
					b.StartTimer()
				}
			}
			i++
		}
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(ms(total[0].wall), "new-ms/op")
		b.ReportMetric(ms(total[1].wall), "base-ms/op")
		b.ReportMetric(float64(total[0].wall)/float64(total[1].wall), "new/base")
		b.ReportMetric(ms(total[0].cpu), "new-cpu-ms/op")
		b.ReportMetric(ms(total[1].cpu), "base-cpu-ms/op")
		b.ReportMetric(float64(total[0].cpu)/float64(total[1].cpu), "cpu-new/base")
	}
	for _, s := range steps {
		b.Run(s.name, func(b *testing.B) { bench(b, s.do) })
	}
	var mounted [2][]string
	for k := range bins {
		for range 100 {
			id := run(nil, k, layersBin, "create", imgs[k].id)
			run(nil, k, layersBin, "mount", id)
			mounted[k] = append(mounted[k], id)
		}
	}
	b.Cleanup(func() {
		for k := range bins {
			run(nil, k, layersBin, append([]string{"rm"}, mounted[k]...)...)
		}
	})
	b.Run("create+mount-100", func(b *testing.B) { bench(b, steps[0].do) })
}

// BenchmarkCLIFloor measures `layers create IMAGE` + `layers mount ID`,
// the goal (under 0.02 s with overlay, measured by the peers'
// compare.sh), against the floor of any two-process Go command line on
// this machine in the same run: a static hello-world Go binary run twice.
// The two alternate, iteration by iteration, so that a shared machine's
// noise falls on both alike. 20 other containers are mounted in the root,
// as compare.sh's 20 containers a round are on average 10. Roots on tmpfs
// (no flush costs anything) and on ext4 on a loop device (each synced
// commit flushes the disk cache, as compare.sh's scratch filesystem
// does). It reports both in wall and CPU milliseconds per op and the
// ratios layers/floor.
func BenchmarkCLIFloor(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "hello.go")
	if err := os.WriteFile(src, []byte("package main\n\nimport \"os\"\n\nfunc main() { os.Stdout.WriteString(\"hello\\n\") }\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	hello := filepath.Join(dir, "hello")
	build := exec.Command("go", "build", "-o", hello, src)
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build hello: %v\n%s", err, out)
	}
	for _, fs := range []string{"tmpfs", "ext4"} {
		b.Run(fs, func(b *testing.B) {
			r := newRootOn(b, "overlay", fs, 1<<30)
			img := importFixture(b, r, "localhost/busybox:fixture")
			var mounted []string
			for range 20 {
				id := strings.TrimSpace(r.ok(b, "create", img.id))
				r.ok(b, "mount", id)
				mounted = append(mounted, id)
			}
			b.Cleanup(func() { r.ok(b, append([]string{"rm"}, mounted...)...) })
			type cost struct{ wall, cpu time.Duration }
			var layers, floor cost
			run := func(c *cost, bin string, args ...string) string {
				b.Helper()
				cmd := exec.Command(bin, args...)
				cmd.Env = cleanEnv()
				var stderr strings.Builder
				cmd.Stderr = &stderr
				start := time.Now()
				out, err := cmd.Output()
				c.wall += time.Since(start)
				c.cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
				if err != nil || stderr.Len() > 0 {
					b.Fatalf("%s %v: %v: %s", bin, args, err, stderr.String())
				}
				return strings.TrimSpace(string(out))
			}
			global := []string{"--root", r.dir, "--runroot", r.runDir}
			pair := func() {
				id := run(&layers, layersBin, append(global, "create", img.id)...)
				run(&layers, layersBin, append(global, "mount", id)...)
				b.StopTimer()
				r.ok(b, "rm", id)
				b.StartTimer()
			}
			helloPair := func() {
				run(&floor, hello)
				run(&floor, hello)
			}
			i := 0
			for b.Loop() {
				if i%2 == 0 {
					pair()
					helloPair()
				} else {
					helloPair()
					pair()
				}
				i++
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(ms(layers.wall), "layers-ms/op")
			b.ReportMetric(ms(floor.wall), "floor-ms/op")
			b.ReportMetric(float64(layers.wall)/float64(floor.wall), "layers/floor")
			b.ReportMetric(ms(layers.cpu), "layers-cpu-ms/op")
			b.ReportMetric(ms(floor.cpu), "floor-cpu-ms/op")
			b.ReportMetric(float64(layers.cpu)/float64(floor.cpu), "cpu-layers/floor")
		})
	}
}
