package fscopy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxChunk bounds one copy_file_range call, so a huge file still gives the
// loop a chance to notice errors early and stays within ssize_t everywhere.
const maxChunk = 1 << 30

// unsupported reports whether err from FICLONE or copy_file_range means
// "this method does not work here" (as opposed to a real I/O error), so the
// next method should be tried. EBADF is in the list because FICLONE reports
// a filesystem without reflink that way on some kernels.
func unsupported(err error) bool {
	return errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EBADF)
}

// errSourceChanged is returned when a file's data ends before the size it
// was stat'ed with: it shrank (or was truncated) while being copied, and a
// copy padded with zeros would look whole.
var errSourceChanged = errors.New("source changed during copy")

func (c *copier) dev(dev uint64) *devState {
	ds := c.devs[dev]
	if ds == nil {
		ds = new(devState)
		c.devs[dev] = ds
	}
	return ds
}

// copyData fills the empty file dfd with the data of sfd: a clone when
// allowed and possible, else a copy of the data segments only, so holes
// stay holes.
func (c *copier) copyData(sfd, dfd int, st *unix.Stat_t) error {
	size := st.Size
	if size == 0 {
		return nil
	}
	ds := c.dev(st.Dev)
	if c.opts.Reflink != ReflinkNever && !ds.cloneBad {
		err := unix.IoctlFileClone(dfd, sfd)
		if err == nil {
			ds.cloneOK = true
			c.stats.Cloned++
			c.stats.Bytes += size
			return nil
		}
		if c.opts.Reflink == ReflinkRequire {
			return fmt.Errorf("%w: FICLONE: %w", ErrReflinkUnsupported, err)
		}
		if !unsupported(err) {
			return fmt.Errorf("FICLONE: %w", err)
		}
		if !ds.cloneOK {
			ds.cloneBad = true
		}
	} else if c.opts.Reflink == ReflinkRequire {
		return fmt.Errorf("%w on this filesystem", ErrReflinkUnsupported)
	}
	c.stats.Copied++
	// A file with fewer blocks than its size has holes (or is compressed);
	// only then is it worth two lseeks per segment.
	if st.Blocks*512 >= size {
		return c.copyRange(sfd, dfd, 0, size, ds)
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			// No SEEK_DATA here: copy the rest as data.
			if err := c.copyRange(sfd, dfd, off, size-off, ds); err != nil {
				return err
			}
			break
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil || hole > size {
			hole = size
		}
		if err := c.copyRange(sfd, dfd, data, hole-data, ds); err != nil {
			return err
		}
		off = hole
	}
	// A shrunk source looks like a trailing hole to SEEK_DATA: before
	// padding the copy to size, make sure the source still has it.
	var now unix.Stat_t
	if err := unix.Fstat(sfd, &now); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if now.Size < size {
		return fmt.Errorf("%w: size %d, stat'ed as %d", errSourceChanged, now.Size, size)
	}
	// The size covers a trailing hole; data already written is not touched.
	if err := unix.Ftruncate(dfd, size); err != nil {
		return fmt.Errorf("ftruncate: %w", err)
	}
	return nil
}

// copyRange copies n bytes at off from sfd to the same offset of dfd, with
// copy_file_range when it works on this filesystem, else read/write.
func (c *copier) copyRange(sfd, dfd int, off, n int64, ds *devState) error {
	done := int64(0)
	// copy_file_range shares extents on xfs and btrfs, which ReflinkNever
	// promises not to do.
	if !ds.cfrBad && c.opts.Reflink != ReflinkNever {
		for done < n {
			roff, woff := off+done, off+done
			k, err := unix.CopyFileRange(sfd, &roff, dfd, &woff, int(min(n-done, maxChunk)), 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				if !unsupported(err) {
					return fmt.Errorf("copy_file_range: %w", err)
				}
				if !ds.cfrOK {
					ds.cfrBad = true
				}
				break // the rest by read/write
			}
			if k == 0 {
				c.stats.Bytes += done
				return fmt.Errorf("%w: data ends at %d, %d bytes before its stat'ed size", errSourceChanged, off+done, n-done)
			}
			ds.cfrOK = true
			done += int64(k)
		}
		if done == n {
			c.stats.Bytes += done
			return nil
		}
	}
	if c.buf == nil {
		c.buf = make([]byte, rwBufSize)
	}
	for done < n {
		want := c.buf[:min(int64(len(c.buf)), n-done)]
		r, err := unix.Pread(sfd, want, off+done)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if r == 0 {
			c.stats.Bytes += done
			return fmt.Errorf("%w: data ends at %d, %d bytes before its stat'ed size", errSourceChanged, off+done, n-done)
		}
		for w := 0; w < r; {
			k, err := unix.Pwrite(dfd, want[w:r], off+done+int64(w))
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("write: %w", err)
			}
			w += k
		}
		done += int64(r)
	}
	c.stats.Bytes += done
	return nil
}

// ReflinkSupported reports whether files in directory dir can be cloned
// (FICLONE), by cloning a small scratch file there. Drivers use it for
// their status and to honour a "reflink required" option up front.
func ReflinkSupported(dir string) (bool, error) {
	src, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return false, fmt.Errorf("probe reflink in %s: %w", dir, err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false, fmt.Errorf("probe reflink in %s: %w", dir, err)
	}
	dstName := filepath.Join(dir, filepath.Base(src.Name())+".clone")
	dst, err := os.OpenFile(dstName, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, fmt.Errorf("probe reflink in %s: %w", dir, err)
	}
	defer os.Remove(dstName)
	defer dst.Close()
	err = unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
	if err == nil {
		return true, nil
	}
	if unsupported(err) {
		return false, nil
	}
	return false, fmt.Errorf("probe reflink in %s: FICLONE: %w", dir, err)
}

// FIEMAP definitions; x/sys has none.
const (
	fsIocFiemap        = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync     = 0x1
	fiemapExtentLast   = 0x1
	fiemapExtentShared = 0x2000
	fiemapBatch        = 64
)

type fiemapExtent struct {
	Logical    uint64
	Physical   uint64
	Length     uint64
	reserved64 [2]uint64
	Flags      uint32
	reserved   [3]uint32
}

type fiemap struct {
	Start         uint64
	Length        uint64
	Flags         uint32
	MappedExtents uint32
	ExtentCount   uint32
	reserved      uint32
	Extents       [fiemapBatch]fiemapExtent
}

// SharedBytes reports how many bytes of the file at path live in extents
// shared with another file (FIEMAP_EXTENT_SHARED), and how many bytes its
// extents map in all. Tests and benchmarks use it to check that a copy was
// really a reflink. Filesystems without FIEMAP (tmpfs) give an error
// wrapping EOPNOTSUPP.
func SharedBytes(path string) (shared, mapped int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	var fm fiemap
	start := uint64(0)
	for {
		fm = fiemap{Start: start, Length: ^uint64(0) - start, Flags: fiemapFlagSync, ExtentCount: fiemapBatch}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&fm)))
		if errno != 0 {
			return 0, 0, fmt.Errorf("fiemap %s: %w", path, errno)
		}
		if fm.MappedExtents == 0 {
			return shared, mapped, nil
		}
		for _, e := range fm.Extents[:fm.MappedExtents] {
			mapped += int64(e.Length)
			if e.Flags&fiemapExtentShared != 0 {
				shared += int64(e.Length)
			}
			start = e.Logical + e.Length
			if e.Flags&fiemapExtentLast != 0 {
				return shared, mapped, nil
			}
		}
	}
}
