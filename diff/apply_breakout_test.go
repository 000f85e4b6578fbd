package diff

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A hostile-tar case: a lower tree, a tar, and what must come of it. Every
// case runs with canaries beside the root; whatever it expects, nothing
// outside the root may change.
type breakoutCase struct {
	name string
	// lower prepares the root (the parent layer); out is the absolute
	// path of the canary directory beside the root.
	lower func(t *testing.T, root, out string)
	ents  func(out string) []atEnt
	raw   func(t *testing.T, out string) []byte // instead of ents
	opts  func(o *ApplyOptions)
	// wantErr is a substring of the expected error; "" expects success
	// with a result neutralised inside the root, which check verifies.
	wantErr string
	check   func(t *testing.T, root, out string)
}

// breakoutEnv is a temp dir holding the layer root and, beside it, the
// canaries that symlinks in hostile tars point at.
type breakoutEnv struct {
	dir, root, out string
}

var canaryTime = time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)

func newBreakoutEnv(t testing.TB) breakoutEnv {
	t.Helper()
	dir := t.TempDir()
	e := breakoutEnv{dir: dir, root: filepath.Join(dir, "root"), out: filepath.Join(dir, "outside")}
	atMust(t, os.Mkdir(e.root, 0o755))
	for _, d := range []string{"", "etc", "dir", "dir/sub"} {
		atMust(t, os.MkdirAll(filepath.Join(e.out, d), 0o755))
	}
	for name, c := range map[string]string{"canary": "canary", "etc/passwd": "root:x:0:0", "dir/inner": "inner", "dir/sub/deep": "deep", "perm400": "..."} {
		atMust(t, os.WriteFile(filepath.Join(e.out, name), []byte(c), 0o644))
	}
	atMust(t, os.Chmod(filepath.Join(e.out, "perm400"), 0o400))
	atMust(t, os.Symlink("canary", filepath.Join(e.out, "canary-link")))
	// Old times everywhere, so that any touch shows.
	filepath.WalkDir(e.out, func(p string, _ fs.DirEntry, _ error) error {
		ts := []unix.Timespec{unix.NsecToTimespec(canaryTime.UnixNano()), unix.NsecToTimespec(canaryTime.UnixNano())}
		unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
		return nil
	})
	return e
}

// snapshot describes everything in the env outside the root: names,
// types, modes, owners, link counts, times, content, link targets, xattrs.
func (e breakoutEnv) snapshot(t testing.TB) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == e.root {
			return filepath.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		line := fmt.Sprintf("%s mode=%o uid=%d gid=%d nlink=%d size=%d mtime=%d.%d", strings.TrimPrefix(p, e.dir), st.Mode, st.Uid, st.Gid, st.Nlink, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
		if p != e.dir { // the env dir's own mtime changes when the root changes
			line += fmt.Sprintf(" ctime=%d.%d", st.Ctim.Sec, st.Ctim.Nsec)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" sha=%x", sha256.Sum256(b))
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			line += " -> " + l
		}
		buf := make([]byte, 4096)
		n, _ := unix.Llistxattr(p, buf)
		line += fmt.Sprintf(" xattrs=%q", buf[:max(n, 0)])
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func (e breakoutEnv) checkIntact(t testing.TB, before string) {
	t.Helper()
	if after := e.snapshot(t); after != before {
		t.Fatalf("something outside the root changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func wantSameFile(t *testing.T, a, b string) {
	t.Helper()
	sa, sb := atLstat(t, a), atLstat(t, b)
	if sa.Dev != sb.Dev || sa.Ino != sb.Ino {
		t.Fatalf("%s and %s are not the same file", a, b)
	}
}

func breakoutCases() []breakoutCase {
	lowerOf := func(items ...string) func(t *testing.T, root, out string) {
		return func(t *testing.T, root, out string) {
			resolved := make([]string, len(items))
			for i, it := range items {
				resolved[i] = strings.ReplaceAll(it, "$OUT", out)
			}
			atMkLower(resolved...)(t, root)
		}
	}
	static := func(es ...atEnt) func(string) []atEnt { return func(string) []atEnt { return es } }
	unbroken := func(t *testing.T, root, _ string) {
		atWantContent(t, filepath.Join(root, "etc/unbroken"), "unbroken")
	}
	sameAsPasswd := func(p string) func(t *testing.T, root, _ string) {
		return func(t *testing.T, root, _ string) {
			wantSameFile(t, filepath.Join(root, p), filepath.Join(root, "etc/passwd"))
		}
	}
	passwd := []atEnt{atDir("etc", 0o770), atFile("/etc/passwd", "inside", 0o644)}
	withPasswd := func(es ...atEnt) func(string) []atEnt {
		return static(append(append([]atEnt{}, passwd...), es...)...)
	}
	lowerPasswd := lowerOf("f:etc/passwd=inside")

	return []breakoutCase{
		// The cases of containerd's TestBreakouts (pkg/archive), with our
		// own expectations where our rules are stricter.
		{name: "SymlinkAbsolute", ents: static(atDir("etc", 0o755), atSymlink("localetc", "/etc"), atFile("/localetc/unbroken", "unbroken", 0o644)), check: unbroken},
		{name: "SymlinkUpAndOut", ents: static(atDir("etc", 0o755), atDir("dummy", 0o755), atSymlink("localetc", "/dummy/../etc"), atFile("/localetc/unbroken", "unbroken", 0o644)), check: unbroken},
		{name: "SymlinkMultipleAbsolute", ents: static(atDir("etc", 0o755), atDir("dummy", 0o755), atSymlink("/dummy/etc", "/etc"), atSymlink("localetc", "/dummy/etc"), atFile("/dummy/etc/unbroken", "unbroken", 0o644)), check: unbroken},
		{name: "SymlinkMultipleRelative", ents: static(atDir("etc", 0o755), atDir("dummy", 0o755), atSymlink("/dummy/etc", "/etc"), atSymlink("localetc", "./dummy/etc"), atFile("/dummy/etc/unbroken", "unbroken", 0o644)), check: unbroken},
		{name: "SymlinkEmptyFile", ents: static(atDir("etc", 0o755), atFile("etc/emptied", "notempty", 0o644), atSymlink("localetc", "/etc"), atFile("/localetc/emptied", "", 0o644)),
			check: func(t *testing.T, root, _ string) { atWantContent(t, filepath.Join(root, "etc/emptied"), "") }},
		{name: "HardlinkRelative", ents: withPasswd(atDir("breakouts", 0o755), atSymlink("breakouts/d1", "../../etc"), atLink("breakouts/mypasswd", "/breakouts/d1/passwd")), check: sameAsPasswd("breakouts/mypasswd")},
		{name: "HardlinkDownAndOut", ents: withPasswd(atDir("breakouts", 0o755), atDir("downandout", 0o755), atSymlink("breakouts/d1", "../downandout/../../etc"), atLink("breakouts/mypasswd", "/breakouts/d1/passwd")), check: sameAsPasswd("breakouts/mypasswd")},
		{name: "HardlinkAbsolute", ents: withPasswd(atSymlink("localetc", "/etc"), atLink("localpasswd", "/localetc/passwd")), check: sameAsPasswd("localpasswd")},
		{name: "HardlinkRelativeLong", ents: withPasswd(atSymlink("localetc", "../../../../../../../etc"), atLink("localpasswd", "/localetc/passwd")), check: sameAsPasswd("localpasswd")},
		// "upandout" does not exist, and a path through a missing
		// directory does not resolve (the kernel agrees): no link.
		{name: "HardlinkRelativeUpAndOut", ents: withPasswd(atSymlink("localetc", "upandout/../../../etc"), atLink("localpasswd", "/localetc/passwd")), wantErr: `hardlink target "/localetc/passwd" does not exist`},
		// A link target that lexically leaves the root is refused, not clamped.
		{name: "HardlinkDirectRelative", ents: withPasswd(atLink("localpasswd", "../../../../../etc/passwd")), wantErr: `hardlink target "../../../../../etc/passwd": path climbs above the layer root`},
		{name: "HardlinkDirectAbsolute", ents: withPasswd(atLink("localpasswd", "/etc/passwd")), check: sameAsPasswd("localpasswd")},
		{name: "SymlinkParentDirectory", ents: withPasswd(atSymlink("..", "/etc/"), atLink("localpasswd", "/etc/passwd")), wantErr: `entry "..": path climbs above the layer root`},
		{name: "SymlinkEmptyFilename", ents: withPasswd(atSymlink("", "/etc/"), atLink("localpasswd", "/etc/passwd")), wantErr: `entry "": names the layer root but is not a directory`},
		{name: "SymlinkParentRelative", ents: withPasswd(atSymlink("localetc/sub/..", "/etc/"), atLink("/localetc/localpasswd", "/etc/passwd")),
			check: func(t *testing.T, root, out string) {
				// localetc -> /etc, which is root/etc: the host never sees it.
				atWantLink(t, filepath.Join(root, "localetc"), "/etc/")
				sameAsPasswd("etc/localpasswd")(t, root, out)
			}},
		{name: "SymlinkSlashEnded", ents: withPasswd(atDir("localetc/", 0o770), atLink("/localetc/localpasswd", "/etc/passwd")), check: sameAsPasswd("localetc/localpasswd")},
		{name: "SymlinkOverrideDirectory", lower: lowerOf("f:etc/passwd=inside", "d:localetc"), ents: static(atSymlink("localetc", "/etc"), atLink("/localetc/localpasswd", "/etc/passwd")),
			check: func(t *testing.T, root, out string) {
				atWantLink(t, filepath.Join(root, "localetc"), "/etc")
				sameAsPasswd("etc/localpasswd")(t, root, out)
			}},
		{name: "SymlinkOverrideDirectoryRelative", lower: lowerOf("f:etc/passwd=inside", "d:localetc"), ents: static(atSymlink("localetc", "../../etc"), atLink("/localetc/localpasswd", "/etc/passwd")),
			check: func(t *testing.T, root, out string) {
				atWantLink(t, filepath.Join(root, "localetc"), "../../etc")
				sameAsPasswd("etc/localpasswd")(t, root, out)
			}},
		{name: "DirectoryOverrideSymlink", lower: lowerOf("f:etc/passwd=inside", "l:localetc->/etc"), ents: static(atDir("/localetc/", 0o755), atLink("/localetc/localpasswd", "/etc/passwd")),
			check: func(t *testing.T, root, out string) {
				atWantMode(t, filepath.Join(root, "localetc"), unix.S_IFDIR|0o755)
				sameAsPasswd("localetc/localpasswd")(t, root, out)
			}},
		{name: "DirectoryOverrideSymlinkAndHardlink",
			lower: func(t *testing.T, root, out string) {
				lowerOf("f:etc/passwd=inside", "l:localetc->etc")(t, root, out)
				atMust(t, os.Link(filepath.Join(root, "etc/passwd"), filepath.Join(root, "etc/localpasswd")))
			},
			ents: static(atDir("/localetc/", 0o755), atFile("/localetc/localpasswd", "different", 0o644)),
			check: func(t *testing.T, root, _ string) {
				atWantContent(t, filepath.Join(root, "localetc/localpasswd"), "different")
				atWantContent(t, filepath.Join(root, "etc/passwd"), "inside")
			}},
		{name: "WhiteoutRootParent", lower: lowerPasswd, ents: static(atFile(".wh...", "", 0o644)), wantErr: `whiteout ".wh..." names no entry`},
		{name: "WhiteoutParent", lower: lowerPasswd, ents: static(atFile("etc/.wh...", "", 0o644)), wantErr: `whiteout ".wh..." names no entry`},
		{name: "WhiteoutRoot", lower: lowerPasswd, ents: static(atFile(".wh..", "", 0o644)), wantErr: `whiteout ".wh.." names no entry`},
		{name: "WhiteoutCurrentDirectory", lower: lowerPasswd, ents: static(atFile("etc/.wh..", "", 0o644)), wantErr: `whiteout ".wh.." names no entry`},
		{name: "WhiteoutEmpty", lower: lowerPasswd, ents: static(atFile("etc/.wh.", "", 0o644)), wantErr: `whiteout ".wh." names no entry`},
		{name: "WhiteoutSymlink", lower: lowerOf("f:etc/passwd=all users", "l:localetc->/etc"), ents: static(atWh("localetc")),
			check: func(t *testing.T, root, _ string) {
				atWantContent(t, filepath.Join(root, "etc/passwd"), "all users")
				atWantMissing(t, filepath.Join(root, "localetc"))
			}},
		{name: "WhiteoutSymlinkPath", lower: lowerOf("f:etc/passwd=all users", "f:etc/whitedout=x", "l:localetc->/etc"), ents: static(atFile("localetc/.wh.whitedout", "", 0o644)),
			check: func(t *testing.T, root, _ string) {
				atWantContent(t, filepath.Join(root, "etc/passwd"), "all users")
				atWantMissing(t, filepath.Join(root, "etc/whitedout"))
			}},
		// containerd accepts this and makes a directory ".wh.etc"; we
		// refuse it, since no applier could ever read such a layer back.
		{name: "WhiteoutDirectoryName", lower: lowerOf("f:etc/passwd=all users", "l:localetc->/etc"), ents: static(atFile(".wh.etc/somefile", "non-empty", 0o644)),
			wantErr: `entry ".wh.etc/somefile": ".wh.etc" is a whiteout name and cannot be a directory`},
		{name: "WhiteoutDeadSymlinkParent", lower: lowerOf("f:etc/passwd=all users", "l:localetc->/dne"), ents: static(atFile("localetc/.wh.etc", "", 0o644)),
			check: func(t *testing.T, root, _ string) { atWantContent(t, filepath.Join(root, "etc/passwd"), "all users") }},
		{name: "WhiteoutRelativePath", lower: lowerOf("f:etc/passwd=all users", "l:localetc->/dne"), ents: static(atFile("dne/../.wh.etc", "", 0o644)),
			check: func(t *testing.T, root, _ string) { atWantMissing(t, filepath.Join(root, "etc")) }},
		{name: "HardlinkSymlinkBeforeCreateTarget", ents: static(atDir("etc", 0o770), atSymlink("localpasswd", "/etc/passwd"), atLink("localpasswd-dup", "localpasswd"), atFile("/etc/passwd", "after", 0o644)),
			check: func(t *testing.T, root, _ string) {
				wantSameFile(t, filepath.Join(root, "localpasswd"), filepath.Join(root, "localpasswd-dup"))
				atWantLink(t, filepath.Join(root, "localpasswd-dup"), "/etc/passwd")
			}},
		{name: "HardlinkSymlinkRelative", ents: withPasswd(atSymlink("passwdlink", "../../../../../etc/passwd"), atLink("localpasswd", "/passwdlink")),
			check: func(t *testing.T, root, _ string) {
				wantSameFile(t, filepath.Join(root, "localpasswd"), filepath.Join(root, "passwdlink"))
				atWantLink(t, filepath.Join(root, "localpasswd"), "../../../../../etc/passwd")
			}},
		{name: "HardlinkSymlinkAbsolute", ents: withPasswd(atSymlink("passwdlink", "/etc/passwd"), atLink("localpasswd", "/passwdlink")),
			check: func(t *testing.T, root, _ string) {
				wantSameFile(t, filepath.Join(root, "localpasswd"), filepath.Join(root, "passwdlink"))
			}},
		{name: "HardlinkSymlinkChmod", ents: func(out string) []atEnt {
			ep := filepath.Join(out, "also-exists-outside-root")
			return []atEnt{atSymlink(ep, filepath.Join(out, "perm400")), atLink("sketchylink", ep)}
		}, check: func(t *testing.T, root, out string) {
			atWantLink(t, filepath.Join(root, "sketchylink"), filepath.Join(out, "perm400"))
		}},

		// Path traversal and absolute names.
		{name: "DotDotFile", ents: static(atFile("../escape", "x", 0o644)), wantErr: `entry "../escape": path climbs above the layer root`},
		{name: "DotDotInside", ents: static(atFile("a/../../escape", "x", 0o644)), wantErr: `entry "a/../../escape": path climbs above the layer root`},
		{name: "SlashDotDot", ents: static(atFile("/../../outside/canary", "x", 0o644)), wantErr: `path climbs above the layer root`},
		{name: "AbsoluteName", ents: func(out string) []atEnt { return []atEnt{atFile(filepath.Join(out, "canary"), "pwned", 0o644)} },
			check: func(t *testing.T, root, out string) { atWantContent(t, filepath.Join(root, out, "canary"), "pwned") }},
		{name: "DirUpAndBack", ents: static(atFile("a/b/../../c", "c", 0o644)),
			check: func(t *testing.T, root, _ string) { atWantContent(t, filepath.Join(root, "c"), "c") }},

		// Symlink, then write through it, in the same layer.
		{name: "WriteThroughAbsoluteSymlink", ents: func(out string) []atEnt {
			return []atEnt{atSymlink("esc", out), atFile("esc/canary", "pwned", 0o644)}
		}, wantErr: `entry "esc/canary": parent directory`},
		{name: "WriteThroughRelativeSymlink", ents: static(atSymlink("esc", "../../../../outside"), atFile("esc/canary", "pwned", 0o644)), wantErr: `entry "esc/canary": parent directory`},
		{name: "WriteThroughSymlinkToRoot", ents: static(atSymlink("esc", "../../../.."), atFile("esc/x", "x", 0o644)),
			check: func(t *testing.T, root, _ string) { atWantContent(t, filepath.Join(root, "x"), "x") }},
		{name: "DirThroughSymlink", ents: func(out string) []atEnt {
			return []atEnt{atSymlink("esc", out+"/dir"), atDir("esc/sub", 0o777), atDir("esc/newdir", 0o777)}
		}, wantErr: `entry "esc/sub": parent directory`},
		{name: "FileOverSymlinkToOutsideFile", ents: func(out string) []atEnt {
			return []atEnt{atSymlink("f", out+"/canary"), atFile("f", "pwned", 0o666)}
		}, check: func(t *testing.T, root, _ string) { atWantContent(t, filepath.Join(root, "f"), "pwned") }},
		{name: "SymlinkReplacedDirCacheInvalidated", ents: static(atDir("b", 0o755), atDir("a", 0o755), atFile("a/x", "x", 0o644), atSymlink("a", "/b"), atFile("a/y", "y", 0o644)),
			check: func(t *testing.T, root, _ string) {
				atWantLink(t, filepath.Join(root, "a"), "/b")
				atWantContent(t, filepath.Join(root, "b/y"), "y")
			}},
		{name: "SymlinkReplacedDirToOutside", ents: func(out string) []atEnt {
			return []atEnt{atDir("a", 0o755), atFile("a/x", "x", 0o644), atSymlink("a", out), atFile("a/canary", "pwned", 0o644)}
		}, wantErr: `entry "a/canary": parent directory`},

		// Across layers: lower symlinks placed in the root.
		{name: "LowerAbsoluteSymlinkDir", lower: lowerOf("l:esc->$OUT"), ents: static(atFile("esc/canary", "pwned", 0o644)), wantErr: `entry "esc/canary": parent directory`},
		{name: "LowerRelativeSymlinkDir", lower: lowerOf("l:esc->../../.."), ents: static(atFile("esc/canary", "pwned", 0o644)),
			check: func(t *testing.T, root, _ string) {
				atWantContent(t, filepath.Join(root, "canary"), "pwned")
				atWantLink(t, filepath.Join(root, "esc"), "../../..")
			}},
		{name: "LowerSymlinkDeep", lower: lowerOf("d:a", "l:a/b->../../outside/dir"), ents: static(atFile("a/b/sub/deep", "pwned", 0o644)), wantErr: `parent directory`},
		{name: "LowerSymlinkToOutsideFile", lower: lowerOf("l:passwd->$OUT/etc/passwd"), ents: static(withMeta(atFile("passwd", "pwned", 0o644))),
			check: func(t *testing.T, root, _ string) { atWantContent(t, filepath.Join(root, "passwd"), "pwned") }},
		{name: "LowerSymlinkDirReplacedByDir", lower: lowerOf("l:d->$OUT/dir"), ents: static(withMeta(atDir("d", 0o777)), atFile("d/inner", "mine", 0o644)),
			check: func(t *testing.T, root, _ string) { atWantContent(t, filepath.Join(root, "d/inner"), "mine") }},
		{name: "SymlinkAttrsNotFollowed", lower: lowerOf("f:x=x"), ents: func(out string) []atEnt {
			return []atEnt{withMeta(atSymlink("l", out+"/canary")), withMeta(atSymlink("l2", "../../outside/canary"))}
		}, check: func(t *testing.T, root, out string) { atWantLink(t, filepath.Join(root, "l"), out+"/canary") }},
		{name: "DeviceOverSymlink", lower: lowerOf("l:dev->$OUT/canary"), ents: static(withMeta(atDev("dev", tar.TypeFifo, 0, 0))),
			check: func(t *testing.T, root, _ string) { atWantMode(t, filepath.Join(root, "dev"), unix.S_IFIFO|0o640) }},

		// Hardlinks that try to reach the host.
		{name: "HardlinkHostPasswd", ents: static(atLink("p", "/etc/passwd")), wantErr: `hardlink target "/etc/passwd" does not exist`},
		{name: "HardlinkOutsideAbsolute", ents: func(out string) []atEnt { return []atEnt{atLink("p", out+"/canary")} }, wantErr: `does not exist`},
		{name: "HardlinkDotDot", ents: static(atLink("p", "../x")), wantErr: `hardlink target "../x": path climbs above the layer root`},
		{name: "HardlinkThroughLowerSymlink", lower: lowerOf("l:esc->$OUT"), ents: static(atLink("p", "esc/canary")), wantErr: `hardlink target "esc/canary" does not exist`},
		{name: "HardlinkToLowerSymlinkToOutside", lower: lowerOf("l:esc->$OUT/canary"), ents: static(atLink("p", "esc"), atFile("p", "replaced", 0o644)),
			check: func(t *testing.T, root, out string) {
				atWantLink(t, filepath.Join(root, "esc"), out+"/canary")
				atWantContent(t, filepath.Join(root, "p"), "replaced")
			}},
		{name: "HardlinkOverSymlinkToOutside", lower: lowerOf("l:sym->$OUT/canary"), ents: static(atFile("t", "t", 0o644), atLink("sym", "t")),
			check: func(t *testing.T, root, _ string) { atWantContent(t, filepath.Join(root, "sym"), "t") }},

		// Whiteouts that try to leave.
		{name: "WhiteoutDotDot", ents: static(atFile("../.wh.canary", "", 0o644)), wantErr: `path climbs above the layer root`},
		{name: "WhiteoutThroughAbsoluteSymlink", lower: lowerOf("l:esc->$OUT"), ents: static(atFile("esc/.wh.canary", "", 0o644), atFile("esc/dir/.wh.inner", "", 0o644))},
		{name: "WhiteoutThroughRelativeSymlink", lower: lowerOf("l:esc->../../outside"), ents: static(atFile("esc/.wh.canary", "", 0o644))},
		{name: "OpaqueThroughSymlink", lower: lowerOf("l:esc->$OUT/dir", "l:esc2->../../outside/dir"), ents: static(atOpq("esc"), atOpq("esc2"))},
		{name: "WhiteoutOfSymlinkToOutsideDir", lower: lowerOf("l:esc->$OUT/dir"), ents: static(atWh("esc")),
			check: func(t *testing.T, root, _ string) { atWantMissing(t, filepath.Join(root, "esc")) }},
		{name: "OpaqueRootKeepsInside", lower: lowerOf("l:esc->$OUT/dir", "f:old=o"), ents: static(atFile("new", "n", 0o644), atOpq("")),
			check: func(t *testing.T, root, _ string) {
				atWantMissing(t, filepath.Join(root, "esc"))
				atWantMissing(t, filepath.Join(root, "old"))
				atWantContent(t, filepath.Join(root, "new"), "n")
			}},

		// Devices and broken data.
		{name: "CharDeviceRejected", ents: static(atDev("mem", tar.TypeChar, 1, 1)), opts: func(o *ApplyOptions) { o.RejectDevices = true }, wantErr: `entry "mem": device nodes are not allowed`},
		{name: "BlockDeviceRejected", ents: static(atDev("sda", tar.TypeBlock, 8, 0)), opts: func(o *ApplyOptions) { o.RejectDevices = true }, wantErr: `entry "sda": device nodes are not allowed`},
		{name: "FakeWhiteoutDeviceOverlay", ents: static(atDev("x", tar.TypeChar, 0, 0)), opts: func(o *ApplyOptions) { o.Whiteouts = OverlayWhiteouts(false) }, wantErr: `0/0 character device`},
		{name: "OverlayWhiteoutThroughSymlink", lower: lowerOf("l:esc->$OUT"), ents: static(atFile("esc/.wh.canary", "", 0o644)), opts: func(o *ApplyOptions) { o.Whiteouts = OverlayWhiteouts(false) }, wantErr: `whiteout parent directory`},
		{name: "OverlayOpaqueThroughSymlink", lower: lowerOf("l:esc->$OUT/dir"), ents: static(atOpq("esc")), opts: func(o *ApplyOptions) { o.Whiteouts = OverlayWhiteouts(false) }, wantErr: `opaque directory`},
		{name: "HugeDeclaredSize", raw: func(t *testing.T, out string) []byte {
			var b bytes.Buffer
			tw := tar.NewWriter(&b)
			atMust(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "huge", Mode: 0o644, Size: 1<<62 + 1}))
			tw.Write(bytes.Repeat([]byte("A"), 100000))
			return b.Bytes()
		}, wantErr: `entry "huge": truncated data: unexpected EOF`},
		{name: "TruncatedAfterSymlink", raw: func(t *testing.T, out string) []byte {
			b := atBuildTar(t, atSymlink("esc", out), atFile("esc/canary", strings.Repeat("x", 2000), 0o644))
			return b[:len(b)-1024-600]
		}, wantErr: `entry "esc/canary": `}, // truncated data or parent directory: either refuses it
		{name: "NegativeOwner", ents: static(atWith(atFile("f", "x", 0o644), func(h *tar.Header) { h.Uid = -1 })), wantErr: `invalid owner`},
		{name: "RootAsFile", ents: static(atFile(".", "x", 0o644)), wantErr: `names the layer root`},
		{name: "RootAsSymlink", ents: func(out string) []atEnt { return []atEnt{atSymlink(".", out)} }, wantErr: `names the layer root`},
		{name: "AUFSMetaSkipped", ents: static(atDir(".wh..wh.plnk", 0o700), atFile(".wh..wh.plnk/1.2", "x", 0o644), atFile(".wh..wh.aufs", "", 0o644)),
			check: func(t *testing.T, root, _ string) {
				atWantMissing(t, filepath.Join(root, ".wh..wh.plnk"))
				atWantMissing(t, filepath.Join(root, ".wh..wh.aufs"))
			}},
	}
}

// withMeta gives an entry owner, mode bits, xattrs and times, so that every
// attribute call runs on it.
func withMeta(e atEnt) atEnt {
	e = atWith(e, func(h *tar.Header) { h.Uid, h.Gid = 1234, 5678 })
	return atWithXattr(e, "trusted.meta", "m")
}

func TestApplyBreakouts(t *testing.T) {
	atRequireRoot(t)
	for _, c := range breakoutCases() {
		t.Run(c.name, func(t *testing.T) {
			atResolvers(t, func(t *testing.T, opts ApplyOptions) {
				runBreakout(t, c, opts)
			})
		})
	}
}

func runBreakout(t *testing.T, c breakoutCase, opts ApplyOptions) {
	env := newBreakoutEnv(t)
	if c.lower != nil {
		c.lower(t, env.root, env.out)
	}
	before := env.snapshot(t)
	var data []byte
	if c.raw != nil {
		data = c.raw(t, env.out)
	} else {
		data = atBuildTar(t, c.ents(env.out)...)
	}
	if c.opts != nil {
		c.opts(&opts)
	}
	_, err := Apply(context.Background(), env.root, bytes.NewReader(data), opts)
	env.checkIntact(t, before)
	if c.wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Fatalf("err = %v, want one containing %q", err, c.wantErr)
		}
		// One line, and the operation left to the caller, who names
		// the layer once ("apply layer ID: ...").
		if strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "apply layer") {
			t.Fatalf("err %q is not one line without the operation", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("err = %v, want success", err)
	}
	if c.check != nil {
		c.check(t, env.root, env.out)
	}
	// Whatever resolved, it resolved inside: every path in the root must
	// stay inside when walked without following symlinks.
	if err := filepath.WalkDir(env.root, func(p string, _ fs.DirEntry, err error) error { return err }); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
}
