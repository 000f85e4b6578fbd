package graphdriver

import (
	"errors"
	"fmt"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Mount mounts source on target (mount(2)), with an error that names all
// of it. data longer than a page is refused by the kernel with EINVAL; the
// error says so, because that is the usual cause with long overlay
// lowerdir lists.
func Mount(source, target, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		hint := ""
		if errors.Is(err, unix.EINVAL) && len(data) >= unix.Getpagesize() {
			hint = fmt.Sprintf(" (options are %d bytes, the kernel takes less than %d)", len(data), unix.Getpagesize())
		}
		return fmt.Errorf("mount %s on %s (type %q, flags %#x, options %q): %w%s", source, target, fstype, flags, data, err, hint)
	}
	return nil
}

// unmountTries and unmountBackoff bound how long Unmount waits for a busy
// mount: a reader closing its last fd, or a process leaving the directory,
// takes milliseconds; a mount still busy after ~0.3 s is really in use.
const (
	unmountTries   = 8
	unmountBackoff = 5 * time.Millisecond
)

// Unmount unmounts target. A target that is not mounted (EINVAL) or does
// not exist (ENOENT) is not an error, so that Put, Remove and crash
// recovery can unmount without first asking. EBUSY is retried a few times
// briefly; if the mount stays busy the error wraps unix.EBUSY and the
// caller may use UnmountDetach.
func Unmount(target string) error {
	return unmount(target, 0)
}

// UnmountDetach detaches target from the tree at once (MNT_DETACH); the
// kernel finishes the unmount when its last user goes. For forced removal
// (`umount -f`, Cleanup) where waiting is not an option. Not mounted is not
// an error.
func UnmountDetach(target string) error {
	return unmount(target, unix.MNT_DETACH)
}

func unmount(target string, flags int) error {
	var err error
	for i := range unmountTries {
		err = unix.Unmount(target, flags)
		switch {
		case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EINTR):
			time.Sleep(unmountBackoff * time.Duration(i+1))
			continue
		}
		break
	}
	return fmt.Errorf("unmount %s: %w", target, err)
}

// IsMountpoint reports whether path is a mount point, from the kernel's
// mountinfo (bind mounts of a directory on itself included, which a
// device-number comparison would miss).
func IsMountpoint(path string) (bool, error) {
	ok, err := mountinfo.Mounted(path)
	if err != nil {
		return false, fmt.Errorf("is %s a mount point: %w", path, err)
	}
	return ok, nil
}
