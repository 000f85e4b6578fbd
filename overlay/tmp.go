package overlay

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/graphdriver"
)

// HOME/tmp holds layers being built or removed and New's probe mount. Each
// entry is guarded by an exclusive flock on HOME/tmp/<name>.lock, taken
// before the entry is made and held until it is renamed away or deleted,
// exactly as in the vfs driver: New deletes only entries whose lock it can
// take without waiting, which are the debris of killed processes.

// lockSuffix names the lock file of a HOME/tmp entry. Entry names end in
// random hex, so no entry is mistaken for a lock file.
const lockSuffix = ".lock"

// cleanTmp removes what killed processes left under HOME/tmp: every entry
// whose lock nobody holds. Entries in use by another driver instance are
// skipped, as are entries that vanish while it looks.
func (d *Driver) cleanTmp() error {
	ents, err := os.ReadDir(d.tmp)
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	seen := make(map[string]bool, len(ents))
	for _, e := range ents {
		name := strings.TrimSuffix(e.Name(), lockSuffix)
		if seen[name] {
			continue
		}
		seen[name] = true
		if err := d.removeStale(name); err != nil {
			return fmt.Errorf("overlay: remove leftover %s: %w", filepath.Join(d.tmp, name), err)
		}
	}
	return nil
}

// removeStale deletes HOME/tmp/name and its lock file if the lock can be
// taken without waiting, and does nothing if another instance holds it.
func (d *Driver) removeStale(name string) error {
	path := filepath.Join(d.tmp, name)
	// O_CREAT: an entry whose lock file is missing is locked through a
	// new one.
	f, err := os.OpenFile(path+lockSuffix, os.O_RDONLY|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer f.Close()
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil // in use
		}
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	if ok, err := lockIsCurrent(f); err != nil || !ok {
		return err // its owner finished and unlinked it: nothing to do
	}
	// A probe killed while mounted leaves its mount behind: take it away
	// before deleting below it (not mounted is not an error).
	if err := graphdriver.UnmountDetach(filepath.Join(path, "merged")); err != nil {
		return err
	}
	t := &tmpEntry{path: path, lock: f}
	return t.remove()
}

// tmpEntry is a name under HOME/tmp whose lock this driver holds.
type tmpEntry struct {
	path string   // HOME/tmp/<name>; the entry itself may not exist yet
	lock *os.File // HOME/tmp/<name>.lock, flocked LOCK_EX
}

// newTmp reserves a fresh name under HOME/tmp, starting with prefix, and
// locks it; the entry itself is not created. The caller must call remove
// or release.
func (d *Driver) newTmp(prefix string) (*tmpEntry, error) {
	for {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		path := filepath.Join(d.tmp, prefix+"-"+hex.EncodeToString(b[:]))
		f, err := os.OpenFile(path+lockSuffix, os.O_RDONLY|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("make lock file: %w", err)
		}
		// A cleaner of another instance may have taken this new lock
		// file before us and deleted it: then try another name.
		if err := flock(f, unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		ok, err := lockIsCurrent(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		if ok {
			return &tmpEntry{path: path, lock: f}, nil
		}
		f.Close()
	}
}

// remove deletes the entry (if it exists) and then its lock file, and
// drops the lock: the lock is held for the whole delete.
func (t *tmpEntry) remove() error {
	if err := os.RemoveAll(t.path); err != nil {
		t.lock.Close()
		return err
	}
	return t.release()
}

// release unlinks the lock file and drops the lock; the entry must be gone
// (renamed away or deleted). The unlink happens while the lock is held.
func (t *tmpEntry) release() error {
	err := os.Remove(t.lock.Name())
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if cerr := t.lock.Close(); err == nil {
		err = cerr
	}
	return err
}

// flock is unix.Flock on f, retried on EINTR.
func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// lockIsCurrent reports whether the open lock file f is still the file at
// its path; it is not when another instance unlinked it after removing the
// entry (between our open and our flock).
func lockIsCurrent(f *os.File) (bool, error) {
	var fst, pst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		return false, fmt.Errorf("fstat %s: %w", f.Name(), err)
	}
	if err := unix.Stat(f.Name(), &pst); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return fst.Dev == pst.Dev && fst.Ino == pst.Ino, nil
}
