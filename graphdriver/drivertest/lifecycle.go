package drivertest

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
)

type lifecycleCase struct {
	name string
	run  func(h *harness)
}

var lifecycleCases = []lifecycleCase{
	{"CreateEmpty", testCreateEmpty},
	{"CreateExistsRemove", testCreateExistsRemove},
	{"CreateSnap", testCreateSnap},
	{"ReadWriteIsolation", testReadWriteIsolation},
	{"Changes", testChanges},
	{"ChmodOnlyChange", testChmodOnly},
	{"ChownOnlyChange", testChownOnly},
	{"Echo", testEcho},
	{"DiffApply", testDiffApply},
	{"DirPermOnCommit", testDirPermOnCommit},
	{"SparseFile", testSparseFile},
	{"UnixSocket", testUnixSocket},
	{"MountCount", testMountCount},
	{"PutWithoutGet", testPutWithoutGet},
	{"RemoveMounted", testRemoveMounted},
	{"RemoveWithChildren", testRemoveWithChildren},
	{"RemoveAfterCommit", testRemoveAfterCommit},
	{"Concurrent", testConcurrent},
}

// checkFile fails unless rel under root is a file holding content.
func (h *harness) checkFile(root, rel, content string) {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		h.t.Errorf("read %s: %v", rel, err)
		return
	}
	if string(b) != content {
		h.t.Errorf("%s holds %q, want %q", rel, trunc(b), content)
	}
}

func trunc(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// do fails the test on err, naming the step.
func (h *harness) do(step string, err error) {
	h.t.Helper()
	if err != nil {
		h.fatalf("%s: %v", step, err)
	}
}

// An empty layer, read-only or read-write, is an empty directory, mode
// 0755, owned by root (cs DriverTestCreateEmpty).
func testCreateEmpty(h *harness) {
	h.create("empty", "")
	h.createRW("empty-rw", "")
	for _, name := range []string{"empty", "empty-rw"} {
		if !h.d.Exists(id(name)) {
			h.t.Errorf("Exists(%s) = false after Create", name)
		}
		h.check(name, fixtures.EmptyTree())
		h.with(name, func(root string) {
			entries, err := os.ReadDir(root)
			if err != nil || len(entries) != 0 {
				h.t.Errorf("layer %s: root holds %d entries (err %v), want none", name, len(entries), err)
			}
		})
	}
}

// Exists follows Create and Remove; a second Create of an ID and Get of an
// unknown one fail with the contract's sentinel errors.
func testCreateExistsRemove(h *harness) {
	if h.d.Exists(id("a")) {
		h.t.Error("Exists before Create")
	}
	h.create("a", "")
	if err := h.d.Create(id("a"), "", nil); !errors.Is(err, graphdriver.ErrLayerExists) {
		h.t.Errorf("second Create of the same ID: got %v, want an error wrapping ErrLayerExists", err)
	}
	if err := h.d.CreateReadWrite(id("a"), "", nil); !errors.Is(err, graphdriver.ErrLayerExists) {
		h.t.Errorf("CreateReadWrite of an existing ID: got %v, want an error wrapping ErrLayerExists", err)
	}
	if p, err := h.d.Get(id("nope"), graphdriver.MountOpts{}); !errors.Is(err, graphdriver.ErrLayerNotExist) {
		h.t.Errorf("Get of an unknown ID: got (%q, %v), want an error wrapping ErrLayerNotExist", p, err)
		if err == nil {
			_ = h.d.Put(id("nope"))
		}
	}
	if err := h.d.Create(id("orphan"), id("nope"), nil); err == nil {
		h.t.Error("Create on an unknown parent succeeded")
	}
	h.do("Remove", h.d.Remove(id("a")))
	if h.d.Exists(id("a")) {
		h.t.Error("Exists after Remove")
	}
	// The ID is free again.
	h.create("a", "")
	h.check("a", fixtures.EmptyTree())
}

// A snapshot of a snapshot shows its parent's chmods and chowns, root
// directory included (cs/moby CreateSnap).
func testCreateSnap(h *harness) {
	h.need("chown")
	h.layer("base", "", baseLayer()...)
	h.createRW("edited", "base")
	h.with("edited", func(root string) {
		h.do("chmod root", os.Chmod(root, 0o711))
		h.do("chmod dir", os.Chmod(filepath.Join(root, "etc"), 0o750))
		h.do("chmod file", unix.Chmod(filepath.Join(root, "etc/passwd"), 0o4600))
		h.do("chown dir", os.Lchown(filepath.Join(root, "usr"), 1000, 1001))
		h.do("chown symlink", os.Lchown(filepath.Join(root, "lib"), 7, 7))
	})
	want := h.snap("edited")
	h.create("snap1", "edited")
	h.create("snap2", "snap1")
	h.createRW("snap3", "snap2")
	for _, name := range []string{"snap1", "snap2", "snap3"} {
		h.check(name, want)
	}
}

// Writes in a read-write layer never show in its parent or a sibling
// (docker#21555 file update in upper, #25244 rm dir from lower, #20240
// chown of a lower file).
func testReadWriteIsolation(h *harness) {
	h.layer("base", "", baseLayer()...)
	want := h.expect(baseLayer())
	h.createRW("c1", "base")
	h.createRW("c2", "base")
	h.with("c1", func(root string) { editTree(h, root) })
	h.check("base", want)
	h.check("c2", want)
}

// editTree makes the edits testChanges expects: every kind of change a
// container makes, on paths whose Changes entries nobody disputes.
func editTree(h *harness, root string) {
	h.t.Helper()
	p := func(rel string) string { return filepath.Join(root, rel) }
	h.do("modify", os.WriteFile(p("etc/passwd"), []byte("changed\n"), 0o644))
	h.do("add", os.WriteFile(p("etc/new"), []byte("new\n"), 0o644))
	h.do("delete", os.Remove(p("etc/shadow")))
	h.do("delete dir", os.RemoveAll(p("usr")))
	h.do("add dir", os.Mkdir(p("newdir"), 0o750))
	h.do("add in new dir", os.WriteFile(p("newdir/f"), []byte("f"), 0o600))
	h.do("rename", os.Rename(p("bin/sh"), p("bin/dash")))
	h.do("symlink", os.Symlink("../etc/new", p("bin/newlink")))
	h.do("hardlink", os.Link(p("etc/new"), p("etc/new-link")))
	h.do("chmod", os.Chmod(p("var/empty"), 0o711))
}

// editTreeChanges is what Changes must report for editTree.
var editTreeChanges = []string{
	"A /bin/dash",
	"A /bin/newlink",
	"A /etc/new",
	"A /etc/new-link",
	"A /newdir",
	"A /newdir/f",
	"C /etc/passwd",
	"C /var/empty",
	"D /bin/sh",
	"D /etc/shadow",
	"D /usr",
}

// Changes of a read-write layer equals the set of edits made in it
// (cs/moby Changes).
func testChanges(h *harness) {
	h.layer("base", "", baseLayer()...)
	h.createRW("c", "base")
	h.with("c", func(root string) { editTree(h, root) })
	// bin/bash shares its inode with bin/sh, renamed to bin/dash: its
	// content and metadata stay, but its ctime moves, so a differ may
	// list it or not.
	h.checkChanges(h.changes("c", "base"), editTreeChanges, "C /bin/bash")
}

// A chmod alone, with content and mtime untouched, is a change
// (docker/machine#3327), and survives a diff -> apply round trip.
func testChmodOnly(h *harness) {
	h.layer("base", "", baseLayer()...)
	h.createRW("c", "base")
	h.with("c", func(root string) {
		h.do("chmod", unix.Chmod(filepath.Join(root, "usr/lib/libc.so"), 0o4711))
		h.do("chmod dir", os.Chmod(filepath.Join(root, "var/empty"), 0o755))
	})
	h.checkChanges(h.changes("c", "base"), []string{"C /usr/lib/libc.so", "C /var/empty"})
	h.roundTrip("c", "base")
}

// A chown alone is a change, and survives a diff -> apply round trip.
func testChownOnly(h *harness) {
	h.need("chown")
	h.layer("base", "", baseLayer()...)
	h.createRW("c", "base")
	h.with("c", func(root string) {
		h.do("chown", os.Lchown(filepath.Join(root, "etc/passwd"), 1000, 1000))
		h.do("chown symlink", os.Lchown(filepath.Join(root, "lib"), 70000, 70000))
	})
	h.checkChanges(h.changes("c", "base"), []string{"C /etc/passwd", "C /lib"})
	h.roundTrip("c", "base")
}

// Nested directories deleted in one layer and recreated in the next, at
// depths 1 to 10: Changes is exact both times (cs Echo).
func testEcho(h *harness) {
	for depth := 1; depth <= 10; depth++ {
		var entries []fixtures.Entry
		var paths []string
		p := ""
		for i := 0; i < depth; i++ {
			p += fmt.Sprintf("/d%d", i)
			entries = append(entries, fixtures.Dir(p, 0o755), fixtures.File(p+"/file", "v1", 0o644))
			paths = append(paths, p, p+"/file")
		}
		base, del, re := fmt.Sprintf("echo%d-base", depth), fmt.Sprintf("echo%d-del", depth), fmt.Sprintf("echo%d-re", depth)
		h.layer(base, "", entries...)
		h.layer(del, base, fixtures.Whiteout("d0"))
		h.checkChanges(h.changes(del, base), []string{"D /d0"})
		h.createRW(re, del)
		h.with(re, func(root string) {
			for _, q := range paths {
				if filepath.Base(q) == "file" {
					h.do("recreate", os.WriteFile(root+q, []byte("v2"), 0o644))
				} else {
					h.do("recreate", os.Mkdir(root+q, 0o755))
				}
			}
		})
		want := make([]string, len(paths))
		for i, q := range paths {
			want[i] = "A " + q
		}
		h.checkChanges(h.changes(re, del), want)
		if h.t.Failed() {
			h.t.Fatalf("at depth %d", depth)
		}
	}
}

// Edits in a read-write layer, diffed and applied as a new layer on the
// same parent, give the same tree: deletions of files and directories,
// renames, links and attribute changes all survive (cs/moby DiffApply).
func testDiffApply(h *harness) {
	h.layer("base", "", baseLayer()...)
	h.createRW("c", "base")
	h.with("c", func(root string) {
		editTree(h, root)
		p := func(rel string) string { return filepath.Join(root, rel) }
		h.do("symlink to dir", os.Remove(p("lib")))
		h.do("symlink to dir", os.Mkdir(p("lib"), 0o755))
		h.do("file to dir", os.Remove(p("etc/passwd")))
		h.do("file to dir", os.Mkdir(p("etc/passwd"), 0o700))
		h.do("fifo", unix.Mkfifo(p("newdir/fifo"), 0o640))
		h.do("big file", fixtures.BigFiles(p("newdir/big"), 1, 3<<20+5, 42))
		h.do("many files", fixtures.SmallFiles(p("newdir/small"), 100, 7))
		h.do("mtime", os.Chtimes(p("var/empty"), fixtures.DefaultMtime, fixtures.DefaultMtime.Add(-1e9)))
	})
	h.roundTrip("c", "base")
	// The tar must also honour the deletions on a parent that has them.
	tr := tar.NewReader(bytes.NewReader(h.diffTar("c", "base")))
	names := map[string]bool{}
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			break
		}
		h.do("read diff tar", err)
		names[filepath.Clean(hd.Name)] = true
	}
	for _, wh := range []string{"etc/.wh.shadow", ".wh.usr", "bin/.wh.sh"} {
		if !names[wh] {
			h.t.Errorf("diff tar lacks whiteout %s", wh)
		}
	}
	for n := range names {
		if filepath.Dir(n) == "usr" || filepath.Dir(filepath.Dir(n)) == "usr" {
			h.t.Errorf("diff tar holds %s below the deleted /usr", n)
		}
	}
}

// Adding a file under a directory whose mode and owner a lower layer set
// keeps them through a commit (docker#27298).
func testDirPermOnCommit(h *harness) {
	h.need("chown")
	lower := []fixtures.Entry{
		fixtures.Dir("srv", 0o755),
		fixtures.Dir("srv/data", 0o2750, fixtures.Owner(1000, 1001)),
		fixtures.File("srv/data/old", "o", 0o640, fixtures.Owner(1000, 1001)),
	}
	h.layer("base", "", lower...)
	h.createRW("c", "base")
	h.with("c", func(root string) {
		h.do("add", os.WriteFile(filepath.Join(root, "srv/data/new"), []byte("n"), 0o600))
	})
	h.roundTrip("c", "base")
	h.with("c-roundtrip", func(root string) {
		var st unix.Stat_t
		h.do("stat", unix.Lstat(filepath.Join(root, "srv/data"), &st))
		if st.Mode&0o7777 != 0o2750 || st.Uid != 1000 || st.Gid != 1001 {
			h.t.Errorf("committed /srv/data is %#o %d:%d, want 02750 1000:1001", st.Mode&0o7777, st.Uid, st.Gid)
		}
	})
}

// A 1 GiB file holding a few bytes is applied sparsely, keeps its size and
// content, and stays sparse in a child layer.
func testSparseFile(h *harness) {
	const size = 1 << 30
	chunks := []fixtures.Chunk{{Offset: 0, Data: "head"}, {Offset: size/2 + 1, Data: "middle"}, {Offset: size - 4, Data: "tail"}}
	rc := fixtures.Reader(fixtures.SparseFile("sparse", size, chunks, 0o644))
	h.create("sparse", "")
	h.apply("sparse", "", rc)
	rc.Close()
	h.create("sparse-child", "sparse")
	for _, name := range []string{"sparse", "sparse-child"} {
		h.with(name, func(root string) {
			f, err := os.Open(filepath.Join(root, "sparse"))
			h.do("open", err)
			defer f.Close()
			var st unix.Stat_t
			h.do("stat", unix.Fstat(int(f.Fd()), &st))
			if st.Size != size {
				h.t.Errorf("layer %s: size %d, want %d", name, st.Size, size)
			}
			for _, c := range append(chunks, fixtures.Chunk{Offset: size / 4, Data: "\x00\x00\x00\x00"}) {
				buf := make([]byte, len(c.Data))
				if _, err := f.ReadAt(buf, c.Offset); err != nil || string(buf) != c.Data {
					h.t.Errorf("layer %s: at %d read %q (%v), want %q", name, c.Offset, buf, err, c.Data)
				}
			}
			if used := st.Blocks * 512; used > 64<<20 {
				h.t.Errorf("layer %s: the 1 GiB sparse file uses %d MiB on disk; zero runs should be holes", name, used>>20)
			}
		})
	}
}

// A unix socket in a read-write layer is skipped by Diff, without error
// (docker#12080).
func testUnixSocket(h *harness) {
	h.layer("base", "", baseLayer()...)
	h.createRW("c", "base")
	h.with("c", func(root string) {
		h.do("mknod socket", unix.Mknod(filepath.Join(root, "etc/sock"), unix.S_IFSOCK|0o755, 0))
		h.do("add", os.WriteFile(filepath.Join(root, "etc/beside"), []byte("b"), 0o644))
	})
	tr := tar.NewReader(bytes.NewReader(h.diffTar("c", "base")))
	seen := false
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			break
		}
		h.do("read diff tar", err)
		switch filepath.Clean(hd.Name) {
		case "etc/sock":
			h.t.Errorf("diff tar holds the socket as type %q", hd.Typeflag)
		case "etc/beside":
			seen = true
		}
	}
	if !seen {
		h.t.Error("diff tar lacks etc/beside, added next to the socket")
	}
}

// Get counts references: the path stays valid while one is held, and a
// driver that mounts unmounts at the last Put.
func testMountCount(h *harness) {
	h.layer("base", "", baseLayer()...)
	for _, name := range []string{"base"} {
		p1 := h.get(name)
		p2 := h.get(name)
		if p1 != p2 {
			h.t.Errorf("two Gets of %s returned %q and %q", name, p1, p2)
		}
		isMount := mounted(p1)
		h.put(name)
		h.checkFile(p1, "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
		if isMount && !mounted(p1) {
			h.t.Errorf("%s unmounted while a reference is still held", p1)
		}
		h.put(name)
		if isMount && mounted(p1) {
			h.t.Errorf("%s still mounted after the last Put", p1)
		}
		// And again, after going to zero.
		p3 := h.get(name)
		h.checkFile(p3, "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
		h.put(name)
		if isMount && mounted(p3) {
			h.t.Errorf("%s still mounted after the last Put of a second round", p3)
		}
	}
}

// Put without a matching Get is a no-op returning nil (see the package
// doc), and leaves other references alone.
func testPutWithoutGet(h *harness) {
	h.layer("base", "", baseLayer()...)
	for i := 0; i < 2; i++ {
		if err := h.d.Put(id("base")); err != nil {
			h.t.Errorf("Put of a layer never mounted (call %d): %v; want nil (no-op)", i+1, err)
		}
	}
	p := h.get("base")
	isMount := mounted(p)
	p2 := h.get("base")
	h.put("base")
	h.put("base")
	if err := h.d.Put(id("base")); err != nil {
		h.t.Errorf("Put beyond the Gets: %v; want nil (no-op)", err)
	}
	if isMount && mounted(p2) {
		h.t.Errorf("%s still mounted after the last Put", p2)
	}
	// The count must not have gone negative: one Get, one Put, unmounted.
	p = h.get("base")
	h.checkFile(p, "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
	h.put("base")
	if isMount && mounted(p) {
		h.t.Errorf("%s still mounted: the extra Puts skewed the count", p)
	}
}

// Removing a mounted layer unmounts it (the driver contract).
func testRemoveMounted(h *harness) {
	h.layer("base", "", baseLayer()...)
	h.createRW("c", "base")
	p := h.get("c")
	isMount := mounted(p)
	h.do("Remove of a mounted layer", h.d.Remove(id("c")))
	h.mu.Lock()
	h.counts["c"] = 0
	h.mu.Unlock()
	if h.d.Exists(id("c")) {
		h.t.Error("Exists after Remove")
	}
	if isMount && mounted(p) {
		h.t.Errorf("%s still mounted after Remove", p)
	}
}

// Drivers may remove a layer that has children (refusing is the store's
// job), but removing the child afterwards must still work.
func testRemoveWithChildren(h *harness) {
	h.layer("parent", "", baseLayer()...)
	h.layer("child", "parent", fixtures.File("c", "c", 0o644))
	err := h.d.Remove(id("parent"))
	h.t.Logf("Remove of a layer with a child: %v (either answer is allowed)", err)
	h.do("Remove child", h.d.Remove(id("child")))
	if h.d.Exists(id("parent")) {
		h.do("Remove parent", h.d.Remove(id("parent")))
	}
	if h.d.Exists(id("parent")) || h.d.Exists(id("child")) {
		h.t.Error("layers still exist after removal")
	}
}

// A read-write layer can be removed right after it was committed (diffed
// and applied as a new layer), which keeps its content (docker#24309).
func testRemoveAfterCommit(h *harness) {
	h.layer("base", "", baseLayer()...)
	h.createRW("c", "base")
	h.with("c", func(root string) {
		// No hardlink edits here: DiffApply covers those, this case is
		// about removal.
		h.do("modify", os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("changed\n"), 0o644))
		h.do("add", os.WriteFile(filepath.Join(root, "etc/new"), []byte("new\n"), 0o644))
		h.do("delete", os.RemoveAll(filepath.Join(root, "usr")))
	})
	want := h.snap("c")
	tarBytes := h.diffTar("c", "base")
	h.create("committed", "base")
	h.apply("committed", "base", bytes.NewReader(tarBytes))
	h.do("Remove after commit", h.d.Remove(id("c")))
	if h.d.Exists(id("c")) {
		h.t.Error("Exists after Remove")
	}
	h.check("committed", want)
}

// Many goroutines creating, mounting, writing, reading and removing layers
// on one shared parent: no errors, no leaked mounts.
func testConcurrent(h *harness) {
	h.layer("base", "", baseLayer()...)
	const workers, ops = 16, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*ops)
	var mu sync.Mutex
	paths := map[string]bool{}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < ops; i++ {
				if err := concurrentOp(h.d, w, i, &mu, paths); err != nil {
					errs <- fmt.Errorf("worker %d op %d: %w", w, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		h.t.Error(err)
	}
	for p := range paths {
		if mounted(p) {
			h.t.Errorf("%s still mounted after all Puts", p)
		}
	}
	h.check("base", h.expect(baseLayer()))
}

func concurrentOp(d graphdriver.Driver, w, i int, mu *sync.Mutex, paths map[string]bool) error {
	base, me := id("base"), id(fmt.Sprintf("w%d-%d", w, i))
	var err error
	if i%2 == 0 {
		err = d.CreateReadWrite(me, base, nil)
	} else {
		err = d.Create(me, base, nil)
	}
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	root, err := d.Get(me, graphdriver.MountOpts{})
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	broot, err := d.Get(base, graphdriver.MountOpts{})
	if err != nil {
		d.Put(me)
		return fmt.Errorf("get base: %w", err)
	}
	mu.Lock()
	paths[root], paths[broot] = true, true
	mu.Unlock()
	werr := os.WriteFile(filepath.Join(root, "mine"), []byte(me), 0o644)
	got, rerr := os.ReadFile(filepath.Join(broot, "etc/passwd"))
	mine, merr := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err := d.Put(base); err != nil {
		return fmt.Errorf("put base: %w", err)
	}
	if err := d.Put(me); err != nil {
		return fmt.Errorf("put: %w", err)
	}
	switch {
	case werr != nil && i%2 == 1 && errors.Is(werr, unix.EROFS):
		// An image layer's mount may be read-only (see the package doc).
	case werr != nil:
		return werr
	case rerr != nil:
		return rerr
	case merr != nil:
		return merr
	case string(got) != string(mine):
		return fmt.Errorf("layer shows %q, parent %q", mine, got)
	}
	if !d.Exists(me) {
		return fmt.Errorf("layer vanished")
	}
	if err := d.Remove(me); err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	return nil
}
