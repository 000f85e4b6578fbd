package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/graphdriver"
)

// LayerSource is one layer of a chain for ApplyLayers.
type LayerSource struct {
	// DiffID is the layer's diffID from the image config. With it, a
	// layer already stored (same chainID) is reused without calling Open,
	// and content that hashes otherwise fails with ErrDigestMismatch.
	DiffID digest.Digest
	// Blob is the compressed blob Open reads, recorded with the layer.
	Blob *Blob
	// Open returns the layer tar (uncompressed, gzip or zstd), typically a
	// download. It is called only for layers that must be applied, at
	// most once per ApplyLayers, and its reader is closed after the apply.
	Open func(ctx context.Context) (io.ReadCloser, error)
}

// maxParallelApplies bounds the layers of one chain applied at once.
const maxParallelApplies = 4

// ApplyLayers applies a chain of layers (bottom first) on parent (a layer
// ID or prefix; "" for none) and returns the chain's layers, reused or
// new. Layers already stored, judged by chainID from the sources'
// DiffIDs, are reused from the bottom without calling Open.
//
// With a driver that applies layers natively (a graphdriver.Applier,
// such as overlay: a layer does not start as a copy of its parent) the
// remaining layers are created together and applied at the same time, up
// to 4 at once, each download running beside the others' applies; an
// entry that needs a parent's content (a hardlink to a lower file, a path
// under a lower symlink) waits until that parent is applied, through
// diff.ApplyOptions.Lowers. With other drivers they are applied one after
// the other. Either way, layers are marked complete bottom first, and
// when one fails, the layers below it are kept (complete, reusable by a
// retry) and it and those above it are removed.
func (s *Store) ApplyLayers(ctx context.Context, parent string, srcs []LayerSource) ([]*Layer, error) {
	out := make([]*Layer, 0, len(srcs))
	// Reuse the stored bottom of the chain.
	var chain digest.Digest
	if parent != "" {
		p, err := s.Layer(parent)
		if err != nil {
			return nil, fmt.Errorf("apply layers: parent: %w", err)
		}
		parent, chain = p.ID, p.ChainID
	}
	known := parent == "" || chain != ""
	for _, src := range srcs {
		if !known || src.DiffID == "" {
			break
		}
		if err := src.DiffID.Validate(); err != nil {
			return nil, fmt.Errorf("apply layers: diff ID %q: %w", src.DiffID, err)
		}
		next := ChainID(chain, src.DiffID)
		l, err := s.LayerByChainID(next)
		if errors.Is(err, ErrLayerUnknown) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("apply layers: %w", err)
		}
		if src.Blob != nil {
			if err := s.AddLayerBlob(l.ID, *src.Blob); err != nil {
				return nil, fmt.Errorf("apply layers: %w", err)
			}
		}
		out = append(out, l)
		parent, chain = l.ID, next
	}
	rest := srcs[len(out):]
	if len(rest) == 0 {
		return out, nil
	}
	if _, native := s.driver.(graphdriver.Applier); !native || len(rest) == 1 {
		for _, src := range rest {
			l, err := s.applySource(ctx, parent, src)
			if err != nil {
				return out, fmt.Errorf("apply layers: layer %d of %d: %w", len(out)+1, len(srcs), err)
			}
			out = append(out, l)
			parent = l.ID
		}
		return out, nil
	}
	ls, err := s.applyParallel(ctx, parent, rest, len(out), len(srcs))
	out = append(out, ls...)
	if err != nil {
		return out, fmt.Errorf("apply layers: %w", err)
	}
	return out, nil
}

// applySource applies one source with ApplyDiff.
func (s *Store) applySource(ctx context.Context, parent string, src LayerSource) (*Layer, error) {
	if src.DiffID != "" {
		if l, err := s.knownLayer(parent, src.DiffID, src.Blob); l != nil || err != nil {
			return l, err
		}
	}
	rc, err := src.Open(ctx)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return s.ApplyDiff(ctx, parent, rc, &ApplyOptions{DiffID: src.DiffID, Blob: src.Blob})
}

// pending is one layer of applyParallel.
type pending struct {
	id   string
	hold *layerHold
	res  diff.ApplyResult
	err  error
	done chan struct{} // closed when its apply has ended; err is set
}

// ready is the diff.Lower.Ready of p.
func (p *pending) ready(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// applyParallel creates the layers of srcs on parent, applies them at
// once and completes them bottom first. srcs are the chain's layers from
// below+1 on, of total: its errors number the layers as the chain does.
func (s *Store) applyParallel(ctx context.Context, parent string, srcs []LayerSource, below, total int) ([]*Layer, error) {
	ps := make([]*pending, len(srcs))
	release := func() {
		for _, p := range ps {
			if p != nil && p.hold != nil {
				p.hold.release()
			}
		}
	}
	defer release()
	for i := range ps {
		id := newID()
		hold, err := s.holdLayer(id)
		if err != nil {
			return nil, err
		}
		ps[i] = &pending{id: id, hold: hold, done: make(chan struct{})}
	}
	// Create them all, incomplete, each on the one before.
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	made := 0
	var cerr error
	for i, p := range ps {
		under := parent
		if i > 0 {
			under = ps[i-1].id
		}
		if cerr = s.startChild(p.id, under, i > 0); cerr != nil {
			break
		}
		if cerr = noSpace(s.driver.Create(p.id, under, nil)); cerr != nil {
			made++ // its row exists
			break
		}
		made++
	}
	if cerr != nil {
		cerr = s.discardChain(ps[:made], cerr)
	}
	unlock()
	if cerr != nil {
		return nil, cerr
	}
	s.crashPoint("chain-created")

	// Apply them, bounded, in order of starting so that a layer waiting
	// for its parent never holds back the parent's own start.
	sem := make(chan struct{}, maxParallelApplies)
	var wg sync.WaitGroup
	for i, p := range ps {
		lowers := make([]diff.Lower, i)
		for j := range i {
			lowers[j].Ready = ps[i-1-j].ready // nearest parent first
		}
		under := parent
		if i > 0 {
			under = ps[i-1].id
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			p.err = ctx.Err()
			close(p.done)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer close(p.done)
			p.res, p.err = s.applySourceInto(ctx, p.id, under, srcs[i], lowers)
		}()
	}
	wg.Wait()

	// Complete bottom first, up to the first failure.
	unlock, err = s.lock()
	if err != nil {
		return nil, err // left incomplete: the next Open removes them
	}
	defer unlock()
	var out []*Layer
	var chain digest.Digest
	if parent != "" {
		if err := s.q.QueryRow(`SELECT chain_id FROM layers WHERE id = ?`, parent).Scan((*string)(&chain)); err != nil {
			return nil, s.discardChain(ps, fmt.Errorf("parent %s: %w", parent, err))
		}
	}
	chainKnown := parent == "" || chain != ""
	for i, p := range ps {
		if p.err != nil {
			return out, s.discardChain(ps[i:], fmt.Errorf("layer %d of %d: %w", below+i+1, total, p.err))
		}
		if chainKnown {
			chain = ChainID(chain, p.res.DiffID)
		} else {
			chain = ""
		}
		var existing string
		err := s.tx(func(tx querier) error {
			if chain != "" {
				err := tx.QueryRow(`SELECT id FROM layers WHERE chain_id = ? AND state = 'complete' AND kind = 'image'`, chain.String()).Scan(&existing)
				if err == nil {
					return nil
				}
				if !errors.Is(err, sql.ErrNoRows) {
					return err
				}
			}
			if err := completeLayer(tx, p.id, p.res.DiffID, chain, p.res.TarSize, p.res.Size); err != nil {
				return err
			}
			return addBlob(tx, p.id, srcs[i].Blob)
		})
		if err == nil && existing != "" {
			// Another process stored this part of the chain meanwhile;
			// ours above it sits on our copy. Keep the chain ours: the
			// rest is redone on the stored layer by a later call.
			err = fmt.Errorf("layer %d of %d was stored meanwhile by another process as %s; apply again to reuse it", below+i+1, total, existing)
		}
		if err != nil {
			return out, s.discardChain(ps[i:], err)
		}
		s.crashPoint("chain-layer-completed")
		l, err := s.layerRow(s.q, p.id)
		if err != nil {
			return out, err
		}
		out = append(out, l)
	}
	return out, nil
}

// startChild records layer id as incomplete on parent, which may be an
// incomplete layer of the same chain (incompleteParent).
func (s *Store) startChild(id, parent string, incompleteParent bool) error {
	if !incompleteParent {
		_, err := s.startLayer(id, parent, KindImage)
		return err
	}
	_, err := s.q.Exec(`INSERT INTO layers (id, parent, kind, state, created) VALUES (?, ?, 'image', 'incomplete', ?)`,
		id, parent, nanos(time.Now()))
	return noSpace(err)
}

// applySourceInto opens src and applies it into the created layer id.
// Its errors name the layer as ApplyDiff's do, "apply layer ID: ...", but
// for src.Open's, which come before there is anything to apply (as in
// applySource).
func (s *Store) applySourceInto(ctx context.Context, id, parent string, src LayerSource, lowers []diff.Lower) (diff.ApplyResult, error) {
	rc, err := src.Open(ctx)
	if err != nil {
		return diff.ApplyResult{}, err
	}
	defer rc.Close()
	res, err := s.applyData(ctx, id, parent, rc, &ApplyOptions{}, lowers)
	if err == nil && src.DiffID != "" && res.DiffID != src.DiffID {
		err = fmt.Errorf("%w: content has diff ID %s, expected %s", ErrDigestMismatch, res.DiffID, src.DiffID)
	}
	if err == nil {
		err = s.syncLayer()
	}
	if err != nil {
		return res, fmt.Errorf("apply layer %s: %w", id, err)
	}
	return res, nil
}

// discardChain removes the incomplete layers ps (bottom first), top
// first, and returns cause. Under the store lock.
func (s *Store) discardChain(ps []*pending, cause error) error {
	var errs []error
	for i := len(ps) - 1; i >= 0; i-- {
		if err := s.dropLayer(ps[i].id); err != nil {
			errs = append(errs, fmt.Errorf("clean up layer %s: %w", ps[i].id, err))
		}
	}
	return joinErrors(append([]error{noSpace(cause)}, errs...)...)
}
