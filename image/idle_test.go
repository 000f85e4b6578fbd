package image

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layers-storage/layers/fixtures"
)

// stallBlob answers the first times GETs of blob d (from the offset a
// range asks for) with a third of the bytes left and then nothing, the
// connection held open, until the client goes away or the test ends.
func stallBlob(t *testing.T, reg *testRegistry, d string, times int) func(w http.ResponseWriter, r *http.Request) bool {
	end := make(chan struct{})
	t.Cleanup(func() { close(end) }) // before the proxy's Close, which waits for handlers
	match := blobGET(reg, d, times)
	return func(w http.ResponseWriter, r *http.Request) bool {
		b, off, status, ok := match(r)
		if !ok {
			return false
		}
		if status == http.StatusPartialContent {
			w.Header().Set("Content-Range", "bytes "+strconv.Itoa(off)+"-"+strconv.Itoa(len(b)-1)+"/"+strconv.Itoa(len(b)))
		}
		rest := b[off:]
		w.Header().Set("Content-Length", strconv.Itoa(len(rest)))
		w.WriteHeader(status)
		w.Write(rest[:len(rest)/3])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-end:
		}
		return true
	}
}

// TestPullIdleTimeout: a registry that goes silent mid-blob (connection
// open, no bytes) does not hang the pull. With retries the blob resumes
// where it stopped and the pull succeeds; without, the pull fails with
// ErrIdleTimeout soon after the idle time, leaving nothing.
func TestPullIdleTimeout(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	p := newProxy(t, reg)
	bb := busybox(t)
	layers := [][]byte{bb, extraLayer("idle")}
	ref := p.host + "/idle/img:1"
	ri := pushRaw(t, ref, layers, rawOpts{})
	const idle = 300 * time.Millisecond

	t.Run("resumes", func(t *testing.T) {
		p.reset()
		p.tamper = stallBlob(t, reg, ri.descs[0].Digest.String(), 1)
		st := newStore(t, "")
		opts := fastRetry()
		opts.IdleTimeout = idle
		img, err := Pull(context.Background(), st, ref, &PullOptions{RemoteOptions: opts})
		if err != nil {
			t.Fatalf("pull: %v (%s)", err, p)
		}
		if n := p.count("GET blob range"); n != 1 {
			t.Errorf("%d range requests, want 1 (the resume after the stall): %s", n, p)
		}
		fixtures.AssertTreesEqual(t, appliedTree(t, layers), rootTree(t, st, img.ID), fixtures.IgnorePaths("/"))
	})

	t.Run("fails", func(t *testing.T) {
		p.reset()
		p.tamper = stallBlob(t, reg, ri.descs[1].Digest.String(), 100)
		st := newStore(t, "")
		opts := fastRetry()
		opts.Retries = 1
		opts.IdleTimeout = idle
		start := time.Now()
		_, err := Pull(context.Background(), st, ref, &PullOptions{RemoteOptions: opts})
		took := time.Since(start)
		if !errors.Is(err, ErrIdleTimeout) {
			t.Fatalf("pull: %v, want ErrIdleTimeout", err)
		}
		if !strings.Contains(err.Error(), ri.descs[1].Digest.String()) || !strings.Contains(err.Error(), "nothing received for 300ms") {
			t.Errorf("error %q does not name the blob and the idle time", err)
		}
		// Two attempts of one idle period each, plus the work around them.
		if took < 2*idle || took > 2*idle+10*time.Second {
			t.Errorf("pull failed after %s, want about %s", took, 2*idle)
		}
		if n := p.count("GET blob", "GET blob range"); n < 3 {
			t.Errorf("%d blob GETs, want the first blob and two attempts at the stalled one: %s", n, p)
		}
		assertNothingNew(t, st, 0, 0)
	})
}

// TestIdleTransportLiveTransfer: a slow transfer that keeps moving
// bytes is never cut, however long it takes in all (here 20 bytes 40 ms
// apart, 0.8 s, under an idle timeout of 200 ms).
func TestIdleTransportLiveTransfer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "20")
		w.WriteHeader(http.StatusOK)
		for i := 0; i < 20; i++ {
			time.Sleep(40 * time.Millisecond)
			w.Write([]byte{'x'})
			w.(http.Flusher).Flush()
		}
	}))
	defer srv.Close()
	o := RemoteOptions{IdleTimeout: 200 * time.Millisecond}
	hc := &http.Client{Transport: o.transport()}
	start := time.Now()
	resp, err := hc.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read: %v after %s", err, time.Since(start))
	}
	if len(b) != 20 {
		t.Errorf("read %d bytes, want 20", len(b))
	}
	if took := time.Since(start); took < 800*time.Millisecond {
		t.Errorf("the transfer took %s, less than the 20 x 40 ms the server waits", took)
	}
}
