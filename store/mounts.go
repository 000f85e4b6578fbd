package store

import (
	"database/sql"
	"errors"
	"fmt"

	"github.com/moby/sys/mountinfo"

	"github.com/layers-storage/layers/graphdriver"
)

// Mount counts are the store's, in the mounts table, not the driver's:
// drivers count Get and Put per process, and a shell user mounts in one
// process and unmounts in another. The rule between the two: a process
// holds at most one driver reference per layer on behalf of the table's
// count (Store.held). The first Mount anywhere calls Get; a Mount in a
// process that holds no reference calls Get too, which finds the layer
// mounted and reuses the mount; the Unmount that takes the count to zero
// makes sure its process holds a reference (Get again if not) and Puts
// it, which unmounts. Drivers whose Get mounts nothing (the path is not a
// mount point) are recorded with kernel = 0: their count cannot be
// checked against the kernel, and needs no checking.

// mountRow is a layer's row of the mounts table.
type mountRow struct {
	count  int
	path   string
	kernel bool // the path was a mount point when first mounted
}

func (s *Store) readMount(q querier, id string) (mountRow, error) {
	var m mountRow
	err := q.QueryRow(`SELECT count, path, kernel FROM mounts WHERE layer_id = ?`, id).Scan(&m.count, &m.path, &m.kernel)
	if errors.Is(err, sql.ErrNoRows) {
		return mountRow{}, nil
	}
	if err != nil {
		return mountRow{}, fmt.Errorf("database: mount of layer %s: %w", id, err)
	}
	return m, nil
}

// stale reports whether m counts mounts that the kernel does not show:
// the count lies and is read as zero.
func (m mountRow) stale() bool {
	if m.count == 0 || !m.kernel {
		return false
	}
	ok, err := mountinfo.Mounted(m.path)
	return err == nil && !ok
}

// mountCount returns layer id's mount count, reconciled with the kernel,
// and its mount path.
func (s *Store) mountCount(id string) (int, string, error) {
	m, err := s.readMount(s.db, id)
	if err != nil {
		return 0, "", err
	}
	if m.stale() {
		return 0, m.path, nil
	}
	return m.count, m.path, nil
}

// Mount mounts the container or layer ref (ID, prefix, or container name;
// containers are looked up first) and returns the path of its root
// filesystem. Every Mount is balanced by one Unmount, in this process or
// another: the count is kept in the database.
func (s *Store) Mount(ref string) (string, error) {
	unlock, err := s.lock()
	if err != nil {
		return "", fmt.Errorf("mount %s: %w", ref, err)
	}
	defer unlock()
	id, err := s.resolveMountable(ref)
	if err != nil {
		return "", fmt.Errorf("mount: %w", err)
	}
	p, err := s.mountLayer(id)
	if err != nil {
		return "", fmt.Errorf("mount %s: %w", ref, err)
	}
	return p, nil
}

// resolveMountable returns the layer ID of container ref, or else of
// layer ref.
func (s *Store) resolveMountable(ref string) (string, error) {
	c, err := s.resolveContainer(s.db, ref)
	if err == nil {
		return c.Layer, nil
	}
	if !errors.Is(err, ErrContainerUnknown) {
		return "", err
	}
	id, lerr := s.resolveLayer(s.db, ref)
	if errors.Is(lerr, ErrLayerUnknown) {
		return "", fmt.Errorf("%q is neither a container nor a layer: %w", ref, errors.Join(ErrContainerUnknown, ErrLayerUnknown))
	}
	return id, lerr
}

// mountLayer counts one more mount of layer id. Under the store lock.
func (s *Store) mountLayer(id string) (string, error) {
	m, err := s.readMount(s.db, id)
	if err != nil {
		return "", err
	}
	if m.stale() {
		// Unmounted behind our back: start from zero. A reference this
		// process held for it is dropped (Put of an unmounted path is
		// harmless), so that Get mounts afresh.
		m.count = 0
		if s.held[id] {
			_ = s.driver.Put(id)
			delete(s.held, id)
		}
	}
	gotNow := false
	if !s.held[id] {
		p, err := s.driver.Get(id, graphdriver.MountOpts{})
		if err != nil {
			return "", noSpace(err)
		}
		s.held[id] = true
		gotNow = true
		if m.count == 0 || p != m.path {
			m.path = p
			m.kernel, _ = mountinfo.Mounted(p)
		}
	}
	s.crashPoint("mount-got")
	_, err = s.db.Exec(`INSERT INTO mounts (layer_id, count, path, kernel) VALUES (?, ?, ?, ?)
		ON CONFLICT (layer_id) DO UPDATE SET count = excluded.count, path = excluded.path, kernel = excluded.kernel`,
		id, m.count+1, m.path, m.kernel)
	if err != nil {
		if gotNow && m.count == 0 {
			_ = s.driver.Put(id)
			delete(s.held, id)
		}
		return "", fmt.Errorf("database: %w", noSpace(err))
	}
	return m.path, nil
}

// Unmount undoes one Mount of the container or layer ref; with force, all
// of them. The layer is unmounted when the count reaches zero. Unmounting
// what is not mounted is not an error.
func (s *Store) Unmount(ref string, force bool) error {
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("unmount %s: %w", ref, err)
	}
	defer unlock()
	id, err := s.resolveMountable(ref)
	if err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	if err := s.unmountLayer(id, force); err != nil {
		return fmt.Errorf("unmount %s: %w", ref, err)
	}
	return nil
}

// unmountLayer counts one mount of layer id less (all with force) and
// unmounts at zero. Under the store lock.
func (s *Store) unmountLayer(id string, force bool) error {
	m, err := s.readMount(s.db, id)
	if err != nil {
		return err
	}
	if m.stale() {
		m.count = 0
	}
	n := m.count - 1
	if force || n < 0 {
		n = 0
	}
	if n == 0 && (m.count > 0 || force) {
		if err := s.release(id, m, force); err != nil {
			return err
		}
	}
	s.crashPoint("unmount-put")
	if _, err := s.db.Exec(`UPDATE mounts SET count = ? WHERE layer_id = ?`, n, id); err != nil {
		return fmt.Errorf("database: %w", noSpace(err))
	}
	return nil
}

// release puts the process's reference to layer id, taking one first if
// another process made the mount, so that the driver unmounts it. With
// force, a mount that stays busy is detached.
func (s *Store) release(id string, m mountRow, force bool) error {
	if !s.held[id] {
		if m.count == 0 {
			return nil // nothing mounted for the store, nothing held
		}
		if _, err := s.driver.Get(id, graphdriver.MountOpts{}); err != nil {
			return err
		}
		s.held[id] = true
	}
	err := s.driver.Put(id)
	if err != nil && force && m.kernel {
		// Detached, the path is no longer a mount point and the driver's
		// Put, which unmounts only what is mounted, goes through.
		if derr := graphdriver.UnmountDetach(m.path); derr != nil {
			return errors.Join(err, derr)
		}
		err = s.driver.Put(id)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInUse, err)
	}
	delete(s.held, id)
	return nil
}

// Mounted returns how many times the container or layer ref is mounted
// (0 when the kernel shows no mount, whatever the recorded count) and
// where.
func (s *Store) Mounted(ref string) (count int, path string, err error) {
	if err := s.checkOpen(); err != nil {
		return 0, "", err
	}
	id, err := s.resolveMountable(ref)
	if err != nil {
		return 0, "", fmt.Errorf("mounted: %w", err)
	}
	n, p, err := s.mountCount(id)
	if err != nil {
		return 0, "", err
	}
	if n == 0 {
		p = ""
	}
	return n, p, nil
}
