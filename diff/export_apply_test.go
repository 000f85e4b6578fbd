package diff

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestExportApplyRoundTrip checks Export against this package's Apply: a
// lower tree plus the exported layer is the upper tree again, as Changes
// sees it (whiteouts, dir<->file replacements, hardlinks, xattrs, devices,
// new parents and directory mtimes included).
func TestExportApplyRoundTrip(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctMkdir(t, r, "etc/ssl", 0o755)
		ctWriteFile(t, r, "etc/hosts", "a", 0o644)
		ctWriteFile(t, r, "etc/gone", "a", 0o644)
		ctMkdir(t, r, "d/sub", 0o755)
		ctWriteFile(t, r, "d/sub/x", "x", 0o644)
		ctWriteFile(t, r, "f2d", "file", 0o644)
		ctMkdir(t, r, "d2f/in", 0o755)
	})
	ctWriteFile(t, upper, "etc/hosts", "bb", 0o600)
	ctRemove(t, upper, "etc/gone")
	ctRemove(t, upper, "d")
	ctRemove(t, upper, "f2d")
	ctMkdir(t, upper, "f2d/child", 0o700)
	ctRemove(t, upper, "d2f")
	ctWriteFile(t, upper, "d2f", "now file", 0o644)
	ctWriteFile(t, upper, "new/deep/file", "n", 0o644)
	ctSetXattr(t, upper, "new/deep/file", "user.x", "1")
	if err := os.Link(filepath.Join(upper, "new/deep/file"), filepath.Join(upper, "new/link")); err != nil {
		t.Fatal(err)
	}
	ctMknod(t, upper, "new/null", unix.S_IFCHR|0o666, 1, 3)
	var buf bytes.Buffer
	if err := WriteDiff(context.Background(), &buf, lower, upper, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "t")
	ctCopyTree(t, lower, target)
	if _, err := Apply(context.Background(), target, bytes.NewReader(buf.Bytes()), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	ctLchtimes(t, upper, ".", ctBaseTime)
	ctLchtimes(t, target, ".", ctBaseTime)
	ctCheckChanges(t, upper, target)
}
