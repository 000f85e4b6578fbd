package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/graphdriver"
)

// CheckOptions tune Check.
type CheckOptions struct {
	// Digests recomputes every image layer's diffID from its data, which
	// reads all of it: what finds layers damaged by a power loss.
	Digests bool
}

// RepairOptions tune Repair.
type RepairOptions struct {
	CheckOptions
	// RemoveDamaged removes what cannot be repaired without losing data:
	// layers whose data is missing or (with Digests) does not match
	// their diffID, and images whose config or manifest is missing or
	// corrupt, with everything that depends on them (child layers,
	// images, containers). Without it, Repair leaves them and reports
	// them unfixed.
	RemoveDamaged bool
}

// ProblemKind names a kind of problem Check finds.
type ProblemKind string

// The problems Check finds. Those Repair fixes without losing anything
// are marked "fixable"; the others need RepairOptions.RemoveDamaged.
const (
	// ProblemLeftover: an incomplete or removing layer nobody works on
	// (fixable: removed, as Open does).
	ProblemLeftover ProblemKind = "leftover-layer"
	// ProblemDataMissing: a complete layer whose driver data is gone.
	ProblemDataMissing ProblemKind = "layer-data-missing"
	// ProblemOrphanData: driver data of a layer the database does not
	// know (fixable: removed; nothing can use it).
	ProblemOrphanData ProblemKind = "orphan-layer-data"
	// ProblemStaleMount: a mount count above zero whose path is not
	// mounted (fixable: count reset).
	ProblemStaleMount ProblemKind = "stale-mount-count"
	// ProblemLeakedMount: a layer mounted with a count of zero
	// (fixable: unmounted).
	ProblemLeakedMount ProblemKind = "leaked-mount"
	// ProblemBlobMissing: an image's config or manifest blob is missing
	// or does not match its digest.
	ProblemBlobMissing ProblemKind = "blob-missing"
	// ProblemOrphanBlob: a blob no image references, or a temp file of
	// an interrupted write (fixable: removed).
	ProblemOrphanBlob ProblemKind = "orphan-blob"
	// ProblemDigestMismatch: a layer whose data does not hash to its
	// diffID (Digests only).
	ProblemDigestMismatch ProblemKind = "layer-digest-mismatch"
)

// Problem is one thing Check found.
type Problem struct {
	Kind ProblemKind `json:"kind"`
	// ID is the layer, image or blob concerned.
	ID string `json:"id"`
	// Detail says what is wrong, for people.
	Detail string `json:"detail"`
	// Fixed is set by Repair when it fixed the problem.
	Fixed bool `json:"fixed"`
}

// String formats the problem on one line.
func (p Problem) String() string {
	s := fmt.Sprintf("%s %s: %s", p.Kind, p.ID, p.Detail)
	if p.Fixed {
		s += " (fixed)"
	}
	return s
}

// Report is what Check and Repair found.
type Report struct {
	Problems []Problem `json:"problems"`
}

// Clean reports whether nothing was found (or everything found was fixed).
func (r *Report) Clean() bool {
	for _, p := range r.Problems {
		if !p.Fixed {
			return false
		}
	}
	return true
}

func (r *Report) add(kind ProblemKind, id, format string, args ...any) {
	r.Problems = append(r.Problems, Problem{Kind: kind, ID: id, Detail: fmt.Sprintf(format, args...)})
}

// Check verifies the database against the driver's data, the mount counts
// against the kernel's mountinfo, and the image blobs; with opts.Digests
// it also recomputes every image layer's diffID. It changes nothing.
func (s *Store) Check(ctx context.Context, opts CheckOptions) (*Report, error) {
	r := &Report{Problems: []Problem{}}
	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	err = s.checkLocked(r)
	unlock()
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	if opts.Digests {
		if err := s.checkDigests(ctx, r); err != nil {
			return nil, fmt.Errorf("check: %w", err)
		}
	}
	return r, nil
}

// checkLocked does the checks that need a still store: under the lock.
func (s *Store) checkLocked(r *Report) error {
	type row struct{ id, state string }
	var rows []row
	known := map[string]bool{}
	q, err := s.q.Query(`SELECT id, state FROM layers ORDER BY created, id`)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	for q.Next() {
		var x row
		if err := q.Scan(&x.id, &x.state); err != nil {
			q.Close()
			return fmt.Errorf("database: %w", err)
		}
		rows = append(rows, x)
		known[x.id] = true
	}
	q.Close()
	for _, x := range rows {
		switch {
		case x.state == "incomplete" && s.layerBeingApplied(x.id):
		case x.state != "complete":
			r.add(ProblemLeftover, x.id, "layer left %s by an interrupted operation", x.state)
		case !s.driver.Exists(x.id):
			r.add(ProblemDataMissing, x.id, "the %s driver has no data for this layer", s.driver.String())
		}
	}
	for _, id := range s.driverLayerIDs() {
		if !known[id] {
			r.add(ProblemOrphanData, id, "the %s driver has data for a layer the database does not know", s.driver.String())
		}
	}
	if ents, err := os.ReadDir(filepath.Dir(s.layoutPath("x"))); err == nil {
		for _, e := range ents {
			if id, ok := strings.CutSuffix(e.Name(), ".gz"); ok && isID(id) && !known[id] {
				r.add(ProblemOrphanData, id, "tar layout %s belongs to no layer", s.layoutPath(id))
			}
		}
	}

	if err := s.checkMounts(r, false); err != nil {
		return err
	}

	imgs, err := s.imagesWhere(s.q, ``)
	if err != nil {
		return err
	}
	referenced := map[string]bool{}
	for _, img := range imgs {
		blobs := []digest.Digest{digest.NewDigestFromEncoded(digest.SHA256, img.ID)}
		if img.Digest != "" {
			blobs = append(blobs, img.Digest)
		}
		for _, d := range blobs {
			referenced[d.Encoded()] = true
			if _, err := s.readBlob(d); err != nil {
				r.add(ProblemBlobMissing, img.ID, "%v", err)
			}
		}
	}
	ents, err := os.ReadDir(s.blobs)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !referenced[e.Name()] {
			r.add(ProblemOrphanBlob, e.Name(), "blob %s is used by no image", filepath.Join(s.blobs, e.Name()))
		}
	}
	return nil
}

// checkMounts compares the mount counts with the kernel's mountinfo:
// counts above zero whose path is not mounted (stale), and mount points
// under the driver's home that no count covers (leaked: a process killed
// between the driver's Get and recording it, or a mount made by hand).
// With fix, stale counts are reset and leaked mounts undone. Under the
// store lock.
func (s *Store) checkMounts(r *Report, fix bool) error {
	if fix && s.mountsTrusted {
		return nil // Open's recovery, after operations that all ended
	}
	rows, err := s.q.Query(`SELECT layer_id, count, path, kernel FROM mounts WHERE count > 0 ORDER BY layer_id`)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	type mrow struct {
		id string
		m  mountRow
	}
	var counted []mrow
	for rows.Next() {
		var x mrow
		if err := rows.Scan(&x.id, &x.m.count, &x.m.path, &x.m.kernel); err != nil {
			rows.Close()
			return fmt.Errorf("database: %w", err)
		}
		counted = append(counted, x)
	}
	rows.Close()
	km, err := s.kernelMounts()
	if err != nil {
		return err
	}
	// live holds the mount points the counts cover, as mountinfo names
	// them.
	live := map[string]bool{}
	for _, x := range counted {
		if !km.stale(x.m) {
			live[x.m.path] = true
			if p, ok := km.real(x.m.path); ok && km.mounted[p] {
				live[p] = true
			} else if p, err := filepath.EvalSymlinks(x.m.path); err == nil {
				live[p] = true
			}
			continue
		}
		r.add(ProblemStaleMount, x.id, "counted %d mounts, but %s is not mounted", x.m.count, x.m.path)
		if fix {
			if _, err := s.q.Exec(`UPDATE mounts SET count = 0 WHERE layer_id = ?`, x.id); err != nil {
				return fmt.Errorf("database: %w", noSpace(err))
			}
		}
	}
	var errs []error
	for _, m := range km.points {
		if m == km.realHome || live[m] {
			continue
		}
		id := layerIDIn(km.realHome, m)
		if id != "" && s.layerBeingApplied(id) {
			continue // the driver mounted it to apply it
		}
		r.add(ProblemLeakedMount, id, "%s is mounted, but no mount is counted", m)
		if !fix {
			continue
		}
		if id != "" {
			if err := s.settle(id, m); err == nil {
				continue
			}
		}
		if err := graphdriver.UnmountDetach(m); err != nil {
			errs = append(errs, err)
		}
	}
	return joinErrors(errs...)
}

// layerIDIn returns the layer ID among the components of path below the
// driver's home ("" when none): drivers name a layer's directory by its ID.
func layerIDIn(home, path string) string {
	rel, err := filepath.Rel(home, path)
	if err != nil {
		return ""
	}
	for _, c := range strings.Split(rel, string(filepath.Separator)) {
		if isID(c) {
			return c
		}
	}
	return ""
}

// driverLayerIDs returns the IDs of layers the driver has data for, as
// far as can be told without a listing capability in the driver
// contract: every entry up to two levels under the driver's home whose
// name is a layer ID and for which the driver's Exists says yes. Layer
// IDs are 64 hex characters, and drivers keep a layer in a directory
// named by its ID, so this finds them without knowing any layout.
func (s *Store) driverLayerIDs() []string {
	seen := map[string]bool{}
	var walk func(dir string, depth int)
	walk = func(dir string, depth int) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range ents {
			name := e.Name()
			if isID(name) {
				if s.driver.Exists(name) {
					seen[name] = true
				}
				continue
			}
			if depth < 2 && e.IsDir() && name != "tmp" {
				walk(filepath.Join(dir, name), depth+1)
			}
		}
	}
	walk(s.home, 1)
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// checkDigests recomputes the diffID of every complete image layer that
// has one. It works layer by layer, each pinned while it is read, so the
// store stays usable meanwhile.
func (s *Store) checkDigests(ctx context.Context, r *Report) error {
	ls, err := s.Layers()
	if err != nil {
		return err
	}
	for _, l := range ls {
		if l.DiffID == "" || l.Kind != KindImage {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		got, err := s.layerDiffID(ctx, l)
		switch {
		case errors.Is(err, ErrLayerUnknown), errors.Is(err, errUnreproducible):
			continue // removed meanwhile; or a tar its files cannot give back
		case err != nil:
			r.add(ProblemDigestMismatch, l.ID, "cannot read the layer's data: %v", err)
		case got != l.DiffID:
			r.add(ProblemDigestMismatch, l.ID, "data hashes to %s, the layer's diff ID is %s", got, l.DiffID)
		}
	}
	return nil
}

// layerDiffID recomputes layer l's diffID from its data: the tar
// reassembled from its layout, or without one, its export.
// errUnreproducible means it cannot be told.
func (s *Store) layerDiffID(ctx context.Context, l *Layer) (digest.Digest, error) {
	rc, err := s.layerTar(ctx, l.ID)
	if errors.Is(err, os.ErrNotExist) {
		rc, err = s.Diff(ctx, l.ID)
	}
	if err != nil {
		return "", err
	}
	return tarDigest(rc)
}

// Repair runs Check and fixes what it found that can be fixed without
// losing data; with opts.RemoveDamaged, it also removes damaged layers and
// images with what depends on them. The report marks what was fixed.
func (s *Store) Repair(ctx context.Context, opts RepairOptions) (*Report, error) {
	r, err := s.Check(ctx, opts.CheckOptions)
	if err != nil {
		return nil, fmt.Errorf("repair: %w", err)
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("repair: %w", err)
	}
	defer unlock()
	var errs []error
	for i := range r.Problems {
		p := &r.Problems[i]
		var err error
		switch p.Kind {
		case ProblemLeftover:
			var state string
			if err = s.q.QueryRow(`SELECT state FROM layers WHERE id = ?`, p.ID).Scan(&state); err == nil &&
				(state != "incomplete" || !s.layerBeingApplied(p.ID)) {
				err = s.dropLayer(p.ID)
			}
		case ProblemOrphanData:
			var n int
			if err = s.q.QueryRow(`SELECT COUNT(*) FROM layers WHERE id = ?`, p.ID).Scan(&n); err == nil && n == 0 {
				err = s.driver.Remove(p.ID)
				if rerr := os.Remove(s.layoutPath(p.ID)); err == nil && rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
					err = rerr
				}
			}
		case ProblemStaleMount, ProblemLeakedMount:
			err = s.checkMounts(&Report{}, true)
		case ProblemOrphanBlob:
			err = s.removeOrphanBlob(p.ID)
		case ProblemDataMissing, ProblemDigestMismatch:
			if opts.RemoveDamaged {
				err = s.removeWithDependents(p.ID)
			} else {
				continue
			}
		case ProblemBlobMissing:
			if opts.RemoveDamaged {
				err = s.removeImageForce(p.ID)
			} else {
				continue
			}
		default:
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", p.Kind, p.ID, err))
			continue
		}
		p.Fixed = true
	}
	if err := joinErrors(errs...); err != nil {
		return r, fmt.Errorf("repair: %w", err)
	}
	return r, nil
}

// removeOrphanBlob removes blob name if still no image references it.
func (s *Store) removeOrphanBlob(name string) error {
	if !strings.HasPrefix(name, ".tmp-") {
		var n int
		d := "sha256:" + name
		if err := s.q.QueryRow(`SELECT COUNT(*) FROM images WHERE id = ? OR digest = ?`, name, d).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
	if err := os.Remove(filepath.Join(s.blobs, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// removeWithDependents removes layer id, every layer above it, the images
// using any of them and the containers on any of them. Under the store
// lock. For damaged layers only: it loses the containers' data.
func (s *Store) removeWithDependents(id string) error {
	// Descendants, deepest last.
	ids := []string{id}
	for i := 0; i < len(ids); i++ {
		rows, err := s.q.Query(`SELECT id FROM layers WHERE parent = ?`, ids[i])
		if err != nil {
			return err
		}
		for rows.Next() {
			var c string
			if rows.Scan(&c) == nil {
				ids = append(ids, c)
			}
		}
		rows.Close()
	}
	for _, l := range ids {
		var cid string
		if err := s.q.QueryRow(`SELECT id FROM containers WHERE layer_id = ?`, l).Scan(&cid); err == nil {
			_ = s.unmountLayer(l, true, true)
			if _, err := s.q.Exec(`DELETE FROM containers WHERE id = ?`, cid); err != nil {
				return err
			}
		}
		rows, err := s.q.Query(`SELECT DISTINCT image_id FROM image_layers WHERE layer_id = ? UNION SELECT id FROM images WHERE top_layer = ?`, l, l)
		if err != nil {
			return err
		}
		var imgs []string
		for rows.Next() {
			var i string
			if rows.Scan(&i) == nil {
				imgs = append(imgs, i)
			}
		}
		rows.Close()
		for _, i := range imgs {
			if err := s.removeImageForce(i); err != nil {
				return err
			}
		}
	}
	for i := len(ids) - 1; i >= 0; i-- {
		_ = s.unmountLayer(ids[i], true, true)
		if err := s.deleteLayer(ids[i]); err != nil {
			return fmt.Errorf("layer %s: %w", ids[i], err)
		}
	}
	return nil
}

// removeImageForce removes image id's record, names and blobs, leaving
// its layers (Prune removes them). Under the store lock.
func (s *Store) removeImageForce(id string) error {
	img, err := s.imageByID(s.q, id)
	if errors.Is(err, ErrImageUnknown) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := s.deleteImageRow(img); err != nil {
		return err
	}
	return s.gcBlobs()
}
