package diff

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"
)

// tthArchiveTar is what archive/tar writes for h: the reference.
func tthArchiveTar(h *tarHeader) ([]byte, error) {
	var buf bytes.Buffer
	err := tar.NewWriter(&buf).WriteHeader(h.tarHeader())
	return buf.Bytes(), err
}

func tthCheck(t *testing.T, h *tarHeader) bool {
	t.Helper()
	want, werr := tthArchiveTar(h)
	got, gerr := appendTarHeader([]byte("prefix"), h)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("%+v: error %v, archive/tar %v", *h, gerr, werr)
	}
	if werr != nil {
		return false
	}
	if !bytes.HasPrefix(got, []byte("prefix")) || !bytes.Equal(got[6:], want) {
		g := got[min(6, len(got)):]
		i := 0
		for i < len(g) && i < len(want) && g[i] == want[i] {
			i++
		}
		t.Fatalf("%+v (fast path %v): differs from archive/tar at byte %d of %d/%d\ngot  %q\nwant %q",
			*h, h.fastPath(), i, len(g), len(want), g, want)
	}
	return h.fastPath()
}

// TestTarHeaderMatchesArchiveTar compares the header writer with
// archive/tar over the field values at every boundary of the ustar format
// and random combinations of them, on both its fast and slow paths.
func TestTarHeaderMatchesArchiveTar(t *testing.T) {
	names := []string{
		"f", "dir/", "a/b/c", strings.Repeat("n", 99), strings.Repeat("n", 100), strings.Repeat("n", 101),
		strings.Repeat("d/", 49) + "x", strings.Repeat("d/", 50) + "x", strings.Repeat("d/", 50),
		strings.Repeat("p", 90) + "/" + strings.Repeat("q", 20), strings.Repeat("p", 200) + "/f",
		"ünïcode", "bad-\xff", "with space/\"q\"\\", "new\nline", ".wh.x", "d/.wh..wh..opq",
		"PaxHeaders.0/x", strings.Repeat("x", 95) + "/y/",
	}
	links := []string{"", "target", "../up", strings.Repeat("l", 100), strings.Repeat("l", 101), "ünï", "bad\xfe"}
	nums := []int64{0, 1, 0o7777, 1<<21 - 1, 1 << 21, 1<<31 - 1, 1<<32 - 2}
	sizes := []int64{0, 1, 511, 512, 1<<33 - 1, 1 << 33, 1 << 40}
	times := []time.Time{
		time.Unix(0, 0), time.Unix(0, 1), time.Unix(1, 0), time.Unix(1700000000, 123456789),
		time.Unix(1700000000, 100000000), time.Unix(1700000000, 999999999), time.Unix(1<<33-1, 0),
		time.Unix(1<<33-1, 5), time.Unix(1<<33, 0), time.Unix(-1, 0), time.Unix(-1, 1), time.Unix(-86400, 500000000),
		time.Unix(1<<40, 1),
	}
	xattrSets := [][]xattrPair{
		nil,
		{{"user.a", "1"}},
		{{"security.capability", "\x01\x00\x00\x02"}, {"trusted.x", ""}, {"user.b", "\x00bin\xff"}},
		{{"user." + strings.Repeat("k", 200), strings.Repeat("v", 5000)}},
		{{"user.a", strings.Repeat("v", 90)}}, // record length crosses 99 -> 100
		{{"user.a=b", "eq"}},
		{{"user.ü", "utf8 key"}},
	}
	types := []byte{tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo}
	fast, slow := 0, 0
	count := func(f bool) {
		if f {
			fast++
		} else {
			slow++
		}
	}
	base := tarHeader{typeflag: tar.TypeReg, name: "f", mode: 0o644, mtime: time.Unix(1700000000, 0)}
	// Each value of each field on its own.
	for _, n := range names {
		h := base
		h.name = n
		if strings.HasSuffix(n, "/") {
			h.typeflag = tar.TypeDir
		}
		count(tthCheck(t, &h))
	}
	for _, l := range links {
		h := base
		h.typeflag, h.linkname = tar.TypeSymlink, l
		count(tthCheck(t, &h))
	}
	for _, n := range nums {
		for i := range 5 {
			h := base
			switch i {
			case 0:
				h.uid = int(n)
			case 1:
				h.gid = int(n)
			case 2:
				h.mode = n & 0o7777
			case 3:
				h.typeflag, h.devmajor = tar.TypeChar, n
			case 4:
				h.typeflag, h.devminor = tar.TypeBlock, n
			}
			count(tthCheck(t, &h))
		}
	}
	for _, s := range sizes {
		h := base
		h.size = s
		count(tthCheck(t, &h))
	}
	for _, tm := range times {
		h := base
		h.mtime = tm
		count(tthCheck(t, &h))
	}
	for _, x := range xattrSets {
		h := base
		h.xattrs = x
		count(tthCheck(t, &h))
	}
	// Random combinations.
	rng := rand.New(rand.NewSource(3))
	for range 20000 {
		h := tarHeader{
			typeflag: types[rng.Intn(len(types))],
			name:     names[rng.Intn(len(names))],
			mode:     nums[rng.Intn(len(nums))] & 0o7777,
			uid:      int(nums[rng.Intn(len(nums))]),
			gid:      int(nums[rng.Intn(len(nums))]),
			mtime:    times[rng.Intn(len(times))],
			xattrs:   xattrSets[rng.Intn(len(xattrSets))],
		}
		switch h.typeflag {
		case tar.TypeReg:
			h.size = sizes[rng.Intn(len(sizes))]
			h.name = strings.TrimSuffix(h.name, "/")
		case tar.TypeSymlink, tar.TypeLink:
			h.linkname = links[rng.Intn(len(links))]
		case tar.TypeChar, tar.TypeBlock:
			h.devmajor = nums[rng.Intn(len(nums))]
			h.devminor = nums[rng.Intn(len(nums))]
		}
		if rng.Intn(4) == 0 {
			h.name = fmt.Sprintf("%s/%d", h.name, rng.Intn(1000))
		}
		count(tthCheck(t, &h))
	}
	t.Logf("%d headers on the fast path, %d through archive/tar", fast, slow)
	if fast < 1000 || slow < 1000 {
		t.Fatalf("fast %d, slow %d: both paths should be well covered", fast, slow)
	}
}
