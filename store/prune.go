package store

import (
	"context"
	"fmt"
)

// PruneReport says what Prune removed.
type PruneReport struct {
	// Layers are the IDs of the layers removed.
	Layers []string `json:"layers"`
	// Size is the sum of their sizes (Layer.Size).
	Size int64 `json:"size"`
}

// Prune removes every layer that no image and no container uses, directly
// or as a parent, and that is not mounted, and returns what it freed.
// Images and containers are never removed.
func (s *Store) Prune(ctx context.Context) (*PruneReport, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	defer unlock()
	rep := &PruneReport{Layers: []string{}}
	for {
		// Leaves first: removing a leaf may make its parent one.
		rows, err := s.q.Query(`SELECT id, size FROM layers l WHERE state = 'complete'
			AND NOT EXISTS (SELECT 1 FROM layers c WHERE c.parent = l.id)
			AND NOT EXISTS (SELECT 1 FROM image_layers il WHERE il.layer_id = l.id)
			AND NOT EXISTS (SELECT 1 FROM images i WHERE i.top_layer = l.id)
			AND NOT EXISTS (SELECT 1 FROM containers ct WHERE ct.layer_id = l.id)
			ORDER BY id`)
		if err != nil {
			return rep, fmt.Errorf("prune: database: %w", err)
		}
		type cand struct {
			id   string
			size int64
		}
		var cands []cand
		for rows.Next() {
			var c cand
			if err := rows.Scan(&c.id, &c.size); err != nil {
				rows.Close()
				return rep, fmt.Errorf("prune: database: %w", err)
			}
			cands = append(cands, c)
		}
		rows.Close()
		removed := 0
		for _, c := range cands {
			if err := ctx.Err(); err != nil {
				return rep, fmt.Errorf("prune: %w", err)
			}
			if n, _, err := s.mountCount(c.id); err != nil || n > 0 {
				continue
			}
			if err := s.deleteLayer(c.id); err != nil {
				return rep, fmt.Errorf("prune: layer %s: %w", c.id, err)
			}
			rep.Layers = append(rep.Layers, c.id)
			rep.Size += c.size
			removed++
		}
		if removed == 0 {
			return rep, nil
		}
	}
}
