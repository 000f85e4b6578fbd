package overlay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/fscopy"
	"github.com/layers-storage/layers/internal/staging"
)

// maxLowers is the kernel's limit of lower layers in one overlay mount
// (OVL_MAX_STACK).
const maxLowers = 500

// flatStride is the spacing, counted from the bottom of a chain, of the
// layers whose flattened tree may be cached. Cutting only there makes
// every image that shares a deep base share its flattened trees, and
// builds each one from the one below it plus flatStride layers, so no
// build needs more than flatStride+1 lowers.
const flatStride = 256

// flatDir is where layer id's flattened tree is cached: the merged view of
// id and every layer below it, as plain files (no whiteouts, no overlay
// xattrs). It is deleted with the layer.
func (d *Driver) flatDir(id string) string { return filepath.Join(d.dir(id), "flat") }

// lowerStack returns the lower dirs of a mount of chain (layer IDs, the
// top-most first) and the names mounts use for them. A chain within the
// kernel's limit is the layers' diff dirs and their short links (the
// dirs again when mounting by fd, which needs no names). A deeper
// chain keeps its upper layers and replaces the rest by the cached
// flattened tree of the layer where it is cut (built on first use): the
// kernel refuses more than 500 lowers, and Docker refuses such images,
// but they are valid images.
func (d *Driver) lowerStack(chain []string) (dirs, names []string, err error) {
	keep, flatAt := chain, ""
	if n := len(chain); n > maxLowers {
		// The bottom-most k layers are flattened, k the least multiple
		// of flatStride that leaves at most maxLowers dirs.
		k := (n - maxLowers + 1 + flatStride - 1) / flatStride * flatStride
		keep, flatAt = chain[:n-k], chain[n-k]
		if err := d.flatten(flatAt, chain[n-k:]); err != nil {
			return nil, nil, err
		}
	}
	for _, l := range keep {
		dir := filepath.Join(d.dir(l), "diff")
		dirs = append(dirs, dir)
		if d.method == methodFsconfigFd {
			// Mounted by fd: reading 500 link files would cost
			// half of the mount.
			names = append(names, dir)
			continue
		}
		short, err := d.readLink(l)
		if err != nil {
			if !d.Exists(l) {
				return nil, nil, fmt.Errorf("lower layer %s: %w", l, graphdriver.ErrLayerNotExist)
			}
			return nil, nil, fmt.Errorf("lower layer %s: %w", l, err)
		}
		names = append(names, filepath.Join(d.links, short))
	}
	if flatAt != "" {
		dirs = append(dirs, d.flatDir(flatAt))
		names = append(names, d.flatDir(flatAt))
	}
	return dirs, names, nil
}

// flatten builds, unless cached, the flattened tree of chain[0] (chain is
// that layer and all below it, top-most first): it mounts the chain
// read-only (whose own depth lowerStack bounds, through the flattened tree
// of a lower cut point) and copies the merged view, so whiteouts and
// opaque dirs are resolved by the kernel itself. The tree is built under
// HOME/tmp and renamed into place whole.
func (d *Driver) flatten(id string, chain []string) (err error) {
	unlock := d.locks.lock("flat:" + id)
	defer unlock()
	if _, err := os.Stat(d.flatDir(id)); err == nil {
		return nil
	}
	dirs, names, err := d.lowerStack(chain)
	if err != nil {
		return err
	}
	wrap := func(err error) error {
		return fmt.Errorf("flatten the %d layers from %s down: %w", len(chain), id, err)
	}
	mnt, err := d.tmp.New("flatmount-" + id)
	if err != nil {
		return wrap(err)
	}
	defer mnt.Remove()
	target := filepath.Join(mnt.Path(), "merged") // where HOME/tmp's cleaner looks
	if err := os.MkdirAll(target, 0o700); err != nil {
		return wrap(err)
	}
	m := overlayMount{lowers: dirs, lowerLinks: names, target: target, options: d.mountOptions(), linkDir: d.links}
	if err := mount(d.method, m); err != nil {
		return wrap(err)
	}
	defer func() {
		if uerr := graphdriver.Unmount(target); uerr != nil && err == nil {
			err = wrap(uerr)
		}
	}()
	out, err := d.tmp.New("flat-" + id)
	if err != nil {
		return wrap(err)
	}
	defer out.Remove()
	if err := fscopy.CopyTree(context.Background(), target, out.Path()); err != nil {
		return wrap(err)
	}
	if err := out.Publish(d.flatDir(id)); err != nil && !errors.Is(err, staging.ErrExists) {
		return wrap(err)
	}
	return nil
}

// flattenedCount counts the cached flattened trees, for Status.
func (d *Driver) flattenedCount() int {
	m, _ := filepath.Glob(filepath.Join(d.home, "*", "flat"))
	return len(m)
}
