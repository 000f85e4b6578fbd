package store

import (
	"archive/tar"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/graphdriver"
)

// CommitOptions are the options of CommitContainer.
type CommitOptions struct {
	// ID is the new layer's ID (64 hex characters); "" picks a random one.
	ID string
	// Rewrite, when set, rewrites the tar of the changes before it is
	// stored (SOURCE_DATE_EPOCH clamps its times, say). The changes are
	// then always copied, since the stored layer must be what the
	// rewritten tar says.
	Rewrite func(io.Reader) io.ReadCloser
	// Warn receives what the copy drops (see ApplyOptions.Warn).
	Warn func(string)
}

// commitIntentKey is the meta row that says, while layer id is being made
// by a commit in place, which read-write layer it comes from: recovery
// undoes such a commit instead of only deleting the layer (the read-write
// layer may sit on it already).
func commitIntentKey(id string) string { return "commit-in-place:" + id }

// errCopyInstead means a commit cannot happen in place and copies.
var errCopyInstead = errors.New("commit in place not possible")

// CommitContainer makes container ref's changes a new image layer on the
// layer the container's read-write layer sits on, and returns it: the
// stored layer with the same chain ID, when there is one.
//
// When the driver can (graphdriver.ReadWriteCommitter: overlay), the
// container is not mounted and opts.Rewrite is nil, nothing is copied: the
// container's changes become the new layer, and the container goes on,
// with no changes of its own, on top of it. Its tree is the same, but its
// Changes and Diff list only what it changes after the commit, and its
// layer's Parent is the new layer. Otherwise the changes are streamed once
// into the new layer (Diff, then ApplyDiff) and the container does not
// change. Either way the diffID is computed in the same pass that stores
// or reads the changes, and a failure or a crash leaves nothing behind.
func (s *Store) CommitContainer(ctx context.Context, ref string, opts *CommitOptions) (*Layer, error) {
	if opts == nil {
		opts = &CommitOptions{}
	}
	id := opts.ID
	if id == "" {
		id = newID()
	} else if !isID(id) {
		return nil, fmt.Errorf("commit container %s: layer ID %q is not 64 hex characters", ref, id)
	}
	c, err := s.Container(ref)
	if err != nil {
		return nil, fmt.Errorf("commit container: %w", err)
	}
	if opts.Rewrite == nil {
		l, err := s.commitInPlace(ctx, c, id)
		if !errors.Is(err, errCopyInstead) {
			if err != nil {
				return nil, fmt.Errorf("commit container %s: %w", c.ID, err)
			}
			return l, nil
		}
	}
	l, err := s.commitCopy(ctx, c, id, opts)
	if err != nil {
		return nil, fmt.Errorf("commit container %s: %w", c.ID, err)
	}
	return l, nil
}

// commitCopy stores the container's changes as a new layer by streaming
// them through ApplyDiff.
func (s *Store) commitCopy(ctx context.Context, c *Container, id string, opts *CommitOptions) (*Layer, error) {
	rw, err := s.Layer(c.Layer)
	if err != nil {
		return nil, err
	}
	rc, err := s.Diff(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	var r io.Reader = rc
	if opts.Rewrite != nil {
		rewritten := opts.Rewrite(rc)
		defer rewritten.Close()
		r = rewritten
	}
	l, err := s.ApplyDiff(ctx, rw.Parent, r, &ApplyOptions{ID: id, Warn: opts.Warn})
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = cerr
		if l.ID == id {
			err = joinErrors(err, s.RemoveLayer(id, false))
		}
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

// commitInPlace makes the container's changes layer id without copying
// them (graphdriver.ReadWriteCommitter), or returns errCopyInstead when
// the driver cannot or the container is mounted. It holds the store lock
// throughout, so that nobody mounts the container or removes it meanwhile.
//
// The steps, each recoverable: layer id is recorded incomplete together
// with a commit intent; the driver moves the data; the layer's tar is
// read back for its diffID and layout; one transaction completes the
// layer, puts the container's layer on it and drops the intent; the
// driver forgets how to undo. Recovery (recoverLayers) undoes a commit
// whose layer is still incomplete.
func (s *Store) commitInPlace(ctx context.Context, c *Container, id string) (*Layer, error) {
	rwc, ok := s.driver.(graphdriver.ReadWriteCommitter)
	if !ok {
		return nil, errCopyInstead
	}
	hold, err := s.holdLayer(id)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", id, err)
	}
	defer hold.release()
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	rw, err := s.layerRow(s.q, c.Layer)
	if err != nil {
		return nil, err
	}
	if n, _, err := s.mountCount(rw.ID); err != nil {
		return nil, err
	} else if n > 0 {
		return nil, errCopyInstead
	}
	err = s.tx(func(tx querier) error {
		var parent any
		if rw.Parent != "" {
			parent = rw.Parent
		}
		if _, err := tx.Exec(`INSERT INTO layers (id, parent, kind, state, created) VALUES (?, ?, 'image', 'incomplete', ?)`,
			id, parent, nanos(time.Now())); err != nil {
			return err
		}
		_, err := tx.Exec(`INSERT INTO meta (key, value) VALUES (?, ?)`, commitIntentKey(id), rw.ID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("database: %w", noSpace(err))
	}
	s.crashPoint("commit-started")

	undo := func(cause error) error {
		return joinErrors(cause, s.undoCommit(rwc, rw.ID, id))
	}
	if err := rwc.CommitReadWrite(rw.ID, id); err != nil {
		if errors.Is(err, graphdriver.ErrNotSupported) || errors.Is(err, graphdriver.ErrMounted) {
			if uerr := s.undoCommit(rwc, rw.ID, id); uerr != nil {
				return nil, joinErrors(err, uerr)
			}
			return nil, errCopyInstead
		}
		return nil, undo(noSpace(err))
	}
	s.crashPoint("commit-moved")
	res, err := s.readCommitted(ctx, id, rw.Parent)
	if err == nil {
		err = s.syncLayer()
	}
	if err != nil {
		return nil, undo(err)
	}
	s.crashPoint("commit-read")
	var existing string
	err = s.tx(func(tx querier) error {
		chainID, found, err := chainOn(tx, rw.Parent, res.diffID)
		if err != nil || found != "" {
			existing = found
			return err
		}
		if err := completeLayer(tx, id, res.diffID, chainID, res.tarSize, res.size); err != nil {
			return err
		}
		if _, err := tx.Exec(`UPDATE layers SET parent = ? WHERE id = ?`, id, rw.ID); err != nil {
			return err
		}
		_, err = tx.Exec(`DELETE FROM meta WHERE key = ?`, commitIntentKey(id))
		return err
	})
	if err != nil {
		return nil, undo(fmt.Errorf("database: %w", noSpace(err)))
	}
	if existing != "" {
		// The same content is stored already: the container goes back
		// to how it was, and the commit is that layer.
		if err := s.undoCommit(rwc, rw.ID, id); err != nil {
			return nil, err
		}
		return s.layerRow(s.q, existing)
	}
	s.crashPoint("commit-recorded")
	if err := rwc.ResolveCommit(rw.ID, id, true); err != nil {
		// Recorded and whole: what is left is the driver's note on how
		// to undo, which nothing reads once the layer is complete.
		slog.Warn("store: commit recorded, but the driver's undo record stays", "layer", id, "cause", err)
	}
	return s.layerRow(s.q, id)
}

// undoCommit undoes a commit in place of read-write layer rw into layer id
// at whatever step it stopped, and deletes layer id and its intent. Under
// the store lock.
func (s *Store) undoCommit(rwc graphdriver.ReadWriteCommitter, rw, id string) error {
	if err := rwc.ResolveCommit(rw, id, false); err != nil {
		return fmt.Errorf("undo: %w", err)
	}
	if _, err := s.q.Exec(`DELETE FROM meta WHERE key = ?`, commitIntentKey(id)); err != nil {
		return fmt.Errorf("undo: database: %w", noSpace(err))
	}
	if err := s.dropLayer(id); err != nil {
		return fmt.Errorf("undo: %w", err)
	}
	return nil
}

// recoverCommit undoes the commit in place that made incomplete layer id,
// if one did: a commit killed before it was recorded. Under the store
// lock, from recoverLayers, before the layer is dropped.
func (s *Store) recoverCommit(id string) error {
	var rw string
	err := s.q.QueryRow(`SELECT value FROM meta WHERE key = ?`, commitIntentKey(id)).Scan(&rw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	rwc, ok := s.driver.(graphdriver.ReadWriteCommitter)
	if !ok {
		return fmt.Errorf("layer %s is an interrupted commit of layer %s, which driver %s cannot undo", id, rw, s.driver)
	}
	return s.undoCommit(rwc, rw, id)
}

// committed is what reading a committed layer's tar tells.
type committed struct {
	diffID  digest.Digest
	tarSize int64
	size    int64 // bytes of regular file content
}

// readCommitted reads layer id's tar against parent once: its diffID,
// sizes and the layout LayerTar reassembles it from.
func (s *Store) readCommitted(ctx context.Context, id, parent string) (committed, error) {
	rc, err := graphdriver.Diff(ctx, s.driver, id, parent)
	if err != nil {
		return committed{}, err
	}
	defer rc.Close()
	ts, err := s.newTarSplitter(id, rc)
	if err != nil {
		return committed{}, fmt.Errorf("record tar layout: %w", err)
	}
	dg := digest.Canonical.Digester()
	hashed := io.TeeReader(ts, dg.Hash())
	var res committed
	tr := tar.NewReader(hashed)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			ts.abort()
			return committed{}, fmt.Errorf("read the committed layer's tar: %w", err)
		}
		if h.Typeflag == tar.TypeReg {
			res.size += h.Size
		}
	}
	// The end-of-archive blocks count too.
	if _, err := io.Copy(io.Discard, hashed); err != nil {
		ts.abort()
		return committed{}, fmt.Errorf("read the committed layer's tar: %w", err)
	}
	if err := ts.finish(s.sync); err != nil {
		return committed{}, err
	}
	res.diffID, res.tarSize = dg.Digest(), ts.n
	return res, nil
}

// chainOn returns the chainID of a layer with diffID on parentID ("" for
// none), and the complete image layer that has it already ("" when none
// does). The chainID is "" when the parent has none (a layer not made
// from a tar).
func chainOn(tx querier, parentID string, diffID digest.Digest) (chainID digest.Digest, existing string, err error) {
	chainID = diffID
	if parentID != "" {
		var pc string
		if err := tx.QueryRow(`SELECT chain_id FROM layers WHERE id = ?`, parentID).Scan(&pc); err != nil {
			return "", "", fmt.Errorf("parent %s: %w", parentID, err)
		}
		if pc == "" {
			return "", "", nil
		}
		chainID = ChainID(digest.Digest(pc), diffID)
	}
	err = tx.QueryRow(`SELECT id FROM layers WHERE chain_id = ? AND state = 'complete' AND kind = 'image'`, chainID.String()).Scan(&existing)
	if errors.Is(err, sql.ErrNoRows) {
		return chainID, "", nil
	}
	return chainID, existing, err
}
