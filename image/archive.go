package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Formats of Save, and what Load detects.
const (
	// FormatOCIArchive is an OCI image layout in a tar file (podman's
	// and skopeo's oci-archive).
	FormatOCIArchive = "oci-archive"
	// FormatOCIDir is an OCI image layout directory.
	FormatOCIDir = "oci-dir"
	// FormatDockerArchive is the tar of `docker save` and `podman save`:
	// manifest.json, a config and a tar per layer, and the legacy
	// repositories file.
	FormatDockerArchive = "docker-archive"
)

// Errors of Save and Load callers may branch on (besides ErrBlobCorrupt,
// ErrNoPlatform and ErrUnsupported, shared with Pull).
var (
	// ErrUnknownFormat means a path Load cannot read as any format, or a
	// format Save does not know.
	ErrUnknownFormat = errors.New("unknown archive format")
	// ErrNotInArchive means a file the archive's own index names is not
	// in it.
	ErrNotInArchive = errors.New("not in the archive")
)

// Names of the annotations that carry an image's name in an OCI index:
// the OCI one, and containerd's (docker save writes both, the OCI one
// with the tag only).
const (
	annotationRefName        = "org.opencontainers.image.ref.name"
	annotationContainerdName = "io.containerd.image.name"
)

// ociLayoutFile is the content of an OCI layout's oci-layout file.
const ociLayoutFile = `{"imageLayoutVersion":"1.0.0"}`

// blobPath is where an OCI layout keeps blob d.
func blobPath(d digest.Digest) string {
	return path.Join("blobs", d.Algorithm().String(), d.Encoded())
}

// source is an archive or layout being loaded: its files by name.
type source interface {
	// open returns file name and its size; errors wrap ErrNotInArchive
	// when there is none.
	open(name string) (io.ReadCloser, int64, error)
	// has says whether file name exists.
	has(name string) bool
	close() error
}

// cleanName is an archive member's name as lookups use it: relative,
// clean, no "./".
func cleanName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// dirSource is a layout or an extracted archive in a directory; names
// resolve inside it (os.Root), never outside.
type dirSource struct{ root *os.Root }

func openDir(dir string) (*dirSource, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &dirSource{root: r}, nil
}

func (d *dirSource) open(name string) (io.ReadCloser, int64, error) {
	f, err := d.root.Open(cleanName(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("%s: %w", name, ErrNotInArchive)
	}
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s: not a regular file: %w", name, ErrNotInArchive)
	}
	return f, fi.Size(), nil
}

func (d *dirSource) has(name string) bool {
	_, err := d.root.Stat(cleanName(name))
	return err == nil
}

func (d *dirSource) close() error { return d.root.Close() }

// tarSource is an uncompressed tar file, indexed once: members are read
// in place (a section of the file), so loading copies nothing first.
type tarSource struct {
	f       *os.File
	entries map[string]tarEntry
	links   map[string]string // symlink members: name -> target, as written
}

type tarEntry struct{ off, size int64 }

// offsetReader tracks the offset of f as archive/tar reads and seeks it.
type offsetReader struct {
	f   *os.File
	off int64
}

func (o *offsetReader) Read(p []byte) (int, error) {
	n, err := o.f.Read(p)
	o.off += int64(n)
	return n, err
}

func (o *offsetReader) Seek(off int64, whence int) (int64, error) {
	n, err := o.f.Seek(off, whence)
	if err == nil {
		o.off = n
	}
	return n, err
}

// indexTar reads the headers of the tar f (positioned at its start).
// A damaged or truncated tar is an error.
func indexTar(f *os.File) (*tarSource, error) {
	or := &offsetReader{f: f}
	tr := tar.NewReader(or)
	s := &tarSource{f: f, entries: map[string]tarEntry{}, links: map[string]string{}}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read archive: %w", err)
		}
		name := cleanName(h.Name)
		switch h.Typeflag {
		case tar.TypeReg:
			// archive/tar reads no further than the header: the data
			// starts where the file is now.
			s.entries[name] = tarEntry{off: or.off, size: h.Size}
			delete(s.links, name)
		case tar.TypeSymlink:
			s.links[name] = h.Linkname
			delete(s.entries, name)
		case tar.TypeLink:
			if e, ok := s.entries[cleanName(h.Linkname)]; ok {
				s.entries[name] = e
			}
		}
	}
	// Skipping to the end proved the last member whole; a tar cut in a
	// member's data fails above with an unexpected EOF.
	return s, nil
}

// resolve follows symlink members (docker's legacy layout links
// duplicate layers) to a regular member.
func (s *tarSource) resolve(name string) (tarEntry, bool) {
	name = cleanName(name)
	for range 16 {
		if e, ok := s.entries[name]; ok {
			return e, true
		}
		target, ok := s.links[name]
		if !ok {
			return tarEntry{}, false
		}
		if path.IsAbs(target) {
			name = cleanName(target)
		} else {
			name = cleanName(path.Join(path.Dir(name), target))
		}
	}
	return tarEntry{}, false
}

func (s *tarSource) open(name string) (io.ReadCloser, int64, error) {
	e, ok := s.resolve(name)
	if !ok {
		return nil, 0, fmt.Errorf("%s: %w", name, ErrNotInArchive)
	}
	return io.NopCloser(io.NewSectionReader(s.f, e.off, e.size)), e.size, nil
}

func (s *tarSource) has(name string) bool {
	_, ok := s.resolve(name)
	return ok
}

func (s *tarSource) close() error { return s.f.Close() }

// readSmall reads file name of src whole (a manifest, config or index),
// refusing more than maxConfigSize bytes.
func readSmall(src source, name string) ([]byte, error) {
	rc, size, err := src.open(name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > maxConfigSize {
		return nil, fmt.Errorf("%s: %d bytes is more than the %d a manifest or config may have", name, size, maxConfigSize)
	}
	b, err := io.ReadAll(io.LimitReader(rc, size))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) != size {
		return nil, fmt.Errorf("%s: %w: %d bytes, want %d", name, ErrBlobCorrupt, len(b), size)
	}
	return b, nil
}

// readBlob reads blob d of an OCI layout, checking its size (when known,
// size >= 0) and digest.
func readBlob(src source, d digest.Digest, size int64) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("blob %q: %w", d, err)
	}
	b, err := readSmall(src, blobPath(d))
	if err != nil {
		return nil, err
	}
	if size >= 0 && int64(len(b)) != size {
		return nil, fmt.Errorf("blob %s: %w: %d bytes, the descriptor says %d", d, ErrBlobCorrupt, len(b), size)
	}
	if got := d.Algorithm().FromBytes(b); got != d {
		return nil, fmt.Errorf("blob %s: %w: its content hashes to %s", d, ErrBlobCorrupt, got)
	}
	return b, nil
}

// verifyReader checks, when the stream ends, that it had size bytes and
// (when want is set) hashed to want: a mismatch is the final read's
// error instead of io.EOF.
type verifyReader struct {
	r       io.Reader
	want    digest.Digest
	h       hash.Hash
	size, n int64
	sawEOF  bool
	err     error // the verdict once the stream ended
	what    string
}

func newVerifyReader(r io.Reader, want digest.Digest, size int64, what string) *verifyReader {
	v := &verifyReader{r: r, want: want, size: size, what: what}
	if want != "" {
		v.h = want.Algorithm().Hash()
	}
	return v
}

func (v *verifyReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	if v.h != nil {
		v.h.Write(p[:n])
	}
	v.n += int64(n)
	if v.n > v.size {
		v.sawEOF = true
		v.err = fmt.Errorf("%s: %w: more than its %d bytes", v.what, ErrBlobCorrupt, v.size)
		return n, v.err
	}
	if errors.Is(err, io.EOF) {
		v.sawEOF = true
		if v.n != v.size {
			v.err = fmt.Errorf("%s: %w: %d bytes, want %d", v.what, ErrBlobCorrupt, v.n, v.size)
		} else if v.h != nil {
			if got := digest.NewDigest(v.want.Algorithm(), v.h); got != v.want {
				v.err = fmt.Errorf("%s: %w: its content hashes to %s", v.what, ErrBlobCorrupt, got)
			}
		}
		if v.err != nil {
			return n, v.err
		}
	}
	return n, err
}

// finish reads what the consumer left and returns the verdict.
func (v *verifyReader) finish() error {
	if !v.sawEOF {
		if _, err := io.Copy(io.Discard, v); err != nil && v.err == nil {
			return err
		}
	}
	return v.err
}
