package diff

import (
	"errors"
	"io"
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

// DecompressStream detects the compression of r by its magic bytes and
// returns a reader of the uncompressed stream.
func DecompressStream(r io.Reader) (io.ReadCloser, Compression, error) {
	return nil, Uncompressed, errors.New("diff.DecompressStream: not implemented")
}

// CompressStream returns a writer that compresses into w with c.
func CompressStream(w io.Writer, c Compression) (io.WriteCloser, error) {
	return nil, errors.New("diff.CompressStream: not implemented")
}
