package diff

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// spPAXSparse builds a PAX 1.0 GNU sparse entry by hand (archive/tar
// writes no sparse files): the sparse map leads the data block, and here it
// maps no data at all, so every one of realSize bytes is a hole.
func spPAXSparse(t *testing.T, name string, realSize int64) []byte {
	t.Helper()
	record := func(k, v string) string {
		line := " " + k + "=" + v + "\n"
		n := len(line)
		for len(fmt.Sprint(n))+len(line) != n {
			n = len(fmt.Sprint(n)) + len(line)
		}
		return fmt.Sprint(n) + line
	}
	pax := record("GNU.sparse.major", "1") + record("GNU.sparse.minor", "0") +
		record("GNU.sparse.name", name) + record("GNU.sparse.realsize", fmt.Sprint(realSize))
	// The extended header: archive/tar refuses to write GNU.sparse
	// records, so write a regular header and turn it into an 'x' one.
	var xb bytes.Buffer
	xw := tar.NewWriter(&xb)
	if err := xw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "PaxHeaders/" + name, Size: int64(len(pax)), Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	xw.Write([]byte(pax))
	xw.Flush()
	raw := xb.Bytes()
	raw[156] = tar.TypeXHeader
	copy(raw[148:156], "        ")
	sum := 0
	for _, c := range raw[:512] {
		sum += int(c)
	}
	copy(raw[148:156], fmt.Sprintf("%06o\x00 ", sum))

	var buf bytes.Buffer
	buf.Write(raw)
	tw := tar.NewWriter(&buf)
	sparseMap := "0\n" // no data segments
	block := make([]byte, 512)
	copy(block, sparseMap)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "GNUSparseFile.0/" + name, Size: 512, Mode: 0o644, Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	tw.Write(block)
	tw.Close()
	return buf.Bytes()
}

// A tiny sparse entry that declares a petabyte is refused at once, not
// expanded into zeros for days.
func TestApplySparseBomb(t *testing.T) {
	atRequireRoot(t)
	layer := spPAXSparse(t, "big", 1<<50)
	// The hand-built entry must really read as sparse.
	tr := tar.NewReader(bytes.NewReader(layer))
	hdr, err := tr.Next()
	if err != nil || hdr.Name != "big" || hdr.Size != 1<<50 || !isSparse(hdr) {
		t.Fatalf("fixture: %+v, %v; want a sparse entry big of 2^50 bytes", hdr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err = Apply(ctx, t.TempDir(), bytes.NewReader(layer), ApplyOptions{})
	if err == nil || !strings.Contains(err.Error(), `entry "big"`) || !strings.Contains(err.Error(), "sparse file") {
		t.Fatalf("err = %v, want a sparse-size error naming the entry", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v to refuse", d)
	}

	// A sparse file of a sane size still applies, as holes.
	small := spPAXSparse(t, "holes", 64<<20)
	root := t.TempDir()
	if _, err := Apply(context.Background(), root, bytes.NewReader(small), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	st := atLstat(t, root+"/holes")
	if st.Size != 64<<20 || st.Blocks > 64 {
		t.Fatalf("holes: size %d, %d blocks; want 64 MiB in holes", st.Size, st.Blocks)
	}
}

// A deadline that ends an Apply mid-file is reported as such, not as a
// truncated tar.
func TestApplyCancelledMidFile(t *testing.T) {
	atRequireRoot(t)
	layer := spPAXSparse(t, "slow", 200<<30) // under the cap: seconds of zeros
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := Apply(ctx, t.TempDir(), bytes.NewReader(layer), ApplyOptions{})
	if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "truncated") {
		t.Fatalf("err = %v, want the deadline, not truncation", err)
	}
}
