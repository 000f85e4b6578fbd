package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
)

// A layer applied from a tar keeps that tar's layout: every header and
// padding byte, in order, without the file contents (tar-split's format,
// gzipped, in ROOT/tar-split/<id>.json.gz, some 1-2 % of the tar). With
// the files read back from the layer, it reassembles the very tar that
// was applied, byte for byte: what a push must send (its digest is the
// diffID the image config lists) and what Check's Digests hashes. An
// export of the layer's changes would be a valid tar of the same content
// but not the same bytes.

// tarSplitPath is where layer id's tar layout is kept.
func (s *Store) tarSplitPath(id string) string {
	return filepath.Join(s.root, "tar-split", id+".json.gz")
}

// tarSplitter records the layout of the tar stream it passes through.
// The applier reads the stream straight from its source; what it reads
// is copied, in chunks over a buffered channel, to tar-split's parser in
// a goroutine of its own, so that parsing runs beside applying instead of
// in lockstep with it (a plain pipe would make every read of the applier
// wait for the parser).
type tarSplitter struct {
	src    io.Reader
	chunks chan []byte
	f      *os.File
	zw     *gzip.Writer
	done   chan error // the parser's result
	closed bool
}

// chunkQueue bounds the memory of data read but not yet parsed.
const chunkQueue = 64

// newTarSplitter opens layer id's layout file and starts a recorder of
// the uncompressed tar src; read the stream through the tarSplitter.
func (s *Store) newTarSplitter(id string, src io.Reader) (*tarSplitter, error) {
	if err := os.MkdirAll(filepath.Dir(s.tarSplitPath(id)), 0o700); err != nil {
		return nil, noSpace(err)
	}
	f, err := os.OpenFile(s.tarSplitPath(id), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, noSpace(err)
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	t := &tarSplitter{src: src, chunks: make(chan []byte, chunkQueue), f: f, zw: zw, done: make(chan error, 1)}
	go func() {
		cr := &chunkReader{chunks: t.chunks}
		rc, done, err := asm.NewInputTarStreamWithDone(cr, storage.NewJSONPacker(zw), nil)
		if err != nil {
			cr.drain()
			t.done <- err
			return
		}
		_, err = io.Copy(io.Discard, rc)
		if derr := <-done; err == nil {
			err = derr
		}
		cr.drain() // unblock the reader if the parser stopped early
		t.done <- err
	}()
	return t, nil
}

// Read reads the stream for the applier and queues a copy for the parser.
func (t *tarSplitter) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
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

// chunkReader reads the chunks the tarSplitter queues.
type chunkReader struct {
	chunks <-chan []byte
	cur    []byte
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
	r.cur = r.cur[n:]
	return n, nil
}

// drain consumes the queue until it is closed, so the writer never blocks
// on a parser that stopped.
func (r *chunkReader) drain() {
	for range r.chunks {
	}
}

// LayerTar returns the uncompressed tar layer ref was applied from, byte
// for byte (its sha256 is the layer's DiffID), reassembled from the
// recorded layout and the layer's files. Layers not made from a tar
// (CreateLayer, containers) give Diff's export instead. Close the reader:
// the layer stays counted as mounted until then.
func (s *Store) LayerTar(ctx context.Context, ref string) (io.ReadCloser, error) {
	id, _, release, err := s.pinPair(ref)
	if err != nil {
		return nil, fmt.Errorf("tar of layer %s: %w", ref, err)
	}
	release2 := func() error { return release() }
	f, err := os.Open(s.tarSplitPath(id))
	if errors.Is(err, os.ErrNotExist) {
		if err := release2(); err != nil {
			return nil, fmt.Errorf("tar of layer %s: %w", ref, err)
		}
		return s.Diff(ctx, id)
	}
	if err != nil {
		return nil, fmt.Errorf("tar of layer %s: %w", ref, joinErrors(err, release2()))
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("tar of layer %s: layout %s: %w", ref, f.Name(), joinErrors(err, release2()))
	}
	m, err := s.readMount(s.q, id)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("tar of layer %s: %w", ref, joinErrors(err, release2()))
	}
	rootfd, err := unix.Open(m.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("tar of layer %s: open %s: %w", ref, m.path, joinErrors(err, release2()))
	}
	rc := asm.NewOutputTarStream(inRootGetter{ctx: ctx, rootfd: rootfd}, storage.NewJSONUnpacker(zr))
	return &pinnedReader{ReadCloser: rc, release: func() error {
		unix.Close(rootfd)
		f.Close()
		return release2()
	}}, nil
}

// inRootGetter opens the files tar-split asks for inside the layer's root:
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
