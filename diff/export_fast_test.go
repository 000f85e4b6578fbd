package diff

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Export must write exactly the bytes of the serial exporter it replaced
// (refExport, export_reference_test.go): layer digests computed before and
// after the change must agree. These tests compare the two over rich and
// random trees, change lists in any order, with duplicates, replacements,
// whiteouts and errors.

// efCompare exports changes of root with both exporters and fails on the
// first byte that differs; both must fail alike, or succeed alike.
func efCompare(t *testing.T, what, root string, changes []Change, opts ExportOptions) []byte {
	t.Helper()
	ctx := context.Background()
	var want bytes.Buffer
	werr := refExport(ctx, &want, root, changes, opts)
	w := want.Bytes()
	// Export as it runs here, then serially and with 1 and 4 readers
	// whatever the number of changes and CPUs.
	for _, workers := range []int{-1, 0, 1, 4} {
		var got bytes.Buffer
		var gerr error
		if workers < 0 {
			gerr = Export(ctx, &got, root, changes, opts)
		} else {
			gerr = export(ctx, &got, root, changes, opts, workers)
		}
		if (gerr == nil) != (werr == nil) || (gerr != nil && gerr.Error() != werr.Error()) {
			t.Fatalf("%s, workers %d: Export error %v, reference error %v", what, workers, gerr, werr)
		}
		if gerr != nil {
			continue
		}
		g := got.Bytes()
		if !bytes.Equal(g, w) {
			i := 0
			for i < len(g) && i < len(w) && g[i] == w[i] {
				i++
			}
			lo := i / 512 * 512
			t.Fatalf("%s, workers %d: tar differs from the reference at byte %d (block at %d; %d vs %d bytes, sha256 %x vs %x)\ngot block:  %q\nwant block: %q",
				what, workers, i, lo, len(g), len(w), sha256.Sum256(g), sha256.Sum256(w), efBlock(g, lo), efBlock(w, lo))
		}
	}
	if werr != nil {
		return nil
	}
	return w
}

func efBlock(b []byte, off int) []byte {
	if off >= len(b) {
		return nil
	}
	return b[off:min(off+512, len(b))]
}

// efChown sets an owner without following symlinks; it skips the test
// where that is not allowed (not root).
func efChown(t *testing.T, root, rel string, uid, gid int) {
	t.Helper()
	if err := unix.Lchown(filepath.Join(root, rel), uid, gid); err != nil {
		t.Skipf("cannot chown here: %v", err)
	}
}

// efRichTree builds a lower tree and an upper that differs from it in
// every way a layer can carry.
func efRichTree(t *testing.T) (lower, upper string) {
	long := strings.Repeat("n", 255)
	lower, upper = ctLowerUpper(t, func(r string) {
		ctMkdir(t, r, "etc/ssl/certs", 0o755)
		ctWriteFile(t, r, "etc/hosts", "127.0.0.1 localhost\n", 0o644)
		ctWriteFile(t, r, "etc/gone", "x", 0o644)
		ctMkdir(t, r, "opaque/sub", 0o755)
		ctWriteFile(t, r, "opaque/sub/old", "old", 0o644)
		ctWriteFile(t, r, "f2d", "file", 0o644)
		ctMkdir(t, r, "d2f/in", 0o755)
		ctWriteFile(t, r, "shared/base", "linked", 0o644)
		if err := os.Link(filepath.Join(r, "shared/base"), filepath.Join(r, "shared/base2")); err != nil {
			t.Fatal(err)
		}
		ctWriteFile(t, r, "ünïcode/ﬁle", "u", 0o644)
	})
	// Content and metadata changes.
	ctWriteFile(t, upper, "etc/hosts", "::1 localhost\n", 0o600)
	ctRemove(t, upper, "etc/gone")
	ctRemove(t, upper, "opaque")
	ctWriteFile(t, upper, "opaque/sub/new", "new", 0o644)
	ctRemove(t, upper, "f2d")
	ctMkdir(t, upper, "f2d/child", 0o700)
	ctRemove(t, upper, "d2f")
	ctWriteFile(t, upper, "d2f", "now a file", 0o644)
	// Sizes around block and buffer boundaries, and a file bigger than
	// any small-file buffer.
	rng := rand.New(rand.NewSource(1))
	for _, n := range []int{0, 1, 511, 512, 513, 4095, 4096, 65535, 65536, 65537, 131072, 131073, 300000, 1 << 20} {
		b := make([]byte, n)
		rng.Read(b)
		ctWriteFile(t, upper, fmt.Sprintf("sizes/f%07d", n), string(b), 0o644)
	}
	// Names and link targets beyond the ustar fields.
	ctWriteFile(t, upper, "names/"+long, "255-byte name", 0o644)
	ctWriteFile(t, upper, strings.Repeat("deep-directory-name/", 12)+long, "deep", 0o644)
	ctWriteFile(t, upper, "names/ünïcode-ﬁle", "utf-8", 0o644)
	ctWriteFile(t, upper, "names/bad-utf8-\xff\xfe", "latin", 0o644)
	ctWriteFile(t, upper, "names/with space and \"quote\" and \\", "q", 0o644)
	ctWriteFile(t, upper, "names/newline\nname", "nl", 0o644)
	ctMkdir(t, upper, "links", 0o755)
	ctSymlink(t, upper, strings.Repeat("../target/", 40)+"end", "links/long")
	ctSymlink(t, upper, "/abs/target", "links/abs")
	ctSymlink(t, upper, "ünïcode", "links/utf8")
	// Hardlinks: within the set, and to a name outside it.
	ctWriteFile(t, upper, "hl/a", "hardlinked", 0o644)
	for _, n := range []string{"hl/b", "hl/c", "hl/sub/d"} {
		ctMkdir(t, upper, filepath.Dir(n), 0o755)
		if err := os.Link(filepath.Join(upper, "hl/a"), filepath.Join(upper, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(upper, "shared/base"), filepath.Join(upper, "shared/new-link")); err != nil {
		t.Fatal(err)
	}
	// Modes, owners, devices, fifos, sockets.
	ctWriteFile(t, upper, "modes/setuid", "s", 0o4755)
	ctWriteFile(t, upper, "modes/setgid", "s", 0o2711)
	ctMkdir(t, upper, "modes/sticky", 0o1777)
	ctWriteFile(t, upper, "modes/none", "", 0)
	ctMkdir(t, upper, "owners", 0o755)
	ctWriteFile(t, upper, "owners/small", "o", 0o644)
	ctWriteFile(t, upper, "owners/ustar-max", "o", 0o644)
	ctWriteFile(t, upper, "owners/big", "o", 0o644)
	ctWriteFile(t, upper, "owners/huge", "o", 0o644)
	efChown(t, upper, "owners/small", 1000, 1000)
	efChown(t, upper, "owners/ustar-max", 0o7777777, 0o7777777)
	efChown(t, upper, "owners/big", 0o7777777+1, 65536)
	efChown(t, upper, "owners/huge", 2147483646, 4294967294)
	ctMkdir(t, upper, "dev", 0o755)
	ctMknod(t, upper, "dev/null", unix.S_IFCHR|0o666, 1, 3)
	ctMknod(t, upper, "dev/big", unix.S_IFBLK|0o600, 4095, 1048575)
	ctMknod(t, upper, "dev/whiteout-like", unix.S_IFCHR, 0, 0) // mode 0
	if err := unix.Mkfifo(filepath.Join(upper, "dev/fifo"), 0o620); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(filepath.Join(upper, "dev/fifo"), 0o620); err != nil {
		t.Fatal(err)
	}
	if fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0); err == nil {
		_ = unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(upper, "dev/sock")})
		unix.Close(fd)
	}
	// Extended attributes: several, binary, long, on every kind of entry
	// that can carry them, and the ones Export must drop.
	ctSetXattr(t, upper, "sizes/f0000001", "user.a", "1")
	ctSetXattr(t, upper, "sizes/f0000001", "user.b", "\x00binary\xff")
	ctSetXattr(t, upper, "sizes/f0000001", "trusted.x", "t")
	ctSetXattr(t, upper, "sizes/f0000001", "security.capability", string(ctCapNetRaw()))
	ctSetXattr(t, upper, "sizes/f0065536", "user.long", strings.Repeat("v", 3000))
	ctSetXattr(t, upper, "sizes/f0065536", "user."+strings.Repeat("k", 200), "long name")
	ctSetXattr(t, upper, "sizes/f0000000", "user.empty", "")
	ctSetXattr(t, upper, "etc", "user.dir", "d")
	ctSetXattr(t, upper, "opaque", "trusted.overlay.opaque", "y")
	ctSetXattr(t, upper, "opaque", "user.overlay.opaque", "y")
	ctSetXattr(t, upper, "hl/a", "user.link", "shared")
	ctSetXattr(t, upper, "dev/fifo", "trusted.fifo", "f")
	ctSetXattr(t, upper, "dev/null", "trusted.dev", "n")
	if err := unix.Lsetxattr(filepath.Join(upper, "links/abs"), "trusted.sym", []byte("s"), 0); err != nil {
		t.Logf("no xattr on a symlink here: %v", err)
	}
	// Times: nanoseconds, before 1970, after 2038 and beyond the ustar field.
	for rel, tm := range map[string]time.Time{
		"sizes/f0000512":   time.Unix(1700000000, 1),
		"sizes/f0000513":   time.Unix(1700000000, 999999999),
		"sizes/f0004095":   time.Unix(-1, 500),
		"sizes/f0004096":   time.Unix(-86400*365*100, 0),
		"sizes/f0065535":   time.Unix(1<<33-1, 0),
		"sizes/f0065537":   time.Unix(1<<33, 7),
		"sizes/f0131072":   time.Unix(1<<40, 0),
		"links/long":       time.Unix(0, 0),
		"modes/sticky":     time.Unix(2000000000, 0),
		"dev/fifo":         time.Unix(3000000000, 42),
		"owners/ustar-max": time.Unix(1700000000, 0),
	} {
		ctLchtimes(t, upper, rel, tm)
	}
	return lower, upper
}

func TestExportMatchesReference(t *testing.T) {
	lower, upper := efRichTree(t)
	ctx := context.Background()
	changes, err := Changes(ctx, lower, upper)
	if err != nil {
		t.Fatal(err)
	}
	all, err := Changes(ctx, "", upper)
	if err != nil {
		t.Fatal(err)
	}
	epoch := time.Unix(1600000000, 0)
	later := time.Unix(1<<34, 5)
	for _, opts := range []ExportOptions{{}, {SourceDateEpoch: &epoch}, {SourceDateEpoch: &later}} {
		name := "no epoch"
		if opts.SourceDateEpoch != nil {
			name = "epoch " + opts.SourceDateEpoch.String()
		}
		t.Run(name, func(t *testing.T) {
			b := efCompare(t, "changes", upper, changes, opts)
			if len(ctReadTar(t, b)) < 60 {
				t.Fatalf("only %d entries: the fixture is not what it should be", len(ctReadTar(t, b)))
			}
			efCompare(t, "whole tree", upper, all, opts)
			// Any order, with duplicates and extra Modify entries.
			rng := rand.New(rand.NewSource(7))
			for i := range 5 {
				c := append([]Change(nil), changes...)
				for _, x := range changes {
					if rng.Intn(4) == 0 {
						if x.Kind == ChangeAdd {
							x.Kind = ChangeModify
						}
						c = append(c, x)
					}
				}
				rng.Shuffle(len(c), func(a, b int) { c[a], c[b] = c[b], c[a] })
				efCompare(t, fmt.Sprintf("shuffled %d", i), upper, c, opts)
			}
			// Subsets: parents come from root, hardlinks to names left out.
			for i := range 10 {
				var c []Change
				for _, x := range all {
					if rng.Intn(3) == 0 {
						c = append(c, x)
					}
				}
				efCompare(t, fmt.Sprintf("subset %d", i), upper, c, opts)
			}
		})
	}
	// Errors happen at the same entry with the same message.
	for _, c := range [][]Change{
		ctParseChanges("A /etc/hosts", "A /missing"),
		ctParseChanges("A /etc/hosts/below"),
		ctParseChanges("A /links/abs/x"),
		ctParseChanges("A relative"),
		ctParseChanges("D /.wh.x"),
		ctParseChanges("D /nowhere/x"),
	} {
		efCompare(t, fmt.Sprint(c), upper, c, ExportOptions{})
	}
}

func TestExportMatchesReferenceLongPaths(t *testing.T) {
	lower, upper := lpTrees(t)
	changes, err := Changes(context.Background(), lower, upper)
	if err != nil {
		t.Fatal(err)
	}
	efCompare(t, "long paths", upper, changes, ExportOptions{})
	all, err := Changes(context.Background(), "", upper)
	if err != nil {
		t.Fatal(err)
	}
	efCompare(t, "long paths, whole tree", upper, all, ExportOptions{})
}

// TestExportMatchesReferenceRandom compares the exporters over random trees:
// many small files (the case the fast exporter pipelines), some big ones,
// random xattrs, owners, times, modes and hardlinks.
func TestExportMatchesReferenceRandom(t *testing.T) {
	for seed := int64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewSource(seed))
			root := t.TempDir()
			var files []string
			buf := make([]byte, 300<<10)
			rng.Read(buf)
			for i := range 400 {
				dir := fmt.Sprintf("d%d/e%d", rng.Intn(6), rng.Intn(4))
				rel := fmt.Sprintf("%s/f%04d-%s", dir, i, strings.Repeat("x", rng.Intn(120)))
				n := rng.Intn(3000)
				switch rng.Intn(20) {
				case 0:
					n = 64<<10 - 2 + rng.Intn(4)
				case 1:
					n = 100<<10 + rng.Intn(200<<10)
				}
				ctWriteFile(t, root, rel, string(buf[:n]), os.FileMode(0o600+rng.Intn(0o200)))
				files = append(files, rel)
				if rng.Intn(4) == 0 {
					for k := range rng.Intn(4) {
						ctSetXattr(t, root, rel, fmt.Sprintf("user.k%d", k), string(buf[:rng.Intn(300)]))
					}
				}
				if rng.Intn(10) == 0 {
					efChown(t, root, rel, rng.Intn(1<<31-1), rng.Intn(1<<31-1))
				}
				if rng.Intn(15) == 0 && len(files) > 1 {
					other := files[rng.Intn(len(files)-1)]
					ln := fmt.Sprintf("%s/link%04d", dir, i)
					if err := os.Link(filepath.Join(root, other), filepath.Join(root, ln)); err != nil {
						t.Fatal(err)
					}
				}
				if rng.Intn(15) == 0 {
					ctSymlink(t, root, strings.Repeat("t", 1+rng.Intn(300)), fmt.Sprintf("%s/sym%04d", dir, i))
				}
			}
			var paths []string
			if err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
				paths = append(paths, p)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			sort.Sort(sort.Reverse(sort.StringSlice(paths)))
			for _, p := range paths {
				tm := time.Unix(rng.Int63n(1<<34)-1<<32, rng.Int63n(1e9))
				ts := []unix.Timespec{unix.NsecToTimespec(tm.UnixNano()), unix.NsecToTimespec(tm.UnixNano())}
				if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					t.Fatal(err)
				}
			}
			all, err := Changes(context.Background(), "", root)
			if err != nil {
				t.Fatal(err)
			}
			efCompare(t, "whole tree", root, all, ExportOptions{})
			var some []Change
			for _, c := range all {
				if rng.Intn(2) == 0 {
					some = append(some, c)
				}
			}
			efCompare(t, "half the tree", root, some, ExportOptions{})
		})
	}
}

// TestExportParallelFailures: with readers running ahead, a failing
// writer, a cancelled context or a missing entry still end Export with
// the right error, every goroutine and descriptor it started gone.
func TestExportParallelFailures(t *testing.T) {
	root := t.TempDir()
	var changes []Change
	for i := range 300 {
		rel := fmt.Sprintf("d%d/f%03d", i%5, i)
		size := 100
		if i%50 == 0 {
			size = 200 << 10 // streamed, not read ahead
		}
		ctWriteFile(t, root, rel, strings.Repeat("x", size), 0o644)
		changes = append(changes, Change{Kind: ChangeAdd, Path: "/" + rel})
	}
	ctx := context.Background()
	fds, goroutines := lpOpenFds(t), runtime.NumGoroutine()
	check := func(what string) {
		t.Helper()
		if n := lpOpenFds(t); n != fds {
			t.Errorf("%s: %d descriptors open, %d before", what, n, fds)
		}
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > goroutines {
			t.Errorf("%s: %d goroutines, %d before", what, n, goroutines)
		}
	}
	for _, workers := range []int{1, 4} {
		for _, after := range []int64{0, 10 << 10, 1 << 20} {
			werr := errors.New("disk full")
			err := export(ctx, &efFailAfter{n: after, err: werr}, root, changes, ExportOptions{}, workers)
			if !errors.Is(err, werr) {
				t.Errorf("workers %d, writer failing after %d bytes: %v", workers, after, err)
			}
			check(fmt.Sprintf("writer failing after %d bytes", after))
		}
		cctx, cancel := context.WithCancel(ctx)
		cw := &ctCancelWriter{cancel: cancel, after: 256 << 10}
		if err := export(cctx, cw, root, changes, ExportOptions{}, workers); !errors.Is(err, context.Canceled) {
			t.Errorf("workers %d, cancelled: %v", workers, err)
		}
		if cw.n > 2<<20 {
			t.Errorf("workers %d: Export went on for %d bytes after cancel", workers, cw.n-(256<<10))
		}
		check("cancelled")
		bad := append(append([]Change(nil), changes...), Change{Kind: ChangeAdd, Path: "/d2/missing"})
		err := export(ctx, io.Discard, root, bad, ExportOptions{}, workers)
		if werr := refExport(ctx, io.Discard, root, bad, ExportOptions{}); err == nil || werr == nil || err.Error() != werr.Error() {
			t.Errorf("workers %d, missing entry: %v, reference %v", workers, err, werr)
		}
		check("missing entry")
	}
}

// efFailAfter takes n bytes, then fails.
type efFailAfter struct {
	n   int64
	err error
}

func (w *efFailAfter) Write(p []byte) (int, error) {
	if int64(len(p)) > w.n {
		return 0, w.err
	}
	w.n -= int64(len(p))
	return len(p), nil
}

// TestExportShrunkFile: a file shorter than the size its header promises
// (it shrank between lstat and read) is an error naming how far the read
// got, whether read ahead by a worker or streamed by the writer.
func TestExportShrunkFile(t *testing.T) {
	root := t.TempDir()
	ctWriteFile(t, root, "small", strings.Repeat("s", 90), 0o644)
	ctWriteFile(t, root, "big", strings.Repeat("b", 200000), 0o644)
	dfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	ctx := context.Background()
	r := &exportReader{ctx: ctx, bufs: make(chan []byte, 1)}
	for _, c := range []struct {
		name       string
		size       int64
		got, total int64
	}{{"small", 100, 90, 100}, {"big", 300000, 200000, 300000}} {
		ref := &dirRef{fd: dfd, orig: dfd, path: "/"}
		ref.refs.Store(2)
		it := &exportItem{
			hdr:  tarHeader{typeflag: tar.TypeReg, name: c.name, mode: 0o644, size: c.size, mtime: time.Unix(1, 0)},
			path: "/" + c.name, errName: "/" + c.name, dir: ref, name: c.name, xattrs: true,
		}
		r.prepare(it)
		out := &tarOut{ctx: ctx, bw: bufio.NewWriter(io.Discard), r: r}
		err := out.write(it)
		want := fmt.Sprintf("export /%s: file shrank while being read (%d of %d bytes): unexpected EOF", c.name, c.got, c.total)
		if err == nil || err.Error() != want || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%s: %v, want %s", c.name, err, want)
		}
		if it.open {
			t.Errorf("%s: descriptor left open", c.name)
		}
		if n := ref.refs.Load(); n != 1 {
			t.Errorf("%s: %d references left, want 1 (the test's)", c.name, n)
		}
	}
}

// TestXattrReaderFallback: the /proc path reading that kernels before 6.13
// get gives the same attributes as listxattrat/getxattrat, on a file, a
// directory and a symlink (its own, not its target's).
func TestXattrReaderFallback(t *testing.T) {
	root := t.TempDir()
	ctWriteFile(t, root, "f", "x", 0o644)
	ctMkdir(t, root, "d", 0o755)
	ctSymlink(t, root, "f", "l")
	ctSetXattr(t, root, "f", "user.b", "\x00bin\xff")
	ctSetXattr(t, root, "f", "user.a", strings.Repeat("v", 3000))
	ctSetXattr(t, root, "f", "user.overlay.origin", "dropped")
	ctSetXattr(t, root, "d", "trusted.d", "dir")
	ctSetXattr(t, root, "d", "trusted.overlay.opaque", "y")
	dfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	ref := &dirRef{fd: dfd, path: "/"}
	want := map[string][]xattrPair{
		"f": {{"user.a", strings.Repeat("v", 3000)}, {"user.b", "\x00bin\xff"}},
		"d": {{"trusted.d", "dir"}},
		"l": nil,
	}
	for name, w := range want {
		for _, noAt := range []bool{false, true} {
			r := &xattrReader{noAt: noAt, list: make([]byte, 4)} // a short list buffer: ERANGE first
			got, err := r.read(dfd, name, func() string { return ref.procPath(name) })
			if err != nil {
				t.Fatalf("%s (fallback %v): %v", name, noAt, err)
			}
			if fmt.Sprint(got) != fmt.Sprint(w) {
				t.Errorf("%s (fallback %v): %q, want %q", name, noAt, got, w)
			}
		}
	}
}
