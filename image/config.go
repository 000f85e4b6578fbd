package image

import (
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/store"
)

// configDiffIDs returns the rootfs.diff_ids of an image config (OCI and
// Docker configs share the field), each validated.
func configDiffIDs(config []byte) ([]digest.Digest, error) {
	var c struct {
		RootFS struct {
			Type    string          `json:"type"`
			DiffIDs []digest.Digest `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	for i, d := range c.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("image config: rootfs.diff_ids[%d]: %w", i, err)
		}
	}
	return c.RootFS.DiffIDs, nil
}

// chainIDs returns the chainID of each prefix of diffIDs (image-spec).
func chainIDs(diffIDs []digest.Digest) []digest.Digest {
	out := make([]digest.Digest, len(diffIDs))
	var parent digest.Digest
	for i, d := range diffIDs {
		parent = store.ChainID(parent, d)
		out[i] = parent
	}
	return out
}
