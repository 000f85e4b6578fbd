package diff

import (
	"context"
	"errors"
	"io"

	"github.com/opencontainers/go-digest"
)

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// Whiteouts is how deletions are stored; nil means DeleteWhiteouts.
	Whiteouts WhiteoutFormat
	// RejectDevices makes character and block device entries an error
	// (0/0 whiteout devices of the overlay format are not entries).
	RejectDevices bool
	// Warn receives notes about entries that were changed on the way in,
	// such as overlay xattrs dropped; nil discards them.
	Warn func(msg string)
}

// ApplyResult describes an applied layer.
type ApplyResult struct {
	// DiffID is the sha256 digest of the whole uncompressed stream.
	DiffID digest.Digest
	// Compression is what the input stream was compressed with.
	Compression Compression
	// TarSize is the length of the uncompressed stream in bytes.
	TarSize int64
	// Size is the number of bytes of regular file content written.
	Size int64
}

// Apply reads a layer tar (uncompressed, gzip or zstd: detected) from r and
// applies it to the tree at root.
func Apply(ctx context.Context, root string, r io.Reader, opts ApplyOptions) (ApplyResult, error) {
	return ApplyResult{}, errors.New("diff.Apply: not implemented")
}
