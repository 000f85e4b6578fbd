package diff

import (
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"
)

// LayerWriter compresses a layer tar into a blob while computing, in the
// same pass, what a commit records: the diffID (sha256 of the uncompressed
// tar) and the blob's digest and size (sha256 of the compressed bytes).
//
// Write the uncompressed tar to it (Export or WriteDiff), then Close; the
// digests and sizes are valid after a successful Close.
type LayerWriter struct {
	c      Compression
	tar    countingHash // uncompressed side
	blob   countingHash // compressed side, also writes to the destination
	zw     io.WriteCloser
	closed bool
	err    error
}

// NewLayerWriter returns a LayerWriter that writes the blob, compressed
// with c, to w. Closing it does not close w.
func NewLayerWriter(w io.Writer, c Compression) (*LayerWriter, error) {
	return NewLayerWriterWith(w, c, CompressOptions{})
}

// NewLayerWriterWith is NewLayerWriter with the compressor tuned by opts.
func NewLayerWriterWith(w io.Writer, c Compression, opts CompressOptions) (*LayerWriter, error) {
	lw := &LayerWriter{c: c}
	lw.blob = countingHash{w: w, h: digest.Canonical.Hash()}
	zw, err := CompressStreamWith(&lw.blob, c, opts)
	if err != nil {
		return nil, err
	}
	lw.zw = zw
	lw.tar = countingHash{w: zw, h: digest.Canonical.Hash()}
	return lw, nil
}

// Write takes uncompressed tar bytes.
func (lw *LayerWriter) Write(p []byte) (int, error) {
	if lw.closed {
		return 0, errors.New("layer writer: write after close")
	}
	if lw.err != nil {
		return 0, lw.err
	}
	n, err := lw.tar.Write(p)
	if err != nil {
		lw.err = fmt.Errorf("layer writer: %w", err)
		return n, lw.err
	}
	return n, nil
}

// Close flushes the compressor. Closing twice is harmless.
func (lw *LayerWriter) Close() error {
	if lw.closed {
		return lw.err
	}
	lw.closed = true
	if err := lw.zw.Close(); err != nil && lw.err == nil {
		lw.err = fmt.Errorf("layer writer: finish %s: %w", lw.c, err)
	}
	return lw.err
}

// DiffID is the digest of the uncompressed tar written so far.
func (lw *LayerWriter) DiffID() digest.Digest { return lw.tar.digest() }

// TarSize is the number of uncompressed bytes written.
func (lw *LayerWriter) TarSize() int64 { return lw.tar.n }

// Digest is the digest of the compressed blob; call it after Close, when the
// compressor has flushed everything.
func (lw *LayerWriter) Digest() digest.Digest { return lw.blob.digest() }

// Size is the number of compressed bytes written to the destination.
func (lw *LayerWriter) Size() int64 { return lw.blob.n }

// Compression is the compression the blob is written with.
func (lw *LayerWriter) Compression() Compression { return lw.c }

// countingHash passes writes to w, hashing and counting what w accepted.
type countingHash struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

func (c *countingHash) digest() digest.Digest {
	return digest.NewDigest(digest.Canonical, c.h)
}
