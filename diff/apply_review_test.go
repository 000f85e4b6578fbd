package diff

import (
	"archive/tar"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Cases found in review, each of which once gave a wrong tree.

// Overlay format: a whiteout of d, then an entry under d with no d/ entry
// of its own. The directory the entry needs replaces this layer's own
// whiteout device, opaque, so the lower d stays hidden: the same tree the
// delete format gives.
func TestApplyOverlayWhiteoutThenImplicitChild(t *testing.T) {
	atRequireRoot(t)
	atResolvers(t, func(t *testing.T, opts ApplyOptions) {
		root := t.TempDir()
		opts.Whiteouts = OverlayWhiteouts(false)
		data := atBuildTar(t, atWh("d"), atFile("d/x", "x", 0o644), atWh("e"), atFile("e/f/y", "y", 0o644))
		if _, err := atApply(t, root, data, opts); err != nil {
			t.Fatal(err)
		}
		atWantContent(t, filepath.Join(root, "d/x"), "x")
		atWantContent(t, filepath.Join(root, "e/f/y"), "y")
		atWantXattr(t, filepath.Join(root, "d"), "trusted.overlay.opaque", "y")
		atWantXattr(t, filepath.Join(root, "e"), "trusted.overlay.opaque", "y")
	})
}

// A directory's time is set at the end of the layer; if a later entry
// replaced the directory by a symlink, the time must not land on the
// symlink's target (a lower directory).
func TestApplyDirTimesNotThroughLaterSymlink(t *testing.T) {
	atRequireRoot(t)
	lowerTime := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	atResolvers(t, func(t *testing.T, opts ApplyOptions) {
		root := t.TempDir()
		atMust(t, os.MkdirAll(filepath.Join(root, "c/b"), 0o755))
		atMust(t, os.Chtimes(filepath.Join(root, "c/b"), lowerTime, lowerTime))
		data := atBuildTar(t,
			atDir("a", 0o755),
			atWith(atDir("a/b", 0o755), func(h *tar.Header) { h.ModTime = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) }),
			atSymlink("a", "c"),
		)
		if _, err := atApply(t, root, data, opts); err != nil {
			t.Fatal(err)
		}
		atWantLink(t, filepath.Join(root, "a"), "c")
		if st := atLstat(t, filepath.Join(root, "c/b")); st.Mtim.Sec != lowerTime.Unix() {
			t.Fatalf("c/b mtime %d, want the lower %d", st.Mtim.Sec, lowerTime.Unix())
		}
	})
}

// posixACL encodes a minimal POSIX ACL xattr value: owner, group, other.
func posixACL(user, group, other uint16) string {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range [][2]uint16{{0x01, user}, {0x04, group}, {0x20, other}} {
		b = binary.LittleEndian.AppendUint16(b, e[0])
		b = binary.LittleEndian.AppendUint16(b, e[1])
		b = binary.LittleEndian.AppendUint32(b, 0xffffffff)
	}
	return string(b)
}

// Under a directory with a default ACL, new entries take their modes from
// the ACL, not the umask: they must still get exactly the mode the tar
// gives (the skipped-chmod shortcut must not apply).
func TestApplyModesUnderDefaultACL(t *testing.T) {
	atRequireRoot(t)
	acl := posixACL(7, 5, 0) // other gets nothing
	probe := t.TempDir()
	if err := unix.Setxattr(probe, "system.posix_acl_default", []byte(acl), 0); err != nil {
		t.Skipf("default ACLs not supported here: %v", err)
	}
	atResolvers(t, func(t *testing.T, opts ApplyOptions) {
		root := t.TempDir()
		data := atBuildTar(t,
			atWithXattr(atDir("d", 0o755), "system.posix_acl_default", acl),
			atFile("d/f", "x", 0o644),
			atDir("d/sub", 0o755),
			atWith(atDev("d/fifo", tar.TypeFifo, 0, 0), func(h *tar.Header) { h.Mode = 0o644 }),
		)
		if _, err := atApply(t, root, data, opts); err != nil {
			t.Fatal(err)
		}
		atWantMode(t, filepath.Join(root, "d/f"), unix.S_IFREG|0o644)
		atWantMode(t, filepath.Join(root, "d/sub"), unix.S_IFDIR|0o755)
		atWantNoXattr(t, filepath.Join(root, "d/sub"), "system.posix_acl_default")
		atWantMode(t, filepath.Join(root, "d/fifo"), unix.S_IFIFO|0o644)
	})
}
