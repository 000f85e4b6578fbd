package diff

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ctParseChanges turns "A /x", "C /y", "D /z" lines into Changes.
func ctParseChanges(lines ...string) []Change {
	out := []Change{}
	for _, l := range lines {
		k, p, _ := strings.Cut(l, " ")
		c := Change{Path: p}
		switch k {
		case "A":
			c.Kind = ChangeAdd
		case "C":
			c.Kind = ChangeModify
		case "D":
			c.Kind = ChangeDelete
		default:
			panic("bad change line " + l)
		}
		out = append(out, c)
	}
	return out
}

func ctCheckChanges(t *testing.T, lower, upper string, want ...string) {
	t.Helper()
	got, err := Changes(context.Background(), lower, upper)
	if err != nil {
		t.Fatal(err)
	}
	if got == nil {
		got = []Change{}
	}
	if exp := ctParseChanges(want...); !reflect.DeepEqual(got, exp) {
		t.Fatalf("Changes:\ngot  %v\nwant %v", got, exp)
	}
}

func TestChangesSimple(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctMkdir(t, r, "etc", 0o755)
		ctWriteFile(t, r, "etc/hosts", "mydomain 10.0.0.1", 0o644)
		ctWriteFile(t, r, "etc/profile", "PATH=/usr/bin", 0o644)
		ctWriteFile(t, r, "etc/unchanged", "PATH=/usr/bin", 0o644)
		ctWriteFile(t, r, "etc/unexpected", "#!/bin/sh", 0o644)
	})
	ctWriteFile(t, upper, "etc/hosts", "mydomain 10.0.0.120", 0o644)
	if err := os.Chmod(filepath.Join(upper, "etc/profile"), 0o666); err != nil {
		t.Fatal(err)
	}
	ctMkdir(t, upper, "root", 0o700)
	ctWriteFile(t, upper, "root/.bashrc", "PATH=/usr/sbin:/usr/bin", 0o644)
	ctRemove(t, upper, "etc/unexpected")
	// /etc's mtime changed (an entry was removed): a Modify, so that the
	// exported tar restores it.
	ctCheckChanges(t, lower, upper,
		"C /etc", "C /etc/hosts", "C /etc/profile", "D /etc/unexpected",
		"A /root", "A /root/.bashrc")
}

func TestChangesNoChange(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctMkdir(t, r, "a/b", 0o755)
		ctWriteFile(t, r, "a/b/f", "x", 0o644)
		ctWriteFile(t, r, "empty", "", 0o600)
		ctSymlink(t, r, "a/b/f", "l")
	})
	ctCheckChanges(t, lower, upper)
	// The same tree compared with itself: same inodes, nothing read.
	ctCheckChanges(t, lower, lower)
	// Roots given through symlinks are followed (only the roots).
	links := t.TempDir()
	ctSymlink(t, links, lower, "l")
	ctSymlink(t, links, upper, "u")
	ctWriteFile(t, upper, "a/b/new", "", 0o644)
	ctLchtimes(t, upper, "a/b", ctBaseTime)
	ctCheckChanges(t, filepath.Join(links, "l"), filepath.Join(links, "u"), "A /a/b/new")
}

func TestChangesEmptyLower(t *testing.T) {
	upper := t.TempDir()
	ctMkdir(t, upper, "etc", 0o755)
	ctWriteFile(t, upper, "etc/hosts", "x", 0o644)
	ctWriteFile(t, upper, "etc/profile", "y", 0o644)
	ctMkdir(t, upper, "root", 0o700)
	ctWriteFile(t, upper, "root/.bashrc", "z", 0o644)
	ctCheckChanges(t, "", upper, "A /etc", "A /etc/hosts", "A /etc/profile", "A /root", "A /root/.bashrc")
}

func TestChangesNestedDeletion(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctMkdir(t, r, "d0", 0o755)
		ctMkdir(t, r, "d1/d2", 0o755)
		ctWriteFile(t, r, "d1/d2/f1", "mydomain 10.0.0.1", 0o644)
	})
	ctRemove(t, upper, "d0")
	ctRemove(t, upper, "d1")
	ctCheckChanges(t, lower, upper, "D /d0", "D /d1")
}

func TestChangesRemoveDirectoryTreeWithDash(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctMkdir(t, r, "dir1/dir2/dir3", 0o755)
		ctWriteFile(t, r, "dir1/f1", "f1", 0o644)
		ctWriteFile(t, r, "dir1/dir2/f2", "f2", 0o644)
		ctMkdir(t, r, "dir1-before", 0o755)
		ctWriteFile(t, r, "dir1-before/f2", "f2", 0o644)
		ctMkdir(t, r, "dir1.after", 0o755)
		ctWriteFile(t, r, "dir1.after/f2", "f2", 0o644)
	})
	ctRemove(t, upper, "dir1")
	ctCheckChanges(t, lower, upper, "D /dir1")
}

// A directory replaced by a file is a Delete and an Add (continuity reports
// a Modify; we need the pair so that Export hides the old children).
func TestChangesDirectoryReplacedByFile(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctMkdir(t, r, "dir1/f2", 0o755)
		ctWriteFile(t, r, "dir1/f1", "#####", 0o644)
		ctWriteFile(t, r, "dir1/f2/f3", "#!/bin/sh", 0o644)
	})
	ctWriteFile(t, upper, "dir1/f11", "#New file here", 0o644)
	ctRemove(t, upper, "dir1/f2")
	ctWriteFile(t, upper, "dir1/f2", "Now file", 0o666)
	ctCheckChanges(t, lower, upper, "C /dir1", "A /dir1/f11", "D /dir1/f2", "A /dir1/f2")
}

func TestChangesFileReplacedByDirectory(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctWriteFile(t, r, "dir1", "a file, not a directory", 0o644)
	})
	ctRemove(t, upper, "dir1")
	ctMkdir(t, upper, "dir1/dir2", 0o755)
	ctWriteFile(t, upper, "dir1/dir2/f1", "also a file", 0o644)
	ctCheckChanges(t, lower, upper, "D /dir1", "A /dir1", "A /dir1/dir2", "A /dir1/dir2/f1")
}

// A type change between non-directories is a Modify: the new tar entry
// replaces the old one on any applier.
func TestChangesFileReplacedBySymlink(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctWriteFile(t, r, "x", "content", 0o644)
	})
	ctRemove(t, upper, "x")
	ctSymlink(t, upper, "content", "x") // same size as the file was
	ctLchtimes(t, upper, "x", ctBaseTime)
	ctLchtimes(t, upper, ".", ctBaseTime)
	ctCheckChanges(t, lower, upper, "C /x")
}

func TestChangesParentDirectoryPermission(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctMkdir(t, r, "dir1", 0o700)
		ctMkdir(t, r, "dir2", 0o751)
		ctMkdir(t, r, "dir3", 0o777)
	})
	ctMkdir(t, upper, "dir1/d", 0o700)
	ctWriteFile(t, upper, "dir1/d/f", "irrelevant", 0o644)
	ctWriteFile(t, upper, "dir1/f", "irrelevant", 0o644)
	ctWriteFile(t, upper, "dir2/f", "irrelevant", 0o644)
	ctWriteFile(t, upper, "dir3/f", "irrelevant", 0o644)
	// Restore the parents' mtimes: only the children are new.
	for _, d := range []string{"dir1", "dir2", "dir3"} {
		ctLchtimes(t, upper, d, ctBaseTime)
	}
	ctCheckChanges(t, lower, upper, "A /dir1/d", "A /dir1/d/f", "A /dir1/f", "A /dir2/f", "A /dir3/f")
}

// TestChangesSameSizeSameTime pins the content rule: content is read only
// when size and mtime match and the mtime has no sub-second part (it may
// have been truncated); a same-size rewrite with the exact nanosecond mtime
// restored is not seen, as with moby and continuity.
func TestChangesSameSizeSameTime(t *testing.T) {
	tt := time.Now().Truncate(time.Second)
	t1 := tt.Add(5 * time.Nanosecond)
	t2 := tt.Add(6 * time.Nanosecond)
	files := map[string]struct {
		lower, upper string
		lt, ut       time.Time
	}{
		"/file-modified-time":    {"1", "2", t1, t2},
		"/file-no-change":        {"1", "1", t1, t1},
		"/file-same-time":        {"1", "2", t1, t1}, // not seen: documented limit
		"/file-truncated-time-1": {"1", "1", tt, t1},
		"/file-truncated-time-2": {"1", "2", tt, tt}, // content decides
		"/file-truncated-time-3": {"1", "1", t1, tt},
		"/file-truncated-same":   {"1", "1", tt, tt},
		"/file-truncated-empty":  {"", "", tt, tt},
	}
	lower, upper := ctLowerUpper(t, func(r string) {
		for p, f := range files {
			ctWriteFile(t, r, p, f.lower, 0o644)
		}
	})
	for p, f := range files {
		ctLchtimes(t, lower, p, f.lt)
		ctWriteFile(t, upper, p, f.upper, 0o644)
		ctLchtimes(t, upper, p, f.ut)
	}
	ctCheckChanges(t, lower, upper,
		"C /file-modified-time",
		"C /file-truncated-time-1", "C /file-truncated-time-2", "C /file-truncated-time-3")
}

// buildkit#172: a ctSymlink's own mtime is compared, never its target's.
func TestChangesLchtimes(t *testing.T) {
	for _, mtime := range []time.Time{time.Unix(0, 0), time.Unix(0, 42)} {
		lower, upper := ctLowerUpper(t, func(r string) {
			ctWriteFile(t, r, "foo", "foo", 0o644)
			ctSymlink(t, r, "/foo", "lnk0")
			ctSymlink(t, r, "/foo", "lnk1")
			ctSymlink(t, r, "/foo", "lnk2")
		})
		for _, r := range []string{lower, upper} {
			ctLchtimes(t, r, "lnk0", mtime)
			ctLchtimes(t, r, "lnk1", mtime)
		}
		ctLchtimes(t, upper, "lnk2", mtime)
		// Same length, same mtime, another target.
		ctRemove(t, upper, "lnk1")
		ctSymlink(t, upper, "/bar", "lnk1")
		ctLchtimes(t, upper, "lnk1", mtime)
		ctLchtimes(t, upper, ".", ctBaseTime)
		ctCheckChanges(t, lower, upper, "C /lnk1", "C /lnk2")
	}
}

func TestChangesMetadataOnly(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctWriteFile(t, r, "chmod", "x", 0o644)
		ctWriteFile(t, r, "setuid", "x", 0o755)
		ctWriteFile(t, r, "chown", "x", 0o644)
		ctWriteFile(t, r, "chgrp", "x", 0o644)
		ctWriteFile(t, r, "xattr", "x", 0o644)
		ctWriteFile(t, r, "xattr-value", "x", 0o644)
		ctWriteFile(t, r, "overlay-xattr", "x", 0o644)
		ctMkdir(t, r, "dirmode", 0o755)
		ctMkdir(t, r, "dirowner", 0o755)
		ctWriteFile(t, r, "dirowner/f", "x", 0o644)
		ctSetXattr(t, r, "xattr-value", "user.v", "1")
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(filepath.Join(upper, "chmod"), 0o640))
	must(unix.Chmod(filepath.Join(upper, "setuid"), 0o4755))
	must(os.Lchown(filepath.Join(upper, "chown"), 1000, 0))
	must(os.Lchown(filepath.Join(upper, "chgrp"), 0, 70000))
	must(unix.Chmod(filepath.Join(upper, "dirmode"), 0o1777))
	must(os.Lchown(filepath.Join(upper, "dirowner"), 1, 1))
	ctSetXattr(t, upper, "xattr", "user.new", "1")
	ctSetXattr(t, upper, "xattr-value", "user.v", "2")
	ctSetXattr(t, upper, "overlay-xattr", "trusted.overlay.origin", "x")
	ctSetXattr(t, upper, "overlay-xattr", "user.overlay.redirect", "x")
	// Metadata changes move ctime only: mtimes are as in lower.
	ctCheckChanges(t, lower, upper,
		"C /chgrp", "C /chmod", "C /chown", "C /dirmode", "C /dirowner",
		"C /setuid", "C /xattr", "C /xattr-value")
}

func TestChangesSecurityCapability(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctWriteFile(t, r, "ping", "ELF", 0o755)
	})
	ctSetXattr(t, upper, "ping", "security.capability", string(ctCapNetRaw()))
	ctCheckChanges(t, lower, upper, "C /ping")
}

// ctCapNetRaw is a VFS_CAP_REVISION_2 security.capability value granting
// cap_net_raw (bit 13) permitted and effective.
func ctCapNetRaw() []byte {
	return []byte{
		0x01, 0x00, 0x00, 0x02, // magic: revision 2, effective flag set
		0x00, 0x20, 0x00, 0x00, // permitted[0]: 1<<13
		0x00, 0x00, 0x00, 0x00, // inheritable[0]
		0x00, 0x00, 0x00, 0x00, // permitted[1]
		0x00, 0x00, 0x00, 0x00, // inheritable[1]
	}
}

func TestChangesDeviceNumber(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctMknod(t, r, "null", unix.S_IFCHR|0o666, 1, 3)
		ctMknod(t, r, "same", unix.S_IFCHR|0o666, 1, 5)
		ctMknod(t, r, "blk", unix.S_IFBLK|0o660, 7, 0)
		if err := unix.Mkfifo(filepath.Join(r, "fifo"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	ctRemove(t, upper, "null")
	ctMknod(t, upper, "null", unix.S_IFCHR|0o666, 1, 7)
	ctRemove(t, upper, "blk")
	ctMknod(t, upper, "blk", unix.S_IFBLK|0o660, 7, 1)
	for _, p := range []string{"null", "blk", "."} {
		ctLchtimes(t, upper, p, ctBaseTime)
	}
	ctCheckChanges(t, lower, upper, "C /blk", "C /null")
}

func TestChangesHardlinkUnmodified(t *testing.T) {
	lower, upper := ctLowerUpper(t, func(r string) {
		ctWriteFile(t, r, "a", "shared", 0o644)
		if err := os.Link(filepath.Join(r, "a"), filepath.Join(r, "b")); err != nil {
			t.Fatal(err)
		}
		ctWriteFile(t, r, "c", "lone", 0o644)
	})
	// upper keeps a and b linked (new inode numbers): unchanged. A new link
	// to c raises c's link count and ctime only: c is unchanged, d added.
	if err := os.Link(filepath.Join(upper, "c"), filepath.Join(upper, "d")); err != nil {
		t.Fatal(err)
	}
	ctLchtimes(t, upper, ".", ctBaseTime)
	ctCheckChanges(t, lower, upper, "A /d")

	// Links broken in upper but every attribute equal: still unchanged.
	ctRemove(t, upper, "b")
	ctWriteFile(t, upper, "b", "shared", 0o644)
	ctLchtimes(t, upper, "b", ctBaseTime)
	ctLchtimes(t, upper, ".", ctBaseTime)
	ctCheckChanges(t, lower, upper, "A /d")
}

func TestChangesSortOrder(t *testing.T) {
	upper := t.TempDir()
	for _, d := range []string{"a", "a/b", "a-b", "a.b", "a b", "a/b/c"} {
		ctMkdir(t, upper, d, 0o755)
	}
	ctWriteFile(t, upper, "a/b.c", "", 0o644)
	ctWriteFile(t, upper, "a/b-c", "", 0o644)
	ctWriteFile(t, upper, "B", "", 0o644)
	ctCheckChanges(t, "", upper,
		"A /B", "A /a", "A /a/b", "A /a/b/c", "A /a/b-c", "A /a/b.c",
		"A /a b", "A /a-b", "A /a.b")
}

func TestChangesComparePaths(t *testing.T) {
	paths := []string{"/a.b", "/a/b", "/a", "/a-b", "/a/b/c", "/a/b.c", "/b", "/a/b-c", "/", "/a b"}
	sort.Slice(paths, func(i, j int) bool { return ComparePaths(paths[i], paths[j]) < 0 })
	want := []string{"/", "/a", "/a/b", "/a/b/c", "/a/b-c", "/a/b.c", "/a b", "/a-b", "/a.b", "/b"}
	if !reflect.DeepEqual(paths, want) {
		t.Fatalf("sorted %q, want %q", paths, want)
	}
	for _, p := range want {
		if ComparePaths(p, p) != 0 {
			t.Errorf("ComparePaths(%q, %q) != 0", p, p)
		}
	}
}

func TestChangesSortChanges(t *testing.T) {
	c := ctParseChanges("A /a.b", "A /x", "A /a/b", "D /x", "C /a")
	SortChanges(c)
	want := ctParseChanges("C /a", "A /a/b", "A /a.b", "D /x", "A /x")
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("SortChanges = %v, want %v", c, want)
	}
}

func TestChangesCanceled(t *testing.T) {
	upper := t.TempDir()
	for i := 0; i < 600; i++ {
		ctWriteFile(t, upper, fmt.Sprintf("d%d/f", i%10), "", 0o644)
		ctWriteFile(t, upper, fmt.Sprintf("f%03d", i), "", 0o644)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Changes(ctx, "", upper); !errors.Is(err, context.Canceled) {
		t.Fatalf("Changes with canceled context: %v, want context.Canceled", err)
	}
	if _, err := Changes(ctx, upper, upper); !errors.Is(err, context.Canceled) {
		t.Fatalf("Changes with canceled context: %v, want context.Canceled", err)
	}
}

func TestChangesBadRoots(t *testing.T) {
	dir := t.TempDir()
	ctWriteFile(t, dir, "f", "", 0o644)
	ctx := context.Background()
	if _, err := Changes(ctx, "", filepath.Join(dir, "missing")); err == nil {
		t.Error("missing upper: no error")
	}
	if _, err := Changes(ctx, filepath.Join(dir, "missing"), dir); err == nil {
		t.Error("missing lower: no error")
	}
	if _, err := Changes(ctx, "", filepath.Join(dir, "f")); err == nil {
		t.Error("upper is a file: no error")
	}
}

func TestChangesString(t *testing.T) {
	if s := (Change{Path: "/x", Kind: ChangeDelete}).String(); s != "D /x" {
		t.Fatalf("String = %q", s)
	}
}
