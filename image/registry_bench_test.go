package image

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/store"
)

// benchLayers are the layers of the benchmark image: busybox, four layers
// of 2,000 small text files each, and one of 32 MiB of random data.
func benchLayers(b *testing.B) [][]byte {
	layers := [][]byte{busybox(b)}
	rng := rand.New(rand.NewChaCha8([32]byte{1}))
	words := []string{"layer", "image", "overlay", "registry", "blob", "digest", "tar", "apply", "chain"}
	for l := 0; l < 4; l++ {
		var es []fixtures.Entry
		for d := 0; d < 20; d++ {
			es = append(es, fixtures.Dir(fmt.Sprintf("l%d/d%02d/", l, d), 0o755))
		}
		for i := 0; i < 2000; i++ {
			var sb bytes.Buffer
			for sb.Len() < 1024+rng.IntN(7*1024) {
				sb.WriteString(words[rng.IntN(len(words))])
				sb.WriteByte(' ')
			}
			es = append(es, fixtures.File(fmt.Sprintf("l%d/d%02d/f%04d", l, i%20, i), sb.String(), 0o644))
		}
		layers = append(layers, fixtures.Tar(es...))
	}
	big := make([]byte, 32<<20)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	layers = append(layers, fixtures.Tar(fixtures.File("big/random", string(big), 0o644)))
	return layers
}

// BenchmarkPull pulls a six-layer image (gzip, 73 MiB unpacked) from a
// local docker-registry into a fresh root on tmpfs, per driver; the
// baseline in the same run is `pigz -dc | tar -x` of the same blobs, one
// after the other, into a fresh directory on the same tmpfs (the figure
// the goal is a ratio of).
func BenchmarkPull(b *testing.B) {
	reg := startRegistry(b, registryOpts{})
	layers := benchLayers(b)
	ref := reg.host + "/bench/pull:1"
	ri := pushRaw(b, ref, layers, rawOpts{})
	var total int64
	for _, l := range layers {
		total += int64(len(l))
	}
	fs := loopfs.New(b, "tmpfs", 2<<30)
	ctx := context.Background()
	n := 0
	fresh := func() string {
		n++
		d := filepath.Join(fs, fmt.Sprint(n))
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
		return d
	}
	// The baseline's blobs, as files on the same tmpfs.
	blobDir := fresh()
	var paths []string
	for i, blob := range ri.blobs {
		p := filepath.Join(blobDir, fmt.Sprint(i))
		if err := os.WriteFile(p, blob, 0o644); err != nil {
			b.Fatal(err)
		}
		paths = append(paths, p)
	}
	for _, driver := range []string{"overlay", "vfs"} {
		b.Run(driver, func(b *testing.B) {
			b.SetBytes(total)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				d := fresh()
				st, err := store.Open(store.Options{Root: filepath.Join(d, "root"), RunRoot: filepath.Join(d, "run"), Driver: driver})
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if _, err := Pull(ctx, st, ref, nil); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := st.Close(); err != nil {
					b.Fatal(err)
				}
				os.RemoveAll(d)
				b.StartTimer()
			}
		})
	}
	b.Run("baseline-pigz-tar", func(b *testing.B) {
		if _, err := exec.LookPath("pigz"); err != nil {
			b.Skip("pigz not installed (hack/deps.sh)")
		}
		b.SetBytes(total)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			d := fresh()
			b.StartTimer()
			for _, p := range paths {
				cmd := exec.Command("sh", "-c", `pigz -dc "$1" | tar -x --numeric-owner -C "$2"`, "sh", p, d)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("pigz | tar: %v: %s", err, out)
				}
			}
			b.StopTimer()
			os.RemoveAll(d)
			b.StartTimer()
		}
	})
}
