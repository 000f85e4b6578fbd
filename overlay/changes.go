package overlay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/graphdriver"
)

var _ graphdriver.Differ = (*Driver)(nil)

// Changes lists what layer id changes relative to parent, read straight
// from its diff dir (overlay's upper dir) with lookups in its parents'
// diff dirs only where upper has something: the cost follows the size of
// the change, not of the image. The answer is the naive differ's, entry
// for entry, also with redirect_dir or metacopy on (diff.OverlayChanges).
// Against any other layer than its own parent, or for content the native
// differ does not interpret, it falls back to the naive differ.
func (d *Driver) Changes(ctx context.Context, id, parent string) ([]diff.Change, error) {
	upper, lowers, ok, err := d.nativePair(id, parent)
	if err != nil {
		return nil, fmt.Errorf("changes of layer %s: %w", id, err)
	}
	if ok {
		changes, err := diff.OverlayChanges(ctx, upper, lowers, d.overlayOptions())
		if err == nil {
			return changes, nil
		}
		if !errors.Is(err, diff.ErrOverlayUnsupported) {
			return nil, fmt.Errorf("changes of layer %s: %w", id, err)
		}
		slog.Debug("overlay: native differ gave up, using the naive one", "layer", id, "cause", err)
	}
	return graphdriver.NaiveChanges(ctx, d, id, parent)
}

// Diff returns layer id's changes against parent as an uncompressed tar:
// the native change list, exported from the diff dir when every changed
// entry's content is there, else from the layer's mount (renamed
// directories and metacopy files keep their data in the lowers).
func (d *Driver) Diff(ctx context.Context, id, parent string) (io.ReadCloser, error) {
	upper, lowers, ok, err := d.nativePair(id, parent)
	if err != nil {
		return nil, fmt.Errorf("diff of layer %s: %w", id, err)
	}
	if !ok {
		return graphdriver.NaiveDiff(ctx, d, id, parent)
	}
	mount := func() (string, func() error, error) {
		merged, err := d.Get(id, graphdriver.MountOpts{})
		if err != nil {
			return "", nil, err
		}
		return merged, func() error { return d.Put(id) }, nil
	}
	return graphdriver.StreamDiff(func(w io.Writer) error {
		err := diff.WriteOverlayDiff(ctx, w, upper, lowers, d.overlayOptions(), mount, diff.ExportOptions{})
		if errors.Is(err, diff.ErrOverlayUnsupported) {
			// Found while listing the changes, before any byte was
			// written: the naive differ writes the whole stream.
			slog.Debug("overlay: native differ gave up, using the naive one", "layer", id, "cause", err)
			var naive io.ReadCloser
			if naive, err = graphdriver.NaiveDiff(ctx, d, id, parent); err == nil {
				_, err = io.Copy(w, naive)
				if cerr := naive.Close(); err == nil {
					err = cerr
				}
			}
		}
		if err != nil {
			return fmt.Errorf("diff of layer %s: %w", id, err)
		}
		return nil
	}), nil
}

// nativePair returns the dirs the native differ reads for layer id against
// parent, and whether it applies: only against the layer's own parent.
func (d *Driver) nativePair(id, parent string) (upper string, lowers []string, ok bool, err error) {
	if err := validID(id); err != nil {
		return "", nil, false, err
	}
	if !d.Exists(id) {
		return "", nil, false, graphdriver.ErrLayerNotExist
	}
	chain, err := d.readLowers(id)
	if err != nil {
		return "", nil, false, err
	}
	if firstOr(chain) != parent {
		return "", nil, false, nil
	}
	for _, l := range chain {
		lowers = append(lowers, filepath.Join(d.dir(l), "diff"))
	}
	return filepath.Join(d.dir(id), "diff"), lowers, true, nil
}

func (d *Driver) overlayOptions() diff.OverlayOptions {
	return diff.OverlayOptions{UserXattr: d.userXattr}
}
