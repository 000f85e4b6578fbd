package diff_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	. "github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
)

// lowerCase is an image of several layers: each lower is applied in the
// overlay format into a dir of its own (with the layers below it as its
// Lowers), then the top; the read-only overlay mount of those dirs must
// show the tree the delete format gives when every layer is applied into
// one dir in order.
type lowerCase struct {
	name    string
	lowers  [][]Entry // bottom first
	top     []Entry
	wantErr string // both formats must fail on the top layer with this
	// check looks at the top layer's own dir (and the lowers' dirs,
	// bottom first) beyond the comparison.
	check func(t *testing.T, top string, lowers []string)
}

var (
	mt1 = time.Date(2019, 5, 6, 7, 8, 9, 123000000, time.UTC)
	mt2 = time.Date(2018, 1, 2, 3, 4, 5, 0, time.UTC)
)

func lowerCases() []lowerCase {
	usrLib := []Entry{Dir("usr", 0o755), Dir("usr/lib", 0o755), File("usr/lib/old", "old", 0o644)}
	return []lowerCase{
		{
			name:   "RelativeSymlinkDir",
			lowers: [][]Entry{append(usrLib[:3:3], Symlink("lib", "usr/lib"))},
			top:    []Entry{File("lib/libfoo.so", "foo", 0o755)},
			check: func(t *testing.T, top string, _ []string) {
				wantFile(t, filepath.Join(top, "usr/lib/libfoo.so"), "foo")
				wantAbsent(t, filepath.Join(top, "lib"))
				wantAbsent(t, filepath.Join(top, "usr/lib/old"))
			},
		},
		{
			name:   "AbsoluteSymlinkDir",
			lowers: [][]Entry{append(usrLib[:3:3], Symlink("lib", "/usr/lib"))},
			top:    []Entry{File("lib/libfoo.so", "foo", 0o755), Dir("lib/sub", 0o700), File("lib/sub/x", "x", 0o600)},
			check: func(t *testing.T, top string, _ []string) {
				wantFile(t, filepath.Join(top, "usr/lib/sub/x"), "x")
			},
		},
		{
			name:   "ChainedSymlinks",
			lowers: [][]Entry{append(usrLib[:3:3], Symlink("lib", "lib64"), Symlink("lib64", "./usr/../usr/lib"))},
			top:    []Entry{File("lib/a", "a", 0o644)},
			check: func(t *testing.T, top string, _ []string) {
				wantFile(t, filepath.Join(top, "usr/lib/a"), "a")
			},
		},
		{
			name: "SymlinksAcrossLowers",
			lowers: [][]Entry{
				{Dir("usr", 0o750, Owner(2, 3), Mtime(mt1), Xattr("user.u", "1")), Dir("usr/lib", 0o711, Owner(4, 5), Mtime(mt2))},
				{Symlink("lib", "lib64")},
				{Symlink("lib64", "/usr/lib")},
			},
			top: []Entry{File("lib/a", "a", 0o644)},
			check: func(t *testing.T, top string, _ []string) {
				wantFile(t, filepath.Join(top, "usr/lib/a"), "a")
				wantDirAttrs(t, filepath.Join(top, "usr"), 0o750, 2, 3, mt1)
				wantDirAttrs(t, filepath.Join(top, "usr/lib"), 0o711, 4, 5, mt2)
			},
		},
		{
			name:    "SymlinkToWhitedOutDir",
			lowers:  [][]Entry{{Dir("d", 0o755), File("d/f", "f", 0o644), Symlink("l", "d")}, {Whiteout("d")}},
			top:     []Entry{File("l/x", "x", 0o644)},
			wantErr: `entry "l/x": parent directory`,
		},
		{
			name:   "SymlinkToRecreatedDir",
			lowers: [][]Entry{{Dir("d", 0o755), File("d/f", "f", 0o644), Symlink("l", "d")}, {Whiteout("d"), Dir("d", 0o700)}},
			top:    []Entry{File("l/x", "x", 0o644)},
		},
		{
			name: "SymlinkUnderOpaqueDir",
			lowers: [][]Entry{
				{Dir("opt", 0o755), Dir("opt/real", 0o755), File("opt/real/r", "r", 0o644), Symlink("opt/l", "real"), Dir("data", 0o755)},
				{Opaque("opt"), Symlink("opt/m", "/data")},
			},
			top: []Entry{File("opt/l/x", "x", 0o644), File("opt/m/y", "y", 0o644)},
			check: func(t *testing.T, top string, _ []string) {
				wantFile(t, filepath.Join(top, "opt/l/x"), "x") // a new dir: the lower symlink is hidden
				wantFile(t, filepath.Join(top, "data/y"), "y")
			},
		},
		{
			name:   "HardlinkToLowerFile",
			lowers: [][]Entry{{Dir("d", 0o700, Owner(5, 6), Mtime(mt1)), File("d/f", "data", 0o640, Owner(3, 4), Mtime(mt2))}},
			top:    []Entry{Hardlink("h", "d/f", Mode(0o640), Owner(3, 4), Mtime(mt2))},
			check: func(t *testing.T, top string, _ []string) {
				wantSameInode(t, filepath.Join(top, "h"), filepath.Join(top, "d/f"))
				wantDirAttrs(t, filepath.Join(top, "d"), 0o700, 5, 6, mt1)
			},
		},
		{
			name: "HardlinkToLowerFileWithXattrs",
			lowers: [][]Entry{{Dir("bin", 0o755),
				File("bin/ping", "ping", 0o4755, Xattr("security.capability", capV2), Xattr("user.a", "b"), Xattr("trusted.t", "v"))}},
			top: []Entry{Dir("sbin", 0o755), Hardlink("sbin/ping", "bin/ping", Mode(0o4755))},
			check: func(t *testing.T, top string, _ []string) {
				wantSameInode(t, filepath.Join(top, "sbin/ping"), filepath.Join(top, "bin/ping"))
			},
		},
		{
			name: "HardlinkToSparseLowerFile",
			lowers: [][]Entry{{Dir("var", 0o755),
				SparseFile("var/lastlog", 64<<20, []Chunk{{Offset: 1 << 20, Data: "a"}, {Offset: 40 << 20, Data: "b"}}, 0o644)}},
			top: []Entry{Hardlink("lastlog", "var/lastlog")},
			check: func(t *testing.T, top string, _ []string) {
				var st unix.Stat_t
				if err := unix.Stat(filepath.Join(top, "var/lastlog"), &st); err != nil {
					t.Fatal(err)
				}
				if st.Size != 64<<20 || st.Blocks*512 > 1<<20 {
					t.Errorf("copied-up sparse file: size %d, %d bytes allocated: want 64 MiB with holes", st.Size, st.Blocks*512)
				}
			},
		},
		{
			name:   "HardlinkTargetInDirOnlyInLower",
			lowers: [][]Entry{{Dir("a", 0o711, Owner(1, 1)), Dir("a/b", 0o700, Owner(2, 2), Xattr("user.x", "y")), File("a/b/t", "t", 0o600)}},
			top:    []Entry{Dir("c", 0o755), Hardlink("c/l", "a/b/t", Mode(0o600))},
			check: func(t *testing.T, top string, _ []string) {
				wantDirAttrs(t, filepath.Join(top, "a"), 0o711, 1, 1, DefaultMtime)
				wantDirAttrs(t, filepath.Join(top, "a/b"), 0o700, 2, 2, DefaultMtime)
			},
		},
		{
			name:   "HardlinksFromTwoNames",
			lowers: [][]Entry{{Dir("d", 0o755), File("d/f", "f", 0o644)}},
			top:    []Entry{Hardlink("h1", "d/f"), Hardlink("h2", "d/f"), Hardlink("d/h3", "h1")},
			check: func(t *testing.T, top string, _ []string) {
				wantSameInode(t, filepath.Join(top, "h1"), filepath.Join(top, "d/f"))
				wantSameInode(t, filepath.Join(top, "h2"), filepath.Join(top, "d/f"))
				wantSameInode(t, filepath.Join(top, "d/h3"), filepath.Join(top, "d/f"))
			},
		},
		{
			name:   "HardlinkThroughLowerSymlink",
			lowers: [][]Entry{append(usrLib[:3:3], Symlink("lib", "usr/lib"), Symlink("usr/lib/s", "old"))},
			top:    []Entry{Hardlink("h", "lib/old"), Hardlink("hs", "lib/s")},
		},
		{
			name:   "HardlinkTargetThenOpaque",
			lowers: [][]Entry{{Dir("d", 0o755), File("d/f", "f", 0o644), File("d/g", "g", 0o644)}},
			top:    []Entry{Hardlink("h", "d/f"), Opaque("d"), File("d/new", "n", 0o644)},
		},
		{
			name:   "HardlinkTargetThenWhiteout",
			lowers: [][]Entry{{Dir("d", 0o755), File("d/f", "f", 0o644)}},
			top:    []Entry{Hardlink("h", "d/f"), Whiteout("d/f")},
		},
		{
			name:    "HardlinkToWhitedOutLowerFile",
			lowers:  [][]Entry{{File("f", "f", 0o644)}, {Whiteout("f")}},
			top:     []Entry{Hardlink("h", "f")},
			wantErr: `hardlink target "f" does not exist`,
		},
		{
			name: "ImplicitParentsTakeLowerAttributes",
			lowers: [][]Entry{
				{Dir("secret", 0o700, Owner(1, 1), Mtime(mt1), Xattr("user.tag", "t")), Dir("secret/deeper", 0o750, Owner(1, 2))},
				{Dir("other", 0o755)},
			},
			top: []Entry{File("secret/deeper/x", "x", 0o600), File("secret/y", "y", 0o600)},
			check: func(t *testing.T, top string, _ []string) {
				wantDirAttrs(t, filepath.Join(top, "secret"), 0o700, 1, 1, mt1)
				wantDirAttrs(t, filepath.Join(top, "secret/deeper"), 0o750, 1, 2, DefaultMtime)
				if v, err := unix.Getxattr(filepath.Join(top, "secret"), "user.tag", make([]byte, 8)); err != nil || v != 1 {
					t.Errorf("user.tag of the implicit parent: %d, %v", v, err)
				}
			},
		},
		{
			name: "ImplicitParentFromTopMostLower",
			lowers: [][]Entry{
				{Dir("d", 0o755, Owner(1, 1))},
				{Dir("d", 0o700, Owner(2, 2))}, // listed again: the merged view shows this one
			},
			top: []Entry{File("d/x", "x", 0o644)},
			check: func(t *testing.T, top string, _ []string) {
				wantDirAttrs(t, filepath.Join(top, "d"), 0o700, 2, 2, DefaultMtime)
			},
		},
		{
			name:   "WhiteoutInsideImplicitParent",
			lowers: [][]Entry{{Dir("a", 0o750, Owner(1, 1)), Dir("a/b", 0o700, Owner(2, 2)), File("a/b/x", "x", 0o644), File("a/b/y", "y", 0o644)}},
			top:    []Entry{Whiteout("a/b/x"), Opaque("a/c"), Whiteout("nothere/z")},
			check: func(t *testing.T, top string, _ []string) {
				wantDirAttrs(t, filepath.Join(top, "a/b"), 0o700, 2, 2, DefaultMtime)
				// Markers in directories no layer has hide nothing: no
				// directory is made for them.
				wantAbsent(t, filepath.Join(top, "nothere"))
				wantAbsent(t, filepath.Join(top, "a/c"))
			},
		},
		{
			name:   "RelistedDir",
			lowers: [][]Entry{{Dir("d", 0o700, Owner(1, 1), Xattr("user.old", "o")), File("d/f", "f", 0o644)}},
			top:    []Entry{Dir("d", 0o755, Owner(2, 2), Mtime(mt1), Xattr("user.new", "n")), File("d/g", "g", 0o644)},
		},
		{
			name:    "EntryUnderLowerFile",
			lowers:  [][]Entry{{Dir("d", 0o755), File("d/f", "f", 0o644)}},
			top:     []Entry{File("d/f/x", "x", 0o644)},
			wantErr: `entry "d/f/x": parent directory`,
		},
		{
			name:    "EntryUnderLowerFileThroughSymlink",
			lowers:  [][]Entry{{File("f", "f", 0o644)}, {Symlink("l", "f")}},
			top:     []Entry{File("l/x", "x", 0o644)},
			wantErr: `entry "l/x": parent directory`,
		},
		{
			name: "EscapesThroughLowerSymlinksStayInside",
			lowers: [][]Entry{
				{Dir("etc", 0o755), Symlink("lib", "../../.."), Symlink("abs", "/../../../etc")},
				{Symlink("deep", "lib/../../lib/../etc")},
			},
			top: []Entry{File("lib/passwd", "p", 0o644), File("abs/shadow", "s", 0o600), File("deep/group", "g", 0o644), Hardlink("hl", "lib/etc/shadow")},
			check: func(t *testing.T, top string, _ []string) {
				wantFile(t, filepath.Join(top, "passwd"), "p")
				wantFile(t, filepath.Join(top, "etc/shadow"), "s")
				wantFile(t, filepath.Join(top, "etc/group"), "g")
			},
		},
		{
			name: "LayerReplacesLowerSymlinkItWentThrough",
			lowers: [][]Entry{
				append(usrLib[:3:3], Symlink("lib", "usr/lib"), Dir("opt", 0o755)),
			},
			top: []Entry{File("lib/a", "a", 0o644), Symlink("lib", "opt"), File("lib/b", "b", 0o644), Whiteout("lib"), File("lib/c", "c", 0o644)},
		},
		{
			name:   "LowerSymlinkWhitedOutThenDir",
			lowers: [][]Entry{append(usrLib[:3:3], Symlink("lib", "usr/lib"))},
			top:    []Entry{File("lib/a", "a", 0o644), Whiteout("lib"), File("lib/b", "b", 0o644)},
		},
		{
			name:   "HardlinkToLowerSymlink",
			lowers: [][]Entry{{Symlink("s", "nowhere")}},
			top:    []Entry{Hardlink("h", "s")},
		},
		{
			name:   "RootTakesLowerAttributes",
			lowers: [][]Entry{{Dir("/", 0o750, Owner(7, 7), Xattr("user.root", "r")), File("f", "f", 0o644)}, {File("g", "g", 0o644)}},
			top:    []Entry{File("h", "h", 0o644)},
			check: func(t *testing.T, top string, _ []string) {
				wantDirAttrs(t, top, 0o750, 7, 7, DefaultMtime)
			},
		},
		deepCase(),
		{
			name:   "WhiteoutOfDirHoldingCopiedUpTarget",
			lowers: [][]Entry{{Dir("d", 0o755), Dir("d/e", 0o755), File("d/e/f", "f", 0o644), File("d/g", "g", 0o644)}},
			top:    []Entry{Hardlink("h", "d/e/f"), Whiteout("d"), Dir("d", 0o700), File("d/n", "n", 0o644)},
		},
	}
}

// deepCase has lower directories nested beyond PATH_MAX, reached by the
// top layer through a lower symlink and as implicit parents, and a
// hardlink to a file down there.
func deepCase() lowerCase {
	var lower []Entry
	p, mid := "deep", ""
	lower = append(lower, Dir(p, 0o755))
	for i := 0; len(p) < 5000; i++ {
		p += fmt.Sprintf("/level-%03d-xxxxxxxxxxxx", i)
		lower = append(lower, Dir(p, 0o700+int64(i%2)*0o50, Owner(i%3, i%5)))
		if len(p) < 3000 {
			mid = p // a symlink target is at most PATH_MAX long
		}
	}
	lower = append(lower, File(p+"/f", "deep", 0o644), Symlink("short", mid))
	return lowerCase{
		name:   "BeyondPathMax",
		lowers: [][]Entry{lower},
		top:    []Entry{File("short/x", "x", 0o644), File("short"+p[len(mid):]+"/z", "z", 0o644), File(p+"/sub/y", "y", 0o644), Hardlink("h", p+"/f"), Whiteout(p + "/f")},
	}
}

// capV2 is a VFS_CAP_REVISION_2 security.capability value (cap_net_raw).
var capV2 = string([]byte{0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

func TestApplyOverlayLowers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts, owners, trusted xattrs")
	}
	fs := loopfs.New(t, "tmpfs", 1<<30)
	for _, userX := range []bool{false, true} {
		for _, variant := range diff.ApplyResolverVariants {
			for _, c := range lowerCases() {
				name := fmt.Sprintf("userxattr=%v/%s/%s", userX, variant, c.name)
				t.Run(name, func(t *testing.T) {
					dir, err := os.MkdirTemp(fs, "case-")
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { os.RemoveAll(dir) })
					runLowerCase(t, dir, c, userX, variant)
				})
			}
		}
	}
}

func applyEntries(t *testing.T, root string, ents []Entry, opts diff.ApplyOptions) error {
	t.Helper()
	_, err := diff.Apply(context.Background(), root, bytes.NewReader(Tar(ents...)), opts)
	return err
}

func runLowerCase(t *testing.T, dir string, c lowerCase, userX bool, variant string) {
	// The image's layers side by side, and a canary next to them that
	// no escape may reach.
	canary := filepath.Join(dir, "canary")
	must(t, os.MkdirAll(filepath.Join(canary, "etc"), 0o755))
	var warns []string
	base := diff.WithResolverVariant(diff.ApplyOptions{
		Whiteouts: diff.OverlayWhiteouts(userX),
		Warn:      func(m string) { warns = append(warns, m) },
	}, variant)
	var layers []string // bottom first
	for i, ents := range c.lowers {
		l := filepath.Join(dir, fmt.Sprintf("l%d", i))
		must(t, os.Mkdir(l, 0o755))
		opts := base
		opts.Lowers = lowersOf(layers)
		if err := applyEntries(t, l, ents, opts); err != nil {
			t.Fatalf("lower %d: %v", i, err)
		}
		layers = append(layers, l)
	}
	top := filepath.Join(dir, "top")
	must(t, os.Mkdir(top, 0o755))
	opts := base
	opts.Lowers = lowersOf(layers)
	topErr := applyEntries(t, top, c.top, opts)

	flat := filepath.Join(dir, "flat")
	must(t, os.Mkdir(flat, 0o755))
	var flatErr error
	for i, ents := range append(append([][]Entry{}, c.lowers...), c.top) {
		if err := applyEntries(t, flat, ents, diff.WithResolverVariant(diff.ApplyOptions{}, variant)); err != nil {
			if i < len(c.lowers) {
				t.Fatalf("delete format, layer %d: %v", i, err)
			}
			flatErr = err
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(canary, "etc")); len(entries) > 0 {
		t.Fatalf("something was written outside the layers: %v", entries)
	}
	if c.wantErr != "" {
		if topErr == nil || !strings.Contains(topErr.Error(), c.wantErr) {
			t.Fatalf("overlay format: err = %v, want %q", topErr, c.wantErr)
		}
		if flatErr == nil || !strings.Contains(flatErr.Error(), c.wantErr) {
			t.Fatalf("delete format: err = %v, want %q", flatErr, c.wantErr)
		}
		return
	}
	if topErr != nil {
		t.Fatalf("overlay format: %v", topErr)
	}
	if flatErr != nil {
		t.Fatalf("delete format: %v", flatErr)
	}
	if len(warns) > 0 {
		t.Errorf("warnings: %q", warns)
	}
	if c.check != nil {
		c.check(t, top, layers)
	}
	merged := mountOverlay(t, dir, append([]string{top}, reverse(layers)...), userX)
	want, err := Snapshot(flat, WithoutOverlayXattrs())
	must(t, err)
	got, err := Snapshot(merged, WithoutOverlayXattrs())
	must(t, err)
	// Directory mtimes differ on purpose: the delete format's copy of a
	// lower directory gets the time of the apply when an entry lands in
	// it, the overlay format's keeps the lower's (checked above).
	if diffs := Compare(want, got, IgnoreDirMtimes()); len(diffs) > 0 {
		t.Fatalf("merged overlay differs from the delete format's tree:\n%s", strings.Join(diffs, "\n"))
	}
}

func lowersOf(bottomFirst []string) []diff.Lower {
	var ls []diff.Lower
	for i := len(bottomFirst) - 1; i >= 0; i-- {
		ls = append(ls, diff.Lower{Dir: bottomFirst[i]})
	}
	return ls
}

func reverse(s []string) []string {
	r := make([]string, len(s))
	for i, v := range s {
		r[len(s)-1-i] = v
	}
	return r
}

// mountOverlay mounts a read-only overlay of dirs (top-most first) and
// returns the mount point; it is unmounted when t ends.
func mountOverlay(t *testing.T, dir string, dirs []string, userX bool) string {
	t.Helper()
	mnt := filepath.Join(dir, "merged")
	must(t, os.Mkdir(mnt, 0o755))
	data := "lowerdir=" + strings.Join(dirs, ":")
	if userX {
		data += ",userxattr"
	}
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, data); err != nil {
		if errors.Is(err, unix.ENODEV) {
			t.Skip("the kernel has no overlay filesystem")
		}
		t.Fatalf("mount overlay %s: %v", data, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	return mnt
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantFile(t *testing.T, p, content string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	if string(b) != content {
		t.Errorf("%s: content %q, want %q", p, b, content)
	}
}

func wantAbsent(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: want absent, lstat: %v", p, err)
	}
}

func wantSameInode(t *testing.T, a, b string) {
	t.Helper()
	var sa, sb unix.Stat_t
	must(t, unix.Lstat(a, &sa))
	must(t, unix.Lstat(b, &sb))
	if sa.Ino != sb.Ino || sa.Dev != sb.Dev {
		t.Errorf("%s and %s are not the same file", a, b)
	}
}

func wantDirAttrs(t *testing.T, p string, mode, uid, gid uint32, mtime time.Time) {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Mode&0o7777 != mode || st.Uid != uid || st.Gid != gid {
		t.Errorf("%s: mode %o owner %d:%d, want dir %o %d:%d", p, st.Mode, st.Uid, st.Gid, mode, uid, gid)
	}
	if got := time.Unix(st.Mtim.Unix()); !got.Equal(mtime) {
		t.Errorf("%s: mtime %v, want %v (the lower's)", p, got.UTC(), mtime)
	}
}
