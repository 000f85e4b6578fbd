package drivertest

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// probeFeature tries feature in the mounted scratch layer at root.
func probeFeature(root, feature string) error {
	f := filepath.Join(root, "probe")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		return err
	}
	switch feature {
	case "user xattrs":
		return unix.Lsetxattr(f, "user.probe", []byte("1"), 0)
	case "trusted xattrs":
		return unix.Lsetxattr(f, "trusted.probe", []byte("1"), 0)
	case "security.capability":
		// A v2 capability set with CAP_NET_BIND_SERVICE permitted.
		return unix.Lsetxattr(f, "security.capability", capNetBind, 0)
	case "devices":
		return unix.Mknod(filepath.Join(root, "probe-dev"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3)))
	case "chown":
		return os.Lchown(f, 4294967294, 4294967294)
	}
	return fmt.Errorf("%w %q", errBadFeature, feature)
}

// capNetBind is a VFS_CAP_REVISION_2 security.capability value granting
// CAP_NET_BIND_SERVICE (bit 10) permitted and effective.
var capNetBind = []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
