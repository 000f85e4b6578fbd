package diff

// WhiteoutFormat is how a driver stores the deletions a layer records.
// The set of formats is closed: the conversion from the tar's OCI/AUFS
// whiteouts lives only in this package. Get one from DeleteWhiteouts or
// OverlayWhiteouts.
type WhiteoutFormat interface {
	// Name is "delete" or "overlay".
	Name() string

	isWhiteoutFormat()
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

func (deleteFormat) Name() string      { return "delete" }
func (deleteFormat) isWhiteoutFormat() {}

// DeleteWhiteouts is the format of snapshot drivers (vfs, btrfs, devmapper):
// a layer starts as a copy of its parent, and a whiteout really removes the
// path from it; an opaque directory loses the children it had in the parent.
func DeleteWhiteouts() WhiteoutFormat { return deleteFormat{} }

type overlayFormat struct{ userXattr bool }

func (f overlayFormat) Name() string    { return "overlay" }
func (overlayFormat) isWhiteoutFormat() {}

// OverlayWhiteouts is overlayfs' native format: a deletion is a 0/0
// character device and an opaque directory carries trusted.overlay.opaque=y,
// or user.overlay.opaque=y when userXattr is set (user namespaces, or mounts
// with the userxattr option).
func OverlayWhiteouts(userXattr bool) WhiteoutFormat { return overlayFormat{userXattr: userXattr} }
