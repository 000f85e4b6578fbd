package overlay

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/xattr"
)

var _ graphdriver.ReadWriteCommitter = (*Driver)(nil)

// commitMarker is the file in an image layer made by CommitReadWrite that
// says, until ResolveCommit keeps the commit, how to undo it: the
// read-write layer it came from and the device and inode of that layer's
// diff dir before the commit, which tell whether the two diff dirs were
// exchanged yet.
const commitMarker = "commit-of"

// CommitReadWrite makes image layer id, on read-write layer rw's parent,
// out of rw's diff dir, and gives rw an empty diff dir on top of id: no
// file is copied. In order, each step leaving the same tree at rw:
//
//  1. id is published with an empty diff dir (with the root attributes of
//     rw's), rw's parent chain and the commit marker (as Create makes a
//     layer on rw's parent);
//  2. rw's parent chain is rewritten with id first (rw over an empty
//     layer shows what it showed);
//  3. the two diff dirs are exchanged (renameat2 RENAME_EXCHANGE), so
//     that rw's changes are id's and rw's own diff dir is empty.
//
// rw must not be mounted, and its diff dir must hold no renamed directory
// or metacopy file (they point into the lowers, which a mount of id does
// not follow): either is refused before anything changes.
func (d *Driver) CommitReadWrite(rw, id string) error {
	if err := d.commitReadWrite(rw, id); err != nil {
		return fmt.Errorf("commit layer %s into %s: %w", rw, id, err)
	}
	return nil
}

func (d *Driver) commitReadWrite(rw, id string) error {
	if err := validID(rw); err != nil {
		return err
	}
	if err := validID(id); err != nil {
		return err
	}
	if rw == id {
		return fmt.Errorf("layer %s cannot be committed into itself", rw)
	}
	unlockRW := d.locks.lock(rw)
	defer unlockRW()
	unlockID := d.locks.lock(id)
	defer unlockID()
	if !d.Exists(rw) {
		return graphdriver.ErrLayerNotExist
	}
	if kind, err := d.kind(rw); err != nil {
		return err
	} else if kind != kindReadWrite {
		return fmt.Errorf("layer %s is an image layer, not a read-write one", rw)
	}
	if d.Exists(id) {
		return graphdriver.ErrLayerExists
	}
	return d.mountCount(rw).Unmounted(func() error {
		upper := filepath.Join(d.dir(rw), "diff")
		if err := d.selfContained(upper); err != nil {
			return err
		}
		lowers, err := d.readLowers(rw)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(upper, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: upper, Err: err}
		}
		marker := fmt.Sprintf("%s\n%d %d\n", rw, st.Dev, st.Ino)
		if err := d.build(id, lowers, upper, kindImage, map[string]string{commitMarker: marker}); err != nil {
			return err
		}
		if err := d.writeLowers(rw, append([]string{id}, lowers...)); err != nil {
			return err
		}
		committed := filepath.Join(d.dir(id), "diff")
		if err := exchange(upper, committed); err != nil {
			return err
		}
		// Moving a directory to another parent rewrites its ".." entry,
		// which some filesystems (xfs) count as a change of its mtime.
		// The roots show the times they had.
		times := []unix.Timespec{st.Atim, st.Mtim}
		for _, p := range []string{upper, committed} {
			if err := unix.UtimesNano(p, times); err != nil {
				return &os.PathError{Op: "utimes", Path: p, Err: err}
			}
		}
		return nil
	})
}

// writeLowers replaces layer id's parent chain, atomically (a new file
// renamed over the old): a crash leaves the old chain or the new one.
func (d *Driver) writeLowers(id string, lowers []string) error {
	p := filepath.Join(d.dir(id), "lower")
	if len(lowers) == 0 {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	tmp := p + ".new"
	if err := writeFile(tmp, strings.Join(lowers, "\n")+"\n"); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// exchange swaps directories a and b atomically.
func exchange(a, b string) error {
	if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
		return fmt.Errorf("exchange %s and %s: %w", a, b, err)
	}
	return nil
}

// selfContained refuses an upper dir holding entries whose content is in
// the lowers: renamed directories (overlay.redirect) and metacopy files
// (overlay.metacopy). Read as a lower layer, without the upper's lowers
// under it, they would show something else.
func (d *Driver) selfContained(upper string) error {
	prefix := "trusted.overlay."
	if d.userXattr {
		prefix = "user.overlay."
	}
	return filepath.WalkDir(upper, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() && !e.Type().IsRegular() {
			return nil
		}
		names, err := xattr.List(p)
		if err != nil {
			return err
		}
		for _, n := range names {
			if n == prefix+"redirect" || n == prefix+"metacopy" {
				rel, _ := filepath.Rel(upper, p)
				return fmt.Errorf("%s carries %s: its content is in a lower layer: %w", "/"+filepath.ToSlash(rel), n, graphdriver.ErrNotSupported)
			}
		}
		return nil
	})
}

// ResolveCommit keeps or undoes a CommitReadWrite of rw into id. Undoing
// exchanges the diff dirs back if they were exchanged (the marker's inode
// says), puts rw back on its old parent and removes id.
func (d *Driver) ResolveCommit(rw, id string, keep bool) error {
	if err := d.resolveCommit(rw, id, keep); err != nil {
		what := "undo"
		if keep {
			what = "keep"
		}
		return fmt.Errorf("%s commit of layer %s into %s: %w", what, rw, id, err)
	}
	return nil
}

func (d *Driver) resolveCommit(rw, id string, keep bool) error {
	if err := validID(rw); err != nil {
		return err
	}
	if err := validID(id); err != nil {
		return err
	}
	unlockRW := d.locks.lock(rw)
	defer unlockRW()
	unlockID := d.locks.lock(id)
	defer unlockID()
	markerPath := filepath.Join(d.dir(id), commitMarker)
	if keep {
		if err := os.Remove(markerPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	if _, err := os.Lstat(d.dir(id)); errors.Is(err, os.ErrNotExist) {
		return nil // never published: rw was not touched
	}
	b, err := os.ReadFile(markerPath)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("layer %s is not a commit in progress (kept already, or not made by a commit)", id)
	}
	if err != nil {
		return err
	}
	from, dev, ino, err := parseMarker(string(b))
	if err != nil {
		return fmt.Errorf("%s: %w", markerPath, err)
	}
	if from != rw {
		return fmt.Errorf("layer %s is a commit of layer %s, not of %s", id, from, rw)
	}
	return d.mountCount(rw).Unmounted(func() error {
		upper := filepath.Join(d.dir(rw), "diff")
		committed := filepath.Join(d.dir(id), "diff")
		var st unix.Stat_t
		if err := unix.Lstat(committed, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: committed, Err: err}
		}
		if st.Dev == dev && st.Ino == ino {
			if err := exchange(committed, upper); err != nil {
				return err
			}
			if err := unix.UtimesNano(upper, []unix.Timespec{st.Atim, st.Mtim}); err != nil {
				return &os.PathError{Op: "utimes", Path: upper, Err: err}
			}
		}
		lowers, err := d.readLowers(rw)
		if err != nil {
			return err
		}
		if len(lowers) > 0 && lowers[0] == id {
			if err := d.writeLowers(rw, lowers[1:]); err != nil {
				return err
			}
		}
		return d.remove(id)
	})
}

// parseMarker reads a commit marker: the read-write layer's ID, then the
// device and inode of its diff dir before the commit.
func parseMarker(s string) (rw string, dev, ino uint64, err error) {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) != 2 {
		return "", 0, 0, fmt.Errorf("bad commit marker %q", s)
	}
	nums := strings.Fields(lines[1])
	if len(nums) != 2 {
		return "", 0, 0, fmt.Errorf("bad commit marker %q", s)
	}
	if dev, err = strconv.ParseUint(nums[0], 10, 64); err != nil {
		return "", 0, 0, fmt.Errorf("bad commit marker %q: %w", s, err)
	}
	if ino, err = strconv.ParseUint(nums[1], 10, 64); err != nil {
		return "", 0, 0, fmt.Errorf("bad commit marker %q: %w", s, err)
	}
	return lines[0], dev, ino, validID(lines[0])
}
