package store

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/graphdriver"
)

// Changes lists what the container or layer ref changes relative to its
// parent layer (a container: relative to its image).
func (s *Store) Changes(ctx context.Context, ref string) ([]diff.Change, error) {
	id, parent, release, err := s.pinPair(ref)
	if err != nil {
		return nil, fmt.Errorf("changes of %s: %w", ref, err)
	}
	changes, err := graphdriver.Changes(ctx, s.driver, id, parent)
	if rerr := release(); err == nil && rerr != nil {
		err = rerr
	}
	if err != nil {
		return nil, fmt.Errorf("changes of %s: %w", ref, err)
	}
	return changes, nil
}

// Diff returns what the container or layer ref changes relative to its
// parent layer as an uncompressed OCI layer tar. Close the reader: the
// layers stay counted as mounted until then.
func (s *Store) Diff(ctx context.Context, ref string) (io.ReadCloser, error) {
	id, parent, release, err := s.pinPair(ref)
	if err != nil {
		return nil, fmt.Errorf("diff of %s: %w", ref, err)
	}
	rc, err := graphdriver.Diff(ctx, s.driver, id, parent)
	if err != nil {
		return nil, fmt.Errorf("diff of %s: %w", ref, joinErrors(err, release()))
	}
	return &pinnedReader{ReadCloser: rc, release: release}, nil
}

// pinnedReader releases the pinned layers once the diff stream is closed.
type pinnedReader struct {
	io.ReadCloser
	release func() error
	once    sync.Once
	err     error
}

func (r *pinnedReader) Close() error {
	r.once.Do(func() {
		r.err = joinErrors(r.ReadCloser.Close(), r.release())
	})
	return r.err
}

// pinPair resolves ref to a layer and its parent and counts a mount of
// both in the database while a differ works on them. A driver without
// native diffs mounts them itself; counted this way, its transient Get
// and Put nest inside the store's reference, so that they never unmount
// a mount another process made, and no other process unmounts them
// meanwhile. release undoes the counts.
func (s *Store) pinPair(ref string) (id, parent string, release func() error, err error) {
	unlock, err := s.lock()
	if err != nil {
		return "", "", nil, err
	}
	defer unlock()
	if id, err = s.resolveMountable(ref); err != nil {
		return "", "", nil, err
	}
	l, err := s.layerRow(s.q, id)
	if err != nil {
		return "", "", nil, err
	}
	parent = l.Parent
	var pinned []string
	unpin := func() error {
		var errs []error
		for _, p := range pinned {
			errs = append(errs, s.unmountLayer(p, false, false))
		}
		return joinErrors(errs...)
	}
	for _, p := range []string{id, parent} {
		if p == "" {
			continue
		}
		if _, err := s.mountLayer(p); err != nil {
			return "", "", nil, joinErrors(err, unpin())
		}
		pinned = append(pinned, p)
	}
	release = func() error {
		unlock, err := s.lock()
		if err != nil {
			return err
		}
		defer unlock()
		return unpin()
	}
	return id, parent, release, nil
}
