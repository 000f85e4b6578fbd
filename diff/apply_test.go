package diff

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// atEnt is one tar entry a test writes: a header and, for regular files, a
// body.
type atEnt struct {
	hdr  tar.Header
	body []byte
}

var atTime = time.Date(2021, 3, 4, 5, 6, 7, 123456789, time.UTC)

func atFile(name, body string, mode int64) atEnt {
	return atEnt{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: atTime, Format: tar.FormatPAX}, body: []byte(body)}
}

func atDir(name string, mode int64) atEnt {
	return atEnt{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: atTime, Format: tar.FormatPAX}}
}

func atSymlink(name, target string) atEnt {
	return atEnt{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: atTime, Format: tar.FormatPAX}}
}

func atLink(name, target string) atEnt {
	return atEnt{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: atTime, Format: tar.FormatPAX}}
}

func atDev(name string, typ byte, major, minor int64) atEnt {
	return atEnt{hdr: tar.Header{Typeflag: typ, Name: name, Mode: 0o640, Devmajor: major, Devminor: minor, ModTime: atTime, Format: tar.FormatPAX}}
}

// atWh is a whiteout entry for name ("dir/x" -> "dir/.wh.x").
func atWh(name string) atEnt {
	d, b := filepath.Split(name)
	return atFile(d+WhiteoutPrefix+b, "", 0o644)
}

func atOpq(dir string) atEnt { return atFile(filepath.Join(dir, WhiteoutOpaqueDir), "", 0o644) }

func atWith(e atEnt, f func(h *tar.Header)) atEnt { f(&e.hdr); return e }

func atWithXattr(e atEnt, kv ...string) atEnt {
	if e.hdr.PAXRecords == nil {
		e.hdr.PAXRecords = map[string]string{}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		e.hdr.PAXRecords[paxXattrPrefix+kv[i]] = kv[i+1]
	}
	return e
}

// atBuildTar writes entries atWith archive/tar. A header archive/tar refuses
// fails the test.
func atBuildTar(t testing.TB, ents ...atEnt) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("write header %q: %v", h.Name, err)
		}
		if len(e.body) > 0 {
			if _, err := tw.Write(e.body); err != nil {
				t.Fatalf("write body %q: %v", h.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// atResolvers runs f with openat2 (with and without file writers) and with
// the userspace walk.
func atResolvers(t *testing.T, f func(t *testing.T, opts ApplyOptions)) {
	t.Run("openat2", func(t *testing.T) {
		fd, err := unix.Open("/", unix.O_PATH, 0)
		if err != nil {
			t.Fatal(err)
		}
		ok := haveOpenat2(fd)
		unix.Close(fd)
		if !ok {
			t.Skip("openat2 is not available on this kernel")
		}
		f(t, ApplyOptions{})
	})
	// The walk runs without file writers, and so does one openat2 run:
	// both the parallel and the serial path see every case.
	t.Run("walk", func(t *testing.T) { f(t, ApplyOptions{noOpenat2: true, noWriters: true}) })
	t.Run("serial", func(t *testing.T) { f(t, ApplyOptions{noWriters: true}) })
}

func atRequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: owners, device nodes and trusted xattrs")
	}
}

// atLower is a tree set up in the root before the layer is applied: the
// content of the parent layer for the delete format.
type atLower func(t *testing.T, root string)

func atMkLower(items ...string) atLower {
	// items: "d:path", "f:path=content", "l:path->target"
	return func(t *testing.T, root string) {
		t.Helper()
		for _, it := range items {
			kind, rest := it[:1], it[2:]
			switch kind {
			case "d":
				atMust(t, os.MkdirAll(filepath.Join(root, rest), 0o755))
			case "f":
				p, c, _ := strings.Cut(rest, "=")
				atMust(t, os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755))
				atMust(t, os.WriteFile(filepath.Join(root, p), []byte(c), 0o644))
			case "l":
				p, target, _ := strings.Cut(rest, "->")
				atMust(t, os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755))
				atMust(t, os.Symlink(target, filepath.Join(root, p)))
			default:
				t.Fatalf("bad lower item %q", it)
			}
		}
	}
}

func atMust(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func atLstat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("atLstat %s: %v", p, err)
	}
	return &st
}

func atWantContent(t *testing.T, p, want string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	if string(b) != want {
		t.Fatalf("%s = %q, want %q", p, b, want)
	}
}

func atWantMissing(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s: want missing, got %v", p, err)
	}
}

func atWantLink(t *testing.T, p, target string) {
	t.Helper()
	got, err := os.Readlink(p)
	if err != nil {
		t.Fatalf("readlink %s: %v", p, err)
	}
	if got != target {
		t.Fatalf("%s -> %q, want %q", p, got, target)
	}
}

func atWantMode(t *testing.T, p string, mode uint32) {
	t.Helper()
	if st := atLstat(t, p); st.Mode != mode {
		t.Fatalf("%s mode = %o, want %o", p, st.Mode, mode)
	}
}

func atWantXattr(t *testing.T, p, name, value string) {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", p, name, err)
	}
	if string(buf[:n]) != value {
		t.Fatalf("%s xattr %s = %q, want %q", p, name, buf[:n], value)
	}
}

func atWantNoXattr(t *testing.T, p, name string) {
	t.Helper()
	if _, err := unix.Lgetxattr(p, name, nil); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("%s xattr %s: want none, got %v", p, name, err)
	}
}

func atApply(t *testing.T, root string, data []byte, opts ApplyOptions) (ApplyResult, error) {
	t.Helper()
	return Apply(context.Background(), root, bytes.NewReader(data), opts)
}

// atCapV2 is a valid VFS_CAP_REVISION_2 security.capability value granting
// cap_net_bind_service (bit 10) permitted+effective.
var atCapV2 = string([]byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

func TestApplyFunctional(t *testing.T) {
	atRequireRoot(t)
	pre1970 := time.Unix(-1234567890, 987654321)
	post2038 := time.Date(2100, 1, 2, 3, 4, 5, 6, time.UTC)
	longName := strings.Repeat("d", 120) + "/" + strings.Repeat("f", 200)
	unicode := "ünïcødé/日本語ファイル-🙂"

	cases := []struct {
		name    string
		lower   atLower
		ents    []atEnt
		opts    func(o *ApplyOptions)
		wantErr string
		check   func(t *testing.T, root string, warns []string)
	}{
		{
			name: "every entry type",
			ents: []atEnt{
				atDir("d", 0o755), atFile("d/f", "hello", 0o644), atSymlink("d/l", "f"),
				atLink("d/h", "d/f"), atDev("d/fifo", tar.TypeFifo, 0, 0),
				atDev("d/null", tar.TypeChar, 1, 3), atDev("d/blk", tar.TypeBlock, 7, 200),
			},
			check: func(t *testing.T, root string, _ []string) {
				atWantContent(t, filepath.Join(root, "d/f"), "hello")
				atWantLink(t, filepath.Join(root, "d/l"), "f")
				a, b := atLstat(t, filepath.Join(root, "d/f")), atLstat(t, filepath.Join(root, "d/h"))
				if a.Ino != b.Ino || a.Nlink != 2 {
					t.Fatalf("hardlink: ino %d vs %d, nlink %d", a.Ino, b.Ino, a.Nlink)
				}
				atWantMode(t, filepath.Join(root, "d/fifo"), unix.S_IFIFO|0o640)
				st := atLstat(t, filepath.Join(root, "d/null"))
				if st.Mode != unix.S_IFCHR|0o640 || st.Rdev != unix.Mkdev(1, 3) {
					t.Fatalf("char dev: mode %o rdev %x", st.Mode, st.Rdev)
				}
				st = atLstat(t, filepath.Join(root, "d/blk"))
				if st.Mode != unix.S_IFBLK|0o640 || st.Rdev != unix.Mkdev(7, 200) {
					t.Fatalf("block dev: mode %o rdev %x", st.Mode, st.Rdev)
				}
			},
		},
		{
			name: "modes, big owners, setgid parent",
			ents: []atEnt{
				atWith(atDir("sg", 0o2775), func(h *tar.Header) { h.Gid = 4242 }),
				atWith(atFile("sg/suid", "x", 0o4755), func(h *tar.Header) { h.Uid, h.Gid = 100000, 200000 }),
				atWith(atFile("sg/plain", "x", 0o600), func(h *tar.Header) { h.Uid, h.Gid = 0, 0 }),
				atDir("sg/sub", 0o755),
				atDir("tmp", 0o1777),
				atFile("sgid", "x", 0o2711),
				atFile("all", "x", 0o777),
			},
			check: func(t *testing.T, root string, _ []string) {
				atWantMode(t, filepath.Join(root, "sg"), unix.S_IFDIR|0o2775)
				st := atLstat(t, filepath.Join(root, "sg/suid"))
				if st.Mode != unix.S_IFREG|0o4755 || st.Uid != 100000 || st.Gid != 200000 {
					t.Fatalf("suid: mode %o owner %d:%d", st.Mode, st.Uid, st.Gid)
				}
				// The setgid parent must not leak its group into entries.
				if st := atLstat(t, filepath.Join(root, "sg/plain")); st.Gid != 0 || st.Mode != unix.S_IFREG|0o600 {
					t.Fatalf("plain: gid %d mode %o", st.Gid, st.Mode)
				}
				// Nor its setgid bit into a directory that does not list it.
				atWantMode(t, filepath.Join(root, "sg/sub"), unix.S_IFDIR|0o755)
				atWantMode(t, filepath.Join(root, "tmp"), unix.S_IFDIR|0o1777)
				atWantMode(t, filepath.Join(root, "sgid"), unix.S_IFREG|0o2711)
				atWantMode(t, filepath.Join(root, "all"), unix.S_IFREG|0o777)
			},
		},
		{
			// Files owned by the applier skip their chown: a directory that
			// turns setgid between two files must not leak its group into
			// the second.
			name: "owner fast path: directory turns setgid mid-layer",
			ents: []atEnt{
				atDir("d", 0o755),
				atFile("d/first", "x", 0o644),
				atWith(atDir("d", 0o2775), func(h *tar.Header) { h.Gid = 77 }),
				atFile("d/second", "x", 0o644),
				atWith(atFile("d/third", "x", 0o644), func(h *tar.Header) { h.Gid = 77 }),
			},
			check: func(t *testing.T, root string, _ []string) {
				for name, gid := range map[string]uint32{"d/first": 0, "d/second": 0, "d/third": 77, "d": 77} {
					if st := atLstat(t, filepath.Join(root, name)); st.Uid != 0 || st.Gid != gid {
						t.Errorf("%s: owner %d:%d, want 0:%d", name, st.Uid, st.Gid, gid)
					}
				}
			},
		},
		{
			name: "times: nanoseconds, before 1970, after 2038, dirs after children",
			ents: []atEnt{
				atWith(atDir("d", 0o755), func(h *tar.Header) { h.ModTime = pre1970 }),
				atWith(atFile("d/new", "x", 0o644), func(h *tar.Header) { h.ModTime = post2038 }),
				atWith(atSymlink("d/l", "new"), func(h *tar.Header) { h.ModTime = pre1970 }),
				atWith(atDir("d/sub", 0o755), func(h *tar.Header) { h.ModTime = post2038 }),
				atFile("d/sub/f", "x", 0o644),
			},
			check: func(t *testing.T, root string, _ []string) {
				for p, want := range map[string]time.Time{"d": pre1970, "d/new": post2038, "d/l": pre1970, "d/sub": post2038, "d/sub/f": atTime} {
					st := atLstat(t, filepath.Join(root, p))
					if got := time.Unix(st.Mtim.Unix()); !got.Equal(want) {
						t.Errorf("%s mtime = %v, want %v", p, got, want)
					}
				}
			},
		},
		{
			name: "xattrs, capability, overlay ones dropped",
			ents: []atEnt{
				atWithXattr(atFile("f", "x", 0o755), "user.a", "1", "security.capability", atCapV2, "trusted.x", "t",
					"trusted.overlay.redirect", "/etc", "user.overlay.opaque", "y"),
				atWithXattr(atDir("d", 0o755), "user.d", "dv", "trusted.overlay.opaque", "y"),
				atWithXattr(atSymlink("l", "f"), "trusted.l", "lv", "user.nope", "x"),
			},
			check: func(t *testing.T, root string, warns []string) {
				f := filepath.Join(root, "f")
				atWantXattr(t, f, "user.a", "1")
				atWantXattr(t, f, "security.capability", atCapV2)
				atWantXattr(t, f, "trusted.x", "t")
				atWantNoXattr(t, f, "trusted.overlay.redirect")
				atWantNoXattr(t, f, "user.overlay.opaque")
				atWantXattr(t, filepath.Join(root, "d"), "user.d", "dv")
				atWantNoXattr(t, filepath.Join(root, "d"), "trusted.overlay.opaque")
				atWantXattr(t, filepath.Join(root, "l"), "trusted.l", "lv")
				all := strings.Join(warns, "\n")
				for _, w := range []string{`"f": dropped overlay xattr trusted.overlay.redirect`, `"f": dropped overlay xattr user.overlay.opaque`, `"d": dropped overlay xattr trusted.overlay.opaque`, `"l": xattr user.nope not stored`} {
					if !strings.Contains(all, w) {
						t.Errorf("warnings %q lack %q", all, w)
					}
				}
			},
		},
		{
			name: "long, unicode, PAX and GNU long names",
			ents: []atEnt{
				atFile(longName, "pax", 0o644),
				atWith(atFile("gnu/"+strings.Repeat("g", 150), "gnu", 0o644), func(h *tar.Header) { h.Format = tar.FormatGNU; h.ModTime = h.ModTime.Truncate(time.Second) }),
				atWith(atSymlink("gnu/"+strings.Repeat("s", 150), strings.Repeat("t", 180)), func(h *tar.Header) { h.Format = tar.FormatGNU; h.ModTime = h.ModTime.Truncate(time.Second) }),
				atFile(unicode, "uni", 0o644),
			},
			check: func(t *testing.T, root string, _ []string) {
				atWantContent(t, filepath.Join(root, longName), "pax")
				atWantContent(t, filepath.Join(root, "gnu", strings.Repeat("g", 150)), "gnu")
				atWantLink(t, filepath.Join(root, "gnu", strings.Repeat("s", 150)), strings.Repeat("t", 180))
				atWantContent(t, filepath.Join(root, unicode), "uni")
			},
		},
		{
			name:  "hardlink to a lower file",
			lower: atMkLower("f:etc/lower=low"),
			ents:  []atEnt{atLink("bin/h", "etc/lower")},
			check: func(t *testing.T, root string, _ []string) {
				if a, b := atLstat(t, filepath.Join(root, "etc/lower")), atLstat(t, filepath.Join(root, "bin/h")); a.Ino != b.Ino {
					t.Fatal("not the same inode")
				}
			},
		},
		{
			name: "symlinks relative, absolute, dangling",
			ents: []atEnt{atSymlink("rel", "../x/y"), atSymlink("abs", "/etc/passwd"), atSymlink("dangling", "nowhere")},
			check: func(t *testing.T, root string, _ []string) {
				atWantLink(t, filepath.Join(root, "rel"), "../x/y")
				atWantLink(t, filepath.Join(root, "abs"), "/etc/passwd")
				atWantLink(t, filepath.Join(root, "dangling"), "nowhere")
			},
		},
		{
			name:  "entry under a lower symlinked dir lands in its target inside root",
			lower: atMkLower("d:usr/lib", "l:lib->usr/lib", "l:lib64->/usr/lib"),
			ents:  []atEnt{atFile("lib/x", "x", 0o644), atFile("lib64/y", "y", 0o644)},
			check: func(t *testing.T, root string, _ []string) {
				atWantContent(t, filepath.Join(root, "usr/lib/x"), "x")
				atWantContent(t, filepath.Join(root, "usr/lib/y"), "y")
				atWantLink(t, filepath.Join(root, "lib"), "usr/lib")
				atWantLink(t, filepath.Join(root, "lib64"), "/usr/lib")
			},
		},
		{
			name:  "whiteouts of a file, a dir and a symlink",
			lower: atMkLower("f:a/file=1", "f:a/dir/x=2", "f:a/dir/sub/y=3", "d:target", "f:target/keep=k", "l:a/link->/target", "f:a/stay=s"),
			ents:  []atEnt{atWh("a/file"), atWh("a/dir"), atWh("a/link"), atWh("a/notthere"), atWh("nodir/x")},
			check: func(t *testing.T, root string, _ []string) {
				atWantMissing(t, filepath.Join(root, "a/file"))
				atWantMissing(t, filepath.Join(root, "a/dir"))
				atWantMissing(t, filepath.Join(root, "a/link"))
				atWantMissing(t, filepath.Join(root, "nodir"))
				atWantContent(t, filepath.Join(root, "target/keep"), "k")
				atWantContent(t, filepath.Join(root, "a/stay"), "s")
			},
		},
		{
			name:  "opaque dir, marker first",
			lower: atMkLower("f:d/a=old", "f:d/b=old", "f:d/sub/c=old", "f:other=o"),
			ents:  []atEnt{atDir("d", 0o755), atOpq("d"), atFile("d/a", "new", 0o644), atFile("d/sub/n", "new", 0o644)},
			check: atCheckOpaque,
		},
		{
			name:  "opaque dir, marker last",
			lower: atMkLower("f:d/a=old", "f:d/b=old", "f:d/sub/c=old", "f:other=o"),
			ents:  []atEnt{atDir("d", 0o755), atFile("d/a", "new", 0o644), atFile("d/sub/n", "new", 0o644), atOpq("d")},
			check: atCheckOpaque,
		},
		{
			name:  "whiteout after own entry is a no-op; of own dir removes its lower content",
			lower: atMkLower("f:f=old", "f:d/lower=l"),
			ents:  []atEnt{atFile("f", "new", 0o644), atWh("f"), atFile("d/mine", "m", 0o644), atWh("d")},
			check: func(t *testing.T, root string, _ []string) {
				atWantContent(t, filepath.Join(root, "f"), "new")
				atWantContent(t, filepath.Join(root, "d/mine"), "m")
				atWantMissing(t, filepath.Join(root, "d/lower"))
			},
		},
		{
			name:  "whiteout before own entry",
			lower: atMkLower("f:f=old", "f:d/lower=l"),
			ents:  []atEnt{atWh("d"), atWh("f"), atFile("d/mine", "m", 0o644), atFile("f", "new", 0o644)},
			check: func(t *testing.T, root string, _ []string) {
				atWantContent(t, filepath.Join(root, "f"), "new")
				atWantContent(t, filepath.Join(root, "d/mine"), "m")
				atWantMissing(t, filepath.Join(root, "d/lower"))
			},
		},
		{
			name:  "file replaced by dir and dir by file",
			lower: atMkLower("f:f=file", "f:d/x=1", "f:d/y/z=2", "l:s->d"),
			ents:  []atEnt{atDir("f", 0o750), atFile("f/in", "in", 0o644), atFile("d", "now a file", 0o644), atFile("s", "was a link", 0o644)},
			check: func(t *testing.T, root string, _ []string) {
				atWantMode(t, filepath.Join(root, "f"), unix.S_IFDIR|0o750)
				atWantContent(t, filepath.Join(root, "f/in"), "in")
				atWantContent(t, filepath.Join(root, "d"), "now a file")
				atWantContent(t, filepath.Join(root, "s"), "was a link")
			},
		},
		{
			name: "re-listed dir keeps children, takes new attributes",
			lower: func(t *testing.T, root string) {
				atMkLower("f:d/child=c")(t, root)
				atMust(t, os.Chmod(filepath.Join(root, "d"), 0o700))
				atMust(t, unix.Lsetxattr(filepath.Join(root, "d"), "user.old", []byte("o"), 0))
			},
			ents: []atEnt{atWithXattr(atWith(atDir("d", 0o751), func(h *tar.Header) { h.Uid, h.Gid = 7, 8 }), "user.new", "n")},
			check: func(t *testing.T, root string, _ []string) {
				atWantContent(t, filepath.Join(root, "d/child"), "c")
				st := atLstat(t, filepath.Join(root, "d"))
				if st.Mode != unix.S_IFDIR|0o751 || st.Uid != 7 || st.Gid != 8 {
					t.Fatalf("d: mode %o owner %d:%d", st.Mode, st.Uid, st.Gid)
				}
				atWantXattr(t, filepath.Join(root, "d"), "user.new", "n")
				atWantNoXattr(t, filepath.Join(root, "d"), "user.old")
			},
		},
		{
			name: "sparse file becomes holes",
			ents: []atEnt{atFile("sparse", "head"+strings.Repeat("\x00", 32<<20)+"tail", 0o644), atFile("zeros", strings.Repeat("\x00", 8<<20), 0o644)},
			check: func(t *testing.T, root string, _ []string) {
				st := atLstat(t, filepath.Join(root, "sparse"))
				if st.Size != 32<<20+8 || st.Blocks*512 > 1<<20 {
					t.Fatalf("sparse: size %d, %d bytes allocated", st.Size, st.Blocks*512)
				}
				b, _ := os.ReadFile(filepath.Join(root, "sparse"))
				if !strings.HasPrefix(string(b), "head") || !strings.HasSuffix(string(b), "tail") {
					t.Fatal("sparse: content differs")
				}
				st = atLstat(t, filepath.Join(root, "zeros"))
				if st.Size != 8<<20 || st.Blocks != 0 {
					t.Fatalf("zeros: size %d blocks %d", st.Size, st.Blocks)
				}
			},
		},
		{
			name: "root entry sets root attributes",
			ents: []atEnt{atDir("./", 0o711), atFile("./f", "x", 0o644)},
			check: func(t *testing.T, root string, _ []string) {
				atWantMode(t, root, unix.S_IFDIR|0o711)
				atWantContent(t, filepath.Join(root, "f"), "x")
			},
		},
		{
			name:    "devices rejected when asked",
			ents:    []atEnt{atDev("dev/null", tar.TypeChar, 1, 3)},
			opts:    func(o *ApplyOptions) { o.RejectDevices = true },
			wantErr: `entry "dev/null": device nodes are not allowed here`,
		},
		{
			name: "fifo allowed when devices are rejected",
			ents: []atEnt{atDev("p", tar.TypeFifo, 0, 0)},
			opts: func(o *ApplyOptions) { o.RejectDevices = true },
		},
		{
			name:    "hardlink to a missing target",
			ents:    []atEnt{atLink("h", "no/such")},
			wantErr: `entry "h": hardlink target "no/such" does not exist`,
		},
		{
			name:    "hardlink to a directory",
			ents:    []atEnt{atDir("d", 0o755), atLink("h", "d")},
			wantErr: `entry "h": hardlink target "d" is a directory`,
		},
		{
			name:    "unknown entry type",
			ents:    []atEnt{atWith(atFile("v", "", 0o644), func(h *tar.Header) { h.Typeflag = 'V' })},
			wantErr: `entry "v": unsupported entry type 'V'`,
		},
		{
			name:    "parent is a file",
			ents:    []atEnt{atFile("f", "x", 0o644), atFile("f/g", "y", 0o644)},
			wantErr: `entry "f/g": parent directory: not a directory`,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			atResolvers(t, func(t *testing.T, opts ApplyOptions) {
				root := t.TempDir()
				if c.lower != nil {
					c.lower(t, root)
				}
				var warns []string
				opts.Warn = func(m string) { warns = append(warns, m) }
				if c.opts != nil {
					c.opts(&opts)
				}
				_, err := atApply(t, root, atBuildTar(t, c.ents...), opts)
				if c.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), c.wantErr) {
						t.Fatalf("err = %v, want %q", err, c.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if c.check != nil {
					c.check(t, root, warns)
				}
			})
		})
	}
}

func atCheckOpaque(t *testing.T, root string, _ []string) {
	atWantContent(t, filepath.Join(root, "d/a"), "new")
	atWantMissing(t, filepath.Join(root, "d/b"))
	atWantMissing(t, filepath.Join(root, "d/sub/c"))
	atWantContent(t, filepath.Join(root, "d/sub/n"), "new")
	atWantContent(t, filepath.Join(root, "other"), "o")
}

func TestApplyOverlayFormat(t *testing.T) {
	atRequireRoot(t)
	for _, userX := range []bool{false, true} {
		opq := "trusted.overlay.opaque"
		if userX {
			opq = "user.overlay.opaque"
		}
		t.Run(opq, func(t *testing.T) {
			atResolvers(t, func(t *testing.T, opts ApplyOptions) {
				root := t.TempDir()
				opts.Whiteouts = OverlayWhiteouts(userX)
				var warns []string
				opts.Warn = func(m string) { warns = append(warns, m) }
				data := atBuildTar(t,
					atDir("a", 0o755), atWh("a/gone"), atOpq("a"), atFile("a/kept", "k", 0o644),
					atOpq("implicit/dir"),                    // never listed: created to hold the marker
					atFile("mine", "m", 0o644), atWh("mine"), // own entry: no whiteout
					atWh("redo"), atDir("redo", 0o755), // deleted then re-made: must hide the lower one
					atWh("deep/er/x"),
					atWithXattr(atFile("x", "", 0o644), "trusted.overlay.redirect", "/a"),
				)
				if _, err := atApply(t, root, data, opts); err != nil {
					t.Fatal(err)
				}
				for _, p := range []string{"a/gone", "deep/er/x"} {
					st := atLstat(t, filepath.Join(root, p))
					if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
						t.Fatalf("%s: mode %o rdev %d, want a 0/0 char device", p, st.Mode, st.Rdev)
					}
				}
				atWantXattr(t, filepath.Join(root, "a"), opq, "y")
				atWantXattr(t, filepath.Join(root, "implicit/dir"), opq, "y")
				atWantXattr(t, filepath.Join(root, "redo"), opq, "y")
				atWantContent(t, filepath.Join(root, "a/kept"), "k")
				atWantContent(t, filepath.Join(root, "mine"), "m")
				atWantNoXattr(t, filepath.Join(root, "x"), "trusted.overlay.redirect")
				if len(warns) != 1 || !strings.Contains(warns[0], `"x": dropped overlay xattr trusted.overlay.redirect`) {
					t.Fatalf("warnings = %q", warns)
				}
				// Re-listing the opaque dir later must not drop the marker.
				if _, err := atApply(t, root, atBuildTar(t, atDir("a", 0o700)), opts); err != nil {
					t.Fatal(err)
				}
				atWantXattr(t, filepath.Join(root, "a"), opq, "y")
			})
		})
	}
	t.Run("0/0 char device entry rejected", func(t *testing.T) {
		root := t.TempDir()
		_, err := atApply(t, root, atBuildTar(t, atDev("fake-whiteout", tar.TypeChar, 0, 0)), ApplyOptions{Whiteouts: OverlayWhiteouts(false)})
		if err == nil || !strings.Contains(err.Error(), `entry "fake-whiteout": 0/0 character device`) {
			t.Fatalf("err = %v", err)
		}
		atWantMissing(t, filepath.Join(root, "fake-whiteout"))
		// The delete format stores it as what it is.
		if _, err := atApply(t, root, atBuildTar(t, atDev("fake-whiteout", tar.TypeChar, 0, 0)), ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestApplyDiffIDAndSizes(t *testing.T) {
	atRequireRoot(t)
	data := atBuildTar(t, atDir("d", 0o755), atFile("d/a", "12345", 0o644), atFile("d/b", "678", 0o644), atSymlink("l", "d"))
	// Real tools pad the stream to a 10 KiB record: it belongs to the diffID.
	data = append(data, make([]byte, 10240-len(data)%10240)...)
	sum := sha256.Sum256(data)
	want := "sha256:" + hex.EncodeToString(sum[:])

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(data)
	zw.Close()

	for _, in := range []struct {
		name string
		b    []byte
		c    Compression
	}{{"none", data, Uncompressed}, {"gzip", gz.Bytes(), Gzip}} {
		t.Run(in.name, func(t *testing.T) {
			res, err := atApply(t, t.TempDir(), in.b, ApplyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if string(res.DiffID) != want || res.TarSize != int64(len(data)) || res.Size != 8 || res.Compression != in.c {
				t.Fatalf("result %+v, want diffID %s, tar size %d, size 8, compression %v", res, want, len(data), in.c)
			}
		})
	}
}

func TestApplyEmptyLayer(t *testing.T) {
	for _, data := range [][]byte{nil, atBuildTar(t)} {
		root := t.TempDir()
		res, err := atApply(t, root, data, ApplyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if string(res.DiffID) != "sha256:"+hex.EncodeToString(sum[:]) || res.TarSize != int64(len(data)) || res.Size != 0 {
			t.Fatalf("result %+v", res)
		}
		if ents, _ := os.ReadDir(root); len(ents) != 0 {
			t.Fatalf("root not empty: %v", ents)
		}
	}
}

func TestApplyCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Apply(ctx, t.TempDir(), bytes.NewReader(atBuildTar(t, atFile("f", "x", 0o644))), ApplyOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestApplyBadInput(t *testing.T) {
	full := atBuildTar(t, atFile("etc/passwd", strings.Repeat("p", 3000), 0o644))
	// A header declaring 1 TiB, then far less data: written without Close,
	// which would insist on the missing bytes.
	var hb bytes.Buffer
	tw := tar.NewWriter(&hb)
	atMust(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: 1 << 40}))
	huge := hb.Bytes()
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"truncated data", full[:512+512+1000], `entry "etc/passwd": truncated data: unexpected EOF`},
		{"truncated header", full[:700], `truncated tar: no end-of-archive marker`},
		{"cut at a header boundary", full[:len(full)-1024], `truncated tar after entry "etc/passwd": no end-of-archive marker`},
		{"cut inside a header", full[:len(full)-1024+100], `read tar header after entry "etc/passwd": unexpected EOF`},
		{"huge declared size", append(huge, bytes.Repeat([]byte{1}, 5000)...), `entry "big": truncated data: unexpected EOF`},
		{"garbage", bytes.Repeat([]byte("garbage!"), 200), `read first tar header`},
		{"corrupt gzip", append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}, bytes.Repeat([]byte{0xee}, 100)...), `read first tar header: decompress gzip: `},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := atApply(t, t.TempDir(), c.data, ApplyOptions{})
			if err == nil || !strings.HasPrefix(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %v, want one line starting %q", err, c.want)
			}
		})
	}
}

// An entry nested deeper than PATH_MAX applies, its parents resolved one
// component at a time, and a symlink on its way still resolves inside the
// root.
func TestApplyEntryLongerThanPathMax(t *testing.T) {
	atRequireRoot(t)
	var parts []string
	for i := 0; i < 24; i++ {
		parts = append(parts, fmt.Sprintf("%03d%s", i, strings.Repeat("p", 197)))
	}
	deep := strings.Join(parts, "/") // 4823 bytes
	ents := []atEnt{atDir("real", 0o755), atSymlink("abs", "/real")}
	for i := range parts {
		ents = append(ents, atDir("abs/"+strings.Join(parts[:i+1], "/"), 0o755))
	}
	ents = append(ents, atFile("abs/"+deep+"/leaf", "deep", 0o640))
	atResolvers(t, func(t *testing.T, opts ApplyOptions) {
		root := t.TempDir()
		if _, err := atApply(t, root, atBuildTar(t, ents...), opts); err != nil {
			t.Fatal(err)
		}
		// Walk down with fds: the host path is longer than PATH_MAX too.
		fd, err := unix.Open(filepath.Join(root, "real"), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		atMust(t, err)
		for _, p := range parts {
			next, err := unix.Openat(fd, p, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
			unix.Close(fd)
			atMust(t, err)
			fd = next
		}
		defer unix.Close(fd)
		f, err := unix.Openat(fd, "leaf", unix.O_RDONLY|unix.O_NOFOLLOW, 0)
		atMust(t, err)
		defer unix.Close(f)
		buf := make([]byte, 16)
		n, _ := unix.Read(f, buf)
		var st unix.Stat_t
		atMust(t, unix.Fstat(f, &st))
		if string(buf[:n]) != "deep" || st.Mode != unix.S_IFREG|0o640 {
			t.Fatalf("leaf: %q mode %o, want \"deep\" mode 0640", buf[:n], st.Mode)
		}
	})
}
