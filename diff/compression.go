package diff

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

// Compression is a layer blob's compression.
type Compression int

const (
	// Uncompressed is a plain tar.
	Uncompressed Compression = iota
	// Gzip is gzip (RFC 1952).
	Gzip
	// Zstd is Zstandard (RFC 8878).
	Zstd
)

// String returns "none", "gzip" or "zstd".
func (c Compression) String() string {
	switch c {
	case Uncompressed:
		return "none"
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	}
	return "unknown"
}

// ParseCompression parses "gzip", "zstd" or "none" (the values of the CLI's
// --compression flag). Matching ignores case; "" is not accepted so that a
// missing flag value is not silently taken as "none".
func ParseCompression(s string) (Compression, error) {
	switch strings.ToLower(s) {
	case "gzip":
		return Gzip, nil
	case "zstd":
		return Zstd, nil
	case "none":
		return Uncompressed, nil
	}
	return Uncompressed, fmt.Errorf("unknown compression %q: want gzip, zstd or none", s)
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// magicLen is how many leading bytes DetectCompression needs to decide.
const magicLen = 4

// DetectCompression tells the compression of a stream from its first bytes
// (4 are enough). Anything that is neither gzip nor zstd is Uncompressed: a
// tar has no magic at offset 0, so "not compressed" is the only safe default;
// garbage is then rejected by the tar reader.
//
// A zstd stream may start with a skippable frame (magic 0x184D2A5?, as
// written by some tools to carry metadata); that counts as zstd too.
func DetectCompression(b []byte) Compression {
	switch {
	case bytes.HasPrefix(b, gzipMagic):
		return Gzip
	case bytes.HasPrefix(b, zstdMagic):
		return Zstd
	case len(b) >= 4 && b[0]&0xf0 == 0x50 && b[1] == 0x2a && b[2] == 0x4d && b[3] == 0x18:
		return Zstd
	}
	return Uncompressed
}

// DecompressStream detects the compression of r by its magic bytes and
// returns a reader of the uncompressed stream. The bytes peeked for
// detection are not lost: the returned reader starts at the beginning of
// the stream.
//
// Closing the returned reader releases the decompressor (goroutines and
// buffers of the parallel decoders) but does not close r, which stays the
// caller's. Corrupt or truncated compressed input makes Read fail with an
// error naming the compression; a truncated stream is never a silent EOF.
func DecompressStream(r io.Reader) (io.ReadCloser, Compression, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	// A stream shorter than the magic is legal only as uncompressed data
	// (an empty stream is an empty, if useless, layer); Peek reports
	// io.EOF then, which is not an error here.
	// An error of Peek is r's own, returned as it is: when r is itself
	// a decompressed stream (the store decompresses before Apply looks
	// again), it already names what failed ("decompress gzip: ...").
	magic, err := br.Peek(magicLen)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, Uncompressed, err
	}
	c := DetectCompression(magic)
	switch c {
	case Gzip:
		zr, err := newGzipReader(br)
		if err != nil {
			return nil, Gzip, fmt.Errorf("decompress gzip: %w", err)
		}
		return &decompressReader{r: zr, close: zr.Close, c: Gzip}, Gzip, nil
	case Zstd:
		zr, err := zstd.NewReader(br, zstdDecoderOptions()...)
		if err != nil {
			return nil, Zstd, fmt.Errorf("decompress zstd: %w", err)
		}
		return &decompressReader{r: zr, close: func() error { zr.Close(); return nil }, c: Zstd}, Zstd, nil
	}
	return io.NopCloser(br), Uncompressed, nil
}

// gzipReader is what both gzip implementations we may pick provide.
type gzipReader interface {
	io.Reader
	Close() error
}

// newGzipReader returns the gzip decompressor chosen by BenchmarkGunzip
// (compression_test.go). Inflate itself is sequential, but pgzip inflates on
// its own goroutine and reads ahead (16 blocks of 256 KiB, 4 MiB at most),
// so the consumer's work (tar parsing, hashing for the diffID, writing
// files) overlaps with decompression. On the 2-core dev VM, 64 MiB of mixed
// text and random data consumed in 32 KiB reads through sha256:
//
//	stdlib compress/gzip   ~240 MB/s
//	klauspost gzip         ~275 MB/s
//	pgzip (default)        ~300-380 MB/s
//	pgzip 1 MiB x 4        ~300-330 MB/s
//
// (noisy: other jobs shared the VM; the order held across runs.)
func newGzipReader(r io.Reader) (gzipReader, error) {
	return pgzip.NewReader(r)
}

// zstdDecoderOptions: the decoder decodes up to n blocks in flight on
// background goroutines, so it must be closed (decompressReader.Close does)
// or those goroutines leak. Up to 4 in flight (the library's default) lets
// decoding overlap the tar consumer without holding many blocks in memory.
//
// The window is capped at 128 MiB (zstdMaxWindow), the limit the reference
// zstd decoder applies by default: layers are hostile input, and a frame
// may declare any window the decoder would then allocate; every encoder
// used for layers (the zstd CLI without --long=28+, klauspost's, which
// containers/storage and buildkit use) stays far below it.
//
// Decoders are not pooled: one per layer stream costs microseconds against
// seconds of decoding, and a pooled async decoder that sync.Pool drops
// would leak its goroutines.
func zstdDecoderOptions() []zstd.DOption {
	n := runtime.GOMAXPROCS(0)
	if n > 4 {
		n = 4
	}
	return []zstd.DOption{zstd.WithDecoderConcurrency(n), zstd.WithDecoderMaxWindow(zstdMaxWindow)}
}

// zstdMaxWindow is the largest zstd window DecompressStream accepts.
const zstdMaxWindow = 128 << 20

// decompressReader names the compression in read errors and closes the
// decompressor exactly once.
type decompressReader struct {
	r      io.Reader
	close  func() error
	c      Compression
	closed bool
}

func (d *decompressReader) Read(p []byte) (int, error) {
	if d.closed {
		return 0, fmt.Errorf("decompress %s: read after close", d.c)
	}
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("decompress %s: %w", d.c, err)
	}
	return n, err
}

func (d *decompressReader) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	if err := d.close(); err != nil {
		return fmt.Errorf("decompress %s: %w", d.c, err)
	}
	return nil
}

// CompressStream returns a writer that compresses into w with c. Close the
// writer to flush the compressor's trailer; it does not close w.
//
// gzip uses pgzip, which compresses blocks on all CPUs (commit is
// CPU-bound on the compressor otherwise); its output is deterministic for a
// given input, level and block size, which layer digests need. zstd uses
// the library's default level with concurrency up to GOMAXPROCS.
func CompressStream(w io.Writer, c Compression) (io.WriteCloser, error) {
	return CompressStreamWith(w, c, CompressOptions{})
}

// CompressOptions tune a compressor.
type CompressOptions struct {
	// GzipLevel is gzip's level, from 1 (fastest) to 9 (smallest); 0 is
	// the default level.
	GzipLevel int
	// Procs is the number of compressor goroutines; 0 is GOMAXPROCS.
	// The output does not depend on it (blob digests must match across
	// hosts; TestCompressDeterministicAcrossConcurrency checks that).
	Procs int
}

// CompressStreamWith is CompressStream tuned by opts.
func CompressStreamWith(w io.Writer, c Compression, opts CompressOptions) (io.WriteCloser, error) {
	procs := opts.Procs
	if procs <= 0 {
		procs = runtime.GOMAXPROCS(0)
	}
	switch c {
	case Uncompressed:
		return nopWriteCloser{w}, nil
	case Gzip:
		level := opts.GzipLevel
		if level == 0 {
			level = pgzip.DefaultCompression
		}
		zw, err := pgzip.NewWriterLevel(w, level)
		if err != nil {
			return nil, fmt.Errorf("compress gzip: %w", err)
		}
		if err := zw.SetConcurrency(1<<20, procs); err != nil {
			return nil, fmt.Errorf("compress gzip: %w", err)
		}
		return zw, nil
	case Zstd:
		zw, err := zstd.NewWriter(w, zstd.WithEncoderConcurrency(procs))
		if err != nil {
			return nil, fmt.Errorf("compress zstd: %w", err)
		}
		return zw, nil
	}
	return nil, fmt.Errorf("compress: unknown compression %d", int(c))
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
