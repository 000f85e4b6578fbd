package diff_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
)

// benchInput is one layer tar, in every compression, kept on tmpfs so that
// reading it costs the same for Apply and for GNU tar.
type benchInput struct {
	files int
	size  int64             // uncompressed tar bytes
	path  map[string]string // compression name -> file
}

// loadBenchInputs builds the two workloads of the issue, 20,000 small files
// and 4 x 64 MiB files, on tmpfs; they are removed when b ends.
func loadBenchInputs(b *testing.B) map[string]*benchInput {
	dir, err := os.MkdirTemp("/dev/shm", "layers-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	inputs := map[string]*benchInput{}
	for _, w := range []struct {
		name  string
		files int
		gen   func(dir string) error
	}{
		{"small", 20000, func(dir string) error { return fixtures.SmallFiles(dir, 20000, 1) }},
		{"big", 4, func(dir string) error { return fixtures.BigFiles(dir, 4, 64<<20, 2) }},
	} {
		in, err := makeBenchInput(dir, w.name, w.files, w.gen)
		if err != nil {
			b.Fatal(err)
		}
		inputs[w.name] = in
	}
	return inputs
}

func makeBenchInput(base, name string, files int, gen func(string) error) (*benchInput, error) {
	tree := filepath.Join(base, name+"-tree")
	if err := gen(tree); err != nil {
		return nil, err
	}
	plain := filepath.Join(base, name+".tar")
	if out, err := exec.Command("tar", "--format=pax", "--sort=name", "-C", tree, "-cf", plain, ".").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("tar %s: %v: %s", name, err, out)
	}
	if err := os.RemoveAll(tree); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(plain)
	if err != nil {
		return nil, err
	}
	in := &benchInput{files: files, size: int64(len(data)), path: map[string]string{"none": plain}}
	for _, c := range []diff.Compression{diff.Gzip, diff.Zstd} {
		z, err := fixtures.Compress(data, c)
		if err != nil {
			return nil, err
		}
		p := plain + "." + c.String()
		if err := os.WriteFile(p, z, 0o644); err != nil {
			return nil, err
		}
		in.path[c.String()] = p
	}
	return in, nil
}

// gnuTarCommand is the baseline for each compression: GNU tar reading the
// same file, through the stock decompressor for compressed input.
func gnuTarCommand(compression, input, dest string) *exec.Cmd {
	switch compression {
	case "gzip":
		return exec.Command("sh", "-c", `gzip -dc < "$1" | tar -x -C "$2"`, "sh", input, dest)
	case "zstd":
		return exec.Command("sh", "-c", `zstd -dcq < "$1" | tar -x -C "$2"`, "sh", input, dest)
	}
	return exec.Command("tar", "-x", "-f", input, "-C", dest)
}

// BenchmarkApply measures diff.Apply against GNU tar on the same input, on
// a fresh loop ext4 (never /: its ext4 degrades under churn). Every
// iteration runs both, alternating which goes first, so drift and noise
// hit both alike: ns/op, MB/s and files/s are Apply's; "gnutar-ns/op" is
// the baseline's and "x-gnutar" their ratio (below 1: Apply is faster).
func BenchmarkApply(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: loop filesystem, chown")
	}
	inputs := loadBenchInputs(b)
	// Like ../shared/peers: direct I/O on the loop device, and the inode
	// tables written at mkfs time rather than by a background thread during
	// the first samples.
	fs := loopfs.NewFS(b, "ext4", 4<<30, loopfs.Options{
		DirectIO: true,
		MkfsArgs: []string{"-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"},
	}).Dir
	for _, workload := range []string{"small", "big"} {
		in := inputs[workload]
		for _, compression := range []string{"none", "gzip", "zstd"} {
			b.Run(workload+"/"+compression, func(b *testing.B) {
				benchApplyOne(b, fs, in, compression)
			})
		}
	}
}

func benchApplyOne(b *testing.B, fs string, in *benchInput, compression string) {
	b.SetBytes(in.size)
	var layers, gnutar time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		tools := []string{"layers", "gnutar"}
		if i%2 == 1 {
			tools[0], tools[1] = tools[1], tools[0]
		}
		for _, tool := range tools {
			dest := filepath.Join(fs, fmt.Sprintf("%s-%d", tool, i))
			if err := os.Mkdir(dest, 0o755); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			switch tool {
			case "layers":
				b.StartTimer()
				f, err := os.Open(in.path[compression])
				if err != nil {
					b.Fatal(err)
				}
				_, err = diff.Apply(context.Background(), dest, f, diff.ApplyOptions{})
				f.Close()
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				layers += time.Since(start)
			case "gnutar":
				if out, err := gnuTarCommand(compression, in.path[compression], dest).CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, out)
				}
				gnutar += time.Since(start)
			}
			// Leave no dirty pages or churn behind for the next sample.
			if err := os.RemoveAll(dest); err != nil {
				b.Fatal(err)
			}
			exec.Command("sync", "-f", fs).Run()
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(in.files)*float64(b.N)/layers.Seconds(), "files/s")
	b.ReportMetric(float64(gnutar.Nanoseconds())/float64(b.N), "gnutar-ns/op")
	b.ReportMetric(layers.Seconds()/gnutar.Seconds(), "x-gnutar")
}
