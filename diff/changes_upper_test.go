package diff_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
)

// Tests of OverlayChanges against the naive differ on real overlay mounts:
// the lowers mounted alone are the old tree, the layer mounted (read-only)
// is the new one, and Changes of the two is what OverlayChanges ovlMust
// return, exactly. Everything lives on a fresh tmpfs.

// ovlOptionSets are the mount option sets the layer is written and read
// with: the driver's defaults, and what a user may turn on.
var ovlOptionSets = []struct {
	name, opts string
}{
	{"defaults", "index=off,metacopy=off,redirect_dir=nofollow"},
	{"redirect_dir", "index=off,metacopy=off,redirect_dir=on"},
	{"metacopy", "index=off,metacopy=on,redirect_dir=on"},
	{"userxattr", "userxattr,index=off,metacopy=off,redirect_dir=nofollow"},
}

// ovlBaseTime stamps lower trees; whole seconds on purpose for some
// entries (see ovlStampTimes) so that Changes' content comparison runs.
var ovlBaseTime = time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)

// ovlLayer is one overlay layer under test: its lowers (top-most first),
// upper and work dirs, all on one tmpfs.
type ovlLayer struct {
	t      testing.TB
	base   string
	lowers []string
	upper  string
	work   string
	opts   string // overlay mount options of the layer
	user   bool   // userxattr
	n      int    // mount points made
}

// ovlNeedOverlay skips t without root or overlayfs.
func ovlNeedOverlay(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount overlay")
	}
	b, err := os.ReadFile("/proc/filesystems")
	if err == nil && !bytes.Contains(b, []byte("\toverlay\n")) {
		if err := exec.Command("modprobe", "overlay").Run(); err != nil {
			t.Skip("kernel has no overlayfs")
		}
	}
}

// newOvlLayer makes nLowers empty lower dirs, an upper and a work dir on
// base (a fresh tmpfs when base is "").
func newOvlLayer(t testing.TB, base string, nLowers int, opts string) *ovlLayer {
	t.Helper()
	ovlNeedOverlay(t)
	if base == "" {
		base = loopfs.New(t, "tmpfs", 512<<20)
	}
	l := &ovlLayer{t: t, base: base, opts: opts, user: strings.Contains(opts, "userxattr")}
	for i := range nLowers {
		l.lowers = append(l.lowers, l.mkdir(fmt.Sprintf("lower%d", i)))
	}
	l.upper = l.mkdir("upper")
	l.work = l.mkdir("work")
	return l
}

func (l *ovlLayer) mkdir(name string) string {
	p := filepath.Join(l.base, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		l.t.Fatal(err)
	}
	return p
}

// mount mounts overlay with data at a new mount point and returns it; the
// mount is undone when the test ends, or by the returned function.
func (l *ovlLayer) mount(data string, flags uintptr) (string, func()) {
	l.t.Helper()
	l.n++
	target := l.mkdir(fmt.Sprintf("mnt%d", l.n))
	if err := unix.Mount("overlay", target, "overlay", flags, data); err != nil {
		l.t.Fatalf("mount overlay %s on %s: %v", data, target, err)
	}
	var once sync.Once
	undo := func() {
		once.Do(func() {
			if err := unix.Unmount(target, 0); err != nil {
				l.t.Errorf("unmount %s: %v", target, err)
			}
		})
	}
	l.t.Cleanup(undo)
	return target, undo
}

// lowerData is the lowerdir option for the lowers alone: a read-only
// overlay needs two lowers, so an empty one goes at the bottom.
func (l *ovlLayer) lowerData() string {
	empty := l.mkdir("empty")
	data := "lowerdir=" + strings.Join(append(append([]string{}, l.lowers...), empty), ":")
	if l.user {
		data += ",userxattr" // the lowers' opaque dirs are user.overlay.opaque
	}
	return data
}

func (l *ovlLayer) layerData() string {
	lowers := l.lowers
	if len(lowers) == 0 {
		lowers = []string{l.mkdir("empty")}
	}
	return fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,%s", strings.Join(lowers, ":"), l.upper, l.work, l.opts)
}

// edit mounts the layer read-write, runs f on the merged view and
// unmounts.
func (l *ovlLayer) edit(f func(m string)) {
	l.t.Helper()
	m, undo := l.mount(l.layerData(), 0)
	f(m)
	undo()
}

func (l *ovlLayer) options() diff.OverlayOptions {
	return diff.OverlayOptions{UserXattr: l.user}
}

// check compares OverlayChanges with the naive differ on the mounted views
// and the tars of both, and applies the native tar to a copy of the lowers
// to check it gives the layer's tree. It returns the native changes.
func (l *ovlLayer) check(logf func() string) []diff.Change {
	l.t.Helper()
	t := l.t
	ctx := context.Background()
	old, undoOld := l.mount(l.lowerData(), unix.MS_RDONLY)
	defer undoOld()
	merged, undoMerged := l.mount(l.layerData(), unix.MS_RDONLY)
	defer undoMerged()

	naive, err := diff.Changes(ctx, old, merged)
	if err != nil {
		t.Fatalf("naive Changes: %v", err)
	}
	native, err := diff.OverlayChanges(ctx, l.upper, l.lowers, l.options())
	if err != nil {
		t.Fatalf("OverlayChanges: %v\n%s", err, logf())
	}
	if d := ovlDiffChanges(naive, native); d != "" {
		t.Fatalf("OverlayChanges differs from Changes of the mounted views (- naive, + native):\n%s\n%s", d, logf())
	}

	var naiveTar bytes.Buffer
	if err := diff.Export(ctx, &naiveTar, merged, naive, diff.ExportOptions{}); err != nil {
		t.Fatalf("Export of naive changes: %v", err)
	}
	var nativeTar bytes.Buffer
	mounted := false
	mount := func() (string, func() error, error) {
		mounted = true
		return merged, func() error { return nil }, nil
	}
	if err := diff.WriteOverlayDiff(ctx, &nativeTar, l.upper, l.lowers, l.options(), mount, diff.ExportOptions{}); err != nil {
		t.Fatalf("WriteOverlayDiff: %v\n%s", err, logf())
	}
	f := ovlCountFeatures(t, l.upper)
	t.Logf("%d changes; upper holds %d whiteouts, %d opaque dirs, %d redirects, %d metacopy files; merged mount used for the tar: %v",
		len(native), f["whiteout"], f["opaque"], f["redirect"], f["metacopy"], mounted)
	if !bytes.Equal(naiveTar.Bytes(), nativeTar.Bytes()) {
		t.Fatalf("WriteOverlayDiff (merged mount used: %v) gives another tar than Export of the naive changes from the merged view\n%s\n%s",
			mounted, ovlTarListing(t, naiveTar.Bytes(), nativeTar.Bytes()), logf())
	}

	// The tar on a copy of the lowers is the layer's tree.
	dst := l.mkdir(fmt.Sprintf("applied%d", l.n))
	var full bytes.Buffer
	if err := diff.WriteDiff(ctx, &full, "", old, diff.ExportOptions{}); err != nil {
		t.Fatalf("export lowers: %v", err)
	}
	if _, err := diff.Apply(ctx, dst, &full, diff.ApplyOptions{}); err != nil {
		t.Fatalf("apply lowers: %v", err)
	}
	if _, err := diff.Apply(ctx, dst, &nativeTar, diff.ApplyOptions{}); err != nil {
		t.Fatalf("apply native tar: %v\n%s", err, logf())
	}
	want, err := fixtures.Snapshot(merged, fixtures.WithoutOverlayXattrs())
	if err != nil {
		t.Fatal(err)
	}
	got, err := fixtures.Snapshot(dst, fixtures.WithoutOverlayXattrs())
	if err != nil {
		t.Fatal(err)
	}
	// Hardlink groups are not compared: a copy-up that changes nothing
	// the differs look at (chmod to the same mode) breaks a lower
	// hardlink in the merged view, and neither differ reports it, by
	// design (see Changes on link counts).
	for _, tr := range []fixtures.Tree{want, got} {
		for _, n := range tr {
			n.Links = nil
		}
	}
	if d := fixtures.Compare(want, got, fixtures.IgnorePaths("/")); len(d) > 0 {
		t.Fatalf("lowers + native tar differ from the merged view:\n  %s\n%s", strings.Join(d, "\n  "), logf())
	}
	if err := os.RemoveAll(dst); err != nil {
		t.Fatal(err)
	}
	return native
}

func ovlDiffChanges(want, got []diff.Change) string {
	var b strings.Builder
	i, j := 0, 0
	for i < len(want) || j < len(got) {
		switch {
		case i < len(want) && j < len(got) && want[i] == got[j]:
			i++
			j++
			continue
		case j == len(got) || (i < len(want) && ovlLessChange(want[i], got[j])):
			fmt.Fprintf(&b, "- %s\n", want[i])
			i++
		default:
			fmt.Fprintf(&b, "+ %s\n", got[j])
			j++
		}
	}
	if b.Len() == 0 {
		return ""
	}
	return b.String()
}

func ovlLessChange(a, b diff.Change) bool {
	if c := diff.ComparePaths(a.Path, b.Path); c != 0 {
		return c < 0
	}
	return a.Kind > b.Kind // Delete (2) first, as SortChanges
}

// ovlTarListing shows two tars side by side, entry by entry, for a failure
// message.
func ovlTarListing(t testing.TB, a, b []byte) string {
	return "naive tar:\n" + ovlListTar(t, a) + "native tar:\n" + ovlListTar(t, b)
}

func ovlListTar(t testing.TB, b []byte) string {
	cmd := exec.Command("tar", "--numeric-owner", "-tvf", "-")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(tar: %v)\n", err)
	}
	return string(out)
}

func ovlChangeLines(cs []diff.Change) []string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = c.String()
	}
	return s
}

// ovlKernelAccepts skips t when the kernel refuses overlay options opts.
func ovlKernelAccepts(t testing.TB, opts string) {
	t.Helper()
	l := newOvlLayer(t, "", 1, opts)
	target := l.mkdir("probe")
	if err := unix.Mount("overlay", target, "overlay", 0, l.layerData()); err != nil {
		t.Skipf("kernel refuses overlay options %s: %v", opts, err)
	}
	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
}

// Helpers that build trees with plain syscalls, failing the test on error.

func ovlWriteFile(t testing.TB, p, content string, mode uint32) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func ovlMkdirAll(t testing.TB, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func ovlMust(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ovlSetTime(t testing.TB, p string, tm time.Time) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(tm.UnixNano()), unix.NsecToTimespec(tm.UnixNano())}
	ovlMust(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
}

// ovlStampAll gives every entry below root (root included) mtime tm,
// children first.
func ovlStampAll(t testing.TB, root string, tm time.Time) {
	t.Helper()
	var paths []string
	ovlMust(t, filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	}))
	for i := len(paths) - 1; i >= 0; i-- {
		ovlSetTime(t, paths[i], tm)
	}
}

func ovlWhiteout(t testing.TB, p string) {
	t.Helper()
	ovlMust(t, unix.Mknod(p, unix.S_IFCHR, 0))
}

func (l *ovlLayer) opaque(p string) {
	name := "trusted.overlay.opaque"
	if l.user {
		name = "user.overlay.opaque"
	}
	ovlMust(l.t, unix.Lsetxattr(p, name, []byte("y"), 0))
}

// TestOverlayChangesCases covers the named tricky cases, each with its
// expected change list as well as the comparison with the naive differ.
func TestOverlayChangesCases(t *testing.T) {
	def := ovlOptionSets[0].opts
	redir := ovlOptionSets[1].opts
	meta := ovlOptionSets[2].opts
	cases := []struct {
		name   string
		opts   string
		lowers int
		build  func(l *ovlLayer) // lowers, then ovlStampAll on them
		edit   func(l *ovlLayer, m string)
		upper  func(l *ovlLayer) // writes upper directly, after edit
		want   []string
		merged bool // WriteOverlayDiff ovlMust mount the merged view
	}{
		{
			name: "copied-up parents are not changes", opts: def, lowers: 1,
			build: func(l *ovlLayer) { ovlWriteFile(l.t, l.lowers[0]+"/a/b/f", "one", 0o644) },
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.WriteFile(m+"/a/b/f", []byte("two"), 0o644))
			},
			want: []string{"C /a/b/f"},
		},
		{
			name: "whiteout of a path no lower has", opts: def, lowers: 1,
			build: func(l *ovlLayer) { ovlWriteFile(l.t, l.lowers[0]+"/d/keep", "k", 0o644) },
			upper: func(l *ovlLayer) {
				ovlMkdirAll(l.t, l.upper+"/d")
				ovlWhiteout(l.t, l.upper+"/d/ghost")
				ovlWhiteout(l.t, l.upper+"/ghost")
				ovlSetTime(l.t, l.upper+"/d", ovlBaseTime)
			},
			want: nil,
		},
		{
			name: "whiteout of a lower file and dir", opts: def, lowers: 1,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[0]+"/f", "x", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/d/sub/g", "y", 0o644)
			},
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.Remove(m+"/f"))
				ovlMust(l.t, os.RemoveAll(m+"/d"))
			},
			want: []string{"D /d", "D /f"},
		},
		{
			name: "opaque dir over a lower file", opts: def, lowers: 1,
			build: func(l *ovlLayer) { ovlWriteFile(l.t, l.lowers[0]+"/x", "file", 0o644) },
			upper: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.upper+"/x/child", "c", 0o644)
				l.opaque(l.upper + "/x")
			},
			want: []string{"D /x", "A /x", "A /x/child"},
		},
		{
			name: "rm -rf and mkdir of a lower dir", opts: def, lowers: 1,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[0]+"/d/old1", "1", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/d/keep", "k", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/d/sub/deep", "d", 0o644)
			},
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.RemoveAll(m+"/d"))
				ovlMust(l.t, os.Mkdir(m+"/d", 0o755))
				ovlWriteFile(l.t, m+"/d/new", "n", 0o644)
				ovlWriteFile(l.t, m+"/d/keep", "k", 0o644)
				ovlSetTime(l.t, m+"/d/keep", ovlBaseTime)
			},
			// keep is the same file again (content, mode, mtime): the
			// naive differ does not report it, nor may we.
			want: []string{"C /d", "A /d/new", "D /d/old1", "D /d/sub"},
		},
		{
			name: "nested opaque", opts: def, lowers: 1,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[0]+"/d/e/f", "1", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/d/e/g/h", "2", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/d/x", "3", 0o644)
			},
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.RemoveAll(m+"/d"))
				ovlMust(l.t, os.MkdirAll(m+"/d/e/g", 0o755))
				ovlWriteFile(l.t, m+"/d/e/g/new", "n", 0o644)
			},
			want: []string{"C /d", "C /d/e", "D /d/e/f", "C /d/e/g", "D /d/e/g/h", "A /d/e/g/new", "D /d/x"},
		},
		{
			name: "lookups honour whiteouts and opaque dirs of higher lowers", opts: def, lowers: 2,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[1]+"/x", "bottom", 0o644)
				ovlWriteFile(l.t, l.lowers[1]+"/d/y", "bottom", 0o644)
				ovlWriteFile(l.t, l.lowers[1]+"/d/z", "bottom", 0o644)
				ovlWhiteout(l.t, l.lowers[0]+"/x")
				ovlWriteFile(l.t, l.lowers[0]+"/d/w", "top", 0o644)
				l.opaque(l.lowers[0] + "/d")
			},
			edit: func(l *ovlLayer, m string) {
				ovlWriteFile(l.t, m+"/x", "new", 0o644)
				ovlWriteFile(l.t, m+"/d/y", "new", 0o644)
				ovlMust(l.t, os.Remove(m+"/d/w"))
			},
			want: []string{"C /d", "D /d/w", "A /d/y", "A /x"},
		},
		{
			// overlay ignores opaque attributes on layer roots (a tar
			// may carry /.wh..wh..opq): the lowers still show through.
			name: "opaque roots are ignored", opts: def, lowers: 2,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[1]+"/bottom", "b", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/top", "t", 0o644)
				l.opaque(l.lowers[0])
			},
			upper: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.upper+"/new", "n", 0o644)
				l.opaque(l.upper)
			},
			want: []string{"A /new"},
		},
		{
			name: "hardlink to a lower file", opts: def, lowers: 1,
			build: func(l *ovlLayer) { ovlWriteFile(l.t, l.lowers[0]+"/f", "data", 0o644) },
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.Link(m+"/f", m+"/g"))
				ovlSetTime(l.t, m, ovlBaseTime)
			},
			want: []string{"A /g"},
		},
		{
			name: "renamed dir with redirect", opts: redir, lowers: 1,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[0]+"/a/f", "f", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/a/sub/g", "g", 0o644)
			},
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.Rename(m+"/a", m+"/b"))
				ovlSetTime(l.t, m, ovlBaseTime)
			},
			want:   []string{"D /a", "A /b", "A /b/f", "A /b/sub", "A /b/sub/g"},
			merged: true,
		},
		{
			name: "renamed dir then child modified", opts: redir, lowers: 1,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[0]+"/a/f", "f", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/a/sub/g", "g", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/a/sub/h", "h", 0o644)
			},
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.Mkdir(m+"/n", 0o755))
				ovlMust(l.t, os.Rename(m+"/a", m+"/n/b"))
				ovlMust(l.t, os.WriteFile(m+"/n/b/sub/g", []byte("changed"), 0o644))
				ovlMust(l.t, os.Remove(m+"/n/b/sub/h"))
			},
			want:   []string{"D /a", "A /n", "A /n/b", "A /n/b/f", "A /n/b/sub", "A /n/b/sub/g"},
			merged: true,
		},
		{
			name: "renamed subdir of an unchanged dir, then parent renamed", opts: redir, lowers: 1,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[0]+"/a/c/f", "f", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/a/k", "k", 0o644)
			},
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.Rename(m+"/a/c", m+"/a/d"))
				ovlMust(l.t, os.Rename(m+"/a", m+"/z"))
				ovlSetTime(l.t, m, ovlBaseTime)
			},
			want:   []string{"D /a", "A /z", "A /z/d", "A /z/d/f", "A /z/k"},
			merged: true,
		},
		{
			name: "dir renamed over a deleted lower dir", opts: redir, lowers: 1,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[0]+"/a/f", "f", 0o644)
				ovlMkdirAll(l.t, l.lowers[0]+"/b")
			},
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.Remove(m+"/b"))
				ovlMust(l.t, os.Rename(m+"/a", m+"/b"))
				ovlSetTime(l.t, m, ovlBaseTime)
			},
			want:   []string{"D /a", "A /b/f"},
			merged: true,
		},
		{
			name: "metacopy chmod only", opts: meta, lowers: 1,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[0]+"/d/f", "payload", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/d/same", "same", 0o644)
			},
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.Chmod(m+"/d/f", 0o600))
				ovlMust(l.t, os.Chmod(m+"/d/same", 0o600))
				ovlMust(l.t, os.Chmod(m+"/d/same", 0o644)) // metacopy, but no change
			},
			want:   []string{"C /d/f"},
			merged: true,
		},
		{
			name: "metacopy file renamed", opts: meta, lowers: 1,
			build: func(l *ovlLayer) { ovlWriteFile(l.t, l.lowers[0]+"/d/f", "payload", 0o644) },
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.Chmod(m+"/d/f", 0o600))
				ovlMust(l.t, os.Mkdir(m+"/e", 0o755))
				ovlMust(l.t, os.Rename(m+"/d/f", m+"/e/g"))
				ovlSetTime(l.t, m+"/d", ovlBaseTime)
			},
			want:   []string{"D /d/f", "A /e", "A /e/g"},
			merged: true,
		},
		{
			// Same size, same whole-second mtime: the content decides, and
			// the metacopy file's content is its redirect's lower file.
			name: "metacopy file renamed over a same-size file", opts: meta, lowers: 1,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[0]+"/f", "AAAA", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/g", "BBBB", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/h", "AAAA", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/i", "AAAA", 0o644)
			},
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.Chmod(m+"/f", 0o600))
				ovlMust(l.t, os.Chmod(m+"/f", 0o644))
				ovlMust(l.t, os.Rename(m+"/f", m+"/g"))
				ovlMust(l.t, os.Chmod(m+"/h", 0o600))
				ovlMust(l.t, os.Chmod(m+"/h", 0o644))
				ovlMust(l.t, os.Rename(m+"/h", m+"/i"))
				ovlSetTime(l.t, m, ovlBaseTime)
			},
			want:   []string{"D /f", "C /g", "D /h"},
			merged: true,
		},
		{
			name: "user xattr namespace", opts: "userxattr", lowers: 1,
			build: func(l *ovlLayer) {
				ovlWriteFile(l.t, l.lowers[0]+"/d/a", "a", 0o644)
				ovlWriteFile(l.t, l.lowers[0]+"/e/b", "b", 0o644)
			},
			edit: func(l *ovlLayer, m string) {
				ovlMust(l.t, os.RemoveAll(m+"/d"))
				ovlMust(l.t, os.Mkdir(m+"/d", 0o755))
				ovlMust(l.t, os.Remove(m+"/e/b"))
				ovlSetTime(l.t, m+"/d", ovlBaseTime)
				ovlSetTime(l.t, m+"/e", ovlBaseTime)
			},
			want: []string{"D /d/a", "D /e/b"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.opts != def && c.opts != "userxattr" {
				ovlKernelAccepts(t, c.opts)
			}
			l := newOvlLayer(t, "", c.lowers, c.opts)
			if c.build != nil {
				c.build(l)
			}
			for _, lo := range l.lowers {
				ovlStampAll(t, lo, ovlBaseTime)
			}
			if c.edit != nil {
				l.edit(func(m string) { c.edit(l, m) })
			}
			if c.upper != nil {
				c.upper(l)
			}
			got := ovlChangeLines(l.check(func() string { return "" }))
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("OverlayChanges =\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
			// Whether the merged mount is needed: upper alone ovlMust do when
			// content is all in upper, and ovlMust not when it is not.
			mounted := false
			err := diff.WriteOverlayDiff(context.Background(), io.Discard, l.upper, l.lowers, l.options(),
				func() (string, func() error, error) {
					mounted = true
					m, undo := l.mount(l.layerData(), unix.MS_RDONLY)
					return m, func() error { undo(); return nil }, nil
				}, diff.ExportOptions{})
			ovlMust(t, err)
			if mounted != c.merged {
				t.Errorf("WriteOverlayDiff mounted the merged view: %v, want %v", mounted, c.merged)
			}
		})
	}
}

// TestOverlayChangesErrors: bad roots and redirects the kernel itself
// refuses are errors naming what is wrong.
func TestOverlayChangesErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := diff.OverlayChanges(ctx, filepath.Join(dir, "missing"), nil, diff.OverlayOptions{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing upper: err = %v", err)
	}
	f := filepath.Join(dir, "file")
	ovlWriteFile(t, f, "", 0o644)
	if _, err := diff.OverlayChanges(ctx, dir, []string{f}, diff.OverlayOptions{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("lower is a file: err = %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("trusted.overlay.* xattrs need root")
	}
	for _, red := range []string{"../x", "/a/../b", "a/b", "//x", ".."} {
		upper, lower := filepath.Join(dir, "u"+strconv.Itoa(len(red))), filepath.Join(dir, "l")
		ovlMkdirAll(t, upper+"/d")
		ovlMkdirAll(t, lower)
		ovlMust(t, unix.Lsetxattr(upper+"/d", "trusted.overlay.redirect", []byte(red), 0))
		_, err := diff.OverlayChanges(ctx, upper, []string{lower}, diff.OverlayOptions{})
		if err == nil || !strings.Contains(err.Error(), "invalid trusted.overlay.redirect") {
			t.Errorf("redirect %q: err = %v, want invalid redirect", red, err)
		}
		ovlMust(t, os.RemoveAll(upper))
	}
	// A redirect in a lower is not interpreted: the caller falls back.
	upper, lower := filepath.Join(dir, "U"), filepath.Join(dir, "L")
	ovlWriteFile(t, upper+"/d/f", "x", 0o644)
	ovlMkdirAll(t, lower+"/d")
	ovlMust(t, unix.Lsetxattr(lower+"/d", "trusted.overlay.redirect", []byte("/e"), 0))
	if _, err := diff.OverlayChanges(ctx, upper, []string{lower}, diff.OverlayOptions{}); !errors.Is(err, diff.ErrOverlayUnsupported) {
		t.Errorf("redirect in a lower: err = %v, want ErrOverlayUnsupported", err)
	}
	// Canceled.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := diff.OverlayChanges(cctx, upper, []string{lower}, diff.OverlayOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: err = %v", err)
	}
}

// TestOverlayChangesProperty applies random edits through a real overlay
// mount and compares OverlayChanges with the naive differ, with each option
// set. LAYERS_OVERLAY_SEED=N replays one seed; LAYERS_OVERLAY_ROUNDS sets
// the number of seeds per option set.
func TestOverlayChangesProperty(t *testing.T) {
	ovlNeedOverlay(t)
	rounds := 30
	if testing.Short() {
		rounds = 5
	}
	if s := os.Getenv("LAYERS_OVERLAY_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("LAYERS_OVERLAY_ROUNDS=%q: %v", s, err)
		}
		rounds = n
	}
	var seeds []int64
	if s := os.Getenv("LAYERS_OVERLAY_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("LAYERS_OVERLAY_SEED=%q: %v", s, err)
		}
		seeds = []int64{n}
	} else {
		base := time.Now().UnixNano()
		for i := range rounds {
			seeds = append(seeds, base+int64(i))
		}
	}
	for _, set := range ovlOptionSets {
		t.Run(set.name, func(t *testing.T) {
			if set.name != "defaults" {
				ovlKernelAccepts(t, set.opts)
			}
			fs := loopfs.New(t, "tmpfs", 1<<30)
			for i, seed := range seeds {
				base := filepath.Join(fs, strconv.Itoa(i))
				ok := t.Run(strconv.FormatInt(seed, 10), func(t *testing.T) {
					t.Logf("seed %d (replay: LAYERS_OVERLAY_SEED=%d go test -run 'TestOverlayChangesProperty/%s' ./diff)", seed, seed, set.name)
					ovlRunProperty(t, base, seed, set.opts)
				})
				if !ok {
					return
				}
			}
		})
	}
}

func ovlRunProperty(t *testing.T, base string, seed int64, opts string) {
	rng := rand.New(rand.NewSource(seed))
	nLowers := 1 + rng.Intn(3)
	l := newOvlLayer(t, base, nLowers, opts)
	var log []string
	logf := func() string {
		return fmt.Sprintf("seed %d, %d lowers, options %s, edits:\n  %s", seed, nLowers, opts, strings.Join(log, "\n  "))
	}

	// The bottom lower is a random tree; each lower above it is the upper
	// dir of random edits through overlay with the driver's defaults, as a
	// committed layer would be.
	bottom := l.lowers[nLowers-1]
	ovlRandomTree(t, rng, bottom, 3)
	ovlStampRandom(t, rng, bottom)
	for i := nLowers - 2; i >= 0; i-- {
		below := l.lowers[i+1:]
		work := l.mkdir(fmt.Sprintf("lwork%d", i))
		lopts := ovlOptionSets[0].opts
		if l.user {
			lopts += ",userxattr"
		}
		data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,%s", strings.Join(below, ":"), l.lowers[i], work, lopts)
		m, undo := l.mount(data, 0)
		e := &ovlEditor{t: t, rng: rng, root: m, log: &log}
		log = append(log, fmt.Sprintf("-- lower %d", i))
		for range 15 {
			e.step()
		}
		undo()
	}
	log = append(log, "-- layer")
	l.edit(func(m string) {
		e := &ovlEditor{t: t, rng: rng, root: m, log: &log}
		for range 20 + rng.Intn(60) {
			e.step()
		}
	})
	l.check(logf)
}

// ovlNames is the small name pool of random trees and edits, so that edits
// often meet what the lowers have.
var ovlNames = []string{"a", "b", "c", "d", "e", "f", "g", "h"}

func ovlRandomTree(t testing.TB, rng *rand.Rand, dir string, depth int) {
	for _, n := range ovlNames {
		p := filepath.Join(dir, n)
		switch r := rng.Intn(10); {
		case r < 4:
			ovlWriteFile(t, p, ovlRandContent(rng), uint32(0o600+rng.Intn(0o200)))
		case r < 6 && depth > 0:
			ovlMust(t, os.Mkdir(p, 0o755))
			ovlRandomTree(t, rng, p, depth-1)
		case r == 6:
			ovlMust(t, os.Symlink(ovlNames[rng.Intn(len(ovlNames))], p))
		case r == 7:
			// A hardlink to a file made before in this directory.
			for _, o := range ovlNames {
				op := filepath.Join(dir, o)
				if st, err := os.Lstat(op); err == nil && st.Mode().IsRegular() {
					ovlMust(t, os.Link(op, p))
					break
				}
			}
		case r == 8:
			ovlWriteFile(t, p, ovlRandContent(rng), 0o644)
			ovlMust(t, unix.Lsetxattr(p, "user.k", []byte(ovlRandContent(rng)), 0))
		}
	}
}

func ovlRandContent(rng *rand.Rand) string {
	const alphabet = "ab"
	b := make([]byte, rng.Intn(6))
	for i := range b {
		b[i] = alphabet[rng.Intn(len(alphabet))]
	}
	return string(b)
}

// ovlStampRandom gives every entry below root one of two times: a whole
// second (content then decides equal metadata) or one with nanoseconds.
func ovlStampRandom(t testing.TB, rng *rand.Rand, root string) {
	var paths []string
	ovlMust(t, filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	}))
	for i := len(paths) - 1; i >= 0; i-- {
		// Distinct times: a file renamed over another with the same
		// size, owner, mode and sub-second mtime is a change no differ
		// sees (they trust such mtimes), which the tree check would.
		tm := ovlBaseTime.Add(time.Duration(i) * time.Second)
		if rng.Intn(2) == 0 {
			tm = tm.Add(123456789)
		}
		ovlSetTime(t, paths[i], tm)
	}
}

// ovlEditor makes random edits below root, a mounted overlay.
type ovlEditor struct {
	t    testing.TB
	rng  *rand.Rand
	root string
	log  *[]string
}

type ovlEntryInfo struct {
	rel string
	fi  os.FileInfo
}

func (e *ovlEditor) entries() []ovlEntryInfo {
	var out []ovlEntryInfo
	err := filepath.Walk(e.root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(e.root, p)
		out = append(out, ovlEntryInfo{rel, fi})
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rel < out[j].rel })
	return out
}

func (e *ovlEditor) pick(ents []ovlEntryInfo, want func(os.FileInfo) bool) (ovlEntryInfo, bool) {
	var c []ovlEntryInfo
	for _, x := range ents {
		if x.rel != "." && want(x.fi) {
			c = append(c, x)
		}
	}
	if len(c) == 0 {
		return ovlEntryInfo{}, false
	}
	return c[e.rng.Intn(len(c))], true
}

func ovlIsDir(fi os.FileInfo) bool  { return fi.IsDir() }
func ovlIsFile(fi os.FileInfo) bool { return fi.Mode().IsRegular() }
func ovlAny(os.FileInfo) bool       { return true }

// newPath returns a path in a random existing directory, with a name from
// the pool (it may exist) or, less often, one the lowers never have.
func (e *ovlEditor) newPath(ents []ovlEntryInfo) string {
	dirs := []string{"."}
	for _, x := range ents {
		if x.rel != "." && x.fi.IsDir() {
			dirs = append(dirs, x.rel)
		}
	}
	name := ovlNames[e.rng.Intn(len(ovlNames))]
	if e.rng.Intn(3) == 0 {
		name = "n" + strconv.Itoa(e.rng.Intn(4)) // likely free: renames succeed
	}
	return filepath.Join(dirs[e.rng.Intn(len(dirs))], name)
}

func (e *ovlEditor) abs(rel string) string { return filepath.Join(e.root, rel) }

// randTime returns a time no other edit of the run gave, a whole second
// or not.
func (e *ovlEditor) randTime() time.Time {
	// The log grows by one line per edit, across all editors of a run.
	tm := ovlBaseTime.Add(time.Duration(1000+len(*e.log)) * time.Second)
	if e.rng.Intn(2) == 0 {
		tm = tm.Add(time.Duration(1 + e.rng.Intn(999)))
	}
	return tm
}

// step makes one random edit. Edits the kernel refuses (EXDEV aside,
// handled like mv) are logged and skipped: they change nothing.
func (e *ovlEditor) step() {
	ents := e.entries()
	var desc string
	var err error
	op := e.rng.Intn(23)
	if op >= 19 {
		op = 11 // directory renames are what redirect_dir is about: weigh them more
	}
	switch op {
	case 0: // create or overwrite a file
		p := e.newPath(ents)
		desc = "create " + p
		err = ovlWriteNew(e.abs(p), ovlRandContent(e.rng))
	case 1: // append
		x, ok := e.pick(ents, ovlIsFile)
		if !ok {
			return
		}
		desc = "append " + x.rel
		var f *os.File
		if f, err = os.OpenFile(e.abs(x.rel), os.O_WRONLY|os.O_APPEND, 0); err == nil {
			_, err = f.WriteString(ovlRandContent(e.rng) + "z")
			f.Close()
		}
	case 2: // truncate
		x, ok := e.pick(ents, ovlIsFile)
		if !ok {
			return
		}
		n := e.rng.Int63n(x.fi.Size() + 2)
		desc = fmt.Sprintf("truncate %s %d", x.rel, n)
		err = os.Truncate(e.abs(x.rel), n)
	case 3: // chmod
		x, ok := e.pick(ents, func(fi os.FileInfo) bool { return fi.Mode()&os.ModeSymlink == 0 })
		if !ok {
			return
		}
		mode := uint32(0o700 + e.rng.Intn(0o100))
		if e.rng.Intn(2) == 0 {
			mode = uint32(x.fi.Mode().Perm()) // same mode: a metacopy with no change
		}
		desc = fmt.Sprintf("chmod %o %s", mode, x.rel)
		err = unix.Chmod(e.abs(x.rel), mode)
	case 4: // chown
		x, ok := e.pick(ents, ovlAny)
		if !ok {
			return
		}
		uid := e.rng.Intn(3)
		desc = fmt.Sprintf("chown %d %s", uid, x.rel)
		err = unix.Lchown(e.abs(x.rel), uid, uid)
	case 5: // setxattr
		x, ok := e.pick(ents, func(fi os.FileInfo) bool { return fi.Mode()&os.ModeSymlink == 0 })
		if !ok {
			return
		}
		name := []string{"user.k", "user.j", "trusted.t"}[e.rng.Intn(3)]
		v := ovlRandContent(e.rng)
		desc = fmt.Sprintf("setxattr %s=%q %s", name, v, x.rel)
		err = unix.Lsetxattr(e.abs(x.rel), name, []byte(v), 0)
	case 6: // utimes
		x, ok := e.pick(ents, ovlAny)
		if !ok {
			return
		}
		tm := e.randTime()
		desc = fmt.Sprintf("utimes %s %s", x.rel, tm.Format(time.RFC3339Nano))
		ts := []unix.Timespec{unix.NsecToTimespec(tm.UnixNano()), unix.NsecToTimespec(tm.UnixNano())}
		err = unix.UtimesNanoAt(unix.AT_FDCWD, e.abs(x.rel), ts, unix.AT_SYMLINK_NOFOLLOW)
	case 7: // rm a non-directory
		x, ok := e.pick(ents, func(fi os.FileInfo) bool { return !fi.IsDir() })
		if !ok {
			return
		}
		desc = "rm " + x.rel
		err = os.Remove(e.abs(x.rel))
	case 8: // rm -rf a directory
		x, ok := e.pick(ents, ovlIsDir)
		if !ok {
			return
		}
		desc = "rm -rf " + x.rel
		err = os.RemoveAll(e.abs(x.rel))
	case 9: // rm -rf && mkdir
		x, ok := e.pick(ents, ovlIsDir)
		if !ok {
			return
		}
		desc = "rm -rf && mkdir " + x.rel
		if err = os.RemoveAll(e.abs(x.rel)); err == nil {
			err = os.Mkdir(e.abs(x.rel), 0o755)
		}
	case 10: // rename a non-directory
		x, ok := e.pick(ents, func(fi os.FileInfo) bool { return !fi.IsDir() })
		if !ok {
			return
		}
		to := e.newPath(ents)
		desc = "mv " + x.rel + " " + to
		err = e.rename(x.rel, to)
	case 11: // rename a directory
		x, ok := e.pick(ents, ovlIsDir)
		if !ok {
			return
		}
		to := e.newPath(ents)
		desc = "mv " + x.rel + " " + to
		err = e.rename(x.rel, to)
	case 12: // hardlink
		x, ok := e.pick(ents, ovlIsFile)
		if !ok {
			return
		}
		to := e.newPath(ents)
		desc = "ln " + x.rel + " " + to
		err = os.Link(e.abs(x.rel), e.abs(to))
	case 13: // symlink
		to := e.newPath(ents)
		target := ovlNames[e.rng.Intn(len(ovlNames))]
		desc = "ln -s " + target + " " + to
		err = os.Symlink(target, e.abs(to))
	case 14: // replace with a directory
		x, ok := e.pick(ents, func(fi os.FileInfo) bool { return !fi.IsDir() })
		if !ok {
			return
		}
		desc = "replace with dir " + x.rel
		if err = os.Remove(e.abs(x.rel)); err == nil {
			if err = os.Mkdir(e.abs(x.rel), 0o755); err == nil {
				err = os.WriteFile(e.abs(x.rel)+"/"+ovlNames[e.rng.Intn(len(ovlNames))], []byte(ovlRandContent(e.rng)), 0o644)
			}
		}
	case 15: // replace with a file or a symlink
		x, ok := e.pick(ents, ovlAny)
		if !ok {
			return
		}
		desc = "replace with file/symlink " + x.rel
		if err = os.RemoveAll(e.abs(x.rel)); err == nil {
			if e.rng.Intn(2) == 0 {
				err = os.WriteFile(e.abs(x.rel), []byte(ovlRandContent(e.rng)), 0o644)
			} else {
				err = os.Symlink("target", e.abs(x.rel))
			}
		}
	case 16: // mkdir -p with a file
		p := e.newPath(ents)
		q := filepath.Join(p, ovlNames[e.rng.Intn(len(ovlNames))])
		desc = "mkdir -p " + p + " && create " + q
		if err = os.MkdirAll(e.abs(p), 0o755); err == nil {
			err = ovlWriteNew(e.abs(q), ovlRandContent(e.rng))
		}
	case 17: // same-size rewrite with the mtime put back (touch -r)
		x, ok := e.pick(ents, ovlIsFile)
		if !ok || x.fi.Size() == 0 {
			return
		}
		desc = "rewrite keeping size and mtime " + x.rel
		var st unix.Stat_t
		if err = unix.Lstat(e.abs(x.rel), &st); err == nil && st.Mtim.Nsec != 0 {
			// Both differs trust a sub-second mtime (the known limit
			// documented on Changes); the tree check would see it.
			desc += " (sub-second mtime: skipped)"
		} else if err == nil {
			b := bytes.Repeat([]byte{'c'}, int(st.Size))
			if err = os.WriteFile(e.abs(x.rel), b, 0); err == nil {
				ts := []unix.Timespec{st.Mtim, st.Mtim}
				err = unix.UtimesNanoAt(unix.AT_FDCWD, e.abs(x.rel), ts, unix.AT_SYMLINK_NOFOLLOW)
			}
		}
	case 18: // fifo
		p := e.newPath(ents)
		desc = "mkfifo " + p
		err = unix.Mkfifo(e.abs(p), 0o640)
	}
	if err != nil {
		desc += fmt.Sprintf(" (failed: %v)", err)
	}
	*e.log = append(*e.log, desc)
}

// ovlCountFeatures counts the overlay constructs in upper dir root.
func ovlCountFeatures(t testing.TB, root string) map[string]int {
	n := map[string]int{}
	ovlMust(t, filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeCharDevice != 0 {
			n["whiteout"]++
		}
		for _, a := range []string{"opaque", "redirect", "metacopy"} {
			for _, ns := range []string{"trusted.overlay.", "user.overlay."} {
				if sz, err := unix.Lgetxattr(p, ns+a, nil); err == nil && sz >= 0 {
					n[a]++
				}
			}
		}
		return nil
	}))
	return n
}

// ovlWriteNew creates or overwrites regular file p. It never follows a
// symlink and never blocks on a fifo (which would wait for a reader).
func ovlWriteNew(p, content string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0o644)
	if err != nil {
		return err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("%s is not a regular file", p)
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// rename renames from to to as mv does: rename(2), and on EXDEV (a lower
// directory with redirect_dir off) a copy then a removal, by mv itself.
func (e *ovlEditor) rename(from, to string) error {
	err := os.Rename(e.abs(from), e.abs(to))
	if !errors.Is(err, unix.EXDEV) {
		return err
	}
	if fi, lerr := os.Lstat(e.abs(to)); lerr == nil && fi.IsDir() {
		// mv would move into it; rename(2) semantics replace it when empty.
		if rerr := os.Remove(e.abs(to)); rerr != nil {
			return rerr
		}
	}
	out, err := exec.Command("mv", "-T", e.abs(from), e.abs(to)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mv: %v: %s", err, bytes.TrimSpace(out))
	}
	*e.log = append(*e.log, "  (EXDEV: copied by mv)")
	return nil
}
