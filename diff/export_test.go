package diff

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// ctEntry is what the tests check of one tar entry.
type ctEntry struct {
	Name     string
	Type     byte
	Mode     int64
	Uid, Gid int
	Size     int64
	Link     string
	ModTime  time.Time
	Major    int64
	Minor    int64
	Xattrs   map[string]string
	Content  string
}

func (e ctEntry) String() string {
	return fmt.Sprintf("%q type=%c mode=%#o %d:%d size=%d link=%q mtime=%s dev=%d,%d xattrs=%v",
		e.Name, e.Type, e.Mode, e.Uid, e.Gid, e.Size, e.Link, e.ModTime.UTC().Format(time.RFC3339Nano), e.Major, e.Minor, e.Xattrs)
}

// ctReadTar parses a tar and checks the header rules every entry must
// follow: PAX or USTAR only, numeric owners, no atime or ctime.
func ctReadTar(t *testing.T, b []byte) []ctEntry {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var out []ctEntry
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Format != tar.FormatPAX && hdr.Format != tar.FormatUSTAR {
			t.Errorf("%s: format %v, want PAX (or plain USTAR when nothing needs PAX)", hdr.Name, hdr.Format)
		}
		if hdr.Uname != "" || hdr.Gname != "" {
			t.Errorf("%s: uname/gname %q/%q, want empty", hdr.Name, hdr.Uname, hdr.Gname)
		}
		if !hdr.AccessTime.IsZero() || !hdr.ChangeTime.IsZero() {
			t.Errorf("%s: atime/ctime written", hdr.Name)
		}
		for k := range hdr.PAXRecords {
			if strings.Contains(k, "atime") || strings.Contains(k, "ctime") || k == "uname" || k == "gname" {
				t.Errorf("%s: PAX record %s", hdr.Name, k)
			}
		}
		e := ctEntry{
			Name: hdr.Name, Type: hdr.Typeflag, Mode: hdr.Mode, Uid: hdr.Uid, Gid: hdr.Gid,
			Size: hdr.Size, Link: hdr.Linkname, ModTime: hdr.ModTime,
			Major: hdr.Devmajor, Minor: hdr.Devminor,
		}
		for k, v := range hdr.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if e.Xattrs == nil {
					e.Xattrs = map[string]string{}
				}
				e.Xattrs[name] = v
			}
		}
		c, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		e.Content = string(c)
		out = append(out, e)
	}
	return out
}

func ctExport(t *testing.T, root string, changes []Change, opts ExportOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Export(context.Background(), &buf, root, changes, opts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func ctNames(es []ctEntry) []string {
	var n []string
	for _, e := range es {
		n = append(n, e.Name)
	}
	return n
}

func ctFind(t *testing.T, es []ctEntry, name string) ctEntry {
	t.Helper()
	for _, e := range es {
		if e.Name == name {
			return e
		}
	}
	t.Fatalf("no entry %q in %q", name, ctNames(es))
	return ctEntry{}
}

func TestExportSimple(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctMkdir(t, r, "etc", 0o755)
		ctWriteFile(t, r, "etc/hosts", "mydomain 10.0.0.1", 0o644)
		ctWriteFile(t, r, "etc/unexpected", "#!/bin/sh", 0o644)
		ctMkdir(t, r, "usr/bin", 0o755)
		ctWriteFile(t, r, "usr/bin/tool", "old", 0o755)
	})
	mt := time.Date(2024, 5, 6, 7, 8, 9, 987654321, time.UTC)
	ctWriteFile(t, upper, "etc/hosts", "mydomain 10.0.0.120", 0o644)
	ctLchtimes(t, upper, "etc/hosts", mt)
	ctRemove(t, upper, "etc/unexpected")
	ctLchtimes(t, upper, "etc", mt)
	ctWriteFile(t, upper, "usr/bin/tool", "new", 0o4755)
	if err := os.Lchown(filepath.Join(upper, "usr/bin/tool"), 1000, 70000); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(filepath.Join(upper, "usr/bin/tool"), 0o4755); err != nil { // chown cleared setuid
		t.Fatal(err)
	}
	ctLchtimes(t, upper, "usr/bin/tool", mt)
	ctMkdir(t, upper, "root", 0o700)
	ctWriteFile(t, upper, "root/.bashrc", "PATH=/usr/sbin:/usr/bin", 0o644)
	ctLchtimes(t, upper, "root/.bashrc", mt)
	ctLchtimes(t, upper, "root", mt)

	var buf bytes.Buffer
	if err := WriteDiff(context.Background(), &buf, lower, upper, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	got := ctReadTar(t, buf.Bytes())
	want := []ctEntry{
		{Name: "etc/", Type: tar.TypeDir, Mode: 0o755, ModTime: mt},
		{Name: "etc/hosts", Type: tar.TypeReg, Mode: 0o644, Size: 19, ModTime: mt, Content: "mydomain 10.0.0.120"},
		{Name: "etc/.wh.unexpected", Type: tar.TypeReg, ModTime: time.Unix(0, 0)},
		{Name: "root/", Type: tar.TypeDir, Mode: 0o700, ModTime: mt},
		{Name: "root/.bashrc", Type: tar.TypeReg, Mode: 0o644, Size: 23, ModTime: mt, Content: "PATH=/usr/sbin:/usr/bin"},
		// usr and usr/bin did not change: written as parents, with
		// their attributes from upper.
		{Name: "usr/", Type: tar.TypeDir, Mode: 0o755, ModTime: ctBaseTime},
		{Name: "usr/bin/", Type: tar.TypeDir, Mode: 0o755, ModTime: ctBaseTime},
		{Name: "usr/bin/tool", Type: tar.TypeReg, Mode: 0o4755, Uid: 1000, Gid: 70000, Size: 3, ModTime: mt, Content: "new"},
	}
	ctCompareEntries(t, got, want)
}

func ctCompareEntries(t *testing.T, got, want []ctEntry) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		g, w := got[i], want[i]
		ok = g.Name == w.Name && g.Type == w.Type && g.Mode == w.Mode && g.Uid == w.Uid && g.Gid == w.Gid &&
			g.Size == w.Size && g.Link == w.Link && g.ModTime.Equal(w.ModTime) && g.Major == w.Major &&
			g.Minor == w.Minor && reflect.DeepEqual(g.Xattrs, w.Xattrs) && g.Content == w.Content
	}
	if !ok {
		var b strings.Builder
		fmt.Fprintf(&b, "tar entries differ\ngot:\n")
		for _, e := range got {
			fmt.Fprintf(&b, "  %v\n", e)
		}
		fmt.Fprintf(&b, "want:\n")
		for _, e := range want {
			fmt.Fprintf(&b, "  %v\n", e)
		}
		t.Fatal(b.String())
	}
}

func TestExportOpaqueAndReplacement(t *testing.T) {
	upper := t.TempDir()
	ctMkdir(t, upper, "op/sub", 0o750)
	ctWriteFile(t, upper, "op/new", "n", 0o644)
	ctWriteFile(t, upper, "was-dir", "now a file", 0o600)
	ctMkdir(t, upper, "was-file", 0o755)
	ctWriteFile(t, upper, "was-file/f", "f", 0o644)
	ctSetAllTimes(t, upper, ctBaseTime)
	// As overlay's native differ reports an opaque directory, and as
	// Changes reports dir<->file replacements.
	changes := ctParseChanges(
		"D /op", "A /op", "A /op/new", "A /op/sub",
		"D /was-dir", "A /was-dir",
		"D /was-file", "A /was-file", "A /was-file/f",
	)
	got := ctReadTar(t, ctExport(t, upper, changes, ExportOptions{}))
	want := []string{
		"op/", "op/.wh..wh..opq", "op/new", "op/sub/",
		".wh.was-dir", "was-dir",
		"was-file/", "was-file/.wh..wh..opq", "was-file/f",
	}
	if n := ctNames(got); !reflect.DeepEqual(n, want) {
		t.Fatalf("names %q\nwant  %q", n, want)
	}
	for _, e := range got {
		if strings.Contains(e.Name, ".wh.") {
			if e.Type != tar.TypeReg || e.Size != 0 || e.Mode != 0 || e.Uid != 0 || !e.ModTime.Equal(time.Unix(0, 0)) {
				t.Errorf("whiteout header %v", e)
			}
		}
	}
}

// Changes and Export together: a file replaced by a directory becomes an
// opaque directory; order is the same whatever order changes come in.
func TestExportChangesReplacement(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctWriteFile(t, r, "x", "file", 0o644)
		ctMkdir(t, r, "y/old", 0o755)
	})
	ctRemove(t, upper, "x")
	ctMkdir(t, upper, "x", 0o755)
	ctWriteFile(t, upper, "x/in", "", 0o644)
	ctRemove(t, upper, "y")
	ctWriteFile(t, upper, "y", "file now", 0o644)
	changes, err := Changes(context.Background(), lower, upper)
	if err != nil {
		t.Fatal(err)
	}
	a := ctExport(t, upper, changes, ExportOptions{})
	rev := make([]Change, len(changes))
	for i, c := range changes {
		rev[len(changes)-1-i] = c
	}
	if b := ctExport(t, upper, rev, ExportOptions{}); !bytes.Equal(a, b) {
		t.Fatal("export depends on the order of changes")
	}
	want := []string{"x/", "x/.wh..wh..opq", "x/in", ".wh.y", "y"}
	if n := ctNames(ctReadTar(t, a)); !reflect.DeepEqual(n, want) {
		t.Fatalf("names %q, want %q", n, want)
	}
}

func TestExportHardlinksOnce(t *testing.T) {
	upper := t.TempDir()
	ctWriteFile(t, upper, "a/h0", "shared data", 0o644)
	ctMkdir(t, upper, "c", 0o755)
	if err := os.Link(filepath.Join(upper, "a/h0"), filepath.Join(upper, "c/h2")); err != nil {
		t.Fatal(err)
	}
	ctWriteFile(t, upper, "single", "s", 0o644)
	ctSetXattr(t, upper, "a/h0", "user.k", "v")
	ctSetAllTimes(t, upper, ctBaseTime)
	// Every name of the inode is exported: a/h0 is first and carries the data.
	changes := ctParseChanges("A /a", "A /a/h0", "A /c", "A /c/h2", "A /single")
	got := ctReadTar(t, ctExport(t, upper, changes, ExportOptions{}))
	h0 := ctFind(t, got, "a/h0")
	if h0.Type != tar.TypeReg || h0.Content != "shared data" || h0.Xattrs["user.k"] != "v" {
		t.Fatalf("first link: %v", h0)
	}
	h2 := ctFind(t, got, "c/h2")
	if h2.Type != tar.TypeLink || h2.Link != "a/h0" || h2.Size != 0 {
		t.Fatalf("second link: %v", h2)
	}
	if n := ctNames(got); !reflect.DeepEqual(n, []string{"a/", "a/h0", "c/", "c/h2", "single"}) {
		t.Fatalf("names %q", n)
	}
}

// A hardlink whose other name is unchanged (so in the lower tree with the
// same content) links to that name rather than carrying a copy, which
// would lose the link on apply (ggcr#2002, image-spec#1204).
func TestExportHardlinkToUnchangedName(t *testing.T) {
	upper := t.TempDir()
	ctWriteFile(t, upper, "b/h1", "shared data", 0o644)
	for _, l := range []string{"a/h0", "c/h2"} {
		ctMkdir(t, upper, filepath.Dir(l), 0o755)
		if err := os.Link(filepath.Join(upper, "b/h1"), filepath.Join(upper, l)); err != nil {
			t.Fatal(err)
		}
	}
	ctSetAllTimes(t, upper, ctBaseTime)
	// b/h1 is not in the changes: it is unchanged, present below.
	changes := ctParseChanges("A /a", "A /a/h0", "A /c", "A /c/h2")
	got := ctReadTar(t, ctExport(t, upper, changes, ExportOptions{}))
	for _, name := range []string{"a/h0", "c/h2"} {
		e := ctFind(t, got, name)
		if e.Type != tar.TypeLink || e.Link != "b/h1" || e.Size != 0 {
			t.Fatalf("%s: %v, want a hardlink to the unchanged b/h1", name, e)
		}
	}
	if n := ctNames(got); !reflect.DeepEqual(n, []string{"a/", "a/h0", "c/", "c/h2"}) {
		t.Fatalf("names %q", n)
	}
}

func TestExportSpecialFiles(t *testing.T) {
	upper := t.TempDir()
	ctMknod(t, upper, "null", unix.S_IFCHR|0o666, 1, 3)
	ctMknod(t, upper, "loop9", unix.S_IFBLK|0o660, 7, 9)
	if err := unix.Mkfifo(filepath.Join(upper, "fifo"), 0o620); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(filepath.Join(upper, "fifo"), 0o620); err != nil {
		t.Fatal(err)
	}
	ctSymlink(t, upper, "../target/that/does/not/exist", "link")
	long := strings.Repeat("long-directory-name/", 8) + strings.Repeat("f", 120)
	ctWriteFile(t, upper, long, "deep", 0o644)
	ln, err := net.Listen("unix", filepath.Join(upper, "sock"))
	if err != nil {
		t.Skipf("cannot make a unix socket: %v", err)
	}
	defer ln.Close()
	ctSetAllTimes(t, upper, ctBaseTime)

	changes, err := Changes(context.Background(), "", upper)
	if err != nil {
		t.Fatal(err)
	}
	got := ctReadTar(t, ctExport(t, upper, changes, ExportOptions{}))
	if e := ctFind(t, got, "null"); e.Type != tar.TypeChar || e.Major != 1 || e.Minor != 3 || e.Mode != 0o666 {
		t.Errorf("char device: %v", e)
	}
	if e := ctFind(t, got, "loop9"); e.Type != tar.TypeBlock || e.Major != 7 || e.Minor != 9 || e.Mode != 0o660 {
		t.Errorf("block device: %v", e)
	}
	if e := ctFind(t, got, "fifo"); e.Type != tar.TypeFifo || e.Mode != 0o620 {
		t.Errorf("fifo: %v", e)
	}
	if e := ctFind(t, got, "link"); e.Type != tar.TypeSymlink || e.Link != "../target/that/does/not/exist" || !e.ModTime.Equal(ctBaseTime) {
		t.Errorf("symlink: %v", e)
	}
	if e := ctFind(t, got, long); e.Content != "deep" {
		t.Errorf("long name: %v", e)
	}
	for _, e := range got {
		if strings.Contains(e.Name, "sock") {
			t.Errorf("socket exported: %v", e)
		}
	}
}

func TestExportXattrs(t *testing.T) {
	upper := t.TempDir()
	ctWriteFile(t, upper, "ping", "ELF", 0o755)
	ctMkdir(t, upper, "d", 0o755)
	ctSetXattr(t, upper, "ping", "security.capability", string(ctCapNetRaw()))
	ctSetXattr(t, upper, "ping", "user.a", "1")
	ctSetXattr(t, upper, "ping", "user.b", "\x00binary\xff")
	ctSetXattr(t, upper, "ping", "trusted.x", "t")
	ctSetXattr(t, upper, "ping", "user.overlay.origin", "no")
	ctSetXattr(t, upper, "d", "trusted.overlay.opaque", "y")
	ctSetXattr(t, upper, "d", "user.overlay.opaque", "y")
	ctSetXattr(t, upper, "d", "user.keep", "k")
	// security.selinux can only be set where no LSM vetoes it.
	selinux := true
	if err := unix.Lsetxattr(filepath.Join(upper, "d"), "security.selinux", []byte("system_u:object_r:tmp_t:s0"), 0); err != nil {
		selinux = false
	}
	changes := ctParseChanges("A /d", "A /ping")
	a := ctExport(t, upper, changes, ExportOptions{})
	got := ctReadTar(t, a)
	if x := ctFind(t, got, "ping").Xattrs; !reflect.DeepEqual(x, map[string]string{
		"security.capability": string(ctCapNetRaw()), "user.a": "1", "user.b": "\x00binary\xff", "trusted.x": "t",
	}) {
		t.Errorf("ping xattrs %q", x)
	}
	if x := ctFind(t, got, "d/").Xattrs; !reflect.DeepEqual(x, map[string]string{"user.keep": "k"}) {
		t.Errorf("d xattrs %q (selinux set: %v)", x, selinux)
	}
	for _, leak := range []string{"overlay", "selinux"} {
		if bytes.Contains(a, []byte(leak)) {
			t.Errorf("tar bytes contain %q", leak)
		}
	}
}

func TestExportDeterministic(t *testing.T) {
	upper := t.TempDir()
	for i := 0; i < 50; i++ {
		ctWriteFile(t, upper, fmt.Sprintf("d%d/f%d", i%7, i), strings.Repeat("x", i*37), 0o644)
		ctSetXattr(t, upper, fmt.Sprintf("d%d/f%d", i%7, i), fmt.Sprintf("user.k%d", i%5), "v")
		ctSetXattr(t, upper, fmt.Sprintf("d%d/f%d", i%7, i), "user.z", "v")
	}
	if err := os.Link(filepath.Join(upper, "d3/f3"), filepath.Join(upper, "d0/zz")); err != nil {
		t.Fatal(err)
	}
	var first []byte
	for i := 0; i < 3; i++ {
		var buf bytes.Buffer
		if err := WriteDiff(context.Background(), &buf, "", upper, ExportOptions{}); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = buf.Bytes()
			continue
		}
		if !bytes.Equal(first, buf.Bytes()) {
			t.Fatalf("export %d differs from the first (sha256 %x vs %x)", i, sha256.Sum256(first), sha256.Sum256(buf.Bytes()))
		}
	}
	// The tar ends with the two zero blocks and nothing else.
	if len(first)%512 != 0 || !bytes.Equal(first[len(first)-1024:], make([]byte, 1024)) {
		t.Fatal("tar is not terminated by two zero blocks")
	}
}

func TestExportNanosecondTimesAndEpoch(t *testing.T) {
	upper := t.TempDir()
	old := time.Date(1969, 7, 20, 20, 17, 0, 1, time.UTC) // before 1970 is kept
	future := time.Date(2100, 1, 1, 0, 0, 0, 999999999, time.UTC)
	ctWriteFile(t, upper, "old", "", 0o644)
	ctWriteFile(t, upper, "future", "", 0o644)
	ctSymlink(t, upper, "old", "link")
	ctLchtimes(t, upper, "old", old)
	ctLchtimes(t, upper, "future", future)
	ctLchtimes(t, upper, "link", future)
	changes := ctParseChanges("A /future", "A /link", "A /old")

	got := ctReadTar(t, ctExport(t, upper, changes, ExportOptions{}))
	if m := ctFind(t, got, "old").ModTime; !m.Equal(old) {
		t.Errorf("old mtime %v, want %v", m, old)
	}
	if m := ctFind(t, got, "future").ModTime; !m.Equal(future) {
		t.Errorf("future mtime %v, want %v", m, future)
	}

	epoch := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
	got = ctReadTar(t, ctExport(t, upper, changes, ExportOptions{SourceDateEpoch: &epoch}))
	for name, want := range map[string]time.Time{"old": old, "future": epoch, "link": epoch} {
		if m := ctFind(t, got, name).ModTime; !m.Equal(want) {
			t.Errorf("%s with SourceDateEpoch: mtime %v, want %v", name, m, want)
		}
	}
}

func TestExportErrors(t *testing.T) {
	upper := t.TempDir()
	ctWriteFile(t, upper, "file", "", 0o644)
	ctx := context.Background()
	for _, changes := range [][]Change{
		ctParseChanges("A /missing"),
		ctParseChanges("A /file/below"), // parent is not a directory
		ctParseChanges("A relative"),
		ctParseChanges("A /a/../file"),
		ctParseChanges("D /"),
		ctParseChanges("A /.wh.file"),
		ctParseChanges("D /dir/.wh..wh..opq"),
		ctParseChanges("A /.wh.d/file"),
	} {
		if err := Export(ctx, io.Discard, upper, changes, ExportOptions{}); err == nil {
			t.Errorf("Export(%v) succeeded", changes)
		}
	}
	// A change of the root itself is not an entry.
	if got := ctReadTar(t, ctExport(t, upper, ctParseChanges("C /", "A /file"), ExportOptions{})); !reflect.DeepEqual(ctNames(got), []string{"file"}) {
		t.Errorf("C / exported as %q", ctNames(got))
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := Export(cctx, io.Discard, upper, ctParseChanges("A /file"), ExportOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled Export: %v", err)
	}
	// Cancelled in the middle of a file's content.
	ctWriteFile(t, upper, "big", strings.Repeat("x", 4<<20), 0o644)
	cctx, cancel = context.WithCancel(ctx)
	cw := &ctCancelWriter{cancel: cancel, after: 1 << 20}
	if err := Export(cctx, cw, upper, ctParseChanges("A /big"), ExportOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Export cancelled mid-file: %v", err)
	}
	if cw.n > 2<<20 {
		t.Errorf("Export went on for %d bytes after cancel", cw.n-(1<<20))
	}
	// A failing writer surfaces its error.
	werr := errors.New("disk full")
	if err := Export(ctx, ctFailWriter{werr}, upper, ctParseChanges("A /file"), ExportOptions{}); !errors.Is(err, werr) {
		t.Errorf("failing writer: %v", err)
	}
}

// ctCancelWriter cancels once it has taken after bytes.
type ctCancelWriter struct {
	cancel func()
	after  int64
	n      int64
}

func (w *ctCancelWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	if w.n >= w.after {
		w.cancel()
	}
	return len(p), nil
}

type ctFailWriter struct{ err error }

func (w ctFailWriter) Write([]byte) (int, error) { return 0, w.err }

func TestDigestLayerWriter(t *testing.T) {
	upper := t.TempDir()
	ctWriteFile(t, upper, "a/b", strings.Repeat("layer data ", 10000), 0o644)
	var plain bytes.Buffer
	if err := WriteDiff(context.Background(), &plain, "", upper, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Compression{Uncompressed, Gzip, Zstd} {
		t.Run(c.String(), func(t *testing.T) {
			var blob bytes.Buffer
			lw, err := NewLayerWriter(&blob, c)
			if err != nil {
				t.Fatal(err)
			}
			if err := WriteDiff(context.Background(), lw, "", upper, ExportOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := lw.Close(); err != nil {
				t.Fatal(err)
			}
			if err := lw.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if _, err := lw.Write([]byte("x")); err == nil {
				t.Fatal("write after close succeeded")
			}
			if want := digest.FromBytes(plain.Bytes()); lw.DiffID() != want {
				t.Errorf("DiffID %s, want %s", lw.DiffID(), want)
			}
			if lw.TarSize() != int64(plain.Len()) {
				t.Errorf("TarSize %d, want %d", lw.TarSize(), plain.Len())
			}
			if want := digest.FromBytes(blob.Bytes()); lw.Digest() != want {
				t.Errorf("Digest %s, want %s", lw.Digest(), want)
			}
			if lw.Size() != int64(blob.Len()) {
				t.Errorf("Size %d, want %d", lw.Size(), blob.Len())
			}
			if c == Uncompressed && lw.Digest() != lw.DiffID() {
				t.Error("uncompressed: Digest != DiffID")
			}
			if c != Uncompressed && lw.Size() >= lw.TarSize() {
				t.Errorf("%v did not compress: %d >= %d", c, lw.Size(), lw.TarSize())
			}
			r, got, err := DecompressStream(&blob)
			if err != nil || got != c {
				t.Fatalf("DecompressStream: %v %v", got, err)
			}
			out, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(out, plain.Bytes()) {
				t.Fatalf("blob does not decompress to the tar: %v", err)
			}
		})
	}
	// A destination error is reported by Write or Close, never lost.
	lw, err := NewLayerWriter(ctFailWriter{errors.New("disk full")}, Uncompressed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lw.Write([]byte("x")); err == nil {
		t.Fatal("write to failing destination succeeded")
	}
}

// An independent reader must see the same tree: GNU tar extracts the
// export of a varied tree, and Changes between the original and the
// extraction is empty (types, modes, owners, ns mtimes, xattrs, devices,
// hardlinks and long names all survived).
func TestExportRoundTripGNUTar(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("GNU tar not installed")
	}
	src := t.TempDir()
	ctMkdir(t, src, "etc/ssl", 0o755)
	ctWriteFile(t, src, "etc/ssl/cert.pem", strings.Repeat("PEM\n", 3000), 0o644)
	ctWriteFile(t, src, "usr/bin/ping", "ELF", 0o4755)
	ctSetXattr(t, src, "usr/bin/ping", "security.capability", string(ctCapNetRaw()))
	ctSetXattr(t, src, "usr/bin/ping", "user.note", "hello")
	if err := os.Link(filepath.Join(src, "usr/bin/ping"), filepath.Join(src, "usr/bin/ping6")); err != nil {
		t.Fatal(err)
	}
	ctSymlink(t, src, "ssl/cert.pem", "etc/cert")
	ctMknod(t, src, "dev-null", unix.S_IFCHR|0o666, 1, 3)
	if err := unix.Mkfifo(filepath.Join(src, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("d", 90) + "/" + strings.Repeat("e", 90) + "/" + strings.Repeat("f", 150)
	ctWriteFile(t, src, long, "long", 0o640)
	if err := os.Lchown(filepath.Join(src, "etc/ssl/cert.pem"), 123456, 654321); err != nil {
		t.Fatal(err)
	}
	ctMkdir(t, src, "sticky", 0o1777)
	ctSetAllTimes(t, src, ctBaseTime)
	ctLchtimes(t, src, "etc/cert", time.Unix(0, 42))

	var buf bytes.Buffer
	if err := WriteDiff(context.Background(), &buf, "", src, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	cmd := exec.Command(tarBin, "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", dst)
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v\n%s", err, out)
	}
	// The extraction root's own time is tar's business, not the layer's.
	ctLchtimes(t, dst, ".", ctBaseTime)
	ctLchtimes(t, src, ".", ctBaseTime)
	ctCheckChanges(t, src, dst)
	var a, b unix.Stat_t
	if err := unix.Lstat(filepath.Join(dst, "usr/bin/ping"), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(dst, "usr/bin/ping6"), &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino {
		t.Error("hardlink not preserved through the tar")
	}
}
