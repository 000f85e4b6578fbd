package image

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/store"
)

// SaveOptions tune Save.
type SaveOptions struct {
	// Format is FormatOCIArchive (the default, ""), FormatOCIDir or
	// FormatDockerArchive.
	Format string
	// Compression is "gzip", "zstd" or "none", the layers' compression
	// in OCI formats; "" means what the image's commit recorded (see
	// ImageCompression), else gzip. A docker-archive's layers are plain
	// tars, as docker writes them ("" or "none").
	Compression string
	// TempDir holds compressed layers until they are written (unnamed
	// files); "" means the store root's tmp directory.
	TempDir string
	// Jobs bounds the layers compressed at once; 0 means the number of
	// CPUs.
	Jobs int
}

// Save writes the images refs name (IDs, prefixes or names) from st to
// dest in opts.Format, keeping their names: an ID saves the image under
// all its names, a name under that one. Each layer is read and
// compressed once, however many images share it, and its blob digest is
// remembered in st. The archive (or directory) appears at dest only once
// whole; dest must not exist, or be an empty directory for oci-dir.
func Save(ctx context.Context, st *store.Store, refs []string, dest string, opts *SaveOptions) error {
	if opts == nil {
		opts = &SaveOptions{}
	}
	if err := save(ctx, st, refs, dest, opts); err != nil {
		return fmt.Errorf("save %s: %w", strings.Join(refs, " "), err)
	}
	return nil
}

// savedImage is one image to save with the names it goes under.
type savedImage struct {
	img     *store.Image
	names   []string
	config  []byte
	layers  []*store.Layer
	diffIDs []digest.Digest
}

// savedBlob is a layer's blob for the archive: a compressed file, or
// (uncompressed) the layer's tar read when written.
type savedBlob struct {
	layer *store.Layer
	// comp is the blob's compression.
	comp diff.Compression
	// file holds the compressed blob; nil for an uncompressed one,
	// streamed from the store.
	file      *os.File
	digest    digest.Digest
	size      int64
	mediaType types.MediaType
}

func save(ctx context.Context, st *store.Store, refs []string, dest string, opts *SaveOptions) error {
	if len(refs) == 0 {
		return errors.New("no image to save")
	}
	format := opts.Format
	if format == "" {
		format = FormatOCIArchive
	}
	comp := diff.Gzip
	switch format {
	case FormatOCIArchive, FormatOCIDir:
		if opts.Compression != "" {
			c, err := diff.ParseCompression(opts.Compression)
			if err != nil {
				return err
			}
			comp = c
		}
	case FormatDockerArchive:
		comp = diff.Uncompressed
		if opts.Compression != "" && opts.Compression != "none" {
			return fmt.Errorf("a docker-archive's layers are uncompressed: compression %q", opts.Compression)
		}
	default:
		return fmt.Errorf("%w %q: want oci-archive, oci-dir or docker-archive", ErrUnknownFormat, format)
	}
	if err := checkDest(dest, format); err != nil {
		return err
	}
	images, err := saveList(st, refs)
	if err != nil {
		return err
	}

	// The layers, each once, compressed at once up to Jobs.
	var order []string
	blobs := map[string]*savedBlob{}
	for _, si := range images {
		// Without a compression asked for, an OCI image's layers get
		// what its commit recorded (the first image listing a layer
		// decides).
		imgComp := comp
		if opts.Compression == "" && format != FormatDockerArchive {
			recorded, ok, err := ImageCompression(si.img)
			if err != nil {
				return err
			}
			if ok {
				imgComp = recorded
			}
		}
		for _, l := range si.layers {
			if _, ok := blobs[l.ID]; !ok {
				blobs[l.ID] = &savedBlob{layer: l, comp: imgComp}
				order = append(order, l.ID)
			}
		}
	}
	defer func() {
		for _, b := range blobs {
			if b.file != nil {
				b.file.Close()
			}
		}
	}()
	tmp := opts.TempDir
	if tmp == "" {
		tmp = filepath.Join(st.Root(), "tmp")
		if _, err := os.Stat(tmp); err != nil {
			tmp = os.TempDir()
		}
	}
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, id := range order {
		b := blobs[id]
		if b.comp == diff.Uncompressed {
			// The blob is the layer tar itself, streamed into the archive
			// and checked against the diffID on the way.
			b.digest, b.size, b.mediaType = b.layer.DiffID, b.layer.TarSize, types.OCIUncompressedLayer
			if b.digest == "" {
				return fmt.Errorf("layer %s has no diff ID", b.layer.ID)
			}
			continue
		}
		g.Go(func() error {
			cb, err := compressLayer(gctx, st, b.layer, b.comp, tmp, true)
			if err != nil {
				return fmt.Errorf("layer %s: %w", b.layer.ID, err)
			}
			b.file, b.digest, b.size, b.mediaType = cb.f, cb.digest, cb.size, cb.mediaType
			if !hasBlob(b.layer, cb.digest.String()) {
				if err := st.AddLayerBlob(b.layer.ID, store.Blob{Digest: cb.digest, MediaType: string(cb.mediaType), Size: cb.size}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}

	w, err := newSink(dest, format)
	if err != nil {
		return err
	}
	switch format {
	case FormatDockerArchive:
		err = writeDockerArchive(ctx, st, w, images, blobs)
	default:
		err = writeOCILayout(ctx, st, w, images, blobs, order)
	}
	if err != nil {
		w.abort()
		return err
	}
	return w.commit()
}

// checkDest refuses a destination that exists (an empty directory will
// do for oci-dir), before any work.
func checkDest(dest, format string) error {
	if dest == "" {
		return errors.New("no destination")
	}
	fi, err := os.Lstat(dest)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if format == FormatOCIDir && fi.IsDir() {
		ents, err := os.ReadDir(dest)
		if err != nil {
			return err
		}
		if len(ents) == 0 {
			return nil
		}
		return fmt.Errorf("%s is a directory that is not empty", dest)
	}
	return fmt.Errorf("%s exists already", dest)
}

// saveList resolves refs to images (each once, names merged) with their
// configs and layers.
func saveList(st *store.Store, refs []string) ([]*savedImage, error) {
	var out []*savedImage
	byID := map[string]*savedImage{}
	for _, ref := range refs {
		img, err := st.Image(ref)
		if err != nil {
			return nil, err
		}
		var names []string
		if full, err := store.NormalizeName(ref); err == nil && slices.Contains(img.Names, full) {
			names = []string{full}
		} else {
			names = img.Names
		}
		names = slices.DeleteFunc(slices.Clone(names), func(n string) bool { return strings.Contains(n, "@") })
		si := byID[img.ID]
		if si == nil {
			config, err := st.ImageConfig(img.ID)
			if err != nil {
				return nil, err
			}
			diffIDs, err := configDiffIDs(config)
			if err != nil {
				return nil, fmt.Errorf("image %s: %w", img.ID, err)
			}
			if len(diffIDs) != len(img.Layers) {
				return nil, fmt.Errorf("image %s: its config lists %d layers, the store %d", img.ID, len(diffIDs), len(img.Layers))
			}
			si = &savedImage{img: img, config: config, diffIDs: diffIDs}
			for i, id := range img.Layers {
				l, err := st.Layer(id)
				if err != nil {
					return nil, err
				}
				if l.DiffID != diffIDs[i] {
					return nil, fmt.Errorf("image %s: layer %s has diff ID %s, the config says %s", img.ID, l.ID, l.DiffID, diffIDs[i])
				}
				si.layers = append(si.layers, l)
			}
			byID[img.ID] = si
			out = append(out, si)
		}
		for _, n := range names {
			if !slices.Contains(si.names, n) {
				si.names = append(si.names, n)
			}
		}
	}
	return out, nil
}

// sink is where an archive's files go: a tar or a directory, made in a
// temporary place and moved to the destination by commit.
type sink interface {
	// put writes file name of size bytes from r.
	put(name string, size int64, r io.Reader) error
	commit() error
	abort()
}

func newSink(dest, format string) (sink, error) {
	dir, base := filepath.Split(filepath.Clean(dest))
	if dir == "" {
		dir = "."
	}
	if format == FormatOCIDir {
		tmp, err := os.MkdirTemp(dir, "."+base+".tmp-")
		if err != nil {
			return nil, err
		}
		return &dirSink{tmp: tmp, dest: dest, made: map[string]bool{}}, nil
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-")
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	return &tarSink{f: f, bw: bw, tw: tar.NewWriter(bw), dest: dest, dirs: map[string]bool{}}, nil
}

// archiveTime is every archive member's mtime: saving the same images
// twice gives the same bytes.
var archiveTime = time.Unix(0, 0)

type tarSink struct {
	f    *os.File
	bw   *bufio.Writer
	tw   *tar.Writer
	dest string
	dirs map[string]bool
}

func (s *tarSink) put(name string, size int64, r io.Reader) error {
	// Parent directories first, as docker and skopeo write them.
	for i := range name {
		if name[i] == '/' && !s.dirs[name[:i+1]] {
			s.dirs[name[:i+1]] = true
			if err := s.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name[:i+1], Mode: 0o755, ModTime: archiveTime, Format: tar.FormatPAX}); err != nil {
				return err
			}
		}
	}
	if err := s.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: archiveTime, Format: tar.FormatPAX}); err != nil {
		return err
	}
	n, err := io.Copy(s.tw, r)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("write %s: %d bytes, want %d", name, n, size)
	}
	return nil
}

func (s *tarSink) commit() error {
	err := s.tw.Close()
	if err == nil {
		err = s.bw.Flush()
	}
	if err == nil {
		err = s.f.Chmod(0o644)
	}
	if err == nil {
		err = s.f.Close()
	} else {
		s.f.Close()
	}
	if err == nil {
		err = os.Rename(s.f.Name(), s.dest)
	}
	if err != nil {
		os.Remove(s.f.Name())
		return fmt.Errorf("write %s: %w", s.dest, err)
	}
	return nil
}

func (s *tarSink) abort() {
	s.f.Close()
	os.Remove(s.f.Name())
}

type dirSink struct {
	tmp, dest string
	made      map[string]bool
}

func (s *dirSink) put(name string, size int64, r io.Reader) error {
	p := filepath.Join(s.tmp, filepath.FromSlash(name))
	if d := filepath.Dir(p); !s.made[d] {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		s.made[d] = true
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = fmt.Errorf("%d bytes, want %d", n, size)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func (s *dirSink) commit() error {
	if err := os.Chmod(s.tmp, 0o755); err != nil {
		s.abort()
		return err
	}
	// An empty destination directory (checked before) gives way.
	_ = os.Remove(s.dest)
	if err := os.Rename(s.tmp, s.dest); err != nil {
		s.abort()
		return fmt.Errorf("write %s: %w", s.dest, err)
	}
	return nil
}

func (s *dirSink) abort() { os.RemoveAll(s.tmp) }

// putBlob writes b (a compressed file, or the layer's tar streamed and
// checked against its diffID) as file name.
func putBlob(ctx context.Context, st *store.Store, w sink, name string, b *savedBlob) error {
	if b.file != nil {
		return w.put(name, b.size, io.NewSectionReader(b.file, 0, b.size))
	}
	rc, err := st.LayerTar(ctx, b.layer.ID)
	if err != nil {
		return err
	}
	defer rc.Close()
	v := newVerifyReader(rc, b.layer.DiffID, b.size, "layer "+b.layer.ID)
	if err := w.put(name, b.size, v); err != nil {
		if v.err != nil {
			return fmt.Errorf("%w (%w)", v.err, store.ErrDigestMismatch)
		}
		return err
	}
	return v.finish()
}

// writeOCILayout writes an OCI image layout: the blobs, one manifest per
// image, and index.json listing each image once per name
// (org.opencontainers.image.ref.name and io.containerd.image.name both
// carry the full name), or once without a name.
func writeOCILayout(ctx context.Context, st *store.Store, w sink, images []*savedImage, blobs map[string]*savedBlob, order []string) error {
	if err := w.put("oci-layout", int64(len(ociLayoutFile)), strings.NewReader(ociLayoutFile)); err != nil {
		return err
	}
	written := map[digest.Digest]bool{}
	for _, id := range order {
		b := blobs[id]
		if written[b.digest] {
			continue
		}
		written[b.digest] = true
		if err := putBlob(ctx, st, w, blobPath(b.digest), b); err != nil {
			return err
		}
	}
	putSmall := func(b []byte) (digest.Digest, error) {
		d := digest.FromBytes(b)
		if written[d] {
			return d, nil
		}
		written[d] = true
		return d, w.put(blobPath(d), int64(len(b)), strings.NewReader(string(b)))
	}
	index := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{}}
	for _, si := range images {
		configDigest, err := putSmall(si.config)
		if err != nil {
			return err
		}
		m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, Layers: []v1.Descriptor{}}
		m.Config = v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(si.config)), Digest: hashOf(configDigest)}
		for _, l := range si.layers {
			b := blobs[l.ID]
			m.Layers = append(m.Layers, v1.Descriptor{MediaType: b.mediaType, Size: b.size, Digest: hashOf(b.digest)})
		}
		raw, err := json.Marshal(m)
		if err != nil {
			return err
		}
		md, err := putSmall(raw)
		if err != nil {
			return err
		}
		desc := v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: int64(len(raw)), Digest: hashOf(md), Platform: platformOf(si.config)}
		if len(si.names) == 0 {
			index.Manifests = append(index.Manifests, desc)
		}
		for _, n := range si.names {
			d := desc
			d.Annotations = map[string]string{annotationRefName: n, annotationContainerdName: n}
			index.Manifests = append(index.Manifests, d)
		}
	}
	raw, err := json.Marshal(index)
	if err != nil {
		return err
	}
	return w.put("index.json", int64(len(raw)), strings.NewReader(string(raw)))
}

// hashOf is a digest as go-containerregistry spells it.
func hashOf(d digest.Digest) v1.Hash {
	return v1.Hash{Algorithm: d.Algorithm().String(), Hex: d.Encoded()}
}

// platformOf is the platform an image config says, nil when it says
// none.
func platformOf(config []byte) *v1.Platform {
	var c struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
	}
	if json.Unmarshal(config, &c) != nil || c.OS == "" || c.Architecture == "" {
		return nil
	}
	return &v1.Platform{OS: c.OS, Architecture: c.Architecture, Variant: c.Variant}
}

// dockerManifestEntry is one image of a docker-archive's manifest.json.
type dockerManifestEntry struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

// writeDockerArchive writes the format of docker save (before 25) and
// podman save: <diffID>.tar per layer, <configDigest>.json, manifest.json
// and the legacy repositories file.
func writeDockerArchive(ctx context.Context, st *store.Store, w sink, images []*savedImage, blobs map[string]*savedBlob) error {
	written := map[string]bool{}
	var manifest []dockerManifestEntry
	repos := map[string]map[string]string{}
	for _, si := range images {
		e := dockerManifestEntry{RepoTags: []string{}, Layers: []string{}}
		for _, l := range si.layers {
			name := l.DiffID.Encoded() + ".tar"
			e.Layers = append(e.Layers, name)
			if written[name] {
				continue
			}
			written[name] = true
			if err := putBlob(ctx, st, w, name, blobs[l.ID]); err != nil {
				return err
			}
		}
		e.Config = si.img.ID + ".json"
		if !written[e.Config] {
			written[e.Config] = true
			if err := w.put(e.Config, int64(len(si.config)), strings.NewReader(string(si.config))); err != nil {
				return err
			}
		}
		for _, n := range si.names {
			e.RepoTags = append(e.RepoTags, n)
			if repo, tag, ok := cutTag(n); ok && len(si.layers) > 0 {
				if repos[repo] == nil {
					repos[repo] = map[string]string{}
				}
				repos[repo][tag] = si.layers[len(si.layers)-1].DiffID.Encoded()
			}
		}
		manifest = append(manifest, e)
	}
	raw, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	if err := w.put("manifest.json", int64(len(raw)), strings.NewReader(string(raw))); err != nil {
		return err
	}
	raw, err = json.Marshal(repos)
	if err != nil {
		return err
	}
	return w.put("repositories", int64(len(raw)), strings.NewReader(string(raw)))
}

// cutTag splits a normalised name repo:tag.
func cutTag(n string) (repo, tag string, ok bool) {
	i := strings.LastIndexByte(n, ':')
	if i < 0 || strings.Contains(n[i:], "/") {
		return "", "", false
	}
	return n[:i], n[i+1:], true
}
