package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/archive/tar"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
)

// A layer applied from a tar keeps that tar's layout: every byte of it
// but the contents of its regular files, in order (ROOT/tar-layout/<id>.gz,
// a few percent of the tar). With the files read back from the layer, it
// reassembles the very tar that was applied, byte for byte: what a push
// must send (its digest is the diffID the image config lists) and what
// Check's Digests hashes. An export of the layer's changes would be a
// valid tar of the same content but not the same bytes.
//
// The format, gzipped: the line "layers tar layout 1\n", then records:
//
//	'S' uvarint(n) n bytes       bytes of the tar as they were (headers,
//	                             padding, the payload of sparse entries)
//	'F' uvarint(n) name uvarint(size)
//	                             the payload of regular file name: size
//	                             bytes, read back from the layer
//	'U'                          the tar cannot be reassembled from the
//	                             layer (see recordLayout); nothing follows
//
// This is tar-split's idea (containers/storage keeps the same) in a
// compact form: tar-split's JSON entries and per-file CRC64 cost 70 % of
// an apply's time here, and its reassembly of GNU sparse entries does not
// give the tar back. The tar is parsed with tar-split's fork of
// archive/tar (it reads exactly the header blocks in Next, no further).

// layoutMagic starts every layout file.
const layoutMagic = "layers tar layout 1\n"

// errUnreproducible means a layer's tar cannot be reassembled from its
// files: LayerTar exports the layer's changes instead, and Check cannot
// verify its diffID.
var errUnreproducible = errors.New("the tar this layer was applied from cannot be reassembled from its files")

// layoutPath is where layer id's tar layout is kept.
func (s *Store) layoutPath(id string) string {
	return filepath.Join(s.root, "tar-layout", id+".gz")
}

// tarSplitter records the layout of the tar stream it passes through.
// The applier reads the stream straight from its source; what it reads
// is copied, in chunks over a buffered channel, to the recorder in a
// goroutine of its own, so that recording runs beside applying instead
// of in lockstep with it.
type tarSplitter struct {
	src    io.Reader
	chunks chan []byte
	f      *os.File
	zw     *gzip.Writer
	done   chan error // the recorder's result
	closed bool
	n      int64 // bytes passed through
}

// chunkQueue bounds the memory of data read but not yet recorded.
const chunkQueue = 64

// newTarSplitter opens layer id's layout file and starts a recorder of
// the uncompressed tar src; read the stream through the tarSplitter.
func (s *Store) newTarSplitter(id string, src io.Reader) (*tarSplitter, error) {
	if err := os.MkdirAll(filepath.Dir(s.layoutPath(id)), 0o700); err != nil {
		return nil, noSpace(err)
	}
	f, err := os.OpenFile(s.layoutPath(id), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, noSpace(err)
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	t := &tarSplitter{src: src, chunks: make(chan []byte, chunkQueue), f: f, zw: zw, done: make(chan error, 1)}
	go func() {
		cr := &chunkReader{chunks: t.chunks}
		err := recordLayout(cr, zw)
		cr.drain() // whatever the recorder left: the applier must not block
		t.done <- err
	}()
	return t, nil
}

// Read reads the stream for the applier and queues a copy for the recorder.
func (t *tarSplitter) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
	t.n += int64(n)
	if n > 0 && !t.closed {
		t.chunks <- append([]byte(nil), p[:n]...)
	}
	return n, err
}

// finish reads what the applier left of the stream (nothing, for a
// whole tar), waits for the recorder and closes the file; with sync it
// is flushed to disk.
func (t *tarSplitter) finish(sync bool) error {
	n, err := io.Copy(io.Discard, t)
	if err == nil && n > 0 {
		err = fmt.Errorf("record tar layout: %d bytes after the end of the tar were not applied", n)
	}
	t.closed = true
	close(t.chunks)
	if perr := <-t.done; err == nil && perr != nil {
		err = fmt.Errorf("record tar layout: %w", perr)
	}
	if cerr := t.zw.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("record tar layout: %w", cerr)
	}
	if sync && err == nil {
		err = t.f.Sync()
	}
	if cerr := t.f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return noSpace(err)
}

// abort stops the recorder after a failed apply.
func (t *tarSplitter) abort() {
	if !t.closed {
		t.closed = true
		close(t.chunks)
	}
	<-t.done
	t.f.Close()
}

// chunkReader reads the chunks the tarSplitter queues, counting them.
type chunkReader struct {
	chunks  <-chan []byte
	cur     []byte
	n       int64         // bytes read so far
	capture *bytes.Buffer // when set, receives what is read
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		c, ok := <-r.chunks
		if !ok {
			return 0, io.EOF
		}
		r.cur = c
	}
	n := copy(p, r.cur)
	if r.capture != nil {
		r.capture.Write(r.cur[:n])
	}
	r.cur = r.cur[n:]
	r.n += int64(n)
	return n, nil
}

// drain consumes the queue until it is closed, so the writer never blocks
// on a recorder that stopped.
func (r *chunkReader) drain() {
	for range r.chunks {
	}
}

// layoutWriter writes layout records.
type layoutWriter struct {
	w   *bufio.Writer
	buf [binary.MaxVarintLen64]byte
	n   int64 // tar bytes described so far
}

func (w *layoutWriter) uvarint(v uint64) {
	w.w.Write(w.buf[:binary.PutUvarint(w.buf[:], v)])
}

func (w *layoutWriter) segment(b []byte) {
	if len(b) == 0 {
		return
	}
	w.w.WriteByte('S')
	w.uvarint(uint64(len(b)))
	w.w.Write(b)
	w.n += int64(len(b))
}

func (w *layoutWriter) file(name string, size int64) {
	w.w.WriteByte('F')
	w.uvarint(uint64(len(name)))
	w.w.WriteString(name)
	w.uvarint(uint64(size))
	w.n += size
}

// recordLayout reads the tar r to its end and writes its layout to out.
// A tar that cannot be given back from the layer's files gets the 'U'
// record: one whose parsing here fails (Apply accepted it, so it is the
// parser's limit), or that lists a path twice (the first content is gone
// from the layer). What the records describe must add up to every byte
// read, or the layout is marked 'U' as well.
func recordLayout(r *chunkReader, out io.Writer) error {
	bw := bufio.NewWriterSize(out, 64<<10)
	lw := &layoutWriter{w: bw}
	bw.WriteString(layoutMagic)
	unreproducible := func() error {
		lw.w.Reset(out)
		lw.w.WriteString(layoutMagic)
		lw.w.WriteByte('U')
		return lw.w.Flush()
	}
	// What the parser reads while finding the next header (the previous
	// entry's padding, the header blocks, PAX and GNU long-name records,
	// a PAX sparse map) is kept as it was read, so nothing depends on
	// which of it the parser would account as raw bytes.
	tr := tar.NewReader(r)
	seen := map[string]bool{}
	var hdrBytes, sparse bytes.Buffer
	for {
		hdrBytes.Reset()
		r.capture = &hdrBytes
		hdr, err := tr.Next()
		r.capture = nil
		lw.segment(hdrBytes.Bytes())
		if err == io.EOF {
			break
		}
		if err != nil {
			return unreproducible()
		}
		name := path.Clean("/" + hdr.Name)
		if seen[name] {
			return unreproducible()
		}
		seen[name] = true
		isSparse := hdr.Typeflag == tar.TypeGNUSparse
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse.") {
				isSparse = true
			}
		}
		before := r.n
		if isSparse {
			// The payload in the tar is the data fragments, not the
			// file's bytes: kept as they are.
			sparse.Reset()
			r.capture = &sparse
		}
		_, err = io.Copy(io.Discard, tr)
		r.capture = nil
		if err != nil {
			return unreproducible()
		}
		switch {
		case isSparse:
			lw.segment(sparse.Bytes())
		case hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA:
			if r.n-before != hdr.Size {
				return unreproducible()
			}
			if hdr.Size > 0 {
				lw.file(hdr.Name, hdr.Size)
			}
		default:
			// Other entries have no payload Apply writes as a file.
			if r.n-before != 0 {
				return unreproducible()
			}
		}
	}
	// Padding and whatever follows the end of the archive.
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		lw.segment(buf[:n])
		if err == io.EOF {
			break
		}
	}
	if lw.n != r.n {
		return unreproducible()
	}
	return bw.Flush()
}

// writeLayoutTar writes the tar described by the layout lr, reading file
// contents through get.
func writeLayoutTar(w io.Writer, lr io.Reader, get func(name string) (io.ReadCloser, error)) error {
	br := bufio.NewReaderSize(lr, 64<<10)
	magic := make([]byte, len(layoutMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != layoutMagic {
		return fmt.Errorf("not a tar layout (%v)", err)
	}
	buf := make([]byte, 64<<10)
	for {
		kind, err := br.ReadByte()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		switch kind {
		case 'S':
			n, err := binary.ReadUvarint(br)
			if err != nil {
				return fmt.Errorf("tar layout: %w", err)
			}
			if _, err := io.CopyBuffer(w, io.LimitReader(br, int64(n)), buf); err != nil {
				return err
			}
		case 'F':
			n, err := binary.ReadUvarint(br)
			if err != nil || n > 1<<20 {
				return fmt.Errorf("tar layout: bad name length (%v)", err)
			}
			name := make([]byte, n)
			if _, err := io.ReadFull(br, name); err != nil {
				return fmt.Errorf("tar layout: %w", err)
			}
			size, err := binary.ReadUvarint(br)
			if err != nil {
				return fmt.Errorf("tar layout: %w", err)
			}
			f, err := get(string(name))
			if err != nil {
				return err
			}
			copied, err := io.CopyBuffer(w, io.LimitReader(f, int64(size)), buf)
			f.Close()
			if err != nil {
				return err
			}
			if copied != int64(size) {
				return fmt.Errorf("%s in the layer has %d bytes, the tar had %d", name, copied, size)
			}
		case 'U':
			return errUnreproducible
		default:
			return fmt.Errorf("tar layout: unknown record %q", kind)
		}
	}
}

// LayerTar returns the uncompressed tar layer ref was applied from, byte
// for byte (its sha256 is the layer's DiffID), reassembled from the
// recorded layout and the layer's files. Layers not made from a tar
// (CreateLayer, containers), and the rare tars that cannot be given back
// from the layer's files (one listing a path twice), give Diff's export
// instead. Close the reader: the layer stays counted as mounted until then.
func (s *Store) LayerTar(ctx context.Context, ref string) (io.ReadCloser, error) {
	rc, err := s.layerTar(ctx, ref)
	if errors.Is(err, errUnreproducible) || errors.Is(err, os.ErrNotExist) {
		return s.Diff(ctx, ref)
	}
	return rc, err
}

// layerTar is LayerTar without the fallback: errUnreproducible, or an
// error wrapping os.ErrNotExist when the layer has no layout.
func (s *Store) layerTar(ctx context.Context, ref string) (io.ReadCloser, error) {
	id, _, release, err := s.pinPair(ref)
	if err != nil {
		return nil, fmt.Errorf("tar of layer %s: %w", ref, err)
	}
	fail := func(err error) (io.ReadCloser, error) {
		return nil, fmt.Errorf("tar of layer %s: %w", ref, joinErrors(err, release()))
	}
	f, err := os.Open(s.layoutPath(id))
	if err != nil {
		return fail(err)
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return fail(fmt.Errorf("layout %s: %w", f.Name(), err))
	}
	// Peek: an unreproducible layout says so in its first record.
	br := bufio.NewReader(zr)
	if head, _ := br.Peek(len(layoutMagic) + 1); string(head) == layoutMagic+"U" {
		f.Close()
		return fail(errUnreproducible)
	}
	m, err := s.readMount(s.q, id)
	if err != nil {
		f.Close()
		return fail(err)
	}
	rootfd, err := unix.Open(m.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		f.Close()
		return fail(fmt.Errorf("open %s: %w", m.path, err))
	}
	get := inRootGetter{ctx: ctx, rootfd: rootfd}.Get
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(writeLayoutTar(pw, br, get))
	}()
	return &pinnedReader{ReadCloser: pr, release: func() error {
		pr.Close()
		<-done
		unix.Close(rootfd)
		f.Close()
		return release()
	}}, nil
}

// inRootGetter opens the files of a layout inside the layer's root:
// names come from the tar, which is not trusted, so they are resolved
// with RESOLVE_IN_ROOT and the last component is never followed.
type inRootGetter struct {
	ctx    context.Context
	rootfd int
}

func (g inRootGetter) Get(name string) (io.ReadCloser, error) {
	if err := g.ctx.Err(); err != nil {
		return nil, err
	}
	name = strings.TrimLeft(name, "/")
	fd, err := unix.Openat2(g.rootfd, name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, fmt.Errorf("open %s in the layer: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// tarDigest hashes r to its end and closes it.
func tarDigest(rc io.ReadCloser) (digest.Digest, error) {
	dg := digest.Canonical.Digester()
	_, err := io.Copy(dg.Hash(), rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	return dg.Digest(), nil
}

// decompressed returns the uncompressed stream of r (a layer tar,
// uncompressed, gzip or zstd).
func decompressed(r io.Reader) (io.ReadCloser, error) {
	rc, _, err := diff.DecompressStream(r)
	return rc, err
}
