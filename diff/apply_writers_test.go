package diff

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/loopfs"
)

// wrTar builds a seeded layer that mixes what the file writers take (new
// small files in new directories) with everything that must wait for them:
// files listed twice, hardlinks to files just queued, whiteouts of this
// layer's own files, a file turned into a directory and back, relisted
// directories with new owners, big files written inline, symlinked
// parents.
func wrTar(t *testing.T, seed uint64) []byte {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 42))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1600000000, 123456789)
	add := func(h *tar.Header, body []byte) {
		h.Format, h.ModTime = tar.FormatPAX, mtime
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if len(body) > 0 {
			if _, err := tw.Write(body); err != nil {
				t.Fatal(err)
			}
		}
	}
	content := func(n int) []byte {
		b := make([]byte, n)
		for i := 0; i < n; i += 8 {
			v := r.Uint64()
			for j := i; j < min(i+8, n); j++ {
				b[j] = byte('a' + v%26)
				v /= 26
			}
		}
		return b
	}
	var files []string
	for d := 0; d < 24; d++ {
		dir := fmt.Sprintf("d%02d", d)
		add(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, Gid: 100 * (d % 3)}, nil)
		for f := 0; f < 20; f++ {
			name := fmt.Sprintf("%s/f%02d", dir, f)
			size := r.IntN(6000)
			if r.IntN(40) == 0 {
				size = 70000 + r.IntN(200000) // inline: bigger than a message
			}
			add(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(0o600 + r.IntN(0o200)), Uid: r.IntN(2) * 1000, Gid: r.IntN(2) * 100}, content(size))
			files = append(files, name)
			switch r.IntN(12) {
			case 0: // listed again: the second one wins
				add(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, content(r.IntN(100)))
			case 1: // a hardlink to a file that may still be queued
				add(&tar.Header{Typeflag: tar.TypeLink, Name: name + ".lnk", Linkname: files[r.IntN(len(files))]}, nil)
			case 2: // a whiteout of this layer's own file: no effect
				add(&tar.Header{Typeflag: tar.TypeReg, Name: dir + "/" + WhiteoutPrefix + fmt.Sprintf("f%02d", f)}, nil)
			case 3: // a file turned into a directory with a child
				add(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o750}, nil)
				add(&tar.Header{Typeflag: tar.TypeReg, Name: name + "/child", Mode: 0o644}, content(10))
				files[len(files)-1] = name + "/child"
			case 5: // a symlink to a sibling directory, and a file through it
				add(&tar.Header{Typeflag: tar.TypeSymlink, Name: name + ".sl", Linkname: "/d00"}, nil)
				add(&tar.Header{Typeflag: tar.TypeReg, Name: name + ".sl/via-" + fmt.Sprintf("%s-f%02d", dir, f), Mode: 0o644}, content(20))
			case 6: // the directory listed again, with another group
				add(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o2775, Gid: 4242}, nil)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// wrTree is what the comparison looks at for every path.
func wrTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		line := fmt.Sprintf("%s mode=%o owner=%d:%d size=%d", rel, st.Mode, st.Uid, st.Gid, st.Size)
		if rel != "." {
			line += fmt.Sprintf(" mtime=%d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" sha256=%x", sha256.Sum256(b))
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					line += " linked-to=" + first
				} else {
					inodes[st.Ino] = rel
				}
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += " -> " + target
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// With writers, Apply gives exactly the tree it gives without them, for
// layers where order matters at every turn.
func TestApplyWritersMatchSerial(t *testing.T) {
	atRequireRoot(t)
	if writerCount() < 2 {
		t.Skip("one CPU: Apply starts no writers here")
	}
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			layer := wrTar(t, seed)
			// tmpfs: / here slows down badly under file churn.
			fs := loopfs.New(t, "tmpfs", 256<<20)
			serial, parallel := filepath.Join(fs, "serial"), filepath.Join(fs, "parallel")
			for _, d := range []string{serial, parallel} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			rs, err := atApply(t, serial, layer, ApplyOptions{noWriters: true})
			if err != nil {
				t.Fatal(err)
			}
			rp, err := atApply(t, parallel, layer, ApplyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rs != rp {
				t.Fatalf("results differ: serial %+v, with writers %+v", rs, rp)
			}
			want, got := wrTree(t, serial), wrTree(t, parallel)
			if len(want) < 400 {
				t.Fatalf("only %d entries: the layer is not exercising anything", len(want))
			}
			for i := 0; i < len(want) || i < len(got); i++ {
				var w, g string
				if i < len(want) {
					w = want[i]
				}
				if i < len(got) {
					g = got[i]
				}
				if w != g {
					t.Fatalf("trees differ at entry %d:\n serial:       %s\n with writers: %s", i, w, g)
				}
			}
		})
	}
}
