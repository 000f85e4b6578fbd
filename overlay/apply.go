package overlay

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/graphdriver"
)

// ApplyDiff applies the layer tar r straight into layer id's diff dir,
// without mounting anything, storing deletions in overlay's own format.
// parent must be the layer's parent ("" for none). Paths are looked up in
// the parents' diff dirs where the tar needs them (entries under a lower
// symlink, hardlinks to lower files, implicit parents), so the layer holds
// exactly what the same tar gives on a copy of its parent.
//
// The layers of one image may be applied at the same time, each into its
// own layer: the caller passes opts.Lowers with only Ready set, for the
// nearest parents still being applied (nearest first), and entries that
// need one of those wait for it. The driver fills in the dirs. A read-write layer that
// is mounted gets the tar through its mount instead (writing under a live
// overlay's upper dir is undefined); an image layer that is mounted is
// refused, since its mounts are read-only views that must not change.
//
// Errors do not name the layer or the operation, which the caller has
// already (see graphdriver.Applier).
func (d *Driver) ApplyDiff(ctx context.Context, id, parent string, r io.Reader, opts diff.ApplyOptions) (diff.ApplyResult, error) {
	if err := validID(id); err != nil {
		return diff.ApplyResult{}, err
	}
	unlock := d.locks.lock(id)
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	if !d.Exists(id) {
		return diff.ApplyResult{}, graphdriver.ErrLayerNotExist
	}
	lowers, err := d.readLowers(id)
	if err != nil {
		return diff.ApplyResult{}, err
	}
	if got := firstOr(lowers); got != parent {
		return diff.ApplyResult{}, fmt.Errorf("parent %q given, the layer's parent is %q", parent, got)
	}
	kind, err := d.kind(id)
	if err != nil {
		return diff.ApplyResult{}, err
	}
	n, err := d.mountCount(id).Count()
	if err != nil {
		return diff.ApplyResult{}, err
	}
	if n > 0 {
		if kind != kindReadWrite {
			return diff.ApplyResult{}, fmt.Errorf("image layer is mounted (%d references); image layers change only while unmounted", n)
		}
		unlock()
		locked = false
		opts.Whiteouts = nil // the mount shows the parents: deletions are real
		return graphdriver.NaiveApplyDiff(ctx, d, id, r, opts)
	}
	if len(opts.Lowers) > len(lowers) {
		return diff.ApplyResult{}, fmt.Errorf("%d lowers given, the layer has %d parents", len(opts.Lowers), len(lowers))
	}
	given := opts.Lowers
	opts.Lowers = make([]diff.Lower, len(lowers))
	for i, l := range lowers {
		opts.Lowers[i].Dir = filepath.Join(d.dir(l), "diff")
		if i < len(given) {
			if given[i].Dir != "" {
				return diff.ApplyResult{}, fmt.Errorf("lower %d has Dir %q; the driver sets the dirs, callers give only Ready", i, given[i].Dir)
			}
			opts.Lowers[i].Ready = given[i].Ready
		}
	}
	opts.Whiteouts = diff.OverlayWhiteouts(d.userXattr)
	return diff.Apply(ctx, filepath.Join(d.dir(id), "diff"), r, opts)
}

func firstOr(ids []string) string {
	if len(ids) == 0 {
		return ""
	}
	return ids[0]
}
