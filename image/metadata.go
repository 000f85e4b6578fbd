package image

import (
	"encoding/json"
	"fmt"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/store"
)

// imageMetadata is what this package records in an image's store metadata.
type imageMetadata struct {
	// Compression is the compression new blobs of the image's layers get
	// on push and save when the caller asks for none ("gzip", "zstd",
	// "none"); "" for gzip.
	Compression string `json:"compression,omitempty"`
}

// compressionMetadata is the metadata of an image committed with
// compression c ("" for gzip).
func compressionMetadata(c string) (json.RawMessage, error) {
	if c == "" {
		c = diff.Gzip.String()
	}
	parsed, err := diff.ParseCompression(c)
	if err != nil {
		return nil, err
	}
	return json.Marshal(imageMetadata{Compression: parsed.String()})
}

// ImageCompression is the compression recorded for img's new blobs (by
// commit --compression), and whether one is.
func ImageCompression(img *store.Image) (diff.Compression, bool, error) {
	var m imageMetadata
	if len(img.Metadata) > 0 {
		if err := json.Unmarshal(img.Metadata, &m); err != nil {
			return 0, false, fmt.Errorf("metadata of image %s: %w", img.ID, err)
		}
	}
	if m.Compression == "" {
		return 0, false, nil
	}
	c, err := diff.ParseCompression(m.Compression)
	if err != nil {
		return 0, false, fmt.Errorf("metadata of image %s: %w", img.ID, err)
	}
	return c, true, nil
}
