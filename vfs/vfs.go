// Package vfs is the fallback graph driver: every layer is a plain
// directory holding the full root filesystem, made by copying its parent.
// It works on any filesystem and needs no mounts, at the price of a full
// copy per layer; on xfs (reflink=1) and btrfs the copy clones file data
// (FICLONE), so a layer costs inodes and metadata but no data blocks.
//
// Layout under the driver's home:
//
//	HOME/dir/<id>/   the layer's root filesystem; Get returns this path
//	HOME/tmp/<name>       a layer being built or removed
//	HOME/tmp/<name>.lock  its lock file (flock)
//
// A layer is built under HOME/tmp and renamed into HOME/dir only when whole
// (renameat2 RENAME_NOREPLACE, so two racing Creates of one ID cannot both
// win), and Remove renames it out before deleting it, so a killed process
// never leaves a half layer that looks whole.
//
// Several driver instances (processes, or goroutines with a driver each)
// may share one home, and New removes what killed processes left under
// HOME/tmp; package internal/staging guards every entry there with a
// flocked lock file, so that only debris is removed.
//
// Whiteouts are stored by deleting (the delete whiteout format): a layer is
// its parent's copy with the layer's changes applied, which the naive
// ApplyDiff in package graphdriver already does.
//
// Storage options:
//
//	vfs.copy=auto|reflink|copy   how file data is copied from the parent:
//	                             auto (default) clones where the filesystem
//	                             can and copies otherwise; reflink requires
//	                             cloning (New fails where it cannot); copy
//	                             never shares extents (for benchmarks), and
//	                             so makes no snapshots.
//	vfs.subvolumes=true|false    on btrfs, make each layer a subvolume and
//	                             a child a snapshot of its parent (default
//	                             true); false copies as on other
//	                             filesystems. Ignored elsewhere.
package vfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/fscopy"
	"github.com/layers-storage/layers/internal/staging"
	"github.com/layers-storage/layers/internal/subvol"
)

// Name is the driver's registered name.
const Name = "vfs"

// Priority is the vfs driver's place when choosing a default: the lowest,
// since it works everywhere but copies whole layers. Every other driver
// registers with a higher priority.
const Priority = 0

func init() {
	graphdriver.Register(graphdriver.Registration{Name: Name, Priority: Priority, New: New})
}

// Driver is the vfs driver. It is safe for concurrent use.
type Driver struct {
	home   string
	dir    string       // HOME/dir
	tmp    *staging.Dir // HOME/tmp
	mode   fscopy.ReflinkMode
	fsType string // backing filesystem, for Status
	// subvols is set when layers are btrfs subvolumes and children
	// snapshots (home on btrfs, vfs.subvolumes not false, copy mode not
	// "copy").
	subvols bool

	mu   sync.Mutex
	refs map[string]int // Gets not yet Put, per layer

	probe      sync.Once
	reflink    bool  // the filesystem of home can clone files; set by probe
	reflinkErr error // why probe could not tell
}

// canReflink reports whether files in home can be cloned, probing once.
func (d *Driver) canReflink() (bool, error) {
	d.probe.Do(func() { d.reflink, d.reflinkErr = fscopy.ReflinkSupported(d.tmp.Path()) })
	return d.reflink, d.reflinkErr
}

var _ graphdriver.Driver = (*Driver)(nil)

// New creates the vfs driver rooted at home, making home if needed, and
// removes whatever a killed process left under HOME/tmp.
func New(home string, options map[string]string) (graphdriver.Driver, error) {
	mode := fscopy.ReflinkAuto
	wantSubvols := true
	for key, val := range options {
		switch key {
		case "vfs.subvolumes":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return nil, graphdriver.InvalidOption(Name, key, val, errors.New("want true or false"))
			}
			wantSubvols = b
		case "vfs.copy":
			switch val {
			case "auto":
				mode = fscopy.ReflinkAuto
			case "reflink":
				mode = fscopy.ReflinkRequire
			case "copy":
				mode = fscopy.ReflinkNever
			default:
				return nil, graphdriver.InvalidOption(Name, key, val, errors.New("want auto, reflink or copy"))
			}
		default:
			return nil, graphdriver.UnknownOption(Name, key)
		}
	}
	d := &Driver{
		home: home,
		dir:  filepath.Join(home, "dir"),
		mode: mode,
		refs: make(map[string]int),
	}
	for _, p := range []string{home, d.dir} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return nil, fmt.Errorf("vfs: %w", err)
		}
	}
	// A layer being built or removed when its process was killed may be a
	// subvolume: deleted as one, in constant time (the file-by-file
	// removal that follows finds nothing left).
	tmp, err := staging.Open(home, staging.Options{Cleaner: func(path string) error {
		deleteSubvolume(path)
		return nil
	}})
	if err != nil {
		return nil, fmt.Errorf("vfs: %w", err)
	}
	d.tmp = tmp
	d.fsType = graphdriver.BackingFilesystem(home)
	if wantSubvols && mode != fscopy.ReflinkNever {
		onBtrfs, err := subvol.IsBtrfs(tmp.Path())
		if err != nil {
			return nil, fmt.Errorf("vfs: %w", err)
		}
		d.subvols = onBtrfs
	}
	// The probe writes and clones a scratch file: only vfs.copy=reflink
	// needs its answer up front, Status asks later; every CLI process
	// opens a driver, and most never ask.
	if mode != fscopy.ReflinkRequire {
		return d, nil
	}
	ok, err := d.canReflink()
	if err != nil {
		return nil, fmt.Errorf("vfs: %w", err)
	}
	if !ok {
		return nil, graphdriver.InvalidOption(Name, "vfs.copy", "reflink",
			fmt.Errorf("the %s filesystem of %s cannot clone files (FICLONE)", d.fsType, home))
	}
	return d, nil
}

// String returns "vfs".
func (d *Driver) String() string { return Name }

func (d *Driver) path(id string) string { return filepath.Join(d.dir, id) }

// Create makes layer id as a copy of parent (an empty root directory, 0755
// and owned by root, when parent is ""). vfs takes no per-layer options.
func (d *Driver) Create(id, parent string, opts *graphdriver.CreateOpts) error {
	if err := d.create(id, parent, opts); err != nil {
		return fmt.Errorf("create layer %s: %w", id, err)
	}
	return nil
}

// CreateReadWrite makes a read-write layer; for vfs it is the same as
// Create, since every layer is a writable directory.
func (d *Driver) CreateReadWrite(id, parent string, opts *graphdriver.CreateOpts) error {
	if err := d.create(id, parent, opts); err != nil {
		return fmt.Errorf("create read-write layer %s: %w", id, err)
	}
	return nil
}

func (d *Driver) create(id, parent string, opts *graphdriver.CreateOpts) (err error) {
	if err := graphdriver.ValidateID(id); err != nil {
		return err
	}
	if opts != nil {
		for key := range opts.StorageOpt {
			return graphdriver.UnknownOption(Name, key)
		}
	}
	if d.Exists(id) {
		return graphdriver.ErrLayerExists
	}
	var parentDir string
	if parent != "" {
		if err := graphdriver.ValidateID(parent); err != nil {
			return fmt.Errorf("parent: %w", err)
		}
		if !d.Exists(parent) {
			return fmt.Errorf("parent %s: %w", parent, graphdriver.ErrLayerNotExist)
		}
		parentDir = d.path(parent)
	}
	te, err := d.tmp.New("new-" + id)
	if err != nil {
		return err
	}
	tmp := te.Path()
	made := false // tmp is a subvolume
	published := false
	defer func() {
		if !published {
			if made {
				deleteSubvolume(tmp)
			}
			_ = te.Remove()
		}
	}()
	if d.subvols {
		if made, err = d.createSubvolume(tmp, parentDir); err != nil {
			return err
		}
	}
	switch {
	case made:
	case parentDir == "":
		if err := os.Mkdir(tmp, 0o755); err != nil {
			return err
		}
		if err := emptyRootOwner(tmp); err != nil {
			return err
		}
	default:
		if _, err := fscopy.Copy(context.Background(), parentDir, tmp, fscopy.Options{Reflink: d.mode}); err != nil {
			return fmt.Errorf("copy parent %s: %w", parent, err)
		}
	}
	if err := te.Publish(d.path(id)); err != nil {
		if errors.Is(err, staging.ErrExists) {
			return graphdriver.ErrLayerExists
		}
		return err
	}
	published = true
	return nil
}

// emptyRootOwner makes the root of a new empty layer exactly 0755 and
// owned by root (when running as root), whatever the caller's umask
// (Mkdir's mode passes through it).
func emptyRootOwner(path string) error {
	if err := os.Chmod(path, 0o755); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if err := os.Lchown(path, 0, 0); err != nil {
			return err
		}
	}
	return nil
}

// createSubvolume makes the new layer tmp a subvolume: a snapshot of
// parentDir when that is a subvolume, else a new subvolume filled by
// copying parentDir (empty when parentDir is ""). It reports false, having
// made nothing, when subvolumes cannot be made here, so the caller copies
// into a plain directory.
func (d *Driver) createSubvolume(tmp, parentDir string) (bool, error) {
	if parentDir != "" {
		isSub, err := subvol.IsSubvolume(parentDir)
		if err != nil {
			return false, err
		}
		if isSub {
			err := subvol.Snapshot(parentDir, tmp)
			if err == nil {
				return true, nil
			}
			if !subvol.Unsupported(err) {
				return false, err
			}
			// Not allowed to snapshot (e.g. the parent is not ours):
			// a new subvolume and a copy still work.
		}
	}
	if err := subvol.Create(tmp); err != nil {
		if subvol.Unsupported(err) {
			return false, nil
		}
		return false, err
	}
	if parentDir == "" {
		return true, emptyRootOwner(tmp)
	}
	if _, err := fscopy.Copy(context.Background(), parentDir, tmp, fscopy.Options{Reflink: d.mode}); err != nil {
		return true, fmt.Errorf("copy parent into a new subvolume: %w", err)
	}
	return true, nil
}

// deleteSubvolume deletes path if it is a btrfs subvolume, in constant
// time. It reports nothing: where it cannot (no CAP_SYS_ADMIN, nested
// subvolumes), the caller's file-by-file removal does the work, and rmdir
// of the emptied subvolume deletes it.
func deleteSubvolume(path string) {
	if ok, err := subvol.IsSubvolume(path); err == nil && ok {
		_ = subvol.Delete(path)
	}
}

// Remove deletes layer id. Removing a layer that does not exist succeeds,
// so that removal is idempotent: the store marks a layer removed and then
// deletes it, and repeats the deletion after a crash. References from Get
// are dropped (vfs mounts nothing, so paths handed out simply vanish).
func (d *Driver) Remove(id string) error {
	if err := graphdriver.ValidateID(id); err != nil {
		return fmt.Errorf("remove layer: %w", err)
	}
	d.mu.Lock()
	delete(d.refs, id)
	d.mu.Unlock()
	// Renamed out under HOME/tmp first, then deleted: the layer stops
	// existing at once, and a crash leaves only HOME/tmp debris.
	if err := d.removeTree(id); err != nil {
		return fmt.Errorf("remove layer %s: %w", id, err)
	}
	return nil
}

// removeTree is staging's RemoveTree, with a layer that is a subvolume
// deleted as one once it is renamed under HOME/tmp.
func (d *Driver) removeTree(id string) error {
	e, err := d.tmp.New("rm-" + id)
	if err != nil {
		return err
	}
	if err := os.Rename(d.path(id), e.Path()); err != nil {
		_ = e.Release()
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	deleteSubvolume(e.Path())
	return e.Remove()
}

// Get returns the path of layer id's root filesystem and counts a
// reference. vfs mounts nothing, so mount options are refused.
func (d *Driver) Get(id string, opts graphdriver.MountOpts) (string, error) {
	if err := graphdriver.ValidateID(id); err != nil {
		return "", fmt.Errorf("get layer: %w", err)
	}
	if len(opts.Options) > 0 {
		return "", fmt.Errorf("get layer %s: vfs takes no mount options (got %q)", id, opts.Options)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.path(id)
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("get layer %s: %w", id, graphdriver.ErrLayerNotExist)
	}
	if err != nil {
		return "", fmt.Errorf("get layer %s: %w", id, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("get layer %s: %s is not a directory", id, p)
	}
	d.refs[id]++
	return p, nil
}

// Put releases a reference taken by Get. A Put without a matching Get (of
// a layer never mounted, already removed or unknown) is a no-op returning
// nil, as the conformance suite requires, so cleanup paths may call it.
func (d *Driver) Put(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n := d.refs[id]; n > 1 {
		d.refs[id] = n - 1
	} else {
		delete(d.refs, id)
	}
	return nil
}

// Exists reports whether layer id is present.
func (d *Driver) Exists(id string) bool {
	if graphdriver.ValidateID(id) != nil {
		return false
	}
	fi, err := os.Stat(d.path(id))
	return err == nil && fi.IsDir()
}

// Status reports the backing filesystem and how layer data is copied.
func (d *Driver) Status() []graphdriver.Status {
	ok, err := d.canReflink()
	reflink := "no"
	switch {
	case err != nil:
		reflink = "unknown: " + err.Error()
	case ok:
		reflink = "yes"
	}
	used := "copy"
	switch {
	case d.subvols:
		used = "btrfs snapshot"
	case ok && d.mode != fscopy.ReflinkNever:
		used = "reflink"
	}
	return []graphdriver.Status{
		{Key: "Backing Filesystem", Value: d.fsType},
		{Key: "Reflink Supported", Value: reflink},
		{Key: "Copy Mode", Value: d.mode.String()},
		{Key: "Layer Copies", Value: used},
	}
}

// Cleanup releases the driver. vfs holds no mounts or fds; references are
// forgotten.
func (d *Driver) Cleanup() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.refs)
	return nil
}
