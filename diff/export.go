package diff

import (
	"context"
	"errors"
	"io"
)

// ExportOptions tune Export.
type ExportOptions struct{}

// Export writes changes as an uncompressed OCI layer tar to w, reading the
// content of added and modified paths from root.
func Export(ctx context.Context, w io.Writer, root string, changes []Change, opts ExportOptions) error {
	return errors.New("diff.Export: not implemented")
}
