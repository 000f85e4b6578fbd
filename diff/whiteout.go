package diff

import (
	"archive/tar"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// WhiteoutFormat is how a driver stores the deletions a layer records.
// The set of formats is closed: the conversion from the tar's OCI/AUFS
// whiteouts lives only in this package. Get one from DeleteWhiteouts or
// OverlayWhiteouts.
type WhiteoutFormat interface {
	// Name is "delete" or "overlay".
	Name() string

	isWhiteoutFormat()

	// checkEntry rejects entries that this format cannot store faithfully.
	checkEntry(hdr *tar.Header) error
	// createsParents reports whether a whiteout whose parent directory is
	// missing needs that directory created to hold the deletion marker.
	createsParents() bool
	// whiteout records that the lower-layer entry name in the directory
	// parent is deleted. canon is the entry's canonical path in the root.
	// It is only called for paths this layer has not written.
	whiteout(a *applier, parent *dirHandle, name, canon string) error
	// opaque records that the directory open as dirfd (a readable fd, not
	// O_PATH) hides every lower-layer entry below it; entries this layer
	// wrote (a.touched) stay. canon is the directory's canonical path.
	opaque(a *applier, dirfd int, canon string) error
}

// OCI/AUFS whiteout names as they appear in layer tars.
const (
	// WhiteoutPrefix marks a deleted entry: ".wh.NAME" deletes NAME.
	WhiteoutPrefix = ".wh."
	// WhiteoutMetaPrefix starts AUFS-internal names, which are not whiteouts.
	WhiteoutMetaPrefix = WhiteoutPrefix + WhiteoutPrefix
	// WhiteoutOpaqueDir marks its directory opaque: lower content is hidden.
	WhiteoutOpaqueDir = WhiteoutMetaPrefix + ".opq"
)

type deleteFormat struct{}

func (deleteFormat) Name() string                     { return "delete" }
func (deleteFormat) isWhiteoutFormat()                {}
func (deleteFormat) checkEntry(hdr *tar.Header) error { return nil }

// A deletion in a copy of the parent needs nothing when the parent is
// missing: there is nothing to delete.
func (deleteFormat) createsParents() bool { return false }

func (deleteFormat) whiteout(a *applier, parent *dirHandle, name, canon string) error {
	// Whiting out what is not there is a no-op.
	if err := a.removeAt(parent, name); err != nil {
		return fmt.Errorf("whiteout: %w", err)
	}
	return nil
}

func (deleteFormat) opaque(a *applier, dirfd int, canon string) error {
	return a.removeLowerChildren(dirfd, canon)
}

// DeleteWhiteouts is the format of snapshot drivers (vfs, btrfs, devmapper):
// a layer starts as a copy of its parent, and a whiteout really removes the
// path from it; an opaque directory loses the children it had in the parent.
func DeleteWhiteouts() WhiteoutFormat { return deleteFormat{} }

type overlayFormat struct{ userXattr bool }

func (f overlayFormat) Name() string    { return "overlay" }
func (overlayFormat) isWhiteoutFormat() {}

// The kernel reads every 0/0 character device in a layer as a whiteout, so
// one coming from the tar cannot be stored as what it claims to be.
func (overlayFormat) checkEntry(hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeChar && hdr.Devmajor == 0 && hdr.Devminor == 0 {
		return errors.New("0/0 character device cannot be stored in an overlay layer (overlayfs would read it as a whiteout)")
	}
	return nil
}

// The overlay diff dir holds only this layer, so the marker needs its
// directory even when the tar never listed it.
func (overlayFormat) createsParents() bool { return true }

func (f overlayFormat) opaqueXattr() string {
	if f.userXattr {
		return "user.overlay.opaque"
	}
	return "trusted.overlay.opaque"
}

func (overlayFormat) whiteout(a *applier, parent *dirHandle, name, canon string) error {
	for attempt := 0; ; attempt++ {
		// Permissions 0000 and device 0/0, as overlayfs makes them itself.
		err := unix.Mknodat(parent.fd, name, unix.S_IFCHR, 0)
		if err == nil {
			a.whited[canon] = struct{}{}
			return nil
		}
		if !errors.Is(err, unix.EEXIST) || attempt > 0 {
			return fmt.Errorf("whiteout: %w", err)
		}
		// Something is there already. An overlay diff dir never holds a
		// lower layer's entry, but be robust: replace it with the marker.
		var st unix.Stat_t
		if err := unix.Fstatat(parent.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("whiteout: %w", err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
			a.whited[canon] = struct{}{}
			return nil
		}
		if err := removeAllAt(parent.fd, name); err != nil {
			return fmt.Errorf("whiteout: %w", err)
		}
		if isDirOrLink(st.Mode) {
			a.invalidate()
		}
	}
}

func (f overlayFormat) opaque(a *applier, dirfd int, canon string) error {
	if err := unix.Fsetxattr(dirfd, f.opaqueXattr(), []byte("y"), 0); err != nil {
		return fmt.Errorf("mark directory opaque: set %s: %w", f.opaqueXattr(), err)
	}
	if len(a.copiedUp) > 0 {
		// Lower files copied up as hardlink targets are lower content
		// the marker hides, as the delete format removes them; so is
		// anything else below that this layer did not write (directories
		// made to hold those copies or whiteouts), which is just as
		// hidden by the marker.
		return a.removeLowerChildren(dirfd, canon)
	}
	return nil
}

// OverlayWhiteouts is overlayfs' native format: a deletion is a 0/0
// character device and an opaque directory carries trusted.overlay.opaque=y,
// or user.overlay.opaque=y when userXattr is set (user namespaces, or mounts
// with the userxattr option).
func OverlayWhiteouts(userXattr bool) WhiteoutFormat { return overlayFormat{userXattr: userXattr} }

func isDirOrLink(mode uint32) bool {
	t := mode & unix.S_IFMT
	return t == unix.S_IFDIR || t == unix.S_IFLNK
}
