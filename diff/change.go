package diff

import "fmt"

// ChangeKind says how a path changed between two trees.
type ChangeKind int

const (
	// ChangeModify means the path exists in both trees and differs.
	ChangeModify ChangeKind = iota
	// ChangeAdd means the path exists only in the upper tree.
	ChangeAdd
	// ChangeDelete means the path exists only in the lower tree.
	ChangeDelete
)

// String returns the one-letter code docker and podman print: C, A or D.
func (k ChangeKind) String() string {
	switch k {
	case ChangeModify:
		return "C"
	case ChangeAdd:
		return "A"
	case ChangeDelete:
		return "D"
	}
	return fmt.Sprintf("ChangeKind(%d)", int(k))
}

// Change is one changed path. Path is absolute within the layer ("/etc/passwd").
type Change struct {
	Path string
	Kind ChangeKind
}

// String formats the change as "A /path".
func (c Change) String() string {
	return c.Kind.String() + " " + c.Path
}
