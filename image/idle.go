package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// ErrIdleTimeout means a registry connection sent nothing (and took
// nothing) for RemoteOptions.IdleTimeout: a transfer that went silent is
// cut rather than left to hang forever. It counts as transient: the
// transfer is tried again (a blob resumes where it stopped).
var ErrIdleTimeout = errors.New("registry connection idle")

// DefaultIdleTimeout is how long a registry connection may stay silent
// before it is given up (and the transfer retried).
const DefaultIdleTimeout = 60 * time.Second

func (o *RemoteOptions) idleTimeout() time.Duration {
	return zeroDefault(o.IdleTimeout, DefaultIdleTimeout)
}

// idleTransport cuts a request whose connection moves no byte either way
// for idle: from sending the request to the end of the response body,
// every read of the request body (an upload) or of the response body
// counts as activity. TCP alone never gives up on a peer that stopped
// sending without closing, and a whole-request deadline would cut slow
// but live transfers of big blobs.
type idleTransport struct {
	rt   http.RoundTripper
	idle time.Duration
}

func (t *idleTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	w := &idleWatch{idle: t.idle, cancel: cancel}
	w.touch()
	w.timer = time.AfterFunc(t.idle, w.check)
	req = req.WithContext(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		req.Body = &idleBody{rc: req.Body, w: w}
	}
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		w.end()
		return nil, w.explain(err)
	}
	resp.Body = &idleBody{rc: resp.Body, w: w, owner: true}
	return resp, nil
}

// idleWatch is the timer of one request.
type idleWatch struct {
	idle   time.Duration
	cancel context.CancelFunc
	last   atomic.Int64 // UnixNano of the last activity
	fired  atomic.Bool
	mu     sync.Mutex
	timer  *time.Timer
	ended  bool
}

func (w *idleWatch) touch() { w.last.Store(time.Now().UnixNano()) }

// check runs when the timer expires: it cuts the request when nothing
// moved for idle, and re-arms for the rest of the period otherwise.
func (w *idleWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return
	}
	left := w.idle - time.Since(time.Unix(0, w.last.Load()))
	if left > 0 {
		w.timer.Reset(left)
		return
	}
	w.fired.Store(true)
	w.cancel()
}

// end stops the timer and releases the request's context.
func (w *idleWatch) end() {
	w.mu.Lock()
	w.ended = true
	w.timer.Stop()
	w.mu.Unlock()
	w.cancel()
}

// explain turns the error of a request the watch cut into ErrIdleTimeout.
func (w *idleWatch) explain(err error) error {
	if err == nil || !w.fired.Load() {
		return err
	}
	return fmt.Errorf("%w: nothing received for %s", ErrIdleTimeout, w.idle)
}

// idleBody is a request or response body that tells the watch of each
// read; the response's (owner) ends the watch when closed.
type idleBody struct {
	rc    io.ReadCloser
	w     *idleWatch
	owner bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.w.touch()
	}
	if err != nil && err != io.EOF {
		err = b.w.explain(err)
	}
	return n, err
}

func (b *idleBody) Close() error {
	err := b.rc.Close()
	if b.owner {
		b.w.end()
	}
	return err
}
