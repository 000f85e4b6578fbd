package graphdriver

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// ValidateID rejects a layer ID that could not be one directory name in a
// driver's home ("", ".", "..", or anything with a slash or NUL): drivers
// build paths from IDs, and such an ID would name another place.
func ValidateID(id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("invalid layer ID %q", id)
	}
	return nil
}

// FilesystemName names a statfs magic number the way `info` prints the
// backing filesystem ("extfs", "xfs", "btrfs", ...; hex when unknown).
func FilesystemName(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "extfs"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	}
	return fmt.Sprintf("%#x", magic)
}

// BackingFilesystem names the filesystem holding path ("unknown" when it
// cannot be read).
func BackingFilesystem(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown"
	}
	return FilesystemName(st.Type)
}

// KernelFilesystems returns the filesystem types the running kernel
// knows, from /proc/filesystems; an error when that cannot be read (a
// caller then lets a mount decide).
func KernelFilesystems() (map[string]bool, error) {
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			have[f[len(f)-1]] = true
		}
	}
	return have, nil
}
