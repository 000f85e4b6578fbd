package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/store"
)

// BenchmarkSaveLoad saves the six-layer benchmark image (73 MiB
// unpacked) from an overlay root on tmpfs as a gzip oci-archive and as a
// docker-archive, and loads each into a fresh root (overlay and vfs).
// Baselines in the same run, on the same tmpfs: GNU tar of the image's
// mounted tree (piped to pigz for the gzip case) for save, and `tar -x`
// of the layer tars (pigz -dc first for gzip) for load.
func BenchmarkSaveLoad(b *testing.B) {
	layers := benchLayers(b)
	var total int64
	for _, l := range layers {
		total += int64(len(l))
	}
	// Room for the source root, two archives and a loaded root or two.
	fs := loopfs.New(b, "tmpfs", 2<<30)
	ctx := context.Background()
	st, err := store.Open(store.Options{Root: filepath.Join(fs, "src/root"), RunRoot: filepath.Join(fs, "src/run"), Driver: "overlay"})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	img := storeImage(b, st, layers, "localhost/bench:1")
	n := 0
	fresh := func() string {
		n++
		d := filepath.Join(fs, fmt.Sprint(n))
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
		return d
	}
	formats := []struct{ name, format, comp string }{
		{"oci-archive-gzip", FormatOCIArchive, "gzip"},
		{"docker-archive", FormatDockerArchive, ""},
	}
	archives := map[string]string{}
	for _, f := range formats {
		archives[f.name] = filepath.Join(fresh(), "archive")
		if err := Save(ctx, st, []string{img.ID}, archives[f.name], &SaveOptions{Format: f.format, Compression: f.comp}); err != nil {
			b.Fatal(err)
		}
		b.Run("save/"+f.name, func(b *testing.B) {
			b.SetBytes(total)
			for i := 0; i < b.N; i++ {
				dest := filepath.Join(fs, "out")
				if err := Save(ctx, st, []string{img.ID}, dest, &SaveOptions{Format: f.format, Compression: f.comp}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.Remove(dest)
				b.StartTimer()
			}
		})
	}
	needBin := func(b *testing.B, name string) {
		if _, err := exec.LookPath(name); err != nil {
			b.Skipf("%s not installed (hack/deps.sh)", name)
		}
	}
	c, err := st.CreateContainer(img.ID, nil)
	if err != nil {
		b.Fatal(err)
	}
	mnt, err := st.Mount(c.ID)
	if err != nil {
		b.Fatal(err)
	}
	for _, bl := range []struct{ name, pipe string }{{"baseline-tar-c-pigz", "tar -c --numeric-owner -C \"$1\" . | pigz > \"$2\""}, {"baseline-tar-c", "tar -c --numeric-owner -C \"$1\" -f \"$2\" ."}} {
		b.Run("save/"+bl.name, func(b *testing.B) {
			needBin(b, "pigz")
			b.SetBytes(total)
			for i := 0; i < b.N; i++ {
				dest := filepath.Join(fs, "out")
				if out, err := exec.Command("sh", "-c", bl.pipe, "sh", mnt, dest).CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, out)
				}
				b.StopTimer()
				os.Remove(dest)
				b.StartTimer()
			}
		})
	}
	if err := st.Unmount(c.ID, false); err != nil {
		b.Fatal(err)
	}
	if err := st.RemoveContainer(c.ID, true); err != nil {
		b.Fatal(err)
	}

	for _, f := range formats {
		for _, driver := range []string{"overlay", "vfs"} {
			b.Run("load/"+f.name+"/"+driver, func(b *testing.B) {
				b.SetBytes(total)
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					d := fresh()
					dst, err := store.Open(store.Options{Root: filepath.Join(d, "root"), RunRoot: filepath.Join(d, "run"), Driver: driver})
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if _, err := Load(ctx, dst, archives[f.name], nil); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					dst.Close()
					os.RemoveAll(d)
					b.StartTimer()
				}
			})
		}
	}
	// The load baselines: the same layers as files, extracted one after
	// the other.
	blobDir := fresh()
	var plain, gz []string
	for i, l := range layers {
		p := filepath.Join(blobDir, fmt.Sprint(i))
		if err := os.WriteFile(p, l, 0o644); err != nil {
			b.Fatal(err)
		}
		plain = append(plain, p)
	}
	for _, bl := range []struct{ name, pipe string }{{"baseline-pigz-tar-x", "pigz -dc \"$1\" | tar -x --numeric-owner -C \"$2\""}, {"baseline-tar-x", "tar -x --numeric-owner -f \"$1\" -C \"$2\""}} {
		b.Run("load/"+bl.name, func(b *testing.B) {
			needBin(b, "pigz")
			if bl.name == "baseline-pigz-tar-x" && gz == nil {
				for _, p := range plain {
					if out, err := exec.Command("sh", "-c", "pigz -c \"$1\" > \"$1.gz\"", "sh", p).CombinedOutput(); err != nil {
						b.Fatalf("%v: %s", err, out)
					}
					gz = append(gz, p+".gz")
				}
			}
			paths := plain
			if bl.name == "baseline-pigz-tar-x" {
				paths = gz
			}
			b.SetBytes(total)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				d := fresh()
				b.StartTimer()
				for _, p := range paths {
					if out, err := exec.Command("sh", "-c", bl.pipe, "sh", p, d).CombinedOutput(); err != nil {
						b.Fatalf("%v: %s", err, out)
					}
				}
				b.StopTimer()
				os.RemoveAll(d)
				b.StartTimer()
			}
		})
	}
}
