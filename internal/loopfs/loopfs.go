// Package loopfs makes fresh, throw-away filesystems for tests and
// benchmarks: a sparse image file formatted as ext4, xfs (with reflink) or
// btrfs, attached to a loop device and mounted; or a plain tmpfs mount.
//
// Drivers and copies behave differently on each filesystem (reflinks on xfs
// and btrfs, subvolumes on btrfs, xattr limits on ext4), so tests must run on
// the real thing, and a fresh one each time so they cannot see each other's
// leftovers. Mounting needs root, loop devices and the mkfs tools; New skips
// the test, with the reason, when any of them is missing.
package loopfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Minimum sizes mkfs accepts (measured on this kernel and these mkfs
// versions); smaller sizes are raised to these.
const (
	MinExt4  = 64 << 20
	MinXFS   = 300 << 20
	MinBtrfs = 114 << 20
	// DefaultTmpfs is the tmpfs size used when none is given.
	DefaultTmpfs = 256 << 20
)

// ErrUnavailable means this host cannot make the filesystem asked for (not
// root, a mkfs tool missing, no loop devices, the kernel lacks the
// filesystem). Tests skip on it; anything else is a failure.
var ErrUnavailable = errors.New("loop filesystem unavailable")

// FS is a mounted throw-away filesystem.
type FS struct {
	// Type is ext4, xfs, btrfs or tmpfs.
	Type string
	// Dir is the mount point.
	Dir string
	// Device is the loop device ("" for tmpfs).
	Device string

	base   string // directory holding the image and the mount point
	image  string
	closed bool
}

// Options tune Make beyond type and size.
type Options struct {
	// MountData is passed to mount(2) as the filesystem's options string
	// (e.g. "compress=zstd" on btrfs, "nodiscard" on ext4). Generic flags
	// such as noatime are not data: the kernel refuses them here (EINVAL).
	MountData string
	// DirectIO makes the loop device bypass the page cache of the image
	// file, so benchmarks do not count data cached twice.
	DirectIO bool
	// MkfsArgs are extra arguments for mkfs.
	MkfsArgs []string
}

// New makes a filesystem of type fstype (ext4, xfs, btrfs or tmpfs) of at
// least size bytes (0: the minimum) for the test tb, returns its mount point
// and removes everything when the test ends. It skips tb when the host
// cannot do it, saying why.
func New(tb testing.TB, fstype string, size int64) string {
	tb.Helper()
	return NewFS(tb, fstype, size, Options{}).Dir
}

// NewFS is New with options, returning the whole FS.
func NewFS(tb testing.TB, fstype string, size int64, opts Options) *FS {
	tb.Helper()
	if reason := Unavailable(fstype); reason != "" {
		tb.Skipf("loopfs: cannot make %s here: %s", fstype, reason)
	}
	base, err := os.MkdirTemp("/var/tmp", "loopfs-"+fstype+"-")
	if err != nil {
		tb.Fatalf("loopfs: %v", err)
	}
	fs, err := MakeWith(base, fstype, size, opts)
	if err != nil {
		_ = os.RemoveAll(base)
		if errors.Is(err, ErrUnavailable) {
			tb.Skipf("loopfs: %v", err)
		}
		tb.Fatalf("loopfs: %v", err)
	}
	tb.Cleanup(func() {
		if err := fs.Close(); err != nil {
			tb.Errorf("loopfs: %v", err)
		}
		_ = os.Remove(base)
	})
	return fs
}

// Unavailable returns why fstype cannot be made on this host, or "" when
// it can (as far as can be told without trying).
func Unavailable(fstype string) string {
	if os.Geteuid() != 0 {
		return "needs root (mount, loop devices)"
	}
	if fstype == "tmpfs" {
		return ""
	}
	tool, ok := mkfsTool[fstype]
	if !ok {
		return fmt.Sprintf("unknown filesystem type %q (want ext4, xfs, btrfs or tmpfs)", fstype)
	}
	if _, err := exec.LookPath(tool); err != nil {
		return fmt.Sprintf("%s not found (install %s)", tool, mkfsPackage[fstype])
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Sprintf("no loop devices: %v", err)
	}
	if !kernelHas(fstype) {
		return fmt.Sprintf("kernel has no %s (not in /proc/filesystems)", fstype)
	}
	return ""
}

var mkfsTool = map[string]string{"ext4": "mkfs.ext4", "xfs": "mkfs.xfs", "btrfs": "mkfs.btrfs"}

var mkfsPackage = map[string]string{"ext4": "e2fsprogs", "xfs": "xfsprogs", "btrfs": "btrfs-progs"}

var minSize = map[string]int64{"ext4": MinExt4, "xfs": MinXFS, "btrfs": MinBtrfs, "tmpfs": 1 << 20}

func kernelHas(fstype string) bool {
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return true // cannot tell: let mount decide
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == fstype {
			return true
		}
	}
	return false
}

// Make creates a filesystem of type fstype and at least size bytes inside
// the existing directory dir (which holds the image file and the mount
// point) and mounts it. Close undoes all of it. Errors that mean the host
// cannot do it wrap ErrUnavailable.
func Make(dir, fstype string, size int64) (*FS, error) {
	return MakeWith(dir, fstype, size, Options{})
}

// MakeWith is Make with options.
func MakeWith(dir, fstype string, size int64, opts Options) (fs *FS, err error) {
	if reason := Unavailable(fstype); reason != "" {
		return nil, fmt.Errorf("make %s: %w: %s", fstype, ErrUnavailable, reason)
	}
	if size < minSize[fstype] {
		size = minSize[fstype]
		if fstype == "tmpfs" {
			size = DefaultTmpfs
		}
	}
	fs = &FS{Type: fstype, Dir: filepath.Join(dir, "mnt"), base: dir}
	if err := os.Mkdir(fs.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("make %s: %w", fstype, err)
	}
	defer func() {
		if err != nil {
			_ = fs.Close()
		}
	}()
	if fstype == "tmpfs" {
		data := fmt.Sprintf("size=%d", size)
		if opts.MountData != "" {
			data += "," + opts.MountData
		}
		if err := unix.Mount("tmpfs", fs.Dir, "tmpfs", 0, data); err != nil {
			return fs, fmt.Errorf("make tmpfs: mount on %s: %w", fs.Dir, err)
		}
		return fs, nil
	}

	fs.image = filepath.Join(dir, fstype+".img")
	f, err := os.OpenFile(fs.image, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fs, fmt.Errorf("make %s: %w", fstype, err)
	}
	err = f.Truncate(size) // sparse: costs no blocks until written
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fs, fmt.Errorf("make %s: image: %w", fstype, err)
	}
	if err := mkfs(fstype, fs.image, opts.MkfsArgs); err != nil {
		return fs, err
	}
	dev, lf, err := attach(fs.image, opts.DirectIO)
	if err != nil {
		return fs, fmt.Errorf("make %s: %w", fstype, err)
	}
	fs.Device = dev
	// Our fd keeps the autoclear device attached until the mount holds it.
	err = unix.Mount(dev, fs.Dir, fstype, 0, opts.MountData)
	lf.Close()
	if err != nil {
		if errors.Is(err, unix.ENODEV) {
			err = fmt.Errorf("%w: kernel: %w", ErrUnavailable, err)
		}
		return fs, fmt.Errorf("make %s: mount %s on %s: %w", fstype, dev, fs.Dir, err)
	}
	return fs, nil
}

func mkfs(fstype, image string, extra []string) error {
	var args []string
	switch fstype {
	case "ext4":
		// -F: it is a file, not a device; nodiscard (-K for the others):
		// the image is fresh and sparse, nothing to discard.
		args = []string{"-q", "-F", "-E", "nodiscard"}
	case "xfs":
		args = []string{"-q", "-f", "-m", "reflink=1", "-K"}
	case "btrfs":
		args = []string{"-q", "-f", "-K"}
	}
	args = append(append(args, extra...), image)
	out, err := exec.Command(mkfsTool[fstype], args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("make %s: %s %s: %w: %s", fstype, mkfsTool[fstype], strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// attach binds image to a free loop device (LOOP_CTL_GET_FREE, then
// LOOP_CONFIGURE), retrying when another process grabs the same device
// first. The device is set to autoclear, so it detaches itself once the
// filesystem is unmounted and the last fd is closed, even if Close never
// runs; the caller must therefore keep the returned file open until the
// device is mounted.
func attach(image string, directIO bool) (string, *os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer ctl.Close()
	img, err := os.OpenFile(image, os.O_RDWR, 0)
	if err != nil {
		return "", nil, err
	}
	defer img.Close()
	var lastErr error
	for range 20 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("%w: LOOP_CTL_GET_FREE: %w", ErrUnavailable, err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lf, err := openLoop(dev, n)
		if err != nil {
			return "", nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(img.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		if directIO {
			cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
		}
		copy(cfg.Info.File_name[:], image)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if err == nil {
			return dev, lf, nil
		}
		lf.Close()
		if !errors.Is(err, unix.EBUSY) {
			return "", nil, fmt.Errorf("LOOP_CONFIGURE %s: %w", dev, err)
		}
		lastErr = err
		time.Sleep(5 * time.Millisecond)
	}
	return "", nil, fmt.Errorf("no free loop device: %w", lastErr)
}

// openLoop opens loop device n, making its node when /dev is not devtmpfs
// (containers) and the kernel made the device but no node appeared.
func openLoop(dev string, n int) (*os.File, error) {
	for range 50 {
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		// devtmpfs may take a moment; else make the node ourselves.
		if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, unix.EEXIST) {
			time.Sleep(2 * time.Millisecond)
		}
	}
	return nil, fmt.Errorf("%w: %s did not appear", ErrUnavailable, dev)
}

// Close unmounts the filesystem, detaches the loop device and removes the
// image and mount point (not the directory given to Make). It is safe to
// call twice.
func (fs *FS) Close() error {
	if fs.closed {
		return nil
	}
	var errs []error
	if err := unmount(fs.Dir); err != nil {
		errs = append(errs, err)
	}
	if fs.Device != "" {
		if err := detach(fs.Device, fs.image); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		fs.closed = true
		if err := os.Remove(fs.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		if fs.image != "" {
			if err := os.Remove(fs.image); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close %s on %s: %w", fs.Type, fs.Dir, err)
	}
	return nil
}

// unmount retries briefly on EBUSY (an fd closing in another goroutine,
// udev probing the device) and treats "not mounted" as done.
func unmount(dir string) error {
	var err error
	for i := range 50 {
		err = unix.Unmount(dir, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(time.Duration(i+1) * 2 * time.Millisecond)
	}
	return fmt.Errorf("unmount %s: %w", dir, err)
}

// detach clears the loop device if it still holds our image. Autoclear has
// normally done it already; the check avoids clearing a device that another
// process has attached since.
func detach(dev, image string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if errors.Is(err, unix.ENXIO) {
		return nil // not attached: autoclear did it
	}
	if err != nil {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	name := string(info.File_name[:])
	if i := strings.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	if name == "" || !strings.HasPrefix(image, name) {
		return nil // someone else's now
	}
	for i := range 20 {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.LOOP_CLR_FD, 0)
		if errno == 0 || errno == unix.ENXIO {
			return nil
		}
		if errno != unix.EBUSY {
			return fmt.Errorf("detach %s: LOOP_CLR_FD: %w", dev, errno)
		}
		time.Sleep(time.Duration(i+1) * 2 * time.Millisecond)
	}
	return nil // busy: autoclear detaches it when the last user goes
}
