package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

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
	pins, err := s.newPinFile()
	if err != nil {
		return "", "", nil, err
	}
	var pinned []string
	unpin := func() error {
		var errs []error
		for _, p := range pinned {
			errs = append(errs, s.unmountLayer(p, false, false))
		}
		pins.release()
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
		if err := pins.add(p); err != nil {
			return "", "", nil, joinErrors(err, unpin())
		}
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

// A pin file lists the layers one pinPair counts as mounted, flocked by
// the process for as long as it holds them: when the process dies
// mid-diff (killed during a push or a commit), the next Open finds the
// file unlocked and gives the counts back (recoverPinFile), instead of the
// layers staying counted as mounted for good.
type pinFile struct{ f *os.File }

// pinSuffix ends the names of pin files under ROOT/tmp.
const pinSuffix = ".pins"

// newPinFile makes a pin file and locks it. Under the store lock, as is
// recoverPinFile, so that no recovery takes a new, unlocked file for debris.
func (s *Store) newPinFile() (*pinFile, error) {
	f, err := os.CreateTemp(s.tmp, "pin-*"+pinSuffix)
	if err != nil {
		return nil, fmt.Errorf("pin file: %w", noSpace(err))
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = os.Remove(f.Name())
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return &pinFile{f: f}, nil
}

// add records that layer id is counted: after the count, so that a crash
// between the two leaks one count rather than taking someone else's.
func (p *pinFile) add(id string) error {
	if _, err := p.f.WriteString(id + "\n"); err != nil {
		return fmt.Errorf("pin file: %w", noSpace(err))
	}
	return nil
}

// release removes the file, then drops the lock.
func (p *pinFile) release() {
	_ = os.Remove(p.f.Name())
	_ = p.f.Close()
}

// isPinFile reports whether name (under ROOT/tmp) is a pin file.
func isPinFile(name string) bool {
	return strings.HasPrefix(name, "pin-") && strings.HasSuffix(name, pinSuffix)
}

// recoverPinFile gives back the mount counts the pin file at p lists,
// when its process died (nobody holds its lock), and removes it. Under
// the store lock.
func (s *Store) recoverPinFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return nil // released meanwhile
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close() // its process is alive
		return nil
	}
	b, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("pin file %s: %w", p, err)
	}
	for _, id := range strings.Fields(string(b)) {
		if !isID(id) {
			continue
		}
		if err := s.unmountLayer(id, false, false); err != nil && !errors.Is(err, ErrLayerUnknown) {
			return fmt.Errorf("give back the mount of layer %s pinned by a dead process: %w", id, err)
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
