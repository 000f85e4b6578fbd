package diff

import (
	"bytes"
	stdgzip "compress/gzip"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"testing"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/pgzip"
)

// testPayload is realistic layer-ish data: runs of text (compressible) and
// runs of random bytes (already compressed binaries), deterministic.
func testPayload(size int) []byte {
	rng := rand.New(rand.NewSource(1))
	words := strings.Fields("the quick brown fox jumps over the lazy dog usr lib bin etc " +
		"ELF libc.so.6 #include <stdio.h> func main() { return 0 } package import")
	var b bytes.Buffer
	b.Grow(size)
	for b.Len() < size {
		if rng.Intn(3) == 0 {
			chunk := make([]byte, 4096+rng.Intn(65536))
			rng.Read(chunk)
			b.Write(chunk)
		} else {
			for i := 0; i < 2000; i++ {
				b.WriteString(words[rng.Intn(len(words))])
				if i%12 == 11 {
					b.WriteByte('\n')
				} else {
					b.WriteByte(' ')
				}
			}
		}
	}
	return b.Bytes()[:size]
}

func compressBytes(t testing.TB, data []byte, c Compression) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := CompressStream(&buf, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestCompressRoundTrip(t *testing.T) {
	data := testPayload(3 << 20)
	for _, c := range []Compression{Uncompressed, Gzip, Zstd} {
		t.Run(c.String(), func(t *testing.T) {
			blob := compressBytes(t, data, c)
			if got := DetectCompression(blob); got != c {
				t.Fatalf("DetectCompression = %v, want %v", got, c)
			}
			r, got, err := DecompressStream(bytes.NewReader(blob))
			if err != nil {
				t.Fatal(err)
			}
			if got != c {
				t.Fatalf("DecompressStream detected %v, want %v", got, c)
			}
			out, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, data) {
				t.Fatalf("round trip differs: %d bytes in, %d out", len(data), len(out))
			}
			// Deterministic output: layer blob digests depend on it.
			if c != Uncompressed && !bytes.Equal(blob, compressBytes(t, data, c)) {
				t.Fatalf("%v output is not deterministic", c)
			}
		})
	}
}

func TestCompressEmptyAndTiny(t *testing.T) {
	for _, in := range [][]byte{nil, {0x1f}, []byte("abc")} {
		r, c, err := DecompressStream(bytes.NewReader(in))
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if c != Uncompressed {
			t.Fatalf("%q detected as %v", in, c)
		}
		out, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("%q: read %q, %v", in, out, err)
		}
	}
	// Compressing nothing still gives a valid stream.
	for _, c := range []Compression{Gzip, Zstd} {
		blob := compressBytes(t, nil, c)
		r, got, err := DecompressStream(bytes.NewReader(blob))
		if err != nil || got != c {
			t.Fatalf("%v: %v %v", c, got, err)
		}
		out, err := io.ReadAll(r)
		if err != nil || len(out) != 0 {
			t.Fatalf("%v empty: %q, %v", c, out, err)
		}
	}
}

func TestCompressDetect(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want Compression
	}{
		{[]byte{0x1f, 0x8b, 0x08, 0x00}, Gzip},
		{[]byte{0x1f, 0x8b}, Gzip},
		{[]byte{0x28, 0xb5, 0x2f, 0xfd}, Zstd},
		{[]byte{0x28, 0xb5, 0x2f}, Uncompressed},
		{[]byte{0x5e, 0x2a, 0x4d, 0x18}, Zstd}, // skippable frame
		{[]byte("etc/"), Uncompressed},
		{nil, Uncompressed},
	} {
		if got := DetectCompression(tc.in); got != tc.want {
			t.Errorf("DetectCompression(% x) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestCompressParse(t *testing.T) {
	for s, want := range map[string]Compression{"gzip": Gzip, "zstd": Zstd, "none": Uncompressed, "GZIP": Gzip} {
		got, err := ParseCompression(s)
		if err != nil || got != want {
			t.Errorf("ParseCompression(%q) = %v, %v; want %v", s, got, err, want)
		}
		if got.String() != strings.ToLower(s) {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
	for _, s := range []string{"", "xz", "bzip2", "gz"} {
		if _, err := ParseCompression(s); err == nil {
			t.Errorf("ParseCompression(%q) succeeded", s)
		}
	}
}

// readAllCompressed decompresses blob completely and returns the error.
func readAllCompressed(blob []byte) error {
	r, _, err := DecompressStream(bytes.NewReader(blob))
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(io.Discard, r)
	return err
}

func TestCompressCorruptInput(t *testing.T) {
	data := testPayload(1 << 20)
	for _, c := range []Compression{Gzip, Zstd} {
		t.Run(c.String(), func(t *testing.T) {
			blob := compressBytes(t, data, c)
			corrupt := bytes.Clone(blob)
			for i := len(corrupt) / 3; i < len(corrupt)/3+64; i++ {
				corrupt[i] ^= 0x5a
			}
			err := readAllCompressed(corrupt)
			if err == nil {
				t.Fatal("corrupt stream decompressed without error")
			}
			if !strings.Contains(err.Error(), c.String()) {
				t.Errorf("error %q does not name %v", err, c)
			}
			// A damaged header fails early, either at open or first read.
			hdr := bytes.Clone(blob)
			if c == Gzip {
				hdr[2] = 0x07 // unknown compression method
			} else {
				hdr[4] = 0xff // reserved frame header bits
			}
			if err := readAllCompressed(hdr); err == nil {
				t.Fatal("bad header decompressed without error")
			}
		})
	}
}

// A stream decompressed twice over, as the store decompresses a layer and
// Apply then detects again on what it reads: the inner stream's error
// reaches the caller as it is, naming the compression first, whether the
// outer detection or a later read meets it.
func TestDecompressStackedError(t *testing.T) {
	data := testPayload(1 << 20)
	for _, c := range []Compression{Gzip, Zstd} {
		blob := compressBytes(t, data, c)
		for _, cut := range []int{20, len(blob) / 2} {
			inner, _, err := DecompressStream(bytes.NewReader(blob[:cut]))
			if err == nil {
				var outer io.ReadCloser
				if outer, _, err = DecompressStream(inner); err == nil {
					_, err = io.Copy(io.Discard, outer)
					outer.Close()
				}
				inner.Close()
			}
			if want := "decompress " + c.String() + ": "; err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("%v cut at %d of %d: error %v, want one starting %q", c, cut, len(blob), err, want)
			}
		}
	}
}

func TestCompressTruncatedInput(t *testing.T) {
	data := testPayload(1 << 20)
	for _, c := range []Compression{Gzip, Zstd} {
		blob := compressBytes(t, data, c)
		for _, cut := range []int{len(blob) / 2, len(blob) - 1, len(blob) - 4, 10} {
			err := readAllCompressed(blob[:cut])
			if err == nil {
				t.Errorf("%v cut at %d of %d: no error (silent EOF)", c, cut, len(blob))
				continue
			}
			if !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), c.String()) {
				t.Errorf("%v cut at %d: unhelpful error %v", c, cut, err)
			}
		}
	}
}

func TestCompressCloseTwice(t *testing.T) {
	blob := compressBytes(t, []byte("hello"), Zstd)
	r, _, err := DecompressStream(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after close succeeded")
	}
}

// BenchmarkGunzip compares gzip decompressors on 64 MiB of mixed data.
// Numbers on the 2-core dev VM (go test -bench Gunzip -benchtime 5x):
// see the committed comment at useParallelGunzip.
func BenchmarkGunzip(b *testing.B) {
	data := testPayload(64 << 20)
	var buf bytes.Buffer
	zw := stdgzip.NewWriter(&buf)
	zw.Write(data)
	zw.Close()
	blob := buf.Bytes()
	// The consumer reads in 32 KiB chunks through a wrapper that hides
	// WriteTo, as tar.Reader does, and hashes what it reads, as Apply does
	// for the diffID: a decompressor that reads ahead on another goroutine
	// can overlap with that work, which a bare io.Copy to io.Discard
	// (served by the decompressor's own WriteTo) would not show.
	run := func(b *testing.B, open func(io.Reader) (io.ReadCloser, error)) {
		b.SetBytes(int64(len(data)))
		buf := make([]byte, 32<<10)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			r, err := open(bytes.NewReader(blob))
			if err != nil {
				b.Fatal(err)
			}
			h := sha256.New()
			n, err := io.CopyBuffer(h, struct{ io.Reader }{r}, buf)
			if err != nil || n != int64(len(data)) {
				b.Fatal(n, err)
			}
			r.Close()
		}
	}
	b.Run("stdlib", func(b *testing.B) {
		run(b, func(r io.Reader) (io.ReadCloser, error) { return stdgzip.NewReader(r) })
	})
	b.Run("klauspost", func(b *testing.B) {
		run(b, func(r io.Reader) (io.ReadCloser, error) { return kgzip.NewReader(r) })
	})
	b.Run("pgzip", func(b *testing.B) {
		run(b, func(r io.Reader) (io.ReadCloser, error) { return pgzip.NewReader(r) })
	})
	b.Run("pgzip-1MiBx4", func(b *testing.B) {
		run(b, func(r io.Reader) (io.ReadCloser, error) { return pgzip.NewReaderN(r, 1<<20, 4) })
	})
	b.Run("DecompressStream", func(b *testing.B) {
		run(b, func(r io.Reader) (io.ReadCloser, error) { rc, _, err := DecompressStream(r); return rc, err })
	})
}

// BenchmarkCompress measures CompressStream and DecompressStream per
// compression on 64 MiB of mixed data.
func BenchmarkCompress(b *testing.B) {
	data := testPayload(64 << 20)
	for _, c := range []Compression{Gzip, Zstd} {
		b.Run(fmt.Sprintf("%v/compress", c), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				w, _ := CompressStream(io.Discard, c)
				w.Write(data)
				w.Close()
			}
		})
		blob := compressBytes(b, data, c)
		b.Run(fmt.Sprintf("%v/decompress", c), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportMetric(float64(len(blob))/float64(len(data)), "ratio")
			for i := 0; i < b.N; i++ {
				if err := readAllCompressed(blob); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Layer blob digests must not depend on the host's CPU count.
func TestCompressDeterministicAcrossConcurrency(t *testing.T) {
	data := testPayload(5 << 20)
	for _, c := range []Compression{Gzip, Zstd} {
		var want []byte
		for _, procs := range []int{1, 2, 8} {
			var buf bytes.Buffer
			w, err := CompressStreamWith(&buf, c, CompressOptions{Procs: procs})
			if err != nil {
				t.Fatal(err)
			}
			// Odd write sizes: block boundaries must not follow them.
			for rest := data; len(rest) > 0; {
				n := min(len(rest), 12345*procs)
				if _, err := w.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if want == nil {
				want = buf.Bytes()
			} else if !bytes.Equal(want, buf.Bytes()) {
				t.Errorf("%v: output with %d goroutines differs from 1 (%d vs %d bytes)", c, procs, buf.Len(), len(want))
			}
		}
	}
}

// eStargz layers are many gzip members back to back, zstd:chunked layers
// many zstd frames with skippable frames between: all must decode whole.
func TestCompressConcatenatedStreams(t *testing.T) {
	a, b := testPayload(300<<10), []byte("second member")
	for _, c := range []Compression{Gzip, Zstd} {
		blob := append(compressBytes(t, a, c), compressBytes(t, b, c)...)
		if c == Zstd {
			// A skippable frame (magic 0x184D2A50, 4-byte length) in between.
			skip := []byte{0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 'x', 'y', 'z'}
			first := compressBytes(t, a, c)
			blob = append(append(append([]byte{}, skip...), first...), append(skip, compressBytes(t, b, c)...)...)
		}
		r, got, err := DecompressStream(bytes.NewReader(blob))
		if err != nil || got != c {
			t.Fatalf("%v: %v %v", c, got, err)
		}
		out, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%v: %v", c, err)
		}
		if want := append(append([]byte{}, a...), b...); !bytes.Equal(out, want) {
			t.Fatalf("%v: got %d bytes, want %d", c, len(out), len(want))
		}
	}
}

// A zstd frame declaring a window beyond zstdMaxWindow is refused, not
// allocated.
func TestCompressZstdWindowLimit(t *testing.T) {
	// Frame header: magic, descriptor 0x00 (no single segment, no
	// checksum, no content size), window descriptor exponent 28 (256 MiB:
	// (28-10)<<3), then a last raw block of 1 byte.
	frame := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, (28 - 10) << 3, 0x09, 0x00, 0x00, 'x'}
	err := readAllCompressed(frame)
	if err == nil {
		t.Fatal("256 MiB window accepted")
	}
	if !strings.Contains(err.Error(), "window") {
		t.Fatalf("error %q does not say the window is too large", err)
	}
	// The same frame with a 1 MiB window decodes.
	frame[5] = (20 - 10) << 3
	r, _, err := DecompressStream(bytes.NewReader(frame))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	if err != nil || string(out) != "x" {
		t.Fatalf("small window: %q, %v", out, err)
	}
}

// FuzzCompressDecode: no input makes DecompressStream panic or hang; it
// either decodes or returns an error. Output is capped so that a small
// bomb does not exhaust memory.
func FuzzCompressDecode(f *testing.F) {
	for _, c := range []Compression{Uncompressed, Gzip, Zstd} {
		blob := compressBytes(f, []byte("hello, layer\n"), c)
		f.Add(blob)
		f.Add(blob[:len(blob)/2])
	}
	f.Add([]byte{0x1f, 0x8b})
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, in []byte) {
		r, _, err := DecompressStream(bytes.NewReader(in))
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(r, 16<<20))
		if err := r.Close(); err != nil {
			return
		}
	})
}
