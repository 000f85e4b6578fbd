package image

import (
	"bytes"
	"compress/gzip"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/store"
)

// gzipped returns some megabytes of mixed text and random bytes, and
// their gzip stream.
func gzipped(t *testing.T) ([]byte, []byte) {
	t.Helper()
	rng := rand.New(rand.NewChaCha8([32]byte{7}))
	var plain bytes.Buffer
	for plain.Len() < 3<<20 {
		if rng.IntN(2) == 0 {
			plain.WriteString(strings.Repeat("layer blob digest ", 1+rng.IntN(500)))
		} else {
			b := make([]byte, rng.IntN(64<<10))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			plain.Write(b)
		}
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(plain.Bytes())
	zw.Close()
	return plain.Bytes(), z.Bytes()
}

// TestGzipFastDeterministic: save's gzip gives the same bytes whatever
// the number of compressor goroutines (blob digests must match across
// hosts), inflates back to the tar, and checks the recorded diffID.
func TestGzipFastDeterministic(t *testing.T) {
	plain, _ := gzipped(t)
	diffID := digest.FromBytes(plain)
	var blobs [][]byte
	for _, procs := range []int{1, 2, 5} {
		f, err := os.CreateTemp(t.TempDir(), "blob")
		if err != nil {
			t.Fatal(err)
		}
		cb, err := compressWith(f, bytes.NewReader(plain), &store.Layer{DiffID: diffID}, diff.Gzip, diff.CompressOptions{GzipLevel: saveGzipLevel, Procs: procs})
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(f.Name())
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if cb.size != int64(len(b)) || cb.digest != digest.FromBytes(b) {
			t.Errorf("procs %d: recorded %s (%d bytes), file is %s (%d)", procs, cb.digest, cb.size, digest.FromBytes(b), len(b))
		}
		blobs = append(blobs, b)
	}
	for i := range blobs[1:] {
		if !bytes.Equal(blobs[0], blobs[i+1]) {
			t.Errorf("the blob differs between 1 and more goroutines")
		}
	}
	zr, err := gzip.NewReader(bytes.NewReader(blobs[0]))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("the blob does not inflate to the tar (%v)", err)
	}
	f, _ := os.CreateTemp(t.TempDir(), "blob")
	defer f.Close()
	if _, err := compressWith(f, bytes.NewReader(plain), &store.Layer{DiffID: digest.FromString("other")}, diff.Gzip, diff.CompressOptions{GzipLevel: saveGzipLevel, Procs: 2}); err == nil {
		t.Error("a tar not matching the recorded diffID was saved")
	}
}
