package store

import (
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"

	"github.com/layers-storage/layers/graphdriver"
)

// Mount counts are the store's, in the mounts table: the authority for
// every process on the root, listed with containers and reconciled with
// the kernel's mountinfo. They are committed unsynced (txUnsynced): they
// count kernel mounts, which a power loss ends too; after one, a count
// above zero reads as stale like any other, and one rolled back to zero is
// right. Each Mount takes one driver reference (Get) and each Unmount
// releases one (Put), so a driver that shares its counts
// between processes (overlay keeps them in a file) counts exactly what the
// table counts. Drivers whose counts are per process are covered too: when
// the table's count reaches zero and the path is still mounted, the store
// Puts until it is not, and as a last resort Gets and Puts once in this
// process, which makes such a driver unmount a mount another process made.
// Drivers whose Get mounts nothing (the path is not a mount point) are
// recorded with kernel = 0: their count cannot be checked against the
// kernel, and needs no checking.

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

// kernelMounts are the mount points under the driver's home, read from
// the kernel's mountinfo once, for checking many mount rows at once
// (Open's recovery, listing containers): one read of mountinfo instead of
// a path resolution and a lookup per row.
type kernelMounts struct {
	home, realHome string          // the driver's home, and with symlinks resolved
	points         []string        // mount points under realHome, in mountinfo's order
	mounted        map[string]bool // the same, as a set
}

// kernelMounts reads the mount points under the driver's home.
func (s *Store) kernelMounts() (*kernelMounts, error) {
	k := &kernelMounts{home: s.home, realHome: s.home, mounted: map[string]bool{}}
	if real, err := filepath.EvalSymlinks(s.home); err == nil {
		k.realHome = real
	}
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(k.realHome))
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	for _, m := range ms {
		k.points = append(k.points, m.Mountpoint)
		k.mounted[m.Mountpoint] = true
	}
	return k, nil
}

// real returns path as mountinfo names it: below the home, with the
// home's symlinks resolved; ok is false for paths outside the home.
func (k *kernelMounts) real(path string) (string, bool) {
	rel, ok := strings.CutPrefix(path, k.home+string(filepath.Separator))
	if !ok {
		return "", false
	}
	return filepath.Join(k.realHome, rel), true
}

// stale is mountRow.stale, answered from the set where it can be. A path
// the set does not show mounted, or outside the home, is checked on its
// own (its own symlinks resolved), so that the set can only make the
// common case, a count that holds, cheaper: never call a live count stale.
func (k *kernelMounts) stale(m mountRow) bool {
	if m.count == 0 || !m.kernel {
		return false
	}
	if p, ok := k.real(m.path); ok && k.mounted[p] {
		return false
	}
	return m.stale()
}

// mountCount returns layer id's mount count, reconciled with the kernel,
// and its mount path.
func (s *Store) mountCount(id string) (int, string, error) {
	m, err := s.readMount(s.q, id)
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
	c, err := s.resolveContainer(s.q, ref)
	if err == nil {
		return c.Layer, nil
	}
	if !errors.Is(err, ErrContainerUnknown) {
		return "", err
	}
	id, lerr := s.resolveLayer(s.q, ref)
	if errors.Is(lerr, ErrLayerUnknown) {
		return "", fmt.Errorf("%q is neither a container nor a layer: %w", ref, joinErrors(ErrContainerUnknown, ErrLayerUnknown))
	}
	return id, lerr
}

// mountLayer counts one more mount of layer id. Under the store lock.
func (s *Store) mountLayer(id string) (string, error) {
	m, err := s.readMount(s.q, id)
	if err != nil {
		return "", err
	}
	if m.stale() {
		m.count = 0 // unmounted behind our back: start from zero
	}
	p, err := s.driver.Get(id, graphdriver.MountOpts{})
	if err != nil {
		return "", noSpace(err)
	}
	if m.count == 0 || p != m.path {
		m.path = p
		m.kernel, _ = mountinfo.Mounted(p)
	}
	s.crashPoint("mount-got")
	// Unsynced: a power loss takes the mount with it (see txUnsynced).
	err = s.txUnsynced(func(tx querier) error {
		_, err := tx.Exec(`INSERT INTO mounts (layer_id, count, path, kernel) VALUES (?, ?, ?, ?)
		ON CONFLICT (layer_id) DO UPDATE SET count = excluded.count, path = excluded.path, kernel = excluded.kernel`,
			id, m.count+1, m.path, m.kernel)
		return err
	})
	if err != nil {
		_ = s.driver.Put(id)
		return "", fmt.Errorf("database: %w", noSpace(err))
	}
	return m.path, nil
}

// Unmount undoes one Mount of the container or layer ref; with force, all
// of them, detaching a mount that stays busy. The layer is unmounted when
// the count reaches zero. Unmounting what is not mounted is not an error.
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
	if err := s.unmountLayer(id, force, force); err != nil {
		return fmt.Errorf("unmount %s: %w", ref, err)
	}
	return nil
}

// unmountLayer counts one mount of layer id less (all of them with all)
// and unmounts at zero; with detach, a mount that stays busy is detached.
// Under the store lock.
func (s *Store) unmountLayer(id string, all, detach bool) error {
	m, err := s.readMount(s.q, id)
	if err != nil {
		return err
	}
	if m.stale() {
		m.count = 0
	}
	if m.count == 0 && !all {
		return nil
	}
	puts := 1
	if all {
		puts = m.count
	}
	n := m.count
	for range puts {
		if err = s.driver.Put(id); err != nil {
			break
		}
		n--
	}
	if err == nil && n == 0 && m.kernel {
		err = s.settle(id, m.path)
	}
	if err != nil && detach && m.kernel {
		// Busy: detached, the path is no longer a mount point, and
		// drivers reconcile their counts with mountinfo.
		if derr := graphdriver.UnmountDetach(m.path); derr != nil {
			return fmt.Errorf("%w: %w", ErrInUse, joinErrors(err, derr))
		}
		err, n = nil, 0
	}
	s.crashPoint("unmount-put")
	uerr := s.txUnsynced(func(tx querier) error {
		_, err := tx.Exec(`UPDATE mounts SET count = ? WHERE layer_id = ?`, max(n, 0), id)
		return err
	})
	if uerr != nil {
		return fmt.Errorf("database: %w", noSpace(uerr))
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInUse, err)
	}
	return nil
}

// settle makes sure layer id is not mounted at path once the store counts
// no mount of it: Puts while it stays mounted (references a killed process
// took but never recorded), then one Get and Put in this process, for
// drivers whose counts are per process.
func (s *Store) settle(id, path string) error {
	for range 16 {
		if ok, err := mountinfo.Mounted(path); err != nil || !ok {
			return nil
		}
		if err := s.driver.Put(id); err != nil {
			return err
		}
	}
	if ok, err := mountinfo.Mounted(path); err != nil || !ok {
		return nil
	}
	if _, err := s.driver.Get(id, graphdriver.MountOpts{}); err != nil {
		return err
	}
	if err := s.driver.Put(id); err != nil {
		return err
	}
	if ok, _ := mountinfo.Mounted(path); ok {
		return fmt.Errorf("%s stays mounted with no mount counted", path)
	}
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
