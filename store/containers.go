package store

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ContainerOptions tune CreateContainer.
type ContainerOptions struct {
	// Name is the container's unique name; "" for none. Names are
	// docker's: a letter or digit, then letters, digits, '_', '.', '-'.
	Name string
	// ID is the container's ID (64 hex); empty means a random one.
	ID string
	// Metadata is the container's initial JSON metadata; nil means {}.
	Metadata json.RawMessage
}

// validContainerName reports whether name matches docker's container
// name grammar, [a-zA-Z0-9][a-zA-Z0-9_.-]{0,252}.
func validContainerName(name string) bool { return validName(name, "", 253) }

const containerColumns = `c.id, COALESCE(c.name, ''), c.image_id, c.layer_id, c.created, c.metadata,
	COALESCE(m.count, 0), COALESCE(m.path, ''), COALESCE(m.kernel, 0)`

const containerFrom = ` FROM containers c LEFT JOIN mounts m ON m.layer_id = c.layer_id`

// scanContainer reads a row of containerColumns. stale tells whether a
// mount count lies (mountRow.stale, or kernelMounts.stale for many rows).
func scanContainer(r scanner, stale func(mountRow) bool) (*Container, error) {
	var c Container
	var created int64
	var meta string
	var m mountRow
	if err := r.Scan(&c.ID, &c.Name, &c.Image, &c.Layer, &created, &meta, &m.count, &m.path, &m.kernel); err != nil {
		return nil, err
	}
	c.Created = fromNanos(created)
	c.Metadata = json.RawMessage(meta)
	c.Mounted = m.count > 0 && !stale(m)
	return &c, nil
}

// resolveContainer finds container ref: full ID, then name, then unique
// ID prefix, as docker does.
func (s *Store) resolveContainer(q querier, ref string) (*Container, error) {
	c, err := scanContainer(q.QueryRow(`SELECT `+containerColumns+containerFrom+` WHERE c.id = ?1 OR c.name = ?1 ORDER BY c.id = ?1 DESC LIMIT 1`, ref), mountRow.stale)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("database: container %s: %w", ref, err)
	}
	id, err := resolvePrefix(q, "containers", "", ref, ErrContainerUnknown)
	if errors.Is(err, ErrContainerUnknown) {
		return nil, fmt.Errorf("container %q: %w", ref, ErrContainerUnknown)
	}
	if err != nil {
		return nil, err
	}
	c, err = scanContainer(q.QueryRow(`SELECT `+containerColumns+containerFrom+` WHERE c.id = ?`, id), mountRow.stale)
	if err != nil {
		return nil, fmt.Errorf("database: container %s: %w", id, err)
	}
	return c, nil
}

// Container returns container ref (ID, unique ID prefix, or name).
func (s *Store) Container(ref string) (*Container, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	return s.resolveContainer(s.q, ref)
}

// Containers returns every container, oldest first.
func (s *Store) Containers() ([]*Container, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	rows, err := s.q.Query(`SELECT ` + containerColumns + containerFrom + ` ORDER BY c.created, c.id`)
	if err != nil {
		return nil, fmt.Errorf("database: containers: %w", err)
	}
	defer rows.Close()
	// Mount counts are checked against one read of mountinfo, made when
	// the first count needs it.
	var km *kernelMounts
	stale := func(m mountRow) bool {
		if m.count == 0 || !m.kernel {
			return false
		}
		if km == nil {
			var err error
			if km, err = s.kernelMounts(); err != nil {
				return m.stale()
			}
		}
		return km.stale(m)
	}
	var cs []*Container
	for rows.Next() {
		c, err := scanContainer(rows, stale)
		if err != nil {
			return nil, fmt.Errorf("database: containers: %w", err)
		}
		cs = append(cs, c)
	}
	return cs, rows.Err()
}

// CreateContainer makes a container on image ref (ID, prefix, name or
// digest): a read-write layer on the image's top layer, recorded with the
// container in one transaction.
func (s *Store) CreateContainer(imageRef string, opts *ContainerOptions) (*Container, error) {
	if opts == nil {
		opts = &ContainerOptions{}
	}
	if opts.Name != "" && !validContainerName(opts.Name) {
		return nil, fmt.Errorf("create container: %w %q: want a letter or digit, then letters, digits, '_', '.' or '-'", ErrInvalidName, opts.Name)
	}
	if opts.Name != "" && isID(opts.Name) {
		return nil, fmt.Errorf("create container: %w %q: a name cannot look like an ID", ErrInvalidName, opts.Name)
	}
	id := opts.ID
	if id == "" {
		id = newID()
	} else if !isID(id) {
		return nil, fmt.Errorf("create container: ID %q is not 64 hex characters", id)
	}
	meta := "{}"
	if opts.Metadata != nil {
		if !json.Valid(opts.Metadata) {
			return nil, errors.New("create container: metadata is not valid JSON")
		}
		meta = string(opts.Metadata)
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	defer unlock()
	imageID, top, err := s.resolveImageID(s.q, imageRef)
	if err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	if opts.Name != "" {
		// The name alone (not resolveContainer's ID and prefix
		// lookups): a name cannot look like an ID (checked above).
		var other string
		err := s.q.QueryRow(`SELECT id FROM containers WHERE name = ?`, opts.Name).Scan(&other)
		if err == nil {
			return nil, fmt.Errorf("create container: %w: %q is container %s", ErrNameInUse, opts.Name, other)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("create container: database: %w", err)
		}
	}
	if opts.ID != "" { // a random ID is new
		var exists int
		if err := s.q.QueryRow(`SELECT COUNT(*) FROM containers WHERE id = ?`, id).Scan(&exists); err != nil || exists > 0 {
			return nil, fmt.Errorf("create container: container %s exists already (%v)", id, err)
		}
	}
	layerID := newID()
	// The layer is marked incomplete before the driver makes it, so
	// that a process killed meanwhile leaves a row for Open's recovery
	// to remove it by. The mark is committed unsynced (txUnsynced): the
	// transaction that completes the layer syncs it with itself, and a
	// power loss in between, which may lose the mark but keep the
	// driver's (equally unsynced) directory, leaves orphan data that
	// Check reports and Repair removes. One flush of the disk less for
	// every container.
	var parent any
	if top != "" {
		parent = top
	}
	err = s.txUnsynced(func(tx querier) error {
		_, err := tx.Exec(`INSERT INTO layers (id, parent, kind, state, created) VALUES (?, ?, ?, 'incomplete', ?)`,
			layerID, parent, string(KindContainer), nanos(time.Now()))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create container: layer %s: %w", layerID, err)
	}
	s.crashPoint("container-started")
	if err := s.fillEmpty(layerID, top, KindContainer); err != nil {
		return nil, fmt.Errorf("create container: layer %s: %w", layerID, s.discardLayer(layerID, err))
	}
	s.crashPoint("container-layer-made")
	var name any
	if opts.Name != "" {
		name = opts.Name
	}
	created := nanos(time.Now())
	// Committed unsynced and then synced by syncWAL, which is as
	// durable as a synchronous commit without SQLite's directory sync
	// in every process.
	err = s.txUnsynced(func(tx querier) error {
		if err := completeLayer(tx, layerID, "", "", 0, 0); err != nil {
			return err
		}
		_, err := tx.Exec(`INSERT INTO containers (id, name, image_id, layer_id, created, metadata) VALUES (?, ?, ?, ?, ?, ?)`,
			id, name, imageID, layerID, created, meta)
		if err != nil && strings.Contains(err.Error(), "UNIQUE") {
			return fmt.Errorf("%w: %q", ErrNameInUse, opts.Name)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create container: %w", s.discardLayer(layerID, err))
	}
	if err := s.syncWAL(); err != nil {
		// Committed, but not known to be on the disk: the container
		// stays (a killed process would leave it too); the caller
		// hears that its disk fails.
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	s.crashPoint("container-created")
	// What the rows say, without reading them back.
	return &Container{ID: id, Name: opts.Name, Image: imageID, Layer: layerID, Created: fromNanos(created), Metadata: json.RawMessage(meta)}, nil
}

// RemoveContainer removes container ref and its read-write layer,
// unmounting it first. A mount that stays busy fails with ErrInUse unless
// force, which detaches it.
func (s *Store) RemoveContainer(ref string, force bool) error {
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("remove container %s: %w", ref, err)
	}
	defer unlock()
	c, err := s.resolveContainer(s.q, ref)
	if err != nil {
		return fmt.Errorf("remove container: %w", err)
	}
	rw, err := s.layerRow(s.q, c.Layer)
	if err != nil {
		return fmt.Errorf("remove container %s: %w", c.ID, err)
	}
	if err := s.unmountLayer(c.Layer, true, force); err != nil {
		return fmt.Errorf("remove container %s: %w", c.ID, err)
	}
	// One transaction: the container goes and its layer is marked, so a
	// crash leaves a "removing" layer that recovery deletes.
	err = s.tx(func(tx querier) error {
		if _, err := tx.Exec(`DELETE FROM containers WHERE id = ?`, c.ID); err != nil {
			return err
		}
		_, err := tx.Exec(`UPDATE layers SET state = 'removing' WHERE id = ?`, c.Layer)
		return err
	})
	if err != nil {
		return fmt.Errorf("remove container %s: %w", c.ID, err)
	}
	s.crashPoint("container-removing")
	if err := s.dropLayer(c.Layer); err != nil {
		return fmt.Errorf("remove container %s: layer %s: %w", c.ID, c.Layer, err)
	}
	// Layers below it that no image keeps: a commit in place whose
	// image went first, or the layers of an image removed by force.
	if _, err := s.removeUnused(rw.Parent); err != nil {
		return fmt.Errorf("remove container %s: %w", c.ID, err)
	}
	return nil
}

// SetContainerMetadata replaces container ref's JSON metadata, which
// other packages use for what they track (run state, exit status).
func (s *Store) SetContainerMetadata(ref string, meta json.RawMessage) error {
	if !json.Valid(meta) {
		return fmt.Errorf("set metadata of container %s: not valid JSON", ref)
	}
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("set metadata of container %s: %w", ref, err)
	}
	defer unlock()
	c, err := s.resolveContainer(s.q, ref)
	if err != nil {
		return fmt.Errorf("set metadata: %w", err)
	}
	if _, err := s.q.Exec(`UPDATE containers SET metadata = ? WHERE id = ?`, string(meta), c.ID); err != nil {
		return fmt.Errorf("set metadata of container %s: %w", c.ID, noSpace(err))
	}
	return nil
}
