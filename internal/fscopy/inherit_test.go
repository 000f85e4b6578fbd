package fscopy

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/loopfs"
)

// inheritSource builds a source tree of root-owned entries of every kind a
// destination directory's setgid bit or default ACL would change.
func inheritSource(t *testing.T, src string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(src, "sub/deeper"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "f"), []byte("f"), 0o644))
	must(t, os.WriteFile(filepath.Join(src, "sub/g"), []byte("g"), 0o600))
	must(t, os.WriteFile(filepath.Join(src, "sub/deeper/h"), []byte("h"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "sub/rw"), []byte("rw"), 0o666))
	must(t, unix.Chmod(filepath.Join(src, "sub/rw"), 0o666))
	must(t, os.Link(filepath.Join(src, "f"), filepath.Join(src, "sub/f2")))
	must(t, unix.Mkfifo(filepath.Join(src, "sub/fifo"), 0o640))
	must(t, os.Symlink("g", filepath.Join(src, "sub/l")))
	for _, p := range []string{".", "f", "sub", "sub/deeper", "sub/g", "sub/deeper/h", "sub/rw", "sub/fifo", "sub/l"} {
		must(t, os.Lchown(filepath.Join(src, p), 0, 0))
	}
}

// copyAndCompare copies src into parent/dst and checks the copy is exact.
func copyAndCompare(t *testing.T, src, parent string) {
	t.Helper()
	dst := filepath.Join(parent, "dst")
	want := snapshot(t, src)
	if _, err := Copy(context.Background(), src, dst, Options{}); err != nil {
		t.Fatal(err)
	}
	got := snapshot(t, dst)
	compareTrees(t, src, dst, details(t, src, want), details(t, dst, got))
}

// A destination inside a setgid directory: new entries there get the
// directory's group (and new directories its setgid bit), which the copy
// must undo. The same holds on a filesystem mounted grpid.
func TestCopyIntoSetgidDir(t *testing.T) {
	needRoot(t)
	roots(t, func(t *testing.T, dir string) {
		src, x := filepath.Join(dir, "src"), filepath.Join(dir, "x")
		must(t, os.Mkdir(src, 0o755))
		inheritSource(t, src)
		must(t, os.Mkdir(x, 0o755))
		must(t, os.Chown(x, 0, 1234))
		must(t, unix.Chmod(x, 0o2775))
		copyAndCompare(t, src, x)
	})
	t.Run("ext4-grpid", func(t *testing.T) {
		dir := loopfs.NewFS(t, "ext4", 0, loopfs.Options{MountData: "grpid"}).Dir
		src, x := filepath.Join(dir, "src"), filepath.Join(dir, "x")
		must(t, os.Mkdir(src, 0o755))
		inheritSource(t, src)
		must(t, os.Mkdir(x, 0o755))
		must(t, os.Chown(x, 0, 1234))
		copyAndCompare(t, src, x)
	})
}

// posixACL encodes a POSIX ACL as the system.posix_acl_* xattr value
// (struct posix_acl_xattr_header and entries): owner, a named user 1000,
// group, mask and other, each with perm.
func posixACL(perm uint16) []byte {
	const (
		userObj  = 0x01
		user     = 0x02
		groupObj = 0x04
		mask     = 0x10
		other    = 0x20
		undef    = 0xffffffff
	)
	b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	for _, e := range []struct {
		tag uint16
		id  uint32
	}{{userObj, undef}, {user, 1000}, {groupObj, undef}, {mask, undef}, {other, undef}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

// A destination inside a directory with a default ACL: new entries inherit
// an access ACL (system.posix_acl_access) and new directories the default
// ACL too, and their modes follow the ACL instead of the umask. The copy
// must have exactly the source's xattrs and modes.
func TestCopyIntoDefaultACLDir(t *testing.T) {
	needRoot(t)
	roots(t, func(t *testing.T, dir string) {
		src, x := filepath.Join(dir, "src"), filepath.Join(dir, "x")
		must(t, os.Mkdir(src, 0o755))
		inheritSource(t, src)
		must(t, os.Mkdir(x, 0o755))
		err := unix.Setxattr(x, "system.posix_acl_default", posixACL(7), 0)
		if errors.Is(err, unix.EOPNOTSUPP) {
			t.Skip("no POSIX ACLs on this filesystem")
		}
		must(t, err)
		// The ACL takes: a new file there inherits an access ACL.
		must(t, os.WriteFile(filepath.Join(x, "probe"), nil, 0o600))
		if _, err := unix.Getxattr(filepath.Join(x, "probe"), "system.posix_acl_access", nil); err != nil {
			t.Fatalf("default ACL not inherited by a new file: %v", err)
		}
		must(t, os.Remove(filepath.Join(x, "probe")))
		copyAndCompare(t, src, x)
	})
}
