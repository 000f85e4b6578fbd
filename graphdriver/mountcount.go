package graphdriver

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MountCount is the reference count of one mount point, kept in a small
// file next to it, so that every process using a driver's home shares it
// and it outlives them: `layers mount c` in one process and `layers umount
// c` in the next balance each other, as Podman's mount counts do.
//
// The file is locked (flock) for every change, which serialises goroutines
// and processes alike. The count is reconciled with the kernel's mountinfo
// each time it is read: a count whose mount is gone (unmounted by hand, a
// reboot, a process killed between unmount and update) reads as zero, so
// the count never says mounted when nothing is, and a crashed process never
// leaves it lying. A mount whose holders all died stays mounted with its
// count, as it should: the count says who has to Put, not who is alive.
//
// The zero value is not usable; make one with NewMountCount.
type MountCount struct {
	file   string // the count, as decimal text
	target string // the mount point it counts
}

// NewMountCount returns the count of target, kept in file. The file's
// directory must exist; the file is made on first use.
func NewMountCount(file, target string) MountCount {
	return MountCount{file: file, target: target}
}

// Acquire adds a reference to the mount point, calling mount first when
// the count is zero and nothing is mounted there yet. It reports whether
// it mounted. When mount fails, the count is left as it was.
func (c MountCount) Acquire(mount func() error) (mounted bool, err error) {
	err = c.update(func(n int, isMounted bool, save func(int) error) (int, error) {
		if !isMounted {
			// The count is recorded before the mount: a process killed
			// between the two leaves a count whose mount is missing,
			// which the next reader resets. The reverse order would
			// leave a mount nobody counts.
			if err := save(n + 1); err != nil {
				return n, err
			}
			if err := mount(); err != nil {
				return 0, err
			}
			mounted = true
		}
		return n + 1, nil
	})
	return mounted, err
}

// Release drops a reference, calling unmount when it was the last. A
// release when the count is zero does nothing and returns nil: a Put
// without a Get, or after the mount vanished, is not an error. When
// unmount fails, the reference stays, so that the count still says the
// point is mounted. It reports whether it unmounted.
func (c MountCount) Release(unmount func() error) (unmounted bool, err error) {
	err = c.update(func(n int, isMounted bool, _ func(int) error) (int, error) {
		switch {
		case n == 0:
			return 0, nil
		case n > 1:
			return n - 1, nil
		}
		if isMounted {
			if err := unmount(); err != nil {
				return n, err
			}
			unmounted = true
		}
		return 0, nil
	})
	return unmounted, err
}

// Count returns the references now held, reconciled with mountinfo.
func (c MountCount) Count() (int, error) {
	var count int
	err := c.update(func(n int, _ bool, _ func(int) error) (int, error) {
		count = n
		return n, nil
	})
	return count, err
}

// Unmounted runs fn while nothing is mounted at the mount point and no
// Acquire can mount it, and returns what fn returns; when something is
// mounted, it returns an error wrapping ErrMounted without calling fn.
func (c MountCount) Unmounted(fn func() error) error {
	return c.update(func(n int, mounted bool, _ func(int) error) (int, error) {
		if mounted {
			return n, fmt.Errorf("%s: %w", c.target, ErrMounted)
		}
		return n, fn()
	})
}

// Reset sets the count to zero without unmounting, for callers that have
// just unmounted the point themselves (a forced removal).
func (c MountCount) Reset() error {
	return c.update(func(int, bool, func(int) error) (int, error) { return 0, nil })
}

// update runs fn with the file locked and the reconciled count, and stores
// what fn returns (also when fn fails, so that a failed mount restores the
// count it had) unless the file holds it already. fn may store a count
// earlier with save, on the same locked file.
func (c MountCount) update(fn func(n int, mounted bool, save func(int) error) (int, error)) error {
	f, err := os.OpenFile(c.file, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("mount count: %w", err)
	}
	defer f.Close()
	if err := flock(f, unix.LOCK_EX); err != nil {
		return fmt.Errorf("mount count: lock %s: %w", c.file, err)
	}
	n, stored, err := readCount(f)
	if err != nil {
		return fmt.Errorf("mount count: %s: %w", c.file, err)
	}
	mounted, err := IsMountpoint(c.target)
	if errors.Is(err, os.ErrNotExist) {
		mounted, err = false, nil
	}
	if err != nil {
		return fmt.Errorf("mount count: %w", err)
	}
	if !mounted {
		n = 0
	}
	save := func(v int) error {
		if err := c.writeFile(f, v); err != nil {
			return err
		}
		stored = v
		return nil
	}
	next, ferr := fn(n, mounted, save)
	if next != stored {
		if err := save(next); err != nil {
			return errors.Join(ferr, err)
		}
	}
	return ferr
}

func (c MountCount) writeFile(f *os.File, n int) error {
	b := []byte(strconv.Itoa(n) + "\n")
	if _, err := f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("mount count: write %s: %w", c.file, err)
	}
	if err := f.Truncate(int64(len(b))); err != nil {
		return fmt.Errorf("mount count: write %s: %w", c.file, err)
	}
	return nil
}

// readCount returns the count the file holds, and the value it holds as
// written (-1 when it holds no clean count, so that update rewrites it).
func readCount(f *os.File) (n, stored int, err error) {
	buf := make([]byte, 32)
	k, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, 0, err
	}
	s := strings.TrimSpace(string(buf[:k]))
	if s == "" {
		return 0, -1, nil // new, or cut short by a crash: reconciled below
	}
	n, perr := strconv.Atoi(s)
	if perr != nil || n < 0 || string(buf[:k]) != strconv.Itoa(n)+"\n" {
		// A damaged count is no reason to refuse a mount: mountinfo
		// knows whether it is mounted, and one reference is the least
		// a mounted point has.
		return 1, -1, nil
	}
	return n, n, nil
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
