package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// errSpoolClosed stops a download whose reader went away (the layer was
// stored already, or the pull failed).
var errSpoolClosed = errors.New("spool closed by its reader")

// spool is a blob being downloaded into an unnamed temporary file while
// one reader follows it: the reader gets bytes as soon as they are
// written, waits when it catches up with the download, and sees the
// download's verdict (nil: EOF) only after the last byte. So a layer
// applies straight from the network when its download is what holds it
// up, and from the file when the layer below held it up. The file has no
// name: nothing is left behind, whatever happens to the process.
type spool struct {
	f *os.File

	mu      sync.Mutex
	cond    *sync.Cond
	written int64
	done    bool  // the download finished (err says how)
	err     error // the download's verdict
	closed  bool  // the reader is gone
	refs    int   // writer and reader; the file closes at zero
}

// newSpool makes a spool in dir (O_TMPFILE; a created and unlinked file
// where the filesystem has no O_TMPFILE).
func newSpool(dir string) (*spool, error) {
	f, err := unnamedFile(dir)
	if err != nil {
		return nil, err
	}
	s := &spool{f: f, refs: 2}
	s.cond = sync.NewCond(&s.mu)
	return s, nil
}

// Write appends downloaded bytes (the download's single goroutine only).
func (s *spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return 0, errSpoolClosed
	}
	n, err := s.f.Write(p)
	s.mu.Lock()
	s.written += int64(n)
	s.cond.Broadcast()
	s.mu.Unlock()
	return n, err
}

// finish records the download's verdict and releases the writer's hold.
func (s *spool) finish(err error) {
	s.mu.Lock()
	s.done, s.err = true, err
	s.cond.Broadcast()
	s.release()
	s.mu.Unlock()
}

// release drops one hold on the file (mu held).
func (s *spool) release() {
	s.refs--
	if s.refs == 0 {
		s.f.Close()
	}
}

// closeReader says the reader is gone: the download stops at its next
// write. Calling it twice is harmless.
func (s *spool) closeReader() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.cond.Broadcast()
	s.release()
}

// wait blocks until the download finished and returns its verdict.
func (s *spool) wait(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.done {
		if err := ctx.Err(); err != nil {
			return err
		}
		s.cond.Wait()
	}
	return s.err
}

// result says whether the download finished, and its verdict if so.
func (s *spool) result() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done, s.err
}

// reader returns the spool's one reader; ctx ends its waits.
func (s *spool) reader(ctx context.Context) *spoolReader {
	return &spoolReader{s: s, ctx: ctx}
}

type spoolReader struct {
	s      *spool
	ctx    context.Context
	off    int64
	sawEOF bool
}

func (r *spoolReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s := r.s
	s.mu.Lock()
	if r.off >= s.written && !s.done && !s.closed {
		stop := context.AfterFunc(r.ctx, func() {
			s.mu.Lock()
			s.cond.Broadcast()
			s.mu.Unlock()
		})
		for r.off >= s.written && !s.done && !s.closed && r.ctx.Err() == nil {
			s.cond.Wait()
		}
		stop()
	}
	avail, done, derr, closed := s.written-r.off, s.done, s.err, s.closed
	s.mu.Unlock()
	switch {
	case closed:
		return 0, errSpoolClosed
	case avail > 0:
		n, err := s.f.ReadAt(p[:min(int64(len(p)), avail)], r.off)
		r.off += int64(n)
		if err == io.EOF && n > 0 {
			err = nil
		}
		return n, err
	case done && derr != nil:
		return 0, derr
	case done:
		r.sawEOF = true
		return 0, io.EOF
	}
	return 0, r.ctx.Err()
}

// unnamedFile opens a new file in dir that has no name (O_TMPFILE; a
// created and unlinked file where the filesystem has no O_TMPFILE), so
// that it goes away with its last descriptor whatever happens.
func unnamedFile(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir, unix.O_TMPFILE|os.O_RDWR, 0o600)
	if err == nil {
		return f, nil
	}
	f, err = os.CreateTemp(dir, "blob-")
	if err != nil {
		return nil, fmt.Errorf("temporary file for a blob: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("temporary file for a blob: %w", err)
	}
	return f, nil
}
