// Package subvol makes, snapshots and deletes btrfs subvolumes with the
// kernel's ioctls, so that a driver can give each layer a subvolume and make
// a child layer as a snapshot of its parent: O(1) whatever the number of
// files, where copying a tree costs a few system calls per file.
//
// The btrfs-progs CLI is not used: an ioctl is one system call, and the
// library must work where the tools are not installed. x/sys/unix defines no
// btrfs ioctls, so the few needed are here.
package subvol

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl numbers: _IOW(BTRFS_IOCTL_MAGIC 0x94, nr, struct btrfs_ioctl_vol_args),
// the struct being 4096 bytes.
const (
	iocSnapCreate   = 0x50009401 // nr 1
	iocSubvolCreate = 0x5000940e // nr 14
	iocSnapDestroy  = 0x5000940f // nr 15
)

// firstFreeObjectID is the inode number of every subvolume's root
// directory (BTRFS_FIRST_FREE_OBJECTID).
const firstFreeObjectID = 256

// volArgs is struct btrfs_ioctl_vol_args.
type volArgs struct {
	fd   int64
	name [4088]byte
}

// IsBtrfs reports whether path is on a btrfs filesystem.
func IsBtrfs(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	return st.Type == unix.BTRFS_SUPER_MAGIC, nil
}

// IsSubvolume reports whether path is the root directory of a btrfs
// subvolume (a subvolume or a snapshot), without following a final
// symlink.
func IsSubvolume(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Ino != firstFreeObjectID || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, nil
	}
	return IsBtrfs(path)
}

// Create makes path, which must not exist, a new empty subvolume. Its root
// directory is 0755 and owned by the caller, whatever the umask.
func Create(path string) error {
	if err := volIoctl(iocSubvolCreate, path, -1); err != nil {
		return fmt.Errorf("create subvolume: %w", err)
	}
	return nil
}

// Snapshot makes dst, which must not exist, a writable snapshot of the
// subvolume src: the same tree, sharing every extent, made in constant
// time. Subvolumes nested inside src are not part of the snapshot (they
// show as empty directories there), as btrfs does.
func Snapshot(src, dst string) error {
	sfd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", src, &os.PathError{Op: "open", Path: src, Err: err})
	}
	defer unix.Close(sfd)
	if err := volIoctl(iocSnapCreate, dst, sfd); err != nil {
		return fmt.Errorf("snapshot %s: %w", src, err)
	}
	return nil
}

// Delete deletes the subvolume path with everything in it, in constant
// time (btrfs frees its blocks in the background). It needs CAP_SYS_ADMIN
// or the user_subvol_rm_allowed mount option, and fails (ENOTEMPTY) when
// the subvolume holds nested subvolumes; callers fall back to removing the
// tree file by file, which rmdir's the subvolume at the end.
func Delete(path string) error {
	if err := volIoctl(iocSnapDestroy, path, -1); err != nil {
		return fmt.Errorf("delete subvolume: %w", err)
	}
	return nil
}

// volIoctl runs a vol_args ioctl on path's parent directory with path's
// base name and, for a snapshot, the source fd.
func volIoctl(req uint, path string, fd int) error {
	dir, name := filepath.Split(filepath.Clean(path))
	if dir == "" {
		dir = "."
	}
	var args volArgs
	if name == "" || name == "." || name == ".." || name == "/" || len(name) >= len(args.name) {
		return &os.PathError{Op: "ioctl", Path: path, Err: unix.EINVAL}
	}
	copy(args.name[:], name)
	args.fd = int64(fd)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dfd), uintptr(req), uintptr(unsafe.Pointer(&args)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return &os.PathError{Op: "ioctl", Path: path, Err: errno}
		}
		return nil
	}
}

// Unsupported reports whether err from Create or Snapshot means that
// subvolumes cannot be made here (not btrfs, not allowed), as opposed to
// a real failure such as a full disk, so that a caller may fall back to
// plain directories.
func Unsupported(err error) bool {
	return errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) ||
		errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL)
}
