package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/graphdriver"
)

// LayerOptions tune CreateLayer.
type LayerOptions struct {
	// ID is the new layer's ID (64 hex); empty means a random one.
	ID string
	// ReadWrite makes a read-write (container kind) layer instead of an
	// image layer.
	ReadWrite bool
}

// ApplyOptions tune ApplyDiff.
type ApplyOptions struct {
	// DiffID, when set, is the diffID the caller expects (from an image
	// config). A complete layer with the resulting chainID already
	// stored is returned without reading r at all, and content that does
	// not hash to DiffID fails with ErrDigestMismatch.
	DiffID digest.Digest
	// Blob, when set, is the compressed blob r was read from; it is
	// recorded with the layer (also with an existing layer that is
	// reused), for pushing it again as it was.
	Blob *Blob
	// ID is the new layer's ID (64 hex); empty means a random one.
	ID string
	// Warn receives notes about entries changed on the way in (overlay
	// xattrs dropped); nil discards them.
	Warn func(msg string)
}

// layerColumns are the columns scanLayer reads, in order.
const layerColumns = `id, COALESCE(parent, ''), kind, diff_id, chain_id, tar_size, size, created`

type scanner interface{ Scan(dest ...any) error }

func scanLayer(r scanner) (*Layer, error) {
	var l Layer
	var kind, diffID, chainID string
	var created int64
	if err := r.Scan(&l.ID, &l.Parent, &kind, &diffID, &chainID, &l.TarSize, &l.Size, &created); err != nil {
		return nil, err
	}
	l.Kind, l.DiffID, l.ChainID, l.Created = LayerKind(kind), digest.Digest(diffID), digest.Digest(chainID), fromNanos(created)
	return &l, nil
}

// loadBlobs fills the Blobs of ls.
func (s *Store) loadBlobs(ls ...*Layer) error {
	if len(ls) == 0 {
		return nil
	}
	byID := make(map[string]*Layer, len(ls))
	for _, l := range ls {
		byID[l.ID] = l
	}
	q := `SELECT layer_id, digest, media_type, size FROM layer_blobs`
	var args []any
	if len(ls) == 1 {
		q += ` WHERE layer_id = ?`
		args = append(args, ls[0].ID)
	}
	rows, err := s.q.Query(q+` ORDER BY layer_id, digest`, args...)
	if err != nil {
		return fmt.Errorf("database: layer blobs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, d, mt string
		var size int64
		if err := rows.Scan(&id, &d, &mt, &size); err != nil {
			return fmt.Errorf("database: layer blobs: %w", err)
		}
		if l := byID[id]; l != nil {
			l.Blobs = append(l.Blobs, Blob{Digest: digest.Digest(d), MediaType: mt, Size: size})
		}
	}
	return rows.Err()
}

// layerRow reads complete layer id (a full ID) or returns ErrLayerUnknown.
func (s *Store) layerRow(q querier, id string) (*Layer, error) {
	l, err := scanLayer(q.QueryRow(`SELECT `+layerColumns+` FROM layers WHERE id = ? AND state = 'complete'`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("layer %s: %w", id, ErrLayerUnknown)
	}
	if err != nil {
		return nil, fmt.Errorf("database: layer %s: %w", id, err)
	}
	return l, nil
}

// querier is *sql.DB or *sql.Tx.
type querier interface {
	QueryRow(query string, args ...any) *sql.Row
	Query(query string, args ...any) (*sql.Rows, error)
	Exec(query string, args ...any) (sql.Result, error)
}

// resolvePrefix finds the one ID of table (with extra conditions) equal
// to ref or starting with it. notFound is the sentinel to wrap.
func resolvePrefix(q querier, table, where, ref string, notFound error) (string, error) {
	ref = strings.TrimPrefix(ref, "sha256:")
	if !isHex(ref) || len(ref) > 64 {
		return "", notFound
	}
	cond := ""
	if where != "" {
		cond = " AND " + where
	}
	// Hex IDs sort below "g": [ref, ref+"g") holds exactly the IDs with
	// that prefix, which the primary key index answers.
	rows, err := q.Query(`SELECT id FROM `+table+` WHERE id >= ? AND id < ?`+cond+` ORDER BY id LIMIT 2`, ref, ref+"g")
	if err != nil {
		return "", fmt.Errorf("database: %s: %w", table, err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return "", fmt.Errorf("database: %s: %w", table, err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("database: %s: %w", table, err)
	}
	switch {
	case len(ids) == 0:
		return "", notFound
	case len(ids) > 1 && ids[0] != ref:
		return "", fmt.Errorf("%w %q: matches %s and more", ErrAmbiguous, ref, strings.Join(ids, ", "))
	}
	return ids[0], nil
}

// resolveLayer returns the full ID of the complete layer ref names.
func (s *Store) resolveLayer(q querier, ref string) (string, error) {
	id, err := resolvePrefix(q, "layers", "state = 'complete'", ref, ErrLayerUnknown)
	if errors.Is(err, ErrLayerUnknown) {
		return "", fmt.Errorf("layer %q: %w", ref, ErrLayerUnknown)
	}
	return id, err
}

// Layer returns the complete layer with ID (or unique ID prefix) ref.
func (s *Store) Layer(ref string) (*Layer, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	id, err := s.resolveLayer(s.q, ref)
	if err != nil {
		return nil, err
	}
	l, err := s.layerRow(s.q, id)
	if err != nil {
		return nil, err
	}
	return l, s.loadBlobs(l)
}

// Layers returns every complete layer, image and read-write, ordered by
// creation time (parents before children).
func (s *Store) Layers() ([]*Layer, error) {
	return s.layersWhere(``)
}

// LayersByDiffID returns the complete layers whose uncompressed tar has
// digest d (several when the same tar was applied on different parents).
func (s *Store) LayersByDiffID(d digest.Digest) ([]*Layer, error) {
	return s.layersWhere(` AND diff_id = ?`, d.String())
}

// LayersByBlobDigest returns the complete layers known by compressed blob d.
func (s *Store) LayersByBlobDigest(d digest.Digest) ([]*Layer, error) {
	return s.layersWhere(` AND id IN (SELECT layer_id FROM layer_blobs WHERE digest = ?)`, d.String())
}

// LayerByChainID returns the complete image layer with chainID d, or
// ErrLayerUnknown. There is at most one: ApplyDiff reuses it.
func (s *Store) LayerByChainID(d digest.Digest) (*Layer, error) {
	ls, err := s.layersWhere(` AND chain_id = ?`, d.String())
	if err != nil {
		return nil, err
	}
	if len(ls) == 0 {
		return nil, fmt.Errorf("layer with chain ID %s: %w", d, ErrLayerUnknown)
	}
	return ls[0], nil
}

func (s *Store) layersWhere(cond string, args ...any) ([]*Layer, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := s.q.Query(`SELECT `+layerColumns+` FROM layers WHERE state = 'complete'`+cond+` ORDER BY created, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("database: layers: %w", err)
	}
	defer rows.Close()
	var ls []*Layer
	for rows.Next() {
		l, err := scanLayer(rows)
		if err != nil {
			return nil, fmt.Errorf("database: layers: %w", err)
		}
		ls = append(ls, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("database: layers: %w", err)
	}
	if len(ls) == 1 {
		return ls, s.loadBlobs(ls[0])
	}
	return ls, s.loadBlobs(ls...)
}

// ChainID computes the chainID of a layer with diffID on a parent with
// chainID parent ("" for a bottom layer), as the image-spec defines it.
func ChainID(parent, diffID digest.Digest) digest.Digest {
	if parent == "" {
		return diffID
	}
	return digest.FromString(parent.String() + " " + diffID.String())
}

// CreateLayer makes an empty layer on parent (a layer ID or prefix; ""
// for none): an image layer, or a read-write one with opts.ReadWrite. It
// has no DiffID.
func (s *Store) CreateLayer(parent string, opts *LayerOptions) (*Layer, error) {
	if opts == nil {
		opts = &LayerOptions{}
	}
	kind := KindImage
	if opts.ReadWrite {
		kind = KindContainer
	}
	id := opts.ID
	if id == "" {
		id = newID()
	} else if !isID(id) {
		return nil, fmt.Errorf("create layer: ID %q is not 64 hex characters", id)
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("create layer: %w", err)
	}
	defer unlock()
	parentID, err := s.startLayer(id, parent, kind)
	if err != nil {
		return nil, fmt.Errorf("create layer: %w", err)
	}
	if err := s.fillEmpty(id, parentID, kind); err != nil {
		return nil, fmt.Errorf("create layer %s: %w", id, s.discardLayer(id, err))
	}
	if err := s.tx(func(tx querier) error { return completeLayer(tx, id, "", "", 0, 0) }); err != nil {
		return nil, fmt.Errorf("create layer %s: %w", id, s.discardLayer(id, err))
	}
	l, err := s.layerRow(s.q, id)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// fillEmpty makes the driver's data of an empty layer and syncs it when
// asked. Under the store lock.
func (s *Store) fillEmpty(id, parent string, kind LayerKind) error {
	var err error
	if kind == KindContainer {
		err = s.driver.CreateReadWrite(id, parent, nil)
	} else {
		err = s.driver.Create(id, parent, nil)
	}
	if err != nil {
		return noSpace(err)
	}
	return s.syncLayer()
}

// startLayer resolves parent and records layer id as incomplete. Under
// the store lock. It returns the parent's full ID.
func (s *Store) startLayer(id, parent string, kind LayerKind) (string, error) {
	var parentID string
	err := s.tx(func(tx querier) error {
		if parent != "" {
			var err error
			if parentID, err = s.resolveLayer(tx, parent); err != nil {
				return fmt.Errorf("parent: %w", err)
			}
		}
		var p any
		if parentID != "" {
			p = parentID
		}
		_, err := tx.Exec(`INSERT INTO layers (id, parent, kind, state, created) VALUES (?, ?, ?, 'incomplete', ?)`,
			id, p, string(kind), nanos(time.Now()))
		if err != nil && strings.Contains(err.Error(), "UNIQUE") {
			return fmt.Errorf("layer %s exists already: %w", id, graphdriver.ErrLayerExists)
		}
		return err
	})
	return parentID, err
}

// completeLayer marks layer id complete with its digests and sizes.
func completeLayer(tx querier, id string, diffID, chainID digest.Digest, tarSize, size int64) error {
	res, err := tx.Exec(`UPDATE layers SET state = 'complete', diff_id = ?, chain_id = ?, tar_size = ?, size = ? WHERE id = ? AND state = 'incomplete'`,
		diffID.String(), chainID.String(), tarSize, size, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("layer %s vanished while being made (removed by a recovery that took it for debris)", id)
	}
	return nil
}

// discardLayer removes the driver's data and the row of an incomplete
// layer whose making failed with cause, and returns cause (joined with
// any cleanup error). Under the store lock. The row stays "incomplete"
// until the data is gone, which Open's recovery treats as debris: no
// "removing" mark is needed, and none is written to a full disk.
func (s *Store) discardLayer(id string, cause error) error {
	if err := s.dropLayer(id); err != nil {
		return joinErrors(cause, fmt.Errorf("clean up layer %s: %w", id, err))
	}
	return noSpace(cause)
}

// dropLayer deletes layer id's data, then its row. Under the store lock.
func (s *Store) dropLayer(id string) error {
	if err := s.driver.Remove(id); err != nil {
		return err
	}
	if err := os.Remove(s.layoutPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s.crashPoint("drop-data-removed")
	// Unsynced: a power loss that takes the delete back leaves the row
	// marked as before (incomplete or removing) without its data, as a
	// kill right here does, and Open's recovery drops it again. The next
	// durable commit syncs the delete with itself.
	_, err := s.q.execUnsynced(`DELETE FROM layers WHERE id = ?`, id)
	return noSpace(err)
}

// syncLayer flushes the driver's filesystem when the store has sync=true.
func (s *Store) syncLayer() error {
	if !s.sync {
		return nil
	}
	fd, err := unix.Open(s.home, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", s.home, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync %s: %w", s.home, err)
	}
	return nil
}

// ApplyDiff applies the layer tar r (uncompressed, gzip or zstd) as a new
// image layer on parent (a layer ID or prefix; "" for none) and returns
// it. When a complete layer with the same chainID is stored already, that
// layer is returned and the new one discarded: layers already stored are
// not kept twice (with opts.DiffID, not even applied).
//
// The data is written outside the store lock, so other operations (and
// other ApplyDiff calls) go on meanwhile; the layer is invisible until
// complete. A failure or a crash leaves nothing behind.
func (s *Store) ApplyDiff(ctx context.Context, parent string, r io.Reader, opts *ApplyOptions) (*Layer, error) {
	if opts == nil {
		opts = &ApplyOptions{}
	}
	id := opts.ID
	if id == "" {
		id = newID()
	} else if !isID(id) {
		return nil, fmt.Errorf("apply layer: ID %q is not 64 hex characters", id)
	}
	if err := s.checkOpen(); err != nil {
		return nil, fmt.Errorf("apply layer: %w", err)
	}
	if opts.DiffID != "" {
		if err := opts.DiffID.Validate(); err != nil {
			return nil, fmt.Errorf("apply layer: expected diff ID: %w", err)
		}
		if l, err := s.knownLayer(parent, opts.DiffID, opts.Blob); l != nil || err != nil {
			return l, err
		}
	}
	hold, err := s.holdLayer(id)
	if err != nil {
		return nil, fmt.Errorf("apply layer %s: %w", id, err)
	}
	defer hold.release()

	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("apply layer: %w", err)
	}
	parentID, err := s.startLayer(id, parent, KindImage)
	if err == nil {
		if err = noSpace(s.driver.Create(id, parentID, nil)); err != nil {
			err = s.discardLayer(id, err)
		}
	}
	unlock()
	if err != nil {
		return nil, fmt.Errorf("apply layer %s: %w", id, err)
	}
	s.crashPoint("apply-created")

	res, err := s.applyData(ctx, id, parentID, r, opts, nil)
	if err == nil && opts.DiffID != "" && res.DiffID != opts.DiffID {
		err = fmt.Errorf("%w: content has diff ID %s, expected %s", ErrDigestMismatch, res.DiffID, opts.DiffID)
	}
	if err == nil {
		s.crashPoint("apply-applied")
		err = s.syncLayer()
	}

	unlock, lerr := s.lock()
	if lerr != nil {
		// Closed meanwhile: the layer stays incomplete, which the next
		// Open removes.
		return nil, fmt.Errorf("apply layer %s: %w", id, joinErrors(err, lerr))
	}
	defer unlock()
	if err != nil {
		return nil, fmt.Errorf("apply layer %s: %w", id, s.discardLayer(id, err))
	}
	var existing string
	err = s.tx(func(tx querier) error {
		chainID, found, err := chainOn(tx, parentID, res.DiffID)
		if err != nil || found != "" {
			existing = found
			return err
		}
		if err := completeLayer(tx, id, res.DiffID, chainID, res.TarSize, res.Size); err != nil {
			return err
		}
		return addBlob(tx, id, opts.Blob)
	})
	if err != nil {
		return nil, fmt.Errorf("apply layer %s: %w", id, s.discardLayer(id, err))
	}
	if existing != "" {
		// Another ApplyDiff stored the same chain meanwhile: keep that one.
		if err := s.dropLayer(id); err != nil {
			return nil, fmt.Errorf("apply layer %s: discard duplicate of %s: %w", id, existing, err)
		}
		id = existing
		if opts.Blob != nil {
			if err := s.tx(func(tx querier) error { return addBlob(tx, id, opts.Blob) }); err != nil {
				return nil, fmt.Errorf("apply layer: record blob of %s: %w", id, err)
			}
		}
	}
	s.crashPoint("apply-completed")
	l, err := s.layerRow(s.q, id)
	if err != nil {
		return nil, err
	}
	return l, s.loadBlobs(l)
}

// applyData applies r into layer id, recording the tar's layout on the
// way (see LayerTar). Its errors do not name the layer: its callers say
// "apply layer ID" once, for these and for their own.
func (s *Store) applyData(ctx context.Context, id, parent string, r io.Reader, opts *ApplyOptions, lowers []diff.Lower) (diff.ApplyResult, error) {
	src, err := decompressed(r)
	if err != nil {
		return diff.ApplyResult{}, err
	}
	defer src.Close()
	ts, err := s.newTarSplitter(id, src)
	if err != nil {
		return diff.ApplyResult{}, fmt.Errorf("record tar layout: %w", err)
	}
	res, err := graphdriver.ApplyDiff(ctx, s.driver, id, parent, ts, diff.ApplyOptions{Warn: opts.Warn, Lowers: lowers})
	if err != nil {
		ts.abort()
		return res, err
	}
	return res, ts.finish(s.sync)
}

// knownLayer returns the complete layer with diffID on parent, when
// stored, recording blob with it. (nil, nil) means not stored.
func (s *Store) knownLayer(parent string, diffID digest.Digest, blob *Blob) (*Layer, error) {
	chainID := diffID
	if parent != "" {
		p, err := s.Layer(parent)
		if err != nil {
			return nil, fmt.Errorf("apply layer: parent: %w", err)
		}
		if p.ChainID == "" {
			return nil, nil
		}
		chainID = ChainID(p.ChainID, diffID)
	}
	l, err := s.LayerByChainID(chainID)
	if errors.Is(err, ErrLayerUnknown) {
		return nil, nil
	}
	if err != nil || blob == nil {
		return l, err
	}
	if err := s.AddLayerBlob(l.ID, *blob); err != nil {
		return nil, err
	}
	return s.Layer(l.ID)
}

// AddLayerBlob records that layer id is also known by compressed blob b.
func (s *Store) AddLayerBlob(id string, b Blob) error {
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("add blob to layer %s: %w", id, err)
	}
	defer unlock()
	err = s.tx(func(tx querier) error {
		full, err := s.resolveLayer(tx, id)
		if err != nil {
			return err
		}
		return addBlob(tx, full, &b)
	})
	if err != nil {
		return fmt.Errorf("add blob to layer %s: %w", id, err)
	}
	return nil
}

func addBlob(tx querier, id string, b *Blob) error {
	if b == nil {
		return nil
	}
	if err := b.Digest.Validate(); err != nil {
		return fmt.Errorf("blob digest: %w", err)
	}
	_, err := tx.Exec(`INSERT INTO layer_blobs (layer_id, digest, media_type, size) VALUES (?, ?, ?, ?)
		ON CONFLICT (layer_id, digest) DO UPDATE SET media_type = excluded.media_type, size = excluded.size`,
		id, b.Digest.String(), b.MediaType, b.Size)
	return err
}

// RemoveLayer removes layer ref (ID or prefix). A layer with children, the
// top layer of an image or the layer of a container is refused with
// ErrInUse (remove those first); a mounted layer is refused unless force,
// which unmounts it.
func (s *Store) RemoveLayer(ref string, force bool) error {
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("remove layer %s: %w", ref, err)
	}
	defer unlock()
	id, err := s.resolveLayer(s.q, ref)
	if err != nil {
		return fmt.Errorf("remove layer: %w", err)
	}
	if why, err := s.layerUsers(id); err != nil {
		return fmt.Errorf("remove layer %s: %w", id, err)
	} else if why != "" {
		return fmt.Errorf("remove layer %s: %w: %s", id, ErrInUse, why)
	}
	if n, _, err := s.mountCount(id); err != nil {
		return fmt.Errorf("remove layer %s: %w", id, err)
	} else if n > 0 && !force {
		return fmt.Errorf("remove layer %s: %w: mounted %d times (unmount it, or force)", id, ErrInUse, n)
	}
	if err := s.deleteLayer(id); err != nil {
		return fmt.Errorf("remove layer %s: %w", id, err)
	}
	return nil
}

// layerUsers says what keeps layer id ("" when nothing does): child
// layers, images, containers.
func (s *Store) layerUsers(id string) (string, error) {
	var what string
	err := s.q.QueryRow(`
		SELECT 'layer ' || id || ' is its child' FROM layers WHERE parent = ?1
		UNION ALL SELECT 'image ' || image_id || ' uses it' FROM image_layers WHERE layer_id = ?1
		UNION ALL SELECT 'image ' || id || ' uses it' FROM images WHERE top_layer = ?1
		UNION ALL SELECT 'container ' || id || ' uses it' FROM containers WHERE layer_id = ?1
		LIMIT 1`, id).Scan(&what)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("database: users of layer %s: %w", id, err)
	}
	return what, nil
}

// deleteLayer removes a complete layer nothing uses: marked removing,
// data deleted (which unmounts it), row deleted. Under the store lock.
func (s *Store) deleteLayer(id string) error {
	if _, err := s.q.Exec(`UPDATE layers SET state = 'removing' WHERE id = ?`, id); err != nil {
		return fmt.Errorf("database: %w", noSpace(err))
	}
	s.crashPoint("remove-marked")
	return s.dropLayer(id)
}

// layerLockPath is the lock file held while layer id is being applied.
func (s *Store) layerLockPath(id string) string { return filepath.Join(s.tmp, id+".lock") }

// layerHold is the flock an ApplyDiff holds on its layer's lock file.
type layerHold struct {
	f *os.File
}

// holdLayer creates and locks layer id's lock file, before its row
// exists, so that a recovery in another process never takes a layer being
// applied for debris.
func (s *Store) holdLayer(id string) (*layerHold, error) {
	p := s.layerLockPath(id)
	for range 100 {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock file: %w", noSpace(err))
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		// A recovery may have removed the file between our open and our
		// flock (it was not locked yet): a lock on an unlinked file
		// guards nothing, so start again.
		var held, onDisk unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(p, &onDisk) == nil && held.Ino == onDisk.Ino && held.Dev == onDisk.Dev {
			return &layerHold{f: f}, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("lock %s: removed under us 100 times", p)
}

// release removes the lock file, then drops the lock: removed first, so
// that nobody locks a file that is about to vanish.
func (h *layerHold) release() {
	_ = os.Remove(h.f.Name())
	_ = h.f.Close()
}

// layerBeingApplied reports whether a live process holds layer id's lock
// file. A lock file nobody holds is debris and goes.
func (s *Store) layerBeingApplied(id string) bool {
	p := s.layerLockPath(id)
	f, err := os.OpenFile(p, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = os.Remove(p)
	return false
}

// recover removes what killed processes left: incomplete layers nobody is
// applying, layers marked removing, lock files of layers that are gone.
// st says which of the database's checks have work (Open read it under
// the same lock). Under the store lock.
func (s *Store) recover(st dbState) error {
	if err := s.recoverLayers(st); err != nil {
		return err
	}
	ents, err := os.ReadDir(s.tmp)
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if id, ok := strings.CutSuffix(name, ".lock"); ok && isID(id) {
			// Lock files of applies killed before their row was
			// written, or after it was deleted.
			s.layerBeingApplied(id)
		} else if isPinFile(name) {
			// Mounts counted by differs of killed processes.
			if err := s.recoverPinFile(filepath.Join(s.tmp, name)); err != nil {
				return fmt.Errorf("recover: %w", err)
			}
		}
	}
	// Mount counts a killed process left lying, mounts it left uncounted.
	if err := s.checkMounts(&Report{}, true); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	return nil
}

// recoverLayers removes layers left incomplete or being removed, and
// collects blobs whose last image went, when st says there are any.
func (s *Store) recoverLayers(st dbState) error {
	if st.leftovers {
		rows, err := s.q.Query(`SELECT id, state FROM layers WHERE state != 'complete' ORDER BY created DESC`)
		if err != nil {
			return fmt.Errorf("recover: %w", err)
		}
		type left struct{ id, state string }
		var lefts []left
		for rows.Next() {
			var l left
			if err := rows.Scan(&l.id, &l.state); err != nil {
				rows.Close()
				return fmt.Errorf("recover: %w", err)
			}
			lefts = append(lefts, l)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("recover: %w", err)
		}
		for _, l := range lefts {
			if l.state == "incomplete" && s.layerBeingApplied(l.id) {
				continue
			}
			if l.state == "incomplete" {
				if err := s.recoverCommit(l.id); err != nil {
					return fmt.Errorf("recover: %w", err)
				}
			}
			if err := s.dropLayer(l.id); err != nil {
				return fmt.Errorf("recover: remove %s layer %s: %w", l.state, l.id, err)
			}
		}
	}
	// Blobs of images whose creation or removal was interrupted.
	if st.blobGC {
		if err := s.gcBlobs(); err != nil {
			return fmt.Errorf("recover: %w", err)
		}
	}
	return nil
}

// crashEnv names the environment variable of the crash test hook: a
// process whose variable names one of the points passed to crashPoint
// kills itself with SIGKILL there, so that tests can stop it at exactly
// that step of an operation. It costs one string comparison per point.
const crashEnv = "LAYERS_STORE_CRASH_AT"

func (s *Store) crashPoint(name string) {
	if s.crashAt != name {
		return
	}
	_ = unix.Kill(os.Getpid(), unix.SIGKILL)
	select {} // SIGKILL is not delivered synchronously
}
