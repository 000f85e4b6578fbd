// Package staging is the HOME/tmp machinery the graph drivers share: layers
// are built in a private temp directory and published with one atomic
// rename, and removed by being renamed out first and deleted afterwards.
// Both exist so that a half-built or half-deleted layer never looks whole,
// even after a crash.
//
// Several driver instances (processes, or goroutines with a driver each)
// may share one home, and Open removes what killed processes left under
// HOME/tmp. So that a second process's cleanup never deletes a layer being
// built (or removed) by a live one, every entry HOME/tmp/<name> is guarded
// by an exclusive flock on HOME/tmp/<name>.lock, taken before the entry is
// made and held until it is renamed away or deleted; Open deletes only
// entries whose lock it can take without waiting (LOCK_NB), including
// entries whose lock file is missing. The kernel drops the lock of a killed
// process, which is what makes its entries debris.
package staging

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
)

// ErrExists is returned by Publish when its destination already exists.
var ErrExists = errors.New("destination exists")

// lockSuffix names the lock file of a HOME/tmp entry. Entry names end in
// random hex, so no entry is mistaken for a lock file.
const lockSuffix = ".lock"

// Options tune Open.
type Options struct {
	// Cleaner, if set, is called with the path of every stale entry,
	// under its lock, before the entry is deleted (the overlay driver
	// unmounts a probe a killed process left mounted). Its error aborts
	// Open.
	Cleaner func(path string) error
}

// Dir is a driver's HOME/tmp. It is safe for concurrent use.
type Dir struct {
	path string
}

// Open makes HOME/tmp (mode 0700) if needed and removes the stale entries
// there: those whose lock nobody holds. Entries in use by another instance
// are skipped, as are entries that vanish while it looks.
func Open(home string, opts Options) (*Dir, error) {
	d := &Dir{path: filepath.Join(home, "tmp")}
	if err := os.MkdirAll(d.path, 0o700); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(d.path)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(ents))
	for _, e := range ents {
		name := strings.TrimSuffix(e.Name(), lockSuffix)
		if seen[name] {
			continue
		}
		seen[name] = true
		if err := d.removeStale(name, opts.Cleaner); err != nil {
			return nil, fmt.Errorf("remove leftover %s: %w", filepath.Join(d.path, name), err)
		}
	}
	return d, nil
}

// Path returns the path of HOME/tmp.
func (d *Dir) Path() string { return d.path }

// removeStale deletes HOME/tmp/name and its lock file if the lock can be
// taken without waiting, and does nothing if another instance holds it.
func (d *Dir) removeStale(name string, cleaner func(string) error) error {
	path := filepath.Join(d.path, name)
	// O_CREAT: an entry whose lock file is missing (left by a version
	// without locks) is locked through a new one.
	f, err := os.OpenFile(path+lockSuffix, os.O_RDONLY|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil // in use
		}
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	if ok, err := lockIsCurrent(f); err != nil || !ok {
		f.Close()
		return err // its owner finished and unlinked it: nothing to do
	}
	e := &Entry{path: path, lock: f}
	if cleaner != nil {
		if err := cleaner(path); err != nil {
			f.Close()
			return err
		}
	}
	return e.Remove()
}

// Entry is a name under HOME/tmp whose lock this instance holds. The entry
// itself is not made by New: the caller makes a directory (or renames one)
// at Path. Every Entry must end with Publish, Remove or Release.
type Entry struct {
	path string   // HOME/tmp/<name>; the entry itself may not exist yet
	lock *os.File // HOME/tmp/<name>.lock, flocked LOCK_EX; nil when done
}

// New reserves a fresh name under HOME/tmp, starting with prefix, and
// locks it; the entry itself is not created.
func (d *Dir) New(prefix string) (*Entry, error) {
	for {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		path := filepath.Join(d.path, prefix+"-"+hex.EncodeToString(b[:]))
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
			return &Entry{path: path, lock: f}, nil
		}
		f.Close()
	}
}

// Path returns HOME/tmp/<name>, where the caller builds the entry.
func (e *Entry) Path() string { return e.path }

// Publish renames the entry to dst with renameat2(RENAME_NOREPLACE), so
// that of two racing publishers of one dst only one wins, and then drops
// the lock. It fails with an error wrapping ErrExists when dst exists; on
// any failure the entry stays held, for Remove. A lock file that cannot be
// unlinked after the rename is left for the next Open to remove.
func (e *Entry) Publish(dst string) error {
	if e.lock == nil {
		return fmt.Errorf("publish %s: entry already released", e.path)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, e.path, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			return fmt.Errorf("publish %s: %w", dst, ErrExists)
		}
		return fmt.Errorf("publish: %w", &os.LinkError{Op: "rename", Old: e.path, New: dst, Err: err})
	}
	_ = e.Release()
	return nil
}

// Remove deletes the entry (if it exists) and then its lock file, and
// drops the lock: the lock is held for the whole delete, so no other
// instance sees the half-deleted entry as debris of its own to remove.
// After Publish, Remove or Release it does nothing.
func (e *Entry) Remove() error {
	if e.lock == nil {
		return nil
	}
	if err := os.RemoveAll(e.path); err != nil {
		e.lock.Close()
		e.lock = nil
		return err
	}
	return e.Release()
}

// Release unlinks the lock file and drops the lock; the entry must be gone
// (renamed away or deleted). The unlink happens while the lock is held.
// After Publish, Remove or Release it does nothing.
func (e *Entry) Release() error {
	if e.lock == nil {
		return nil
	}
	err := os.Remove(e.lock.Name())
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if cerr := e.lock.Close(); err == nil {
		err = cerr
	}
	e.lock = nil
	return err
}

// RemoveTree deletes the tree at path (outside HOME/tmp, on the same
// filesystem): it renames it to a fresh entry named after prefix, under
// its lock, and deletes it there. The tree stops existing at once,
// atomically, and a crash during the slow delete leaves only HOME/tmp
// debris; the lock is held across both, so an Open elsewhere leaves the
// delete to us. A path that does not exist is not an error.
func (d *Dir) RemoveTree(prefix, path string) error {
	e, err := d.New(prefix)
	if err != nil {
		return err
	}
	if err := os.Rename(path, e.path); err != nil {
		_ = e.Release()
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return e.Remove()
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
