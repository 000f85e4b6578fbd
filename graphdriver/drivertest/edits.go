package drivertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/fscopy"
)

// editCase is a container's life in layers: fixture layers below (applied
// with ApplyDiff and checked against the fixtures oracle), then steps, each
// a read-write layer on the previous commit whose root is edited through
// the path Get returns, as a process in a container would. Each step is
// committed the way the store commits (Diff against its parent, ApplyDiff
// of that tar to a new layer on the same parent), the commit must show the
// same tree as the read-write layer, and the next step starts from the
// commit. This is the shape of containerd's issues.go and continuity's
// FSSuite, where every applier is one commit.
type editCase struct {
	name  string
	needs []string // features probed first; the case skips without them
	lower [][]ent  // fixture layers, bottom first; nil for an empty parent
	steps []editStep
}

// editStep is one read-write layer's edits and what Changes must say.
type editStep struct {
	edit op
	// changes holds the accepted answers of Changes, each a complete list
	// (besides "C" of directories above a listed path, as checkChanges
	// allows). Where drivers may legitimately see one edit two ways, both
	// are listed: `rm -rf d && mkdir d` is "C /d" plus the children's
	// "D" and "A" for a double-walk differ, and "D /d", "A /d" plus the
	// new children for overlay, whose upper dir holds an opaque d.
	changes [][]string
	// optional are lines a differ may list or not, for paths whose ctime
	// alone moved (a link count changed) or that a copy-up touched.
	optional []string
	// check runs extra checks on the mounted read-write layer.
	check func(h *harness, root string)
}

// op is an edit of a mounted layer.
type op func(h *harness, root string)

// ops runs edits in order.
func ops(list ...op) op {
	return func(h *harness, root string) {
		h.t.Helper()
		for _, o := range list {
			o(h, root)
		}
	}
}

// writeF writes content to rel (creating or truncating it, so a hardlinked
// file changes under all its names) and sets mode, whatever the umask.
func writeF(rel, content string, mode os.FileMode) op {
	return func(h *harness, root string) {
		h.t.Helper()
		p := filepath.Join(root, rel)
		h.do("write "+rel, os.WriteFile(p, []byte(content), mode))
		h.do("chmod "+rel, os.Chmod(p, mode))
	}
}

// mkdirF makes directory rel and its missing parents, with mode.
func mkdirF(rel string, mode os.FileMode) op {
	return func(h *harness, root string) {
		h.t.Helper()
		p := filepath.Join(root, rel)
		h.do("mkdir "+rel, os.MkdirAll(p, mode))
		h.do("chmod "+rel, os.Chmod(p, mode))
	}
}

// rmF removes rel and everything below it (rm -rf).
func rmF(rel string) op {
	return func(h *harness, root string) {
		h.t.Helper()
		h.do("rm -rf "+rel, os.RemoveAll(filepath.Join(root, rel)))
	}
}

// renameF renames from to to as mv does: rename(2), and where that fails
// with EXDEV (overlay without redirect_dir refuses to rename a directory
// of a lower layer) a copy with every attribute followed by a removal.
func renameF(from, to string) op {
	return func(h *harness, root string) {
		h.t.Helper()
		src, dst := filepath.Join(root, from), filepath.Join(root, to)
		err := os.Rename(src, dst)
		if errors.Is(err, unix.EXDEV) {
			if err = fscopy.CopyTree(context.Background(), src, dst); err == nil {
				err = os.RemoveAll(src)
			}
		}
		h.do("rename "+from, err)
	}
}

// linkF makes newname a hard link to oldname.
func linkF(oldname, newname string) op {
	return func(h *harness, root string) {
		h.t.Helper()
		h.do("link "+newname, os.Link(filepath.Join(root, oldname), filepath.Join(root, newname)))
	}
}

// symlinkF makes rel a symlink to target.
func symlinkF(target, rel string) op {
	return func(h *harness, root string) {
		h.t.Helper()
		h.do("symlink "+rel, os.Symlink(target, filepath.Join(root, rel)))
	}
}

func chownF(rel string, uid, gid int) op {
	return func(h *harness, root string) {
		h.t.Helper()
		h.do("chown "+rel, os.Lchown(filepath.Join(root, rel), uid, gid))
	}
}

func chmodF(rel string, mode os.FileMode) op {
	return func(h *harness, root string) {
		h.t.Helper()
		h.do("chmod "+rel, os.Chmod(filepath.Join(root, rel), mode))
	}
}

// one is a single accepted answer of Changes.
func one(lines ...string) [][]string { return [][]string{lines} }

func runEditCase(h *harness, c editCase) {
	for _, f := range c.needs {
		h.need(f)
	}
	parent, top := "", ""
	for i, l := range c.lower {
		parent, top = top, fmt.Sprintf("L%03d", i)
		h.layer(top, parent, l...)
	}
	if len(c.lower) > 0 {
		h.check(top, h.expect(c.lower...))
	}
	for i, s := range c.steps {
		name := fmt.Sprintf("step%d", i+1)
		h.createRW(name, top)
		h.with(name, func(root string) { s.edit(h, root) })
		if s.check != nil {
			h.with(name, func(root string) { s.check(h, root) })
		}
		h.checkChangesOneOf(name, top, s.changes, s.optional)
		h.roundTrip(name, top)
		// The commit must carry the same changes: what a second commit
		// of an unchanged image would list.
		h.checkChangesOneOf(name+"-roundtrip", top, s.changes, s.optional)
		if h.t.Failed() {
			h.t.Fatalf("at step %d", i+1)
		}
		top = name + "-roundtrip"
	}
}

// checkChangesOneOf fails unless Changes of name against parent matches
// one of the accepted answers (see editStep.changes), and lists a path
// changed twice only as a Delete followed by an Add (a replacement).
func (h *harness) checkChangesOneOf(name, parent string, answers [][]string, optional []string) {
	h.t.Helper()
	got := h.changes(name, parent)
	var first []string
	for _, want := range answers {
		problems := changesProblems(got, want, optional)
		if len(problems) == 0 {
			h.checkReplacementOrder(name, parent)
			return
		}
		if first == nil {
			first = problems
		}
	}
	h.t.Errorf("Changes(%s, %s) wrong:\n  %s\naccepted answers (plus optional C of parent dirs):\n  %s\noptional: %v\ngot:\n  %s",
		name, parent, strings.Join(first, "\n  "), fmtAnswers(answers), optional, strings.Join(got, "\n  "))
}

func fmtAnswers(answers [][]string) string {
	parts := make([]string, len(answers))
	for i, a := range answers {
		parts[i] = strings.Join(a, ", ")
	}
	return strings.Join(parts, "\n  or: ")
}

// checkReplacementOrder checks the order diff.Changes documents, on the
// unsorted result: paths in diff.ComparePaths order, and a path listed
// twice only as "D" then "A" (Export needs the Delete first to hide the
// old entry's children).
func (h *harness) checkReplacementOrder(name, parent string) {
	h.t.Helper()
	cs, err := graphdriver.Changes(h.ctx, h.d, id(name), idOrEmpty(parent))
	h.do("Changes", err)
	for i := 1; i < len(cs); i++ {
		a, b := cs[i-1], cs[i]
		switch c := diff.ComparePaths(a.Path, b.Path); {
		case c > 0:
			h.t.Errorf("Changes(%s): %s before %s, out of path order", name, a, b)
		case c == 0 && (a.Kind != diff.ChangeDelete || b.Kind != diff.ChangeAdd):
			h.t.Errorf("Changes(%s): %s then %s: a path twice must be D then A", name, a, b)
		}
	}
}

// continuityBase is continuity's FSSuite base layer, as a fixture.
func continuityBase() []ent {
	return []ent{
		dir("etc", 0o755),
		file("etc/hosts", "127.0.0.1 localhost", 0o644),
		hardlink("etc/hosts.allow", "etc/hosts", fixtures.Mode(0o644)),
		dir("usr", 0o755),
		dir("usr/local", 0o755),
		dir("usr/local/lib", 0o755),
		file("usr/local/lib/libnothing.so", "\x00\x00", 0o755),
		symlink("usr/local/lib/libnothing.so.2", "libnothing.so"),
		dir("home", 0o755),
		dir("home/derek", 0o700),
	}
}

func editCases() []editCase {
	return []editCase{
		// containerd issues.go, each an issue an older layering model
		// had.

		// docker#21555: a file rewritten in an upper layer with content
		// of the same length, in the same second as the lower copy, must
		// still be a change; the lower copy's mtime has no sub-second
		// part, so the differ has to read content to tell.
		{name: "LayerFileUpdate", lower: [][]ent{{
			dir("etc", 0o700),
			file("etc/hosts", "mydomain 10.0.0.1", 0o644),
			file("etc/profile", "PATH=/usr/bin", 0o644),
		}}, steps: []editStep{{
			edit: ops(
				writeF("etc/hosts", "mydomain 10.0.0.2", 0o644),
				func(h *harness, root string) {
					p := filepath.Join(root, "etc/hosts")
					h.do("restore mtime", os.Chtimes(p, fixtures.DefaultMtime, fixtures.DefaultMtime))
				},
				writeF("etc/profile", "PATH=/usr/bin", 0o666),
				mkdirF("root", 0o700),
				writeF("root/.bashrc", "PATH=/usr/sbin:/usr/bin", 0o644),
			),
			changes: one("C /etc/hosts", "C /etc/profile", "A /root", "A /root/.bashrc"),
		}}},

		// docker#25244: a directory of a lower layer removed and made
		// again must not show the old children, in this commit or the
		// next one.
		{name: "RemoveDirectoryInLowerLayer", lower: [][]ent{{
			dir("lib", 0o700),
			file("lib/hidden", "", 0o644),
		}}, steps: []editStep{{
			edit:    ops(rmF("lib"), mkdirF("lib", 0o700), writeF("lib/not-hidden", "", 0o644)),
			changes: rmMkdirAnswers("/lib", []string{"/lib/hidden"}, "A /lib/not-hidden"),
		}, {
			edit:    writeF("lib/newfile", "", 0o644),
			changes: one("A /lib/newfile"),
			check: func(h *harness, root string) {
				if _, err := os.Lstat(filepath.Join(root, "lib/hidden")); !os.IsNotExist(err) {
					h.t.Errorf("lib/hidden shows again in the next layer (stat: %v)", err)
				}
			},
		}}},

		// docker#20240 (aufs), #24913 (overlay), #28391 (overlay2): a
		// chown of lower directories and a file is kept by the commit.
		{name: "Chown", needs: []string{"chown"}, lower: [][]ent{{
			dir("opt", 0o700),
			dir("opt/a", 0o700),
			dir("opt/a/b", 0o700),
			file("opt/a/b/file.txt", "hello", 0o644),
		}}, steps: []editStep{{
			edit:    ops(chownF("opt", 1, 1), chownF("opt/a", 1, 1), chownF("opt/a/b", 1, 1), chownF("opt/a/b/file.txt", 1, 1)),
			changes: one("C /opt", "C /opt/a", "C /opt/a/b", "C /opt/a/b/file.txt"),
		}}},

		// docker#25409: renames of a lower directory and of files, one
		// over an existing name.
		{name: "Rename", lower: [][]ent{{
			dir("dir1", 0o700),
			dir("somefiles", 0o700),
			file("somefiles/f1", "was here first!", 0o644),
			file("somefiles/f2", "nothing interesting", 0o644),
		}}, steps: []editStep{{
			edit: ops(
				renameF("dir1", "dir2"),
				writeF("somefiles/f1-overwrite", "new content 1", 0o644),
				renameF("somefiles/f1-overwrite", "somefiles/f1"),
				renameF("somefiles/f2", "somefiles/f3"),
			),
			changes: one("D /dir1", "A /dir2", "C /somefiles/f1", "D /somefiles/f2", "A /somefiles/f3"),
		}}},

		// docker#27298, containerd's three-layer form (DirPermOnCommit is
		// the one-step form): owners set, reset, and set again on
		// directories removed and made again, across commits.
		{name: "DirectoryPermissionOnCommit", needs: []string{"chown"}, lower: [][]ent{{
			dir("dir1", 0o700, owner(1, 1)),
			dir("dir2", 0o700, owner(1, 1)),
			dir("dir3", 0o700, owner(1, 1)),
			dir("dir4", 0o700),
			file("dir4/f1", "...", 0o644),
			dir("dir5", 0o700, owner(1, 1)),
			file("dir5/f1", "...", 0o644, owner(1, 1)),
		}}, steps: []editStep{{
			edit:    ops(chownF("dir2", 0, 0), rmF("dir3"), chownF("dir4", 1, 1), chownF("dir4/f1", 1, 1)),
			changes: one("C /dir2", "D /dir3", "C /dir4", "C /dir4/f1"),
		}, {
			edit: ops(mkdirF("dir3", 0o700), chownF("dir3", 1, 1), rmF("dir5"), mkdirF("dir5", 0o700), chownF("dir5", 1, 1)),
			// dir5 comes back with the same mode and owner: for a
			// double walk only its mtime moved, still a "C".
			changes: rmMkdirAnswers("/dir5", []string{"/dir5/f1"}, "A /dir3"),
		}}},

		// containerd DeletedFilesInChildSnapshot: a file deleted in one
		// commit stays deleted in a child that changes nothing.
		{name: "DeletedFilesInChild", lower: [][]ent{{
			file("foo", "foo\n", 0o777),
			file("foobar", "foobar\n", 0o777),
		}}, steps: []editStep{{
			edit:    rmF("foobar"),
			changes: one("D /foobar"),
		}, {
			edit:    func(*harness, string) {},
			changes: one(),
			check: func(h *harness, root string) {
				if _, err := os.Lstat(filepath.Join(root, "foobar")); !os.IsNotExist(err) {
					h.t.Errorf("foobar, deleted in the parent, shows in the child (stat: %v)", err)
				}
			},
		}}},

		// containerd MoveFileFromLowerLayer: a lower file moved into a new
		// directory.
		{name: "MoveFileFromLowerLayer", lower: [][]ent{{
			dir("dir1", 0o755),
			file("dir1/f1", "hello", 0o644),
		}}, steps: []editStep{{
			edit:    ops(mkdirF("dir2", 0o755), renameF("dir1/f1", "dir2/f1")),
			changes: one("D /dir1/f1", "A /dir2", "A /dir2/f1"),
		}}},

		// continuity FSSuite: each applier after the first is one commit.

		{name: "FSBasic", lower: [][]ent{continuityBase()}, steps: []editStep{{
			edit: ops(
				writeF("etc/hosts", "127.0.0.1 localhost.localdomain", 0o644),
				writeF("etc/fstab", "/dev/sda1\t/\text4\tdefaults 1 1\n", 0o600),
				writeF("etc/badfile", "", 0o666),
				writeF("home/derek/.zshrc", "#ZSH is just better\n", 0o640),
			),
			// hosts.allow is the same inode as hosts.
			changes: copyUpAnswers([]string{"C /etc/hosts", "A /etc/fstab", "A /etc/badfile", "A /home/derek/.zshrc"}, "C /etc/hosts.allow"),
		}, {
			edit:    ops(rmF("etc/badfile"), renameF("home/derek", "home/notderek")),
			changes: one("D /etc/badfile", "D /home/derek", "A /home/notderek", "A /home/notderek/.zshrc"),
		}, {
			edit:     ops(rmF("usr"), rmF("etc/hosts.allow")),
			changes:  one("D /usr", "D /etc/hosts.allow"),
			optional: []string{"C /etc/hosts"}, // its link count went down
		}, {
			edit: ops(
				rmF("home"),
				mkdirF("home/derek", 0o700),
				writeF("home/derek/.bashrc", "#not going away\n", 0o640),
				linkF("etc/hosts", "etc/hosts.allow"),
			),
			changes: rmMkdirAnswers("/home", []string{"/home/notderek"},
				"A /home/derek", "A /home/derek/.bashrc", "A /etc/hosts.allow"),
			optional: []string{"C /etc/hosts"},
		}}},

		{name: "FSDeletion", lower: [][]ent{{
			dir("test", 0o755),
			dir("test/somedir", 0o755),
			dir("lib", 0o700),
			file("lib/hidden", "", 0o644),
		}}, steps: []editStep{{
			edit: ops(
				writeF("test/a", "", 0o644),
				writeF("test/b", "", 0o644),
				mkdirF("test/otherdir", 0o755),
				writeF("test/otherdir/.empty", "", 0o644),
				rmF("lib"),
				mkdirF("lib", 0o700),
				writeF("lib/not-hidden", "", 0o644),
			),
			changes: rmMkdirAnswers("/lib", []string{"/lib/hidden"},
				"A /test/a", "A /test/b", "A /test/otherdir", "A /test/otherdir/.empty", "A /lib/not-hidden"),
		}, {
			edit:    ops(rmF("test/a"), rmF("test/b"), rmF("test/otherdir"), writeF("lib/newfile", "", 0o644)),
			changes: one("D /test/a", "D /test/b", "D /test/otherdir", "A /lib/newfile"),
		}}},

		{name: "FSUpdate", lower: [][]ent{{
			dir("d1", 0o755),
			dir("d2", 0o700),
			file("d1/f1", "something...", 0o644),
			file("d1/f2", "else...", 0o644),
			file("d1/f3", "entirely...", 0o644),
		}}, steps: []editStep{{
			edit: ops(
				writeF("d1/f1", "file content of a different length", 0o664),
				rmF("d1/f3"),
				writeF("d1/f3", "updated content", 0o664),
				chmodF("d1/f2", 0o766),
				chmodF("d2", 0o777),
			),
			changes: one("C /d1/f1", "C /d1/f2", "C /d1/f3", "C /d2"),
		}}},

		{name: "FSDirectoryPermission", lower: [][]ent{{
			dir("d1", 0o700),
			dir("d2", 0o751),
			dir("d3", 0o777),
		}}, steps: []editStep{{
			edit: ops(
				writeF("d1/f", "irrelevant", 0o644),
				mkdirF("d1/d", 0o700),
				writeF("d1/d/f", "irrelevant", 0o644),
				writeF("d2/f", "irrelevant", 0o644),
				writeF("d3/f", "irrelevant", 0o644),
			),
			changes: one("A /d1/f", "A /d1/d", "A /d1/d/f", "A /d2/f", "A /d3/f"),
			check: func(h *harness, root string) {
				for d, want := range map[string]uint32{"d1": 0o700, "d2": 0o751, "d3": 0o777} {
					var st unix.Stat_t
					h.do("stat", unix.Lstat(filepath.Join(root, d), &st))
					if st.Mode&0o7777 != want {
						h.t.Errorf("%s: mode %#o, want %#o", d, st.Mode&0o7777, want)
					}
				}
			},
		}}},

		// The parents of a changed file keep their (restrictive) modes
		// in the commit, which writes them to hold the file.
		{name: "FSParentDirectoryPermission", lower: [][]ent{{
			dir("d1", 0o700),
			dir("d1/a", 0o700),
			dir("d1/a/b", 0o700),
			dir("d1/a/b/c", 0o700),
			file("d1/a/b/f", "content1", 0o500),
			dir("d2", 0o751),
			dir("d2/a", 0o751),
			dir("d2/a/b", 0o751),
			dir("d2/a/b/c", 0o751),
			file("d2/a/b/f", "content1", 0o500),
		}}, steps: []editStep{{
			edit:    ops(writeF("d1/a/b/f", "content2", 0o644), chmodF("d2/a/b/c", 0o700), rmF("d2/a/b/c")),
			changes: one("C /d1/a/b/f", "D /d2/a/b/c"),
		}}},

		{name: "FSHardlinkUnmodified", lower: [][]ent{continuityBase()}, steps: []editStep{{
			edit:    writeF("etc/hosts", "127.0.0.1 localhost.localdomain", 0o644),
			changes: copyUpAnswers([]string{"C /etc/hosts"}, "C /etc/hosts.allow"),
		}, {
			// A new name of an unchanged file, sorting after it.
			edit:     linkF("etc/hosts", "etc/hosts.deny"),
			changes:  one("A /etc/hosts.deny"),
			optional: []string{"C /etc/hosts", "C /etc/hosts.allow"},
		}}},

		{name: "FSHardlinkBeforeUnmodified", lower: [][]ent{continuityBase()}, steps: []editStep{{
			edit:    writeF("etc/hosts", "127.0.0.1 localhost.localdomain", 0o644),
			changes: copyUpAnswers([]string{"C /etc/hosts"}, "C /etc/hosts.allow"),
		}, {
			// A new name sorting before the unchanged file: the tar
			// meets the link before any name of its target.
			edit:     linkF("etc/hosts", "etc/before-hosts"),
			changes:  one("A /etc/before-hosts"),
			optional: []string{"C /etc/hosts", "C /etc/hosts.allow"},
		}}},

		{name: "FSHardlinkBeforeModified", lower: [][]ent{continuityBase()}, steps: []editStep{{
			edit:    writeF("etc/hosts", "127.0.0.1 localhost.localdomain", 0o644),
			changes: copyUpAnswers([]string{"C /etc/hosts"}, "C /etc/hosts.allow"),
		}, {
			// hosts is a new file now, hosts.allow keeps the old inode.
			edit:     ops(rmF("etc/hosts"), writeF("etc/hosts", "127.0.0.1 localhost", 0o644), linkF("etc/hosts", "etc/before-hosts")),
			changes:  one("C /etc/hosts", "A /etc/before-hosts"),
			optional: []string{"C /etc/hosts.allow"},
		}}},

		// ggcr#2029: `rm -rf d && mkdir d` in a container, committed.
		{name: "RmRfMkdir", lower: [][]ent{append(baseLayer(),
			dir("var/d", 0o755), dir("var/d/x", 0o755), file("var/d/x/f", "f", 0o644), file("var/d/y", "y", 0o644),
		)}, steps: []editStep{{
			edit:    ops(rmF("var/d"), mkdirF("var/d", 0o755), writeF("var/d/again", "a", 0o644)),
			changes: rmMkdirAnswers("/var/d", []string{"/var/d/x", "/var/d/y"}, "A /var/d/again"),
		}}},

		// Type replacements, with Changes exactly as diff.Changes
		// documents: a directory replacing a non-directory or the reverse
		// is "D" then "A" (plus "A" of the new directory's children);
		// other type changes are one "C".
		{name: "ChangesFileToDir", lower: [][]ent{baseLayer()}, steps: []editStep{{
			edit:    ops(rmF("etc/passwd"), mkdirF("etc/passwd", 0o750), writeF("etc/passwd/inside", "i", 0o644)),
			changes: one("D /etc/passwd", "A /etc/passwd", "A /etc/passwd/inside"),
		}}},
		{name: "ChangesSymlinkToDir", lower: [][]ent{baseLayer()}, steps: []editStep{{
			edit:    ops(rmF("lib"), mkdirF("lib", 0o755), writeF("lib/own", "own", 0o644)),
			changes: one("D /lib", "A /lib", "A /lib/own"),
			check: func(h *harness, root string) {
				h.checkFile(root, "usr/lib/libc.so", strings.Repeat("elf", 3000))
			},
		}}},
		{name: "ChangesDirToFile", lower: [][]ent{append(baseLayer(), file("var/empty/f", "f", 0o644))}, steps: []editStep{{
			edit:    ops(rmF("var/empty"), writeF("var/empty", "now a file", 0o600)),
			changes: one("D /var/empty", "A /var/empty"),
		}}},
		{name: "ChangesDirToSymlink", lower: [][]ent{baseLayer()}, steps: []editStep{{
			edit:    ops(rmF("usr"), symlinkF("var", "usr")),
			changes: one("D /usr", "A /usr"),
		}}},
		{name: "ChangesFileToSymlink", lower: [][]ent{baseLayer()}, steps: []editStep{{
			edit:    ops(rmF("etc/shadow"), symlinkF("passwd", "etc/shadow")),
			changes: one("C /etc/shadow"),
		}}},
		{name: "ChangesSymlinkToFile", lower: [][]ent{baseLayer()}, steps: []editStep{{
			edit:    ops(rmF("lib"), writeF("lib", "not a link", 0o644)),
			changes: one("C /lib"),
		}}},
	}
}

// copyUpAnswers is what Changes may say of a write to one name of a file
// hard-linked from a lower layer: every name changed (a snapshot driver,
// or overlay with its index), or only the written one, since overlay
// without index copies that name up alone and the others keep the old
// content, as in every peer's overlay. Either way the step's commit must
// show the same tree as the read-write layer, which the case checks.
func copyUpAnswers(written []string, otherNames ...string) [][]string {
	return [][]string{append(append([]string{}, written...), otherNames...), written}
}

// rmMkdirAnswers is what Changes may say of `rm -rf dir && mkdir dir` with
// old children gone and more lines: a double walk sees the directory in
// both trees ("C dir" and a "D" per old child), overlay sees an opaque
// directory (a replacement: "D dir", "A dir"; the "A" lines of the new
// children are in more either way).
func rmMkdirAnswers(dir string, gone []string, more ...string) [][]string {
	walk := []string{"C " + dir}
	for _, g := range gone {
		walk = append(walk, "D "+g)
	}
	return [][]string{append(walk, more...), append([]string{"D " + dir, "A " + dir}, more...)}
}
