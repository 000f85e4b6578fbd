package graphdriver

import (
	"context"
	"fmt"
	"io"

	"github.com/layers-storage/layers/diff"
)

// Changes lists what layer id changes relative to parent, natively when d
// is a Differ, else by mounting both and walking them.
func Changes(ctx context.Context, d Driver, id, parent string) ([]diff.Change, error) {
	if nd, ok := d.(Differ); ok {
		return nd.Changes(ctx, id, parent)
	}
	return NaiveChanges(ctx, d, id, parent)
}

// Diff returns layer id's changes against parent as an uncompressed tar,
// natively when d is a Differ, else through the naive differ.
func Diff(ctx context.Context, d Driver, id, parent string) (io.ReadCloser, error) {
	if nd, ok := d.(Differ); ok {
		return nd.Diff(ctx, id, parent)
	}
	return NaiveDiff(ctx, d, id, parent)
}

// ApplyDiff applies the layer tar r to layer id (already created on parent),
// natively when d is an Applier, else by mounting id and untarring into it
// with the delete whiteout format.
//
// Errors say what failed and why, not "apply layer id": the caller, who
// chose id, names the operation once (the store says "apply layer ID: ...").
func ApplyDiff(ctx context.Context, d Driver, id, parent string, r io.Reader, opts diff.ApplyOptions) (diff.ApplyResult, error) {
	if a, ok := d.(Applier); ok {
		return a.ApplyDiff(ctx, id, parent, r, opts)
	}
	return NaiveApplyDiff(ctx, d, id, r, opts)
}

// NaiveChanges mounts id and parent and compares them with the double-walk
// differ.
func NaiveChanges(ctx context.Context, d Driver, id, parent string) ([]diff.Change, error) {
	upper, lower, release, err := mountPair(d, id, parent)
	if err != nil {
		return nil, err
	}
	defer release()
	changes, err := diff.Changes(ctx, lower, upper)
	if err != nil {
		return nil, fmt.Errorf("changes of layer %s: %w", id, err)
	}
	return changes, nil
}

// NaiveDiff mounts id and parent, compares them and streams the changes as
// a tar. The mounts are held until the returned reader is closed.
func NaiveDiff(ctx context.Context, d Driver, id, parent string) (io.ReadCloser, error) {
	upper, lower, release, err := mountPair(d, id, parent)
	if err != nil {
		return nil, err
	}
	changes, err := diff.Changes(ctx, lower, upper)
	if err != nil {
		release()
		return nil, fmt.Errorf("diff of layer %s: %w", id, err)
	}
	return StreamDiff(func(w io.Writer) error {
		err := diff.Export(ctx, w, upper, changes, diff.ExportOptions{})
		release()
		if err != nil {
			return fmt.Errorf("diff of layer %s: %w", id, err)
		}
		return nil
	}), nil
}

// StreamDiff runs write on its own goroutine and returns what it writes as
// a stream. Closing the stream early makes write's next write fail, and
// Close returns only once write has returned, so a caller may remove the
// layer (or unmount what write used) right after. write's error is the
// stream's read error.
func StreamDiff(write func(w io.Writer) error) io.ReadCloser {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(write(pw))
	}()
	return &diffReader{PipeReader: pr, done: done}
}

// diffReader is StreamDiff's stream. Close returns only once the exporter
// has stopped and put the mounts back, so a caller may remove the layer
// right after.
type diffReader struct {
	*io.PipeReader
	done chan struct{}
}

// Close stops the export (its next write fails) and waits for it.
func (r *diffReader) Close() error {
	err := r.PipeReader.Close()
	<-r.done
	return err
}

// NaiveApplyDiff mounts id and applies r into it with the delete whiteout
// format (unless opts names another), which is right for any driver whose
// mounted layer shows its parent's content. As with ApplyDiff, errors do
// not name the layer or the operation (the caller does); the driver's Get
// and Put name their own.
func NaiveApplyDiff(ctx context.Context, d Driver, id string, r io.Reader, opts diff.ApplyOptions) (diff.ApplyResult, error) {
	root, err := d.Get(id, MountOpts{})
	if err != nil {
		return diff.ApplyResult{}, err
	}
	res, err := diff.Apply(ctx, root, r, opts)
	if perr := d.Put(id); err == nil && perr != nil {
		err = perr
	}
	if err != nil {
		return diff.ApplyResult{}, err
	}
	return res, nil
}

// mountPair mounts id and (when not "") parent; release puts both back.
func mountPair(d Driver, id, parent string) (upper, lower string, release func(), err error) {
	upper, err = d.Get(id, MountOpts{})
	if err != nil {
		return "", "", nil, fmt.Errorf("mount layer %s: %w", id, err)
	}
	if parent == "" {
		return upper, "", func() { _ = d.Put(id) }, nil
	}
	lower, err = d.Get(parent, MountOpts{})
	if err != nil {
		_ = d.Put(id)
		return "", "", nil, fmt.Errorf("mount layer %s: %w", parent, err)
	}
	return upper, lower, func() { _ = d.Put(parent); _ = d.Put(id) }, nil
}
