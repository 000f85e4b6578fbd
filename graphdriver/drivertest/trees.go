package drivertest

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/fixtures"
)

// treeCase is a stack of fixture layers: each is applied with ApplyDiff to a
// layer created on the previous one, and the top must show exactly the
// tree the fixtures oracle computes. Empty child layers created on the top
// (read-only and read-write) must show the same tree: that checks how the
// driver builds a layer from its parent (a copy, for vfs), which must keep
// every attribute. Then the top is diffed against its parent and that tar
// applied to a fresh layer on the same parent, which must show the same
// tree (the diff -> apply round trip).
type treeCase struct {
	name  string
	needs []string // features probed first; the case skips without them
	// layers returns the entries of each layer, bottom first.
	layers      func() [][]fixtures.Entry
	noRoundTrip bool
	// check runs extra checks on the mounted top layer.
	check func(h *harness, root string)
}

func runTreeCase(h *harness, c treeCase) {
	for _, f := range c.needs {
		h.need(f)
	}
	layers := c.layers()
	if len(layers) == 0 {
		h.t.Skip("fixture unavailable on this host (see the fixtures package tests)")
	}
	parent, top := "", ""
	for i, l := range layers {
		parent, top = top, fmt.Sprintf("L%03d", i)
		h.layer(top, parent, l...)
	}
	want := h.expect(layers...)
	h.check(top, want)
	if c.check != nil {
		h.with(top, func(root string) { c.check(h, root) })
	}
	h.checkChildren(top, want)
	if !c.noRoundTrip && !h.t.Failed() {
		h.roundTrip(top, parent)
	}
}

// checkChildren creates an empty read-only and an empty read-write layer on
// top and checks each shows want, top's tree: a child starts as its parent.
func (h *harness) checkChildren(top string, want fixtures.Tree) {
	h.t.Helper()
	child, childRW := top+"-child", top+"-child-rw"
	h.create(child, top)
	h.check(child, want)
	h.createRW(childRW, top)
	h.check(childRW, want)
}

// roundTrip diffs name against parent, applies the tar to a new layer on
// parent and compares both trees: everything a tree holds must survive.
func (h *harness) roundTrip(name, parent string) {
	h.t.Helper()
	tar := h.diffTar(name, parent)
	copyName := name + "-roundtrip"
	h.create(copyName, parent)
	h.apply(copyName, parent, bytes.NewReader(tar))
	want, got := h.snap(name), h.snap(copyName)
	if diffs := fixtures.Compare(want, got); len(diffs) > 0 {
		h.t.Errorf("diff -> apply round trip of layer %s on %q: the applied copy differs (want = original, got = copy), %d difference(s):\n  %s",
			name, parent, len(diffs), strings.Join(limit(diffs, 40), "\n  "))
	}
}

func limit(lines []string, n int) []string {
	if len(lines) <= n {
		return lines
	}
	return append(lines[:n:n], fmt.Sprintf("... and %d more", len(lines)-n))
}

func layers(ls ...[]fixtures.Entry) func() [][]fixtures.Entry {
	return func() [][]fixtures.Entry { return ls }
}

// ent is short for the fixture entries the cases list by the dozen.
type ent = fixtures.Entry

var (
	dir      = fixtures.Dir
	file     = fixtures.File
	symlink  = fixtures.Symlink
	hardlink = fixtures.Hardlink
	whiteout = fixtures.Whiteout
	opaque   = fixtures.Opaque
	owner    = fixtures.Owner
	mtime    = fixtures.Mtime
	xattr    = fixtures.Xattr
)

// baseLayer is a small but typical image layer.
func baseLayer() []ent {
	return []ent{
		dir("bin", 0o755),
		file("bin/sh", "#!shell\n", 0o755),
		dir("etc", 0o755),
		file("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644),
		file("etc/shadow", "root:*:1::::::\n", 0o640, owner(0, 42)),
		dir("usr", 0o755),
		dir("usr/lib", 0o755),
		file("usr/lib/libc.so", strings.Repeat("elf", 3000), 0o755),
		symlink("lib", "usr/lib"),
		hardlink("bin/bash", "bin/sh", fixtures.Mode(0o755)),
		dir("var", 0o755),
		dir("var/empty", 0o700),
	}
}

// chain returns n layers: the first makes /bottom, every layer rewrites
// /counter and every 20th adds /layers/fNNN, so each layer differs from
// its parent while copies stay small for drivers that copy.
func chain(n int) func() [][]fixtures.Entry {
	return func() [][]fixtures.Entry {
		ls := [][]ent{{dir("layers", 0o755), file("bottom", "from the bottom layer", 0o644), file("counter", "0", 0o644)}}
		for i := 1; i < n; i++ {
			l := []ent{file("counter", fmt.Sprint(i), 0o644)}
			if i%20 == 0 {
				l = append(l, dir("layers", 0o755), file(fmt.Sprintf("layers/f%03d", i), fmt.Sprint(i), 0o644))
			}
			ls = append(ls, l)
		}
		return ls
	}
}

// emptyAbove returns n layers: a file at the bottom, nothing above it, so
// only the depth of the stack is tested (cs/moby DeepLayerRead, ctrd
// 128LayersMount).
func emptyAbove(n int) func() [][]fixtures.Entry {
	return func() [][]fixtures.Entry {
		ls := make([][]ent, n)
		ls[0] = []ent{file("bottom", "from the bottom layer", 0o644)}
		return ls
	}
}

func treeCases() []treeCase {
	past := time.Date(1901, 12, 13, 20, 45, 52, 0, time.UTC) // near the 32-bit minimum
	past2 := time.Date(1969, 12, 31, 23, 59, 59, 500000000, time.UTC)
	future := time.Date(2106, 2, 7, 6, 28, 16, 999999999, time.UTC) // past the 32-bit unsigned maximum
	future2 := time.Date(2038, 1, 19, 3, 14, 8, 123456789, time.UTC)
	sub := time.Date(2021, 6, 1, 12, 0, 0, 123456789, time.UTC)

	longComp := strings.Repeat("L", 255)
	var longDirs []ent
	deep := ""
	for i := 0; i < 16; i++ { // 16 * 246 bytes: a path of ~3950 bytes
		deep += fmt.Sprintf("%s%02d", strings.Repeat("d", 243), i) + "/"
		longDirs = append(longDirs, dir(deep, 0o755))
	}
	deepFile := deep + "leaf"

	return []treeCase{
		{name: "CreateBase", layers: layers(baseLayer())},
		{name: "EmptyLayer", layers: layers(baseLayer(), nil)},
		{name: "ParentChain", layers: layers(
			baseLayer(),
			[]ent{dir("etc", 0o755), file("etc/hostname", "one\n", 0o644)},
			[]ent{dir("etc", 0o755), file("etc/passwd", "root:x:0:0::/root:/bin/bash\n", 0o644)},
			[]ent{dir("app", 0o755), file("app/run", "run", 0o755)},
		)},
		{name: "DeepLayerRead128", layers: emptyAbove(128), check: func(h *harness, root string) {
			h.checkFile(root, "bottom", "from the bottom layer")
		}},
		{name: "DeepChain200", layers: chain(200), check: func(h *harness, root string) {
			h.checkFile(root, "bottom", "from the bottom layer")
			h.checkFile(root, "counter", "199")
			h.checkFile(root, "layers/f180", "180")
		}},
		{name: "WhiteoutFile", layers: layers(baseLayer(), []ent{dir("etc", 0o755), whiteout("etc/shadow")})},
		{name: "WhiteoutDir", layers: layers(
			append(baseLayer(), dir("var/lib", 0o755), dir("var/lib/x", 0o755), file("var/lib/x/y", "y", 0o644)),
			[]ent{whiteout("var/lib")},
		)},
		{name: "WhiteoutSymlink", layers: layers(baseLayer(), []ent{whiteout("lib")}), check: func(h *harness, root string) {
			h.checkFile(root, "usr/lib/libc.so", strings.Repeat("elf", 3000))
		}},
		{name: "WhiteoutHardlinkName", layers: layers(baseLayer(), []ent{whiteout("bin/bash")})},
		{name: "WhiteoutOwnLayerBefore", layers: layers(baseLayer(), []ent{dir("etc", 0o755), whiteout("etc/passwd"), file("etc/passwd", "new", 0o600)})},
		{name: "WhiteoutOwnLayerAfter", layers: layers(baseLayer(), []ent{dir("etc", 0o755), file("etc/passwd", "new", 0o600), whiteout("etc/passwd")})},
		{name: "OpaqueBeforeEntries", layers: layers(
			baseLayer(),
			[]ent{dir("etc", 0o711), opaque("etc"), file("etc/only", "only", 0o644), dir("etc/sub", 0o755)},
		)},
		{name: "OpaqueAfterEntries", layers: layers(
			baseLayer(),
			[]ent{dir("etc", 0o711), file("etc/only", "only", 0o644), dir("etc/sub", 0o755), opaque("etc")},
		)},
		{name: "OpaqueRecreate", layers: layers( // rm -rf d && mkdir d (ggcr#2029)
			append(baseLayer(), dir("var/d", 0o755), dir("var/d/x", 0o755), file("var/d/x/f", "f", 0o644)),
			[]ent{dir("var/d", 0o755), opaque("var/d")},
			[]ent{dir("var/d", 0o755), file("var/d/again", "a", 0o644)},
		)},
		{name: "FileToDir", layers: layers(
			baseLayer(),
			[]ent{dir("etc/passwd", 0o750), file("etc/passwd/inside", "i", 0o644)},
		)},
		{name: "DirToFile", layers: layers(
			append(baseLayer(), dir("var/d", 0o755), file("var/d/f", "f", 0o644)),
			[]ent{file("var/d", "now a file", 0o600)},
		)},
		{name: "SymlinkToDir", layers: layers(baseLayer(), []ent{dir("lib", 0o755), file("lib/own", "own", 0o644)}),
			check: func(h *harness, root string) {
				h.checkFile(root, "usr/lib/libc.so", strings.Repeat("elf", 3000))
			}},
		{name: "DirRelisted", layers: layers(
			baseLayer(),
			[]ent{dir("etc", 0o700, owner(1000, 1000), mtime(sub), xattr("user.relisted", "1"))},
		), needs: []string{"user xattrs", "chown"}},
		{name: "HardlinkSameLayer", layers: layers([]ent{
			dir("d", 0o755),
			file("d/a", "shared", 0o640, owner(7, 8), mtime(sub)),
			hardlink("d/b", "d/a", fixtures.Mode(0o640), owner(7, 8), mtime(sub)),
			hardlink("c", "d/a", fixtures.Mode(0o640), owner(7, 8), mtime(sub)),
		})},
		{name: "HardlinkToLower", layers: layers(
			baseLayer(),
			[]ent{dir("etc", 0o755), hardlink("etc/passwd-link", "etc/passwd")},
		)},
		{name: "HardlinkToLowerThenOverwrite", layers: layers( // ggcr#2002, image-spec#1204
			baseLayer(),
			[]ent{dir("etc", 0o755), hardlink("etc/passwd-link", "etc/passwd")},
			[]ent{dir("etc", 0o755), file("etc/passwd", "overwritten", 0o644)},
		)},
		{name: "Symlinks", layers: layers([]ent{
			dir("d", 0o755),
			file("d/target", "t", 0o644),
			symlink("d/relative", "target"),
			symlink("d/up", "../d/target"),
			symlink("absolute", "/d/target"),
			symlink("dangling", "/does/not/exist"),
			symlink("loop1", "loop2"),
			symlink("loop2", "loop1"),
			symlink("d/symlinkdir", "."),
		})},
		{name: "SymlinkDirInLower", layers: layers(
			[]ent{
				dir("real", 0o755),
				symlink("rel", "real"),
				symlink("abs", "/real"),
				symlink("escape", "../../../../real"),
			},
			[]ent{
				file("rel/via-relative", "1", 0o644),
				file("abs/via-absolute", "2", 0o644),
				file("escape/via-escape", "3", 0o644),
			},
		), check: func(h *harness, root string) {
			h.checkFile(root, "real/via-relative", "1")
			h.checkFile(root, "real/via-absolute", "2")
			h.checkFile(root, "real/via-escape", "3")
		}},
		{name: "XattrsUser", needs: []string{"user xattrs"}, layers: layers([]ent{
			dir("d", 0o755, xattr("user.dir", "on a dir")),
			file("d/f", "x", 0o644, xattr("user.a", "1"), xattr("user.binary", "\x00\xff\x01"), xattr("user.empty", "")),
		})},
		{name: "XattrsSecurityCapability", needs: []string{"security.capability"}, layers: layers([]ent{
			file("ping", "elf", 0o755, xattr("security.capability", string(capNetBind))),
		})},
		{name: "XattrsTrusted", needs: []string{"trusted xattrs"}, layers: layers([]ent{
			file("f", "x", 0o644, xattr("trusted.layers-test", "t")),
		})},
		{name: "OverlayXattrsDropped", needs: []string{"trusted xattrs"}, layers: layers([]ent{
			dir("d", 0o755, xattr("trusted.overlay.opaque", "y"), xattr("trusted.overlay.redirect", "/etc")),
			file("d/f", "x", 0o644, xattr("user.overlay.origin", "z"), xattr("trusted.kept", "k")),
		})},
		{name: "SpecialModes", layers: layers([]ent{
			file("setuid", "x", 0o4755),
			file("setgid", "x", 0o2755, owner(0, 50)),
			file("both", "x", 0o6711),
			dir("sticky", 0o1777),
			dir("setgid-dir", 0o2775, owner(0, 50)),
			file("no-perms", "x", 0o000),
			dir("no-perms-dir", 0o000),
		})},
		{name: "HighUIDGID", needs: []string{"chown"}, layers: layers([]ent{
			file("u65536", "x", 0o644, owner(65536, 65536)),
			file("u100000", "x", 0o644, owner(100000, 200000)),
			dir("huge", 0o755, owner(2147483647, 4294967294)),
			symlink("huge/link", "x", owner(4000000000, 3000000000)),
		})},
		{name: "Mtimes", layers: layers([]ent{
			dir("d", 0o755, mtime(past)),
			file("d/subsecond", "x", 0o644, mtime(sub)),
			file("d/pre1970", "x", 0o644, mtime(past2)),
			file("d/after2038", "x", 0o644, mtime(future2)),
			file("d/after2106", "x", 0o644, mtime(future)),
			symlink("d/link", "subsecond", mtime(past2)),
			fixtures.Fifo("d/fifo", 0o644, mtime(sub)),
			dir("d/sub", 0o755, mtime(future)),
		})},
		{name: "DevicesAndFifos", needs: []string{"devices"}, layers: layers([]ent{
			dir("dev", 0o755),
			fixtures.CharDev("dev/null", 1, 3, 0o666),
			// The largest numbers every filesystem here stores: xfs
			// takes majors below 512 and minors below 2^18.
			fixtures.CharDev("dev/big", 511, 262143, 0o600),
			fixtures.BlockDev("dev/loop0", 7, 0, 0o660, owner(0, 6)),
			fixtures.Fifo("dev/fifo", 0o620),
		})},
		{name: "LongNames", layers: layers(append(longDirs,
			file(longComp, "255 bytes", 0o644),
			dir(strings.Repeat("D", 255), 0o755),
			file(strings.Repeat("D", 255)+"/"+longComp, "two long components", 0o644),
			file(deepFile, "about 4000 bytes deep", 0o644),
			// 1000 bytes: xfs refuses symlink targets over 1024.
			symlink("long-target", strings.Repeat("t/", 500)),
		))},
		{name: "WideDir500", layers: layers(wideDir(500))},
		// A tar name of exactly 4096 bytes (PATH_MAX, with no room for the
		// NUL): appliers and differs must work below the layer root by
		// directory fds, as no single path syscall takes it.
		{name: "Path4096", layers: layers(path4096())},
		{name: "UnicodeNames", layers: layers([]ent{
			dir("日本語", 0o755),
			file("日本語/ファイル", "ja", 0o644),
			file("naïve café", "fr", 0o644),
			file("emoji-😀", "e", 0o644),
			file("tab\tname", "t", 0o644),
			file("newline\nname", "n", 0o644),
			file(`back\slash`, "b", 0o644),
			file(`quote"d`, "q", 0o644),
			file("-dash", "d", 0o644),
			file("\x01ctrl", "c", 0o644),
			file("latin1-\xe9", "not utf-8", 0o644),
			symlink("ünï-link", "日本語/ファイル"),
		})},
		{name: "Busybox", layers: func() [][]ent {
			es, err := fixtures.BusyboxEntries()
			if err != nil {
				return nil
			}
			return [][]ent{es}
		}, check: func(h *harness, root string) {
			var st unix.Stat_t
			if err := unix.Stat(root+"/bin/sh", &st); err != nil || st.Mode&0o111 == 0 {
				h.t.Errorf("bin/sh does not resolve to an executable: %v", err)
			}
		}},
	}
}

// wideDir is one directory of n files, half in a subdirectory level of
// their own so both files and dirs are many.
func wideDir(n int) []ent {
	es := []ent{dir("wide", 0o755)}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("wide/entry-%04d", i)
		if i%2 == 0 {
			es = append(es, file(name, fmt.Sprint(i), 0o644))
		} else {
			es = append(es, dir(name, 0o711))
		}
	}
	return es
}

// path4096 makes a file whose tar name is 4096 bytes: 17 components of
// 240 bytes and 16 slashes; next to it, where a layer's path from / is
// beyond PATH_MAX, a symlink, a fifo and a second name of the file.
func path4096() []ent {
	var es []ent
	p := ""
	for i := 0; i < 16; i++ {
		p += fmt.Sprintf("%s%02d", strings.Repeat("p", 238), i)
		es = append(es, dir(p, 0o755))
		p += "/"
	}
	leaf := p + strings.Repeat("f", 240)
	if len(leaf) != 4096 {
		panic(fmt.Sprintf("path4096: %d bytes", len(leaf)))
	}
	return append(es,
		file(leaf, "4096 bytes deep", 0o644),
		symlink(p+"link", "deep-target"),
		fixtures.Fifo(p+"fifo", 0o640),
		hardlink(p+"second", leaf, fixtures.Mode(0o644)),
	)
}
