package store

import (
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// ImageOptions describe an image for CreateImage.
type ImageOptions struct {
	// Config is the image config JSON; its sha256 is the image's ID.
	// Required. When it lists rootfs.diff_ids, they must be the DiffIDs
	// of the layer chain under TopLayer, bottom first.
	Config []byte
	// Manifest is the image manifest JSON, if any; its digest is the
	// image's Digest.
	Manifest []byte
	// TopLayer is the ID (or prefix) of the image's top layer; "" for an
	// image without layers. The image's layers are that layer and its
	// parents.
	TopLayer string
	// Names are references to give the image (normalised with
	// NormalizeName). A name another image has moves to this one, as
	// docker's tag does.
	Names []string
	// Metadata, when set, is the image's metadata (JSON), replacing what
	// an existing image with the same ID had.
	Metadata json.RawMessage
}

// CreateImage records an image and returns it. Storing an image whose ID
// exists already adds the names (and the manifest, if it had none) and
// returns the existing image.
func (s *Store) CreateImage(opts ImageOptions) (*Image, error) {
	if len(opts.Config) == 0 {
		return nil, errors.New("create image: no config")
	}
	var cfg struct {
		RootFS struct {
			DiffIDs []digest.Digest `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(opts.Config, &cfg); err != nil {
		return nil, fmt.Errorf("create image: config is not an image config: %w", err)
	}
	if opts.Manifest != nil && !json.Valid(opts.Manifest) {
		return nil, errors.New("create image: manifest is not valid JSON")
	}
	if opts.Metadata != nil && !json.Valid(opts.Metadata) {
		return nil, errors.New("create image: metadata is not valid JSON")
	}
	names := make([]string, 0, len(opts.Names))
	for _, n := range opts.Names {
		full, err := NormalizeName(n)
		if err != nil {
			return nil, fmt.Errorf("create image: %w", err)
		}
		names = append(names, full)
	}
	configDigest := digest.FromBytes(opts.Config)
	id := configDigest.Encoded()
	var manifestDigest digest.Digest
	if opts.Manifest != nil {
		manifestDigest = digest.FromBytes(opts.Manifest)
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("create image %s: %w", id, err)
	}
	defer unlock()
	var topLayer string
	var chain []*Layer
	if opts.TopLayer != "" {
		if topLayer, err = s.resolveLayer(s.q, opts.TopLayer); err != nil {
			return nil, fmt.Errorf("create image %s: %w", id, err)
		}
		if chain, err = s.layerChain(s.q, topLayer); err != nil {
			return nil, fmt.Errorf("create image %s: %w", id, err)
		}
	}
	if len(cfg.RootFS.DiffIDs) > 0 {
		if err := checkDiffIDs(cfg.RootFS.DiffIDs, chain); err != nil {
			return nil, fmt.Errorf("create image %s: %w", id, err)
		}
	}
	// Blobs before the rows, each first recorded for deletion (in
	// blob_gc) and the record dropped in the transaction that adds the
	// image: a crash leaves a blob the next Open deletes, never a row
	// without its blob. Under the lock, so no Repair or Open takes a blob
	// being written for debris.
	var blobs []digest.Digest
	for _, b := range [][]byte{opts.Config, opts.Manifest} {
		if b == nil {
			continue
		}
		d := digest.FromBytes(b)
		if _, err := s.q.Exec(`INSERT OR IGNORE INTO blob_gc (digest) VALUES (?)`, d.String()); err != nil {
			return nil, fmt.Errorf("create image %s: %w", id, noSpace(err))
		}
		blobs = append(blobs, d)
		if err := s.writeBlob(b); err != nil {
			return nil, fmt.Errorf("create image %s: %w", id, joinErrors(err, s.gcBlobs()))
		}
	}
	s.crashPoint("image-blobs-written")
	err = s.tx(func(tx querier) error {
		var exists int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM images WHERE id = ?`, id).Scan(&exists); err != nil {
			return err
		}
		if exists == 0 {
			var top any
			if topLayer != "" {
				top = topLayer
			}
			if _, err := tx.Exec(`INSERT INTO images (id, digest, top_layer, created) VALUES (?, ?, ?, ?)`,
				id, manifestDigest.String(), top, nanos(time.Now())); err != nil {
				return err
			}
			for i, l := range chain {
				if _, err := tx.Exec(`INSERT INTO image_layers (image_id, idx, layer_id) VALUES (?, ?, ?)`, id, i, l.ID); err != nil {
					return err
				}
			}
		} else if manifestDigest != "" {
			if _, err := tx.Exec(`UPDATE images SET digest = ? WHERE id = ? AND digest = ''`, manifestDigest.String(), id); err != nil {
				return err
			}
		}
		if opts.Metadata != nil {
			if _, err := tx.Exec(`UPDATE images SET metadata = ? WHERE id = ?`, string(opts.Metadata), id); err != nil {
				return err
			}
		}
		for _, n := range names {
			if err := setName(tx, n, id); err != nil {
				return err
			}
		}
		for _, d := range blobs {
			if _, err := tx.Exec(`DELETE FROM blob_gc WHERE digest = ?`, d.String()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create image %s: %w", id, joinErrors(err, s.gcBlobs()))
	}
	return s.imageByID(s.q, id)
}

// SetImageMetadata replaces image ref's JSON metadata, which other
// packages use for what they record with an image.
func (s *Store) SetImageMetadata(ref string, meta json.RawMessage) error {
	if !json.Valid(meta) {
		return fmt.Errorf("set metadata of image %s: not valid JSON", ref)
	}
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("set metadata of image %s: %w", ref, err)
	}
	defer unlock()
	id, _, err := s.resolveImageID(s.q, ref)
	if err != nil {
		return fmt.Errorf("set metadata: %w", err)
	}
	if _, err := s.q.Exec(`UPDATE images SET metadata = ? WHERE id = ?`, string(meta), id); err != nil {
		return fmt.Errorf("set metadata of image %s: %w", id, noSpace(err))
	}
	return nil
}

// checkDiffIDs compares a config's diff_ids with the layer chain.
func checkDiffIDs(want []digest.Digest, chain []*Layer) error {
	if len(want) != len(chain) {
		return fmt.Errorf("%w: config lists %d diff IDs, the layer chain has %d layers", ErrDigestMismatch, len(want), len(chain))
	}
	for i, l := range chain {
		if l.DiffID != want[i] {
			return fmt.Errorf("%w: layer %d (%s) has diff ID %q, the config says %s", ErrDigestMismatch, i, l.ID, l.DiffID, want[i])
		}
	}
	return nil
}

// layerChain returns layer top and its parents, bottom first.
func (s *Store) layerChain(q querier, top string) ([]*Layer, error) {
	var chain []*Layer
	for id := top; id != ""; {
		l, err := s.layerRow(q, id)
		if err != nil {
			return nil, err
		}
		chain = append(chain, l)
		id = l.Parent
		if len(chain) > 10000 {
			return nil, fmt.Errorf("layer %s: parent chain longer than 10000 (a loop?)", top)
		}
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	return chain, nil
}

func setName(tx querier, name, id string) error {
	_, err := tx.Exec(`INSERT INTO image_names (name, image_id) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET image_id = excluded.image_id`, name, id)
	return err
}

// imageColumns are what scanImage reads.
const imageColumns = `i.id, i.digest, COALESCE(i.top_layer, ''), i.created, i.metadata`

// imageByID reads image id with its names, layers and size.
func (s *Store) imageByID(q querier, id string) (*Image, error) {
	imgs, err := s.imagesWhere(q, ` WHERE i.id = ?`, id)
	if err != nil {
		return nil, err
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("image %s: %w", id, ErrImageUnknown)
	}
	return imgs[0], nil
}

func (s *Store) imagesWhere(q querier, cond string, args ...any) ([]*Image, error) {
	rows, err := q.Query(`SELECT `+imageColumns+` FROM images i`+cond+` ORDER BY i.created, i.id`, args...)
	if err != nil {
		return nil, fmt.Errorf("database: images: %w", err)
	}
	var imgs []*Image
	byID := map[string]*Image{}
	for rows.Next() {
		var img Image
		var d string
		var created int64
		var meta string
		if err := rows.Scan(&img.ID, &d, &img.TopLayer, &created, &meta); err != nil {
			rows.Close()
			return nil, fmt.Errorf("database: images: %w", err)
		}
		img.Digest, img.Created, img.Metadata = digest.Digest(d), fromNanos(created), json.RawMessage(meta)
		img.Names, img.Layers = []string{}, []string{}
		imgs = append(imgs, &img)
		byID[img.ID] = &img
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("database: images: %w", err)
	}
	if len(imgs) == 0 {
		return nil, nil
	}
	// Names and layers of all of them, one query each (one image: only its).
	filter, fargs := "", []any(nil)
	if len(imgs) == 1 {
		filter, fargs = " WHERE image_id = ?", []any{imgs[0].ID}
	}
	nrows, err := q.Query(`SELECT image_id, name FROM image_names`+filter+` ORDER BY name`, fargs...)
	if err != nil {
		return nil, fmt.Errorf("database: image names: %w", err)
	}
	for nrows.Next() {
		var id, n string
		if err := nrows.Scan(&id, &n); err != nil {
			nrows.Close()
			return nil, fmt.Errorf("database: image names: %w", err)
		}
		if img := byID[id]; img != nil {
			img.Names = append(img.Names, n)
		}
	}
	nrows.Close()
	lfilter := strings.Replace(filter, "image_id", "il.image_id", 1)
	lrows, err := q.Query(`SELECT il.image_id, il.layer_id, l.size FROM image_layers il JOIN layers l ON l.id = il.layer_id`+lfilter+` ORDER BY il.image_id, il.idx`, fargs...)
	if err != nil {
		return nil, fmt.Errorf("database: image layers: %w", err)
	}
	defer lrows.Close()
	for lrows.Next() {
		var id, l string
		var size int64
		if err := lrows.Scan(&id, &l, &size); err != nil {
			return nil, fmt.Errorf("database: image layers: %w", err)
		}
		if img := byID[id]; img != nil {
			img.Layers = append(img.Layers, l)
			img.Size += size
		}
	}
	return imgs, lrows.Err()
}

// resolveImage finds image ref: a full ID (with or without "sha256:"),
// a name, a manifest digest (bare or after a name), then a unique ID
// prefix, as docker resolves them.
func (s *Store) resolveImage(q querier, ref string) (*Image, error) {
	id, _, err := s.resolveImageID(q, ref)
	if err != nil {
		return nil, err
	}
	return s.imageByID(q, id)
}

// resolveImageID is resolveImage for callers that need the image's ID
// and top layer only (CreateContainer): one small query for the row
// instead of the image with its names and layers.
func (s *Store) resolveImageID(q querier, ref string) (id, top string, err error) {
	row := func(id string) (string, string, error) {
		var top string
		err := q.QueryRow(`SELECT COALESCE(top_layer, '') FROM images WHERE id = ?`, id).Scan(&top)
		if errors.Is(err, sql.ErrNoRows) {
			return "", "", fmt.Errorf("image %s: %w", id, ErrImageUnknown)
		}
		if err != nil {
			return "", "", fmt.Errorf("database: image %s: %w", id, err)
		}
		return id, top, nil
	}
	if bare := strings.TrimPrefix(ref, "sha256:"); isID(bare) {
		id, top, err := row(bare)
		if err == nil || !errors.Is(err, ErrImageUnknown) {
			return id, top, err
		}
	}
	if name, err := NormalizeName(ref); err == nil {
		var id string
		err := q.QueryRow(`SELECT image_id FROM image_names WHERE name = ?`, name).Scan(&id)
		if err == nil {
			return row(id)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return "", "", fmt.Errorf("database: image %s: %w", ref, err)
		}
	}
	dig := ref
	if _, after, ok := strings.Cut(ref, "@"); ok {
		dig = after
	}
	if d, err := digest.Parse(dig); err == nil {
		var id string
		err := q.QueryRow(`SELECT id FROM images WHERE digest = ? ORDER BY created LIMIT 1`, d.String()).Scan(&id)
		if err == nil {
			return row(id)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return "", "", fmt.Errorf("database: image %s: %w", ref, err)
		}
	}
	id, err = resolvePrefix(q, "images", "", ref, ErrImageUnknown)
	if errors.Is(err, ErrImageUnknown) {
		return "", "", fmt.Errorf("image %q: %w", ref, ErrImageUnknown)
	}
	if err != nil {
		return "", "", err
	}
	return row(id)
}

// Image returns image ref: ID, "sha256:"+ID, unique ID prefix, name
// ("busybox" means "docker.io/library/busybox:latest") or manifest digest.
func (s *Store) Image(ref string) (*Image, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	return s.resolveImage(s.q, ref)
}

// Images returns every image, oldest first.
func (s *Store) Images() ([]*Image, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	imgs, err := s.imagesWhere(s.q, ``)
	if imgs == nil && err == nil {
		imgs = []*Image{}
	}
	return imgs, err
}

// ImageConfig returns the config JSON of image ref.
func (s *Store) ImageConfig(ref string) ([]byte, error) {
	img, err := s.Image(ref)
	if err != nil {
		return nil, err
	}
	return s.readBlob(digest.NewDigestFromEncoded(digest.SHA256, img.ID))
}

// ImageManifest returns the manifest JSON of image ref, or an error
// wrapping os.ErrNotExist when none was stored.
func (s *Store) ImageManifest(ref string) ([]byte, error) {
	img, err := s.Image(ref)
	if err != nil {
		return nil, err
	}
	if img.Digest == "" {
		return nil, fmt.Errorf("image %s: no manifest stored: %w", img.ID, os.ErrNotExist)
	}
	return s.readBlob(img.Digest)
}

// Tag gives image ref the name (normalised), moving it from the image
// that had it.
func (s *Store) Tag(ref, name string) error {
	full, err := NormalizeName(name)
	if err != nil {
		return fmt.Errorf("tag %s: %w", ref, err)
	}
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("tag %s: %w", ref, err)
	}
	defer unlock()
	img, err := s.resolveImage(s.q, ref)
	if err != nil {
		return fmt.Errorf("tag: %w", err)
	}
	if err := s.tx(func(tx querier) error { return setName(tx, full, img.ID) }); err != nil {
		return fmt.Errorf("tag %s %s: %w", img.ID, full, err)
	}
	return nil
}

// Untag removes name from the image that has it; the image stays, even
// without names. A name no image has fails with ErrImageUnknown.
func (s *Store) Untag(name string) error {
	full, err := NormalizeName(name)
	if err != nil {
		return fmt.Errorf("untag: %w", err)
	}
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("untag %s: %w", full, err)
	}
	defer unlock()
	res, err := s.q.Exec(`DELETE FROM image_names WHERE name = ?`, full)
	if err != nil {
		return fmt.Errorf("untag %s: %w", full, noSpace(err))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("untag %s: %w", full, ErrImageUnknown)
	}
	return nil
}

// RemoveImage removes image ref with all its names, then its layers that
// nothing else uses (top down, as docker does), and returns the IDs of
// the layers removed. An image used by a container is refused with
// ErrInUse unless force: the image record goes and the container keeps
// its layers.
func (s *Store) RemoveImage(ref string, force bool) ([]string, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("remove image %s: %w", ref, err)
	}
	defer unlock()
	img, err := s.resolveImage(s.q, ref)
	if err != nil {
		return nil, fmt.Errorf("remove image: %w", err)
	}
	var users []string
	rows, err := s.q.Query(`SELECT id FROM containers WHERE image_id = ? ORDER BY id`, img.ID)
	if err != nil {
		return nil, fmt.Errorf("remove image %s: database: %w", img.ID, err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err == nil {
			users = append(users, id)
		}
	}
	rows.Close()
	if len(users) > 0 && !force {
		return nil, fmt.Errorf("remove image %s: %w by container %s", img.ID, ErrInUse, strings.Join(users, ", "))
	}
	if err := s.deleteImageRow(img); err != nil {
		return nil, fmt.Errorf("remove image %s: %w", img.ID, err)
	}
	s.crashPoint("image-removed")
	removed, err := s.removeUnused(img.TopLayer)
	if err != nil {
		return removed, fmt.Errorf("remove image %s: %w", img.ID, err)
	}
	if err := s.gcBlobs(); err != nil {
		return removed, fmt.Errorf("remove image %s: %w", img.ID, err)
	}
	return removed, nil
}

// removeUnused removes layer top and its parents, from the top down,
// while nothing uses them and they are not mounted, and returns their IDs.
// Under the store lock.
func (s *Store) removeUnused(top string) ([]string, error) {
	var removed []string
	for id := top; id != ""; {
		why, err := s.layerUsers(id)
		if err != nil {
			return removed, err
		}
		if why != "" {
			break // and its parents are used by it
		}
		if n, _, err := s.mountCount(id); err != nil || n > 0 {
			break
		}
		l, err := s.layerRow(s.q, id)
		if err != nil {
			return removed, err
		}
		if err := s.deleteLayer(id); err != nil {
			return removed, fmt.Errorf("layer %s: %w", id, err)
		}
		removed = append(removed, id)
		id = l.Parent
	}
	return removed, nil
}

// deleteImageRow deletes image img's row (its names and layer list go
// with it) and records its blobs for deletion, in one transaction.
func (s *Store) deleteImageRow(img *Image) error {
	return s.tx(func(tx querier) error {
		if _, err := tx.Exec(`DELETE FROM images WHERE id = ?`, img.ID); err != nil {
			return err
		}
		blobs := []digest.Digest{digest.NewDigestFromEncoded(digest.SHA256, img.ID)}
		if img.Digest != "" {
			blobs = append(blobs, img.Digest)
		}
		for _, d := range blobs {
			if _, err := tx.Exec(`INSERT OR IGNORE INTO blob_gc (digest) VALUES (?)`, d.String()); err != nil {
				return err
			}
		}
		return nil
	})
}

// gcBlobs deletes the blobs recorded in blob_gc that no image references
// and forgets the records. Under the store lock.
func (s *Store) gcBlobs() error {
	rows, err := s.q.Query(`SELECT digest FROM blob_gc`)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	var ds []string
	for rows.Next() {
		var d string
		if rows.Scan(&d) == nil {
			ds = append(ds, d)
		}
	}
	rows.Close()
	for _, d := range ds {
		dg := digest.Digest(d)
		if dg.Validate() != nil {
			continue
		}
		var n int
		if err := s.q.QueryRow(`SELECT COUNT(*) FROM images WHERE id = ? OR digest = ?`, dg.Encoded(), d).Scan(&n); err != nil {
			return fmt.Errorf("database: %w", err)
		}
		if n == 0 {
			if err := s.removeBlob(dg); err != nil {
				return err
			}
		}
		if _, err := s.q.Exec(`DELETE FROM blob_gc WHERE digest = ?`, d); err != nil {
			return fmt.Errorf("database: %w", noSpace(err))
		}
	}
	return nil
}

// blobPath is where blob d lives.
func (s *Store) blobPath(d digest.Digest) string {
	return filepath.Join(s.blobs, d.Encoded())
}

// writeBlob stores b under its sha256, atomically: a temp file written
// and synced, renamed into place, the directory synced.
func (s *Store) writeBlob(b []byte) error {
	d := digest.FromBytes(b)
	p := s.blobPath(d)
	if fi, err := os.Stat(p); err == nil && fi.Size() == int64(len(b)) {
		return nil
	}
	f, err := os.CreateTemp(s.blobs, ".tmp-")
	if err != nil {
		return fmt.Errorf("write blob %s: %w", d, noSpace(err))
	}
	defer os.Remove(f.Name())
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err == nil {
		err = syncDir(s.blobs)
	}
	if err != nil {
		return fmt.Errorf("write blob %s: %w", d, noSpace(err))
	}
	return nil
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

// readBlob returns blob d, verified against its digest.
func (s *Store) readBlob(d digest.Digest) ([]byte, error) {
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("read blob %q: not a sha256 digest", d)
	}
	b, err := os.ReadFile(s.blobPath(d))
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", d, err)
	}
	if got := digest.FromBytes(b); got != d {
		return nil, fmt.Errorf("read blob %s: %w: content has digest %s", d, ErrDigestMismatch, got)
	}
	return b, nil
}

func (s *Store) removeBlob(d digest.Digest) error {
	if _, err := hex.DecodeString(d.Encoded()); err != nil {
		return nil
	}
	if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove blob %s: %w", d, err)
	}
	return nil
}
