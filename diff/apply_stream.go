package diff

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Apply runs in two goroutines: a reader that decompresses, hashes and
// parses the tar and reads file contents ahead, and the applier that makes
// the syscalls. On small files the filesystem calls and the tar parsing
// cost about the same, so overlapping them is most of the way to GNU tar's
// speed.

// readerMsg is one message from the reader goroutine: a tar header with the
// first part of its data, or a further part of that data, or the end of the
// stream, or an error.
type readerMsg struct {
	hdr  *tar.Header
	data []byte  // file content; chunks are 4 KiB-aligned in the file
	buf  *[]byte // pooled buffer holding data, returned once written
	more bool    // more data messages of this entry follow
	// err is a read error. With dataErr it hit the data of the entry being
	// read; otherwise it is complete ("read tar header after ...").
	err     error
	dataErr bool
	end     bool // the stream ended cleanly
}

// smallFile is the largest content read into a message of its own size;
// bigger files travel in pooled 1 MiB chunks.
const smallFile = 64 << 10

const (
	readAhead    = 4       // batches in flight
	batchEntries = 128     // messages in a batch at most
	batchBytes   = 1 << 20 // file bytes in a batch at most
)

type tarReader struct {
	ctx  context.Context
	out  chan []readerMsg
	done chan struct{} // closed by the applier when it stops early

	// Producer side: messages go in batches, because waking the other
	// goroutine for every small file costs more than the overlap gains.
	pending      []readerMsg
	pendingBytes int
	// Consumer side: the rest of the batch being applied.
	batch []readerMsg

	// Set before out is closed.
	hc *hashCounter
}

func startReader(ctx context.Context, dr io.Reader) *tarReader {
	p := &tarReader{
		ctx:  ctx,
		out:  make(chan []readerMsg, readAhead),
		done: make(chan struct{}),
		hc:   &hashCounter{h: sha256.New()},
	}
	go p.run(dr)
	return p
}

// send queues m for the applier; the queue goes out when it is full, when
// m ends the stream, or when m carries a pooled chunk (so that the applier
// gets chunks as soon as they are read). It reports whether to go on.
func (p *tarReader) send(m readerMsg) bool {
	p.pending = append(p.pending, m)
	p.pendingBytes += len(m.data)
	if len(p.pending) < batchEntries && p.pendingBytes < batchBytes && m.buf == nil && m.err == nil && !m.end {
		return true
	}
	return p.flush()
}

func (p *tarReader) flush() bool {
	if len(p.pending) == 0 {
		return true
	}
	b := p.pending
	p.pending, p.pendingBytes = nil, 0
	select {
	case p.out <- b:
		return true
	case <-p.done:
	case <-p.ctx.Done():
	}
	releaseMsgs(b)
	return false
}

func releaseMsgs(b []readerMsg) {
	for _, m := range b {
		if m.buf != nil {
			applyBufPool.Put(m.buf)
		}
	}
}

// next returns the next message for the applier; false when the reader
// has stopped.
func (p *tarReader) next() (readerMsg, bool) {
	for len(p.batch) == 0 {
		b, ok := <-p.out
		if !ok {
			return readerMsg{}, false
		}
		p.batch = b
	}
	m := p.batch[0]
	p.batch[0] = readerMsg{}
	p.batch = p.batch[1:]
	return m, true
}

// stop tells the reader to finish and waits until it has, so that nothing
// reads the stream after Apply returns.
func (p *tarReader) stop() {
	close(p.done)
	releaseMsgs(p.batch)
	p.batch = nil
	for b := range p.out {
		releaseMsgs(b)
	}
}

func (p *tarReader) run(dr io.Reader) {
	defer close(p.out)
	defer p.flush()
	stream := io.TeeReader(dr, p.hc)
	tc := &tailReader{r: stream}
	tr := tar.NewReader(tc)
	last := ""
	for {
		before := tc.n
		hdr, err := tr.Next()
		if err == io.EOF {
			// archive/tar also says EOF when the stream stops at a block
			// boundary or inside a PAX header; only a zero block read by
			// this last call is a real end-of-archive marker.
			if tc.n != 0 && (tc.n-before < 512 || !tc.tailZero()) {
				if last == "" {
					p.send(readerMsg{err: errors.New("truncated tar: no end-of-archive marker")})
				} else {
					p.send(readerMsg{err: fmt.Errorf("truncated tar after entry %q: no end-of-archive marker", last)})
				}
				return
			}
			// The diffID covers the whole stream: hash the padding (and
			// whatever else) after the marker.
			if err := p.drain(stream); err != nil {
				p.send(readerMsg{err: fmt.Errorf("read end of stream: %w", err)})
				return
			}
			p.send(readerMsg{end: true})
			return
		}
		if err != nil {
			if last == "" {
				p.send(readerMsg{err: fmt.Errorf("read first tar header: %w", err)})
			} else {
				p.send(readerMsg{err: fmt.Errorf("read tar header after entry %q: %w", last, err)})
			}
			return
		}
		if !p.readEntry(hdr, tr) {
			return
		}
		last = hdr.Name
	}
}

// maxSparseSize bounds the size a sparse entry may declare. archive/tar
// hands out a sparse file's holes as zeros to read (its hole-skipping
// writer is not exported), so a tiny entry declaring 2^50 bytes would keep
// Apply reading zeros for days; real sparse files in images (a lastlog
// after a large uid, a preallocated database) stay far below this.
const maxSparseSize = 256 << 30

// isSparse reports whether hdr is a GNU sparse file (old GNU or PAX form).
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// readEntry sends hdr and its data. It reports whether to go on.
func (p *tarReader) readEntry(hdr *tar.Header, tr *tar.Reader) bool {
	size := hdr.Size
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeCont:
	default:
		size = 0 // data of other entries is skipped, never used
	}
	if size > maxSparseSize && isSparse(hdr) {
		return p.dataError(hdr, fmt.Errorf("sparse file of %d bytes: more than the %d GiB Apply expands", size, maxSparseSize>>30))
	}
	if size <= smallFile {
		var data []byte
		if size > 0 {
			data = make([]byte, size)
			if _, err := io.ReadFull(tr, data); err != nil {
				return p.dataError(hdr, err)
			}
		}
		if !p.send(readerMsg{hdr: hdr, data: data}) {
			return false
		}
	} else {
		if !p.send(readerMsg{hdr: hdr, more: true}) {
			return false
		}
		for off := int64(0); off < size; {
			if p.ctx.Err() != nil {
				return false
			}
			bp := applyBufPool.Get().(*[]byte)
			n := min(int64(len(*bp)), size-off)
			if _, err := io.ReadFull(tr, (*bp)[:n]); err != nil {
				applyBufPool.Put(bp)
				return p.dataError(hdr, err)
			}
			off += n
			if !p.send(readerMsg{data: (*bp)[:n], buf: bp, more: off < size}) {
				return false
			}
		}
	}
	// Consume data the entry does not use (a hardlink may carry some), so
	// that the next Next reads only padding and a header.
	if _, err := io.Copy(io.Discard, tr); err != nil {
		return p.dataError(hdr, err)
	}
	return true
}

func (p *tarReader) dataError(hdr *tar.Header, err error) bool {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	p.send(readerMsg{hdr: hdr, err: err, dataErr: true})
	return false
}

func (p *tarReader) drain(r io.Reader) error {
	bp := applyBufPool.Get().(*[]byte)
	defer applyBufPool.Put(bp)
	for {
		if err := p.ctx.Err(); err != nil {
			return err
		}
		_, err := r.Read(*bp)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// bodyReader gives the applier the data of the current entry as an
// io.Reader, from the reader goroutine's messages.
type bodyReader struct {
	p    *tarReader
	cur  []byte
	buf  *[]byte
	more bool
	err  error
}

func newBodyReader(p *tarReader, m readerMsg) *bodyReader {
	return &bodyReader{p: p, cur: m.data, buf: m.buf, more: m.more}
}

// fill makes cur non-empty, fetching the entry's next message; io.EOF
// when the entry has no more data.
func (b *bodyReader) fill() error {
	for len(b.cur) == 0 {
		if b.err != nil {
			return b.err
		}
		if b.buf != nil {
			applyBufPool.Put(b.buf)
			b.buf = nil
		}
		if !b.more {
			return io.EOF
		}
		m, ok := b.p.next()
		switch {
		case !ok && b.p.ctx.Err() != nil:
			b.err = b.p.ctx.Err() // cancelled, not truncated
		case !ok:
			b.err = io.ErrUnexpectedEOF
		case m.err != nil:
			b.err = m.err
		default:
			b.cur, b.buf, b.more = m.data, m.buf, m.more
		}
	}
	return nil
}

func (b *bodyReader) Read(q []byte) (int, error) {
	if err := b.fill(); err != nil {
		return 0, err
	}
	n := copy(q, b.cur)
	b.cur = b.cur[n:]
	return n, nil
}

// chunk returns the next piece of data as the reader sent it (whole
// 4 KiB-aligned chunks), without copying; it stays valid until the next
// call.
func (b *bodyReader) chunk() ([]byte, error) {
	if err := b.fill(); err != nil {
		return nil, err
	}
	c := b.cur
	b.cur = nil
	return c, nil
}

// finish skips what the applier did not read of the entry and returns the
// reader's error for it, if any.
func (b *bodyReader) finish() error {
	for {
		b.cur = nil
		if _, err := b.Read(nil); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}
