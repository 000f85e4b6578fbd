// Package graphdriver defines the contract every storage driver implements,
// the optional capabilities a driver may add, a registry of drivers by name,
// and the naive differ that gives every driver Changes, Diff and ApplyDiff
// by mounting and walking.
//
// Callers never ask which driver they have: they call Changes, Diff and
// ApplyDiff in this package, which use a driver's native capability when it
// has one and the naive differ otherwise.
package graphdriver

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/layers-storage/layers/diff"
)

// Sentinel errors drivers return, wrapped with context, for callers to branch on.
var (
	// ErrNotSupported means the driver cannot work on this host or filesystem.
	ErrNotSupported = errors.New("driver not supported")
	// ErrLayerNotExist means the layer is not known to the driver.
	ErrLayerNotExist = errors.New("layer does not exist")
	// ErrLayerExists means a layer with that ID is already there.
	ErrLayerExists = errors.New("layer already exists")
	// ErrUnknownOption means a storage option the driver does not take.
	ErrUnknownOption = errors.New("unknown storage option")
	// ErrInvalidOption means a known storage option with a bad value.
	ErrInvalidOption = errors.New("invalid storage option")
	// ErrUnknownDriver means no driver is registered under that name.
	ErrUnknownDriver = errors.New("unknown driver")
	// ErrMounted means an operation that needs a layer unmounted found it
	// mounted.
	ErrMounted = errors.New("layer is mounted")
)

// Driver is the contract of a storage driver. Layer IDs are chosen by the
// caller; a parent "" means a layer without parent. Implementations are safe
// for concurrent use by goroutines of one process; serialising mutations
// between processes is the store's job.
type Driver interface {
	// String returns the driver's registered name.
	String() string
	// Create makes a read-only (image) layer id on top of parent.
	Create(id, parent string, opts *CreateOpts) error
	// CreateReadWrite makes a read-write (container) layer id on top of parent.
	CreateReadWrite(id, parent string, opts *CreateOpts) error
	// Remove deletes layer id and its data. Removing a mounted layer unmounts it.
	Remove(id string) error
	// Get mounts layer id (counting references) and returns the path of its
	// root filesystem. Every successful Get is balanced by one Put.
	Get(id string, opts MountOpts) (string, error)
	// Put releases one reference taken by Get; the layer is unmounted when
	// the last reference goes.
	Put(id string) error
	// Exists reports whether layer id is present.
	Exists(id string) bool
	// Status returns key/value pairs describing the driver, for `info`.
	Status() []Status
	// Cleanup releases everything the driver holds (mounts, fds); the driver
	// is not used afterwards.
	Cleanup() error
}

// CreateOpts are per-layer options at creation.
type CreateOpts struct {
	// StorageOpt holds per-layer driver options (for example a size limit).
	StorageOpt map[string]string
}

// MountOpts are options for Get.
type MountOpts struct {
	// Options are extra filesystem mount options.
	Options []string
}

// Status is one line of a driver's status report.
type Status struct {
	Key   string
	Value string
}

// Differ is implemented by drivers that know natively what changed in a
// layer (overlay's upper dir); others get the naive double-walk differ.
type Differ interface {
	// Changes lists what layer id changes relative to parent.
	Changes(ctx context.Context, id, parent string) ([]diff.Change, error)
	// Diff returns layer id's changes against parent as an uncompressed tar.
	Diff(ctx context.Context, id, parent string) (io.ReadCloser, error)
}

// Applier is implemented by drivers that apply a layer tar natively, without
// mounting (overlay writes straight into its diff dir).
//
// A native applier writes only into layer id, never into its parents, so
// the layers of one image may be applied at the same time: the caller
// passes opts.Lowers with only Ready set, one per parent still being
// applied, nearest first, and entries that need a parent's content wait
// for it (see diff.Lower). The driver fills in the lowers' dirs.
type Applier interface {
	// ApplyDiff applies the layer tar r to layer id, created on parent.
	// Its errors leave out the operation and the layer, which the caller
	// names (see ApplyDiff in this package).
	ApplyDiff(ctx context.Context, id, parent string, r io.Reader, opts diff.ApplyOptions) (diff.ApplyResult, error)
}

// Sizer is implemented by drivers that can tell how many bytes a layer uses
// on disk cheaper than walking its changes.
type Sizer interface {
	// Size returns the bytes layer id adds on top of parent.
	Size(ctx context.Context, id, parent string) (int64, error)
}

// ReadWriteCommitter is implemented by drivers that can turn a read-write
// layer's changes into an image layer without copying them: the changes
// become the image layer, and the read-write layer goes on, with no
// changes of its own, on top of it. The read-write layer shows the same
// tree before, during and after, so a container committed this way keeps
// running on its new parent.
//
// A commit has two steps, so that the caller can record the result in its
// own metadata between them: CommitReadWrite moves the data and keeps what
// undoing it needs; ResolveCommit then keeps the commit or undoes it. A
// process killed between the two leaves a commit that ResolveCommit ends
// either way, whichever step the kill interrupted.
type ReadWriteCommitter interface {
	// CommitReadWrite makes image layer id, on rw's parent, out of
	// read-write layer rw's changes, and puts rw on id with no changes.
	// rw must not be mounted (ErrMounted). An error wrapping
	// ErrNotSupported means rw's changes cannot stand alone as a layer
	// (for overlay: renamed directories or metacopy files, whose data is
	// in the lowers) and nothing changed: copy them instead. After any
	// other error, call ResolveCommit(rw, id, false).
	CommitReadWrite(rw, id string) error
	// ResolveCommit ends a CommitReadWrite of rw into id, finished or
	// interrupted at any point: keep forgets how to undo it; !keep undoes
	// it, so that rw holds its changes again on its old parent and layer
	// id is gone. It is idempotent, and undoing a commit that never
	// started (no layer id) succeeds. rw must not be mounted to undo.
	ResolveCommit(rw, id string, keep bool) error
}

// UnknownOption is the error for a storage option driver does not take.
func UnknownOption(driver, key string) error {
	return fmt.Errorf("%w %q for driver %s", ErrUnknownOption, key, driver)
}

// InvalidOption is the error for a storage option with a bad value.
func InvalidOption(driver, key, value string, why error) error {
	return fmt.Errorf("%w %s=%q for driver %s: %w", ErrInvalidOption, key, value, driver, why)
}
