package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// gzipped returns some megabytes of mixed text and random bytes, and
// their gzip stream.
func gzipped(t *testing.T) ([]byte, []byte) {
	t.Helper()
	rng := rand.New(rand.NewChaCha8([32]byte{7}))
	var plain bytes.Buffer
	for plain.Len() < 3<<20 {
		if rng.IntN(2) == 0 {
			plain.WriteString(strings.Repeat("layer blob digest ", 1+rng.IntN(500)))
		} else {
			b := make([]byte, rng.IntN(64<<10))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			plain.Write(b)
		}
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(plain.Bytes())
	zw.Close()
	return plain.Bytes(), z.Bytes()
}

func needGunzipper(t *testing.T) {
	t.Helper()
	if bin, _ := gunzipper(); bin == "" {
		t.Skip("pigz not installed (hack/deps.sh installs it)")
	}
}

// errSource fails with err after giving b.
type errSource struct {
	b   []byte
	err error
}

func (s *errSource) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, s.err
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

// TestInflatedExternal: a gzip stream through pigz comes out whole;
// cut, corrupt or failing input is an error at the end, never a silent
// EOF; what is not gzip passes through untouched.
func TestInflatedExternal(t *testing.T) {
	needGunzipper(t)
	plain, z := gzipped(t)
	ctx := context.Background()
	read := func(src io.Reader) ([]byte, error) {
		rc, err := inflated(ctx, src, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}

	t.Run("whole", func(t *testing.T) {
		rc, err := inflated(ctx, bytes.NewReader(z), true, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := rc.(*extGunzip); !ok {
			t.Fatalf("a gzip stream was not given to pigz (%T)", rc)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("read %d bytes (%v), want the %d bytes compressed", len(got), err, len(plain))
		}
	})
	t.Run("truncated", func(t *testing.T) {
		_, err := read(bytes.NewReader(z[:len(z)/2]))
		if err == nil || !strings.Contains(err.Error(), "decompress gzip") {
			t.Fatalf("got %v, want a decompress gzip error", err)
		}
	})
	t.Run("corrupt", func(t *testing.T) {
		bad := bytes.Clone(z)
		for i := len(bad) / 3; i < len(bad)/3+64; i++ {
			bad[i] ^= 0x5a
		}
		got, err := read(bytes.NewReader(bad))
		if err == nil {
			t.Fatalf("corrupt stream read without error (%d bytes)", len(got))
		}
	})
	t.Run("source-fails", func(t *testing.T) {
		cause := errors.New("download failed")
		_, err := read(&errSource{b: z[:len(z)/2], err: cause})
		if !errors.Is(err, cause) {
			t.Fatalf("got %v, want the source's error", err)
		}
	})
	t.Run("not-gzip", func(t *testing.T) {
		rc, err := inflated(ctx, bytes.NewReader(plain), true, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := rc.(*extGunzip); ok {
			t.Fatal("a stream that is not gzip went to pigz")
		}
		got, _ := io.ReadAll(rc)
		if !bytes.Equal(got, plain) {
			t.Fatal("a stream that is not gzip changed")
		}
	})
	t.Run("in-process", func(t *testing.T) {
		rc, err := inflated(ctx, bytes.NewReader(z), false, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		if !bytes.Equal(got, z) {
			t.Fatal("external=false changed the stream (the store inflates it)")
		}
	})
	t.Run("close-early", func(t *testing.T) {
		// A source that blocks after some bytes (a download that
		// stalls): Close ends the process and, through unblock, the
		// read of the source, and returns.
		pr, pw := io.Pipe()
		go pw.Write(z[:len(z)/2])
		rc, err := inflated(ctx, pr, true, func() { pr.CloseWithError(errors.New("unblocked")) })
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { rc.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not return")
		}
		if _, err := rc.Read(make([]byte, 10)); err == nil {
			t.Error("read after Close succeeded")
		}
	})
}
