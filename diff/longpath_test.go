package diff

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Changes and Export on trees whose paths are longer than PATH_MAX once
// joined to the root: such trees can only be built and read relative to
// directory descriptors (os.MkdirAll fails on them), as Apply makes them.

// lpDepth levels of lpNameLen-byte names: deeper than maxOpenDirs, so the
// descriptor stacks close and reopen levels, and longer than PATH_MAX.
const (
	lpDepth   = 250
	lpNameLen = 20
	lpSide    = 100 // level holding the "side" directory
)

func lpNames() []string {
	names := make([]string, lpDepth)
	for i := range names {
		names[i] = fmt.Sprintf("level-%03d-%s", i, strings.Repeat("x", lpNameLen-10))
	}
	return names
}

// lpPath returns the layer path of the first n levels.
func lpPath(n int) string { return "/" + strings.Join(lpNames()[:n], "/") }

func lpOpenDir(t testing.TB, dirfd int, name string) int {
	t.Helper()
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func lpMkdirAt(t testing.TB, dirfd int, name string) int {
	t.Helper()
	if err := unix.Mkdirat(dirfd, name, 0o755); err != nil {
		t.Fatalf("mkdir %s: %v", name, err)
	}
	fd := lpOpenDir(t, dirfd, name)
	if err := unix.Fchmod(fd, 0o755); err != nil {
		t.Fatal(err)
	}
	return fd
}

func lpWriteAt(t testing.TB, dirfd int, name, content string) {
	t.Helper()
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fchmod(fd, 0o644); err != nil {
		t.Fatal(err)
	}
}

func lpTimesAt(t testing.TB, dirfd int, name string, tm time.Time) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(tm.UnixNano()), unix.NsecToTimespec(tm.UnixNano())}
	if err := unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("set times of %s: %v", name, err)
	}
}

// lpBuild makes under root the lpDepth-level chain, with at its bottom
// (the leaf) files "same" and "mod" and a symlink "link" -> same, and at
// level lpSide a directory "side" with a file "x". The lower version also
// has leaf/old; the upper one has leaf/mod with a later mtime, leaf/new,
// leaf/newdir/f, leaf/hl-new as a hardlink of the unchanged leaf/same, and
// side/y. Every time is ctBaseTime but upper's leaf/mod. It returns the
// descriptors of the levels, root first.
func lpBuild(t testing.TB, root string, upper bool) []int {
	t.Helper()
	fds := []int{lpOpenDir(t, unix.AT_FDCWD, root)}
	names := lpNames()
	for _, n := range names {
		fds = append(fds, lpMkdirAt(t, fds[len(fds)-1], n))
	}
	leaf := fds[lpDepth]
	lpWriteAt(t, leaf, "same", "same content")
	lpWriteAt(t, leaf, "mod", "mod content")
	if err := unix.Symlinkat("same", leaf, "link"); err != nil {
		t.Fatal(err)
	}
	side := lpMkdirAt(t, fds[lpSide], "side")
	lpWriteAt(t, side, "x", "x")
	var newdir int
	if upper {
		lpWriteAt(t, leaf, "new", "new content")
		newdir = lpMkdirAt(t, leaf, "newdir")
		lpWriteAt(t, newdir, "f", "f content")
		if err := unix.Linkat(leaf, "same", leaf, "hl-new", 0); err != nil {
			t.Fatal(err)
		}
		lpWriteAt(t, side, "y", "y")
	} else {
		lpWriteAt(t, leaf, "old", "old content")
	}
	for _, n := range []string{"same", "mod", "link", "new", "hl-new", "old"} {
		if _, err := lstatAt(leaf, n); err == nil {
			lpTimesAt(t, leaf, n, ctBaseTime)
		}
	}
	if upper {
		lpTimesAt(t, leaf, "mod", ctBaseTime.Add(time.Hour))
		lpTimesAt(t, newdir, "f", ctBaseTime)
		lpTimesAt(t, leaf, "newdir", ctBaseTime)
		lpTimesAt(t, side, "y", ctBaseTime)
	}
	lpTimesAt(t, side, "x", ctBaseTime)
	lpTimesAt(t, fds[lpSide], "side", ctBaseTime)
	for i := lpDepth; i >= 1; i-- {
		lpTimesAt(t, fds[i-1], names[i-1], ctBaseTime)
	}
	return fds
}

// lpOpenFds counts this process's open descriptors.
func lpOpenFds(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func lpTrees(t *testing.T) (lower, upper string) {
	base := t.TempDir()
	lower, upper = base+"/lower", base+"/upper"
	for _, d := range []string{lower, upper} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lpBuild(t, lower, false)
	lpBuild(t, upper, true)
	if n := len(upper) + len(lpPath(lpDepth)); n <= unix.PathMax {
		t.Fatalf("test tree paths are %d bytes long, want more than PATH_MAX", n)
	}
	return lower, upper
}

func TestChangesExportLongPaths(t *testing.T) {
	lower, upper := lpTrees(t)
	leaf, side := lpPath(lpDepth), lpPath(lpSide)+"/side"
	ctx := context.Background()

	fds := lpOpenFds(t)
	got, err := Changes(ctx, lower, upper)
	if err != nil {
		t.Fatal(err)
	}
	want := ctParseChanges(
		"A "+leaf+"/hl-new",
		"C "+leaf+"/mod",
		"A "+leaf+"/new",
		"A "+leaf+"/newdir",
		"A "+leaf+"/newdir/f",
		"D "+leaf+"/old",
		"A "+side+"/y",
	)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Changes:\ngot  %v\nwant %v", got, want)
	}
	if n := lpOpenFds(t); n != fds {
		t.Errorf("Changes left %d descriptors open", n-fds)
	}

	// Against an empty lower, every entry is listed.
	all, err := Changes(ctx, "", upper)
	if err != nil {
		t.Fatal(err)
	}
	if n := lpDepth + 3 + 6 + 1; len(all) != n { // levels, side and its 2 files, leaf's 6, newdir/f
		t.Errorf("Changes from empty: %d changes, want %d", len(all), n)
	}

	var buf bytes.Buffer
	if err := Export(ctx, &buf, upper, got, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := lpOpenFds(t); n != fds {
		t.Errorf("Changes and Export left %d descriptors open", n-fds)
	}
	es := ctReadTar(t, buf.Bytes())
	var wantNames []string
	for i := 1; i <= lpDepth; i++ {
		wantNames = append(wantNames, tarName(lpPath(i), true))
	}
	l, s := tarName(leaf, false), tarName(side, false)
	wantNames = append(wantNames, l+"/hl-new", l+"/mod", l+"/new", l+"/newdir/", l+"/newdir/f", l+"/.wh.old",
		s+"/", s+"/y")
	if names := ctNames(es); !reflect.DeepEqual(names, wantNames) {
		t.Fatalf("tar names (%d):\n%q\nwant (%d):\n%q", len(names), names[lpDepth:], len(wantNames), wantNames[lpDepth:])
	}
	if e := ctFind(t, es, l+"/mod"); e.Type != tar.TypeReg || e.Content != "mod content" || !e.ModTime.Equal(ctBaseTime.Add(time.Hour)) {
		t.Errorf("mod: %v", e)
	}
	if e := ctFind(t, es, l+"/newdir/f"); e.Type != tar.TypeReg || e.Content != "f content" {
		t.Errorf("newdir/f: %v", e)
	}
	if e := ctFind(t, es, tarName(lpPath(lpDepth), true)); e.Type != tar.TypeDir || e.Mode != 0o755 || !e.ModTime.Equal(ctBaseTime) {
		t.Errorf("leaf directory: %v", e)
	}
	// leaf/same is unchanged, so the new name of its inode links to it:
	// the walk for unchanged names went below PATH_MAX too.
	if e := ctFind(t, es, l+"/hl-new"); e.Type != tar.TypeLink || e.Link != l+"/same" || e.Size != 0 {
		t.Errorf("hl-new: %v, want a hardlink to the unchanged %s/same", e, l)
	}

}

// A symlink where a directory is expected is never followed, however deep.
func TestExportLongPathSymlinkComponent(t *testing.T) {
	upper := t.TempDir()
	fds := lpBuild(t, upper, true)
	leaf := lpPath(lpDepth)
	if err := unix.Symlinkat("newdir", fds[lpDepth], "ln"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{leaf + "/ln/f", leaf + "/same/f"} {
		err := Export(context.Background(), &bytes.Buffer{}, upper, ctParseChanges("A "+p), ExportOptions{})
		if err == nil || !strings.Contains(err.Error(), "is not a directory") || !strings.Contains(err.Error(), p) {
			t.Errorf("Export of %s: %v, want a not-a-directory error naming it", p, err)
		}
	}
	// The same through a parent already written: the push is what fails.
	err := Export(context.Background(), &bytes.Buffer{}, upper, ctParseChanges("A "+leaf+"/ln", "A "+leaf+"/ln/f"), ExportOptions{})
	if err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Export through an exported symlink: %v, want a not-a-directory error", err)
	}
}

// The descriptor stack closes levels beyond maxOpenDirs and reopens them
// through "..", checking they are the same directories.
func TestDirStackDeep(t *testing.T) {
	root := t.TempDir()
	tfds := lpBuild(t, root, true)
	other := lpMkdirAt(t, tfds[0], "other")
	fds := lpOpenFds(t)
	s, err := openDirStack(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range lpNames() {
		if err := s.push(n); err != nil {
			t.Fatal(err)
		}
	}
	if s.cur != lpPath(lpDepth) {
		t.Fatalf("cur = %s", s.cur)
	}
	if open := lpOpenFds(t) - fds; open > maxOpenDirs+1 {
		t.Errorf("%d descriptors open at depth %d, want at most %d", open, lpDepth, maxOpenDirs+1)
	}
	if _, err := lstatAt(s.fd(), "same"); err != nil {
		t.Fatal(err)
	}
	for s.depth() > lpSide {
		if err := s.pop(); err != nil {
			t.Fatal(err)
		}
	}
	if s.cur != lpPath(lpSide) {
		t.Fatalf("cur = %s, want %s", s.cur, lpPath(lpSide))
	}
	if _, err := lstatAt(s.fd(), "side"); err != nil {
		t.Fatalf("level %d after reopening: %v", lpSide, err)
	}
	// Moving the whole chain keeps every level's identity: the walk
	// goes on.
	if err := os.Rename(root+"/"+lpNames()[0], root+"/moved"); err != nil {
		t.Fatal(err)
	}
	if err := s.push("side"); err != nil {
		t.Fatal(err)
	}
	if err := s.pop(); err != nil {
		t.Fatal(err)
	}
	// Back down, then a closed level's child is moved elsewhere: coming
	// back up, its ".." is not the level any more.
	for s.depth() < lpDepth {
		if err := s.push(lpNames()[s.depth()]); err != nil {
			t.Fatal(err)
		}
	}
	lvl := 50 // closed now
	if err := unix.Renameat(tfds[lvl], lpNames()[lvl], other, lpNames()[lvl]); err != nil {
		t.Fatal(err)
	}
	var perr error
	for s.depth() > 0 && perr == nil {
		perr = s.pop()
	}
	if perr == nil || !strings.Contains(perr.Error(), "moved during the walk") || s.depth() != lvl {
		t.Errorf("popping past a moved directory: %v at depth %d, want a moved error at depth %d", perr, s.depth(), lvl)
	}
	s.close()
	if n := lpOpenFds(t); n != fds {
		t.Errorf("%d descriptors left open", n-fds)
	}
}
