package fscopy

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A source that is shorter than its stat said when its data is copied
// (it shrank during the copy) is an error, not a copy padded with zeros;
// with copy_file_range, with read/write, and on the sparse path.
func TestCopyDataSourceShrank(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	must(t, os.WriteFile(src, []byte("0123456789"), 0o644))
	for _, c := range []struct {
		name   string
		mode   ReflinkMode
		sparse bool
	}{{"copy_file_range", ReflinkAuto, false}, {"readwrite", ReflinkNever, false}, {"sparse", ReflinkNever, true}} {
		t.Run(c.name, func(t *testing.T) {
			sfd, err := unix.Open(src, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			must(t, err)
			defer unix.Close(sfd)
			dfd, err := unix.Open(filepath.Join(dir, c.name), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
			must(t, err)
			defer unix.Close(dfd)
			var st unix.Stat_t
			must(t, unix.Fstat(sfd, &st))
			st.Size = 1 << 20 // as stat'ed before it shrank to 10 bytes
			if !c.sparse {
				st.Blocks = st.Size / 512
			}
			cp := newCopier(Options{Reflink: c.mode})
			cp.devs[st.Dev] = &devState{cloneBad: true} // no FICLONE: tempdir may be xfs
			err = cp.copyData(sfd, dfd, &st)
			if !errors.Is(err, errSourceChanged) {
				t.Fatalf("copy of a source that shrank: %v, want %v", err, errSourceChanged)
			}
		})
	}
}
