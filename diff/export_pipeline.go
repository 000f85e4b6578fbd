package diff

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Export's pipeline. On many small files an export is a few syscalls per
// entry (lstat, listxattr, open, read, close) and a header: plan walks the
// changes on one goroutine (stat, parents, hardlinks), workers read each
// entry's xattrs and, for files up to exportSmallFile bytes, content,
// ahead of the writer, and the writer, on the caller's goroutine, writes
// the entries in plan's order. The bytes are those of a serial export
// (the order is plan's; nothing a worker reads decides what comes next),
// and bigger files are streamed from their descriptor by the writer, as
// before. With one CPU, or few changes, it all runs serially on the
// caller's goroutine.

const (
	// exportBufferSize is the size of the writes Export makes to its
	// writer (content that is bigger bypasses the buffer): archive/tar
	// made ~6 small writes per entry, and drivers hand w to an io.Pipe,
	// where each write is a handoff to the reading goroutine.
	exportBufferSize = 64 << 10
	// exportSmallFile is the size up to which workers read a file's
	// content ahead of the writer.
	exportSmallFile = 64 << 10
	// exportWindow bounds the entries read ahead of the writer (so the
	// memory held: at most exportWindow small files).
	exportWindow = 128
	// exportBatchSize is the number of items handed to a worker at once.
	exportBatchSize = 16
	// exportSerialBelow is the number of changes under which Export does
	// not start goroutines: their cost is not paid back.
	exportSerialBelow = 32
	// exportMaxWorkers caps the readers: syscalls on one tree do not
	// scale much beyond a few.
	exportMaxWorkers = 4
)

// exportWorkers returns how many goroutines read entries for an export
// of n changes: 0 for a serial export.
func exportWorkers(n int) int {
	w := min(runtime.GOMAXPROCS(0), exportMaxWorkers)
	if w < 2 || n < exportSerialBelow {
		return 0
	}
	return w
}

// dirRef is a directory descriptor shared by the items read relative to
// it; the last one to release it closes it if it is a duplicate.
type dirRef struct {
	fd    int
	orig  int    // the dirStack descriptor fd duplicates (or is)
	path  string // layer path, for the /proc fallback of xattrs
	owned bool   // fd is a duplicate, closed on the last release
	refs  atomic.Int32
}

func (r *dirRef) release() {
	if r.refs.Add(-1) == 0 && r.owned {
		unix.Close(r.fd)
	}
}

// procPath names entry name of the directory through /proc, for the
// calls without an *at variant on old kernels.
func (r *dirRef) procPath(name string) string {
	return "/proc/self/fd/" + strconv.Itoa(r.fd) + "/" + name
}

// exportItem is one tar entry: what plan decided (header, where to read
// it), then what prepare read (xattrs, content or an open descriptor, or
// the error that ends the export at this entry).
type exportItem struct {
	hdr     tarHeader
	path    string  // layer path, for messages
	errName string  // the name in a header error ("export NAME: ...")
	dir     *dirRef // nil when nothing is read (markers, hardlinks, plan errors)
	name    string  // entry name in dir
	xattrs  bool    // read the entry's xattrs

	data []byte // content of a small regular file
	fd   int    // open descriptor of a bigger regular file, when open
	open bool
	err  error
}

// exportBatch is a run of items that one worker prepares: handing items
// over one by one cost more in wake-ups than their reads on small files.
type exportBatch struct {
	items []*exportItem
	done  chan struct{} // closed when every item is prepared
}

// exportReader is what one goroutine needs to prepare items.
type exportReader struct {
	ctx  context.Context
	xr   xattrReader
	bufs chan []byte // small-file buffers coming back from the writer
}

// prepare reads what it needs to be written; it releases it.dir.
func (r *exportReader) prepare(it *exportItem) {
	if it.dir == nil {
		return
	}
	defer it.dir.release()
	if it.xattrs {
		dir := it.dir
		x, err := r.xr.read(dir.fd, it.name, func() string { return dir.procPath(it.name) })
		if err != nil {
			it.err = fmt.Errorf("export %s: %w", it.path, err)
			return
		}
		it.hdr.xattrs = x
	}
	size := it.hdr.size
	if it.hdr.typeflag != tar.TypeReg || size == 0 {
		return
	}
	// O_NOFOLLOW: the entry was lstat'ed as a regular file; if it has
	// been swapped for a symlink since, fail rather than read whatever it
	// points to (possibly outside root). A raw descriptor rather than an
	// os.File: os.OpenFile tries to register every file with the poller,
	// a wasted syscall per file.
	fd, err := unix.Openat(it.dir.fd, it.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		it.err = fmt.Errorf("export %s: open: %w", it.path, err)
		return
	}
	if size > exportSmallFile {
		it.fd, it.open = fd, true
		return
	}
	defer unix.Close(fd)
	var buf []byte
	select {
	case buf = <-r.bufs:
	default:
		buf = make([]byte, exportSmallFile)
	}
	buf = buf[:size]
	if err := readFull(r.ctx, it.path, fd, buf, 0, size); err != nil {
		it.err = err
		r.putBuf(buf)
		return
	}
	it.data = buf
}

// readFull reads the next len(buf) bytes, from offset off, of the size
// bytes of the file of layer path p open as fd. A file that shrank since
// it was stat'ed is an error (its header promises size bytes); growth is
// not seen, as with any tar of a live tree.
func readFull(ctx context.Context, p string, fd int, buf []byte, off, size int64) error {
	for n := 0; n < len(buf); {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("export %s: %w", p, err)
		}
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("export %s: read: %w", p, err)
		}
		if m == 0 {
			return fmt.Errorf("export %s: file shrank while being read (%d of %d bytes): %w", p, off+int64(n), size, io.ErrUnexpectedEOF)
		}
		n += m
	}
	return nil
}

func (r *exportReader) putBuf(b []byte) {
	select {
	case r.bufs <- b[:cap(b)]:
	default:
	}
}

// discard frees what prepare took for an item that will not be written.
func (it *exportItem) discard(r *exportReader) {
	if it.open {
		unix.Close(it.fd)
		it.open = false
	}
	if it.data != nil {
		r.putBuf(it.data)
		it.data = nil
	}
}

// tarOut writes items as a tar.
type tarOut struct {
	ctx  context.Context
	bw   *bufio.Writer
	r    *exportReader // where buffers go back
	hdr  []byte
	copy []byte // for streamed content
}

// write writes it, header and content, and frees what it held.
func (o *tarOut) write(it *exportItem) error {
	defer it.discard(o.r)
	if it.err != nil {
		return it.err
	}
	if err := o.ctx.Err(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	var err error
	o.hdr, err = appendTarHeader(o.hdr[:0], &it.hdr)
	if err != nil {
		return fmt.Errorf("export %s: %w", it.errName, err)
	}
	if _, err := o.bw.Write(o.hdr); err != nil {
		return fmt.Errorf("export %s: %w", it.errName, err)
	}
	if it.hdr.typeflag != tar.TypeReg || it.hdr.size == 0 {
		return nil
	}
	if it.data != nil {
		if _, err := o.bw.Write(it.data); err != nil {
			return fmt.Errorf("export %s: %w", it.path, err)
		}
	} else if err := o.stream(it); err != nil {
		return err
	}
	if _, err := o.bw.Write(zeroBlock[:blockPad(it.hdr.size)]); err != nil {
		return fmt.Errorf("export %s: %w", it.path, err)
	}
	return nil
}

// stream copies the content of a bigger file from its descriptor.
func (o *tarOut) stream(it *exportItem) error {
	if o.copy == nil {
		o.copy = make([]byte, 128<<10)
	}
	size := it.hdr.size
	for n := int64(0); n < size; {
		buf := o.copy
		if rest := size - n; rest < int64(len(buf)) {
			buf = buf[:rest]
		}
		if err := readFull(o.ctx, it.path, it.fd, buf, n, size); err != nil {
			return err
		}
		if _, err := o.bw.Write(buf); err != nil {
			return fmt.Errorf("export %s: %w", it.path, err)
		}
		n += int64(len(buf))
	}
	return nil
}

// finish writes the tar's trailer and flushes.
func (o *tarOut) finish() error {
	if err := writeTarTrailer(o.bw); err != nil {
		return fmt.Errorf("export: finish tar: %w", err)
	}
	if err := o.bw.Flush(); err != nil {
		return fmt.Errorf("export: finish tar: %w", err)
	}
	return nil
}

// run plans and writes the export, with workers readers (0: serially).
func (e *exporter) run(w io.Writer, workers int) error {
	r := &exportReader{ctx: e.ctx, bufs: make(chan []byte, exportWindow+2)}
	out := &tarOut{ctx: e.ctx, bw: bufio.NewWriterSize(w, exportBufferSize), r: r}
	if workers == 0 {
		var werr error
		e.emit = func(it *exportItem) bool {
			r.prepare(it)
			werr = out.write(it)
			return werr == nil
		}
		err := e.plan()
		e.releaseRef()
		if werr != nil {
			return werr
		}
		if err != nil {
			return err
		}
		return out.finish()
	}

	e.shared = true
	order := make(chan *exportBatch, exportWindow/exportBatchSize)
	work := make(chan *exportBatch, exportWindow/exportBatchSize+1)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wr := &exportReader{ctx: e.ctx, bufs: r.bufs}
			for b := range work {
				for _, it := range b.items {
					wr.prepare(it)
				}
				close(b.done)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(order)
		defer close(work)
		b := &exportBatch{}
		quitted := false
		// flush hands batch b over; false once the writer has failed.
		flush := func() bool {
			if len(b.items) == 0 {
				return true
			}
			full := b
			b = &exportBatch{}
			full.done = make(chan struct{})
			select {
			case order <- full:
			case <-quit:
				for _, it := range full.items {
					if it.dir != nil {
						it.dir.release()
					}
				}
				quitted = true
				return false
			}
			work <- full
			return true
		}
		e.emit = func(it *exportItem) bool {
			if quitted {
				return false
			}
			if b.items == nil {
				b.items = make([]*exportItem, 0, exportBatchSize)
			}
			b.items = append(b.items, it)
			return len(b.items) < exportBatchSize || flush()
		}
		err := e.plan()
		e.releaseRef()
		if err != nil && err != errAbandoned {
			b.items = append(b.items, &exportItem{err: err})
		}
		flush()
	}()
	var werr error
	for b := range order {
		<-b.done
		for _, it := range b.items {
			if werr != nil {
				it.discard(r)
				continue
			}
			if werr = out.write(it); werr != nil {
				close(quit)
			}
		}
	}
	wg.Wait()
	if werr != nil {
		return werr
	}
	return out.finish()
}
