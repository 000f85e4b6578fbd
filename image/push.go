package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/pgzip"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/store"
)

// PushOptions tune Push.
type PushOptions struct {
	RemoteOptions
	// Compression is "gzip", "zstd" or "none": the form every layer is
	// pushed in. "" means a blob the store remembers for the layer, in
	// whatever compression (the pulled manifest's first), and gzip for a
	// layer that has none.
	Compression string
	// TempDir holds blobs being compressed (unnamed files); "" means the
	// store root's tmp directory.
	TempDir string
}

// Push sends image imageRef of st to dest (a reference normalised as
// docker does; "" means the image's only name) and returns the digest of
// the manifest pushed. A blob the registry has already is not sent, one
// another repository of the registry has (one of the image's names) is
// mounted from it, and a layer compressed for the push has its blob
// remembered in st, so pushing again sends nothing and gives the same
// manifest digest.
func Push(ctx context.Context, st *store.Store, imageRef, dest string, opts *PushOptions) (digest.Digest, error) {
	if opts == nil {
		opts = &PushOptions{}
	}
	d, err := push(ctx, st, imageRef, dest, opts)
	if err != nil {
		if dest == "" {
			return "", fmt.Errorf("push %s: %w", imageRef, err)
		}
		return "", fmt.Errorf("push %s to %s: %w", imageRef, dest, err)
	}
	return d, nil
}

// pushLayer is one layer of the image being pushed.
type pushLayer struct {
	layer *store.Layer
	// cands are the blobs the store remembers for it that may do, best
	// first.
	cands []store.Blob
	// desc is the blob the manifest lists, once it is in the registry.
	desc v1.Descriptor
}

func push(ctx context.Context, st *store.Store, imageRef, dest string, opts *PushOptions) (digest.Digest, error) {
	var want *diff.Compression
	if opts.Compression != "" {
		c, err := diff.ParseCompression(opts.Compression)
		if err != nil {
			return "", err
		}
		want = &c
	}
	img, err := st.Image(imageRef)
	if err != nil {
		return "", err
	}
	if dest == "" {
		if dest, err = defaultDest(img, imageRef); err != nil {
			return "", err
		}
	}
	full, r, err := parseReference(dest, opts.Insecure)
	if err != nil {
		return "", err
	}
	if _, ok := r.(name.Digest); ok {
		return "", fmt.Errorf("destination %s: push to a tag, not a digest", full)
	}
	config, err := st.ImageConfig(img.ID)
	if err != nil {
		return "", err
	}
	var stored *v1.Manifest
	storedRaw, err := st.ImageManifest(img.ID)
	switch {
	case err == nil:
		if stored, err = v1.ParseManifest(strings.NewReader(string(storedRaw))); err != nil {
			return "", fmt.Errorf("stored manifest of %s: %w", img.ID, err)
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return "", err
	}
	diffIDs, err := configDiffIDs(config)
	if err != nil {
		return "", err
	}
	if len(diffIDs) != len(img.Layers) {
		return "", fmt.Errorf("image %s: its config lists %d layers, the store %d", img.ID, len(diffIDs), len(img.Layers))
	}
	ls := make([]*pushLayer, len(img.Layers))
	for i, id := range img.Layers {
		l, err := st.Layer(id)
		if err != nil {
			return "", err
		}
		var fromManifest string
		if stored != nil && len(stored.Layers) == len(img.Layers) {
			fromManifest = stored.Layers[i].Digest.String()
		}
		ls[i] = &pushLayer{layer: l, cands: candidates(l, fromManifest, want)}
	}
	// Mount sources: the image's other repositories on the same registry.
	var sources []name.Repository
	for _, n := range img.Names {
		nr, err := name.ParseReference(n, nameOpts(opts.Insecure)...)
		if err != nil || nr.Context().RegistryStr() != r.Context().RegistryStr() || nr.Context().RepositoryStr() == r.Context().RepositoryStr() {
			continue
		}
		if !slices.ContainsFunc(sources, func(s name.Repository) bool { return s.String() == nr.Context().String() }) {
			sources = append(sources, nr.Context())
		}
	}
	c, err := newClient(ctx, r.Context(), &opts.RemoteOptions, true, sources...)
	if err != nil {
		return "", err
	}
	pusher, err := remote.NewPusher(c.remoteOptions(ctx)...)
	if err != nil {
		return "", err
	}
	tmp := opts.TempDir
	if tmp == "" {
		tmp = filepath.Join(st.Root(), "tmp")
		if _, err := os.Stat(tmp); err != nil {
			tmp = os.TempDir()
		}
	}
	comp := diff.Gzip
	if want != nil {
		comp = *want
	} else if recorded, ok, err := ImageCompression(img); err != nil {
		return "", err
	} else if ok {
		comp = recorded // commit --compression
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.jobs())
	for i, l := range ls {
		g.Go(func() error {
			layerComp := comp
			if want == nil && len(l.cands) > 0 {
				// Made again in the compression remembered (a base
				// layer keeps the form it was pulled or pushed in;
				// the same digest when push made that blob).
				if rc, ok := mediaTypeCompression(l.cands[0].MediaType); ok {
					layerComp = rc
				}
			}
			if err := c.pushLayer(gctx, st, pusher, l, sources, layerComp, tmp); err != nil {
				opts.progress(Event{ID: shortID(l.layer.ID), Status: StatusFailed, Err: err})
				return fmt.Errorf("layer %d (%s): %w", i+1, l.layer.ID, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return "", err
	}

	// The manifest: the stored one when the layers went as it lists them
	// (so the digest is the one pulled), else a new one.
	raw, mt := storedRaw, types.MediaType("")
	if stored != nil {
		mt = stored.MediaType
		if mt == "" {
			mt = types.OCIManifestSchema1
		}
	}
	if stored == nil || !sameBlobs(stored, ls) {
		raw, mt, err = buildManifest(config, ls, stored)
		if err != nil {
			return "", err
		}
	}
	cfgType := types.OCIConfigJSON
	if mt == types.DockerManifestSchema2 {
		cfgType = types.DockerConfigJSON
	}
	if err := c.pushConfig(ctx, pusher, config, cfgType, sources); err != nil {
		return "", fmt.Errorf("config: %w", err)
	}
	err = retry(ctx, c.opts, func() error { return pusher.Put(ctx, r, rawManifest{raw, mt}) })
	if err != nil {
		return "", fmt.Errorf("manifest: %w", err)
	}
	return digest.FromBytes(raw), nil
}

// defaultDest is where an image goes without a destination: the name
// it was asked for by, else its only name.
func defaultDest(img *store.Image, ref string) (string, error) {
	if full, err := store.NormalizeName(ref); err == nil && slices.Contains(img.Names, full) {
		return full, nil
	}
	if len(img.Names) == 1 {
		return img.Names[0], nil
	}
	return "", fmt.Errorf("image %s has %d names: say which reference to push to", img.ID, len(img.Names))
}

func nameOpts(insecure bool) []name.Option {
	if insecure {
		return []name.Option{name.Insecure}
	}
	return nil
}

// candidates are the blobs of l a push may send as they are: those of
// compression want (any, when nil), the stored manifest's first.
func candidates(l *store.Layer, fromManifest string, want *diff.Compression) []store.Blob {
	var out []store.Blob
	for _, b := range l.Blobs {
		c, ok := mediaTypeCompression(b.MediaType)
		if !ok || (want != nil && c != *want) {
			continue
		}
		if b.Digest.String() == fromManifest {
			out = append([]store.Blob{b}, out...)
		} else {
			out = append(out, b)
		}
	}
	return out
}

// mediaTypeCompression is the compression a layer media type says.
func mediaTypeCompression(mt string) (diff.Compression, bool) {
	switch types.MediaType(mt) {
	case types.DockerLayer, types.OCILayer:
		return diff.Gzip, true
	case types.OCILayerZStd:
		return diff.Zstd, true
	case types.DockerUncompressedLayer, types.OCIUncompressedLayer:
		return diff.Uncompressed, true
	}
	return 0, false
}

// layerMediaType is the OCI media type of a layer blob compressed with c.
func layerMediaType(c diff.Compression) types.MediaType {
	switch c {
	case diff.Gzip:
		return types.OCILayer
	case diff.Zstd:
		return types.OCILayerZStd
	}
	return types.OCIUncompressedLayer
}

// pushLayer gets l's blob into the registry: one it has already, one it
// can mount, or a new one compressed with comp and uploaded.
func (c *client) pushLayer(ctx context.Context, st *store.Store, pusher *remote.Pusher, l *pushLayer, sources []name.Repository, comp diff.Compression, tmp string) error {
	id := shortID(l.layer.ID)
	for _, b := range l.cands {
		ok, err := c.blobExists(ctx, b.Digest)
		if err != nil {
			return err
		}
		if ok {
			l.desc = descOf(b)
			c.opts.progress(Event{ID: id, Status: StatusExists, Current: b.Size, Total: b.Size})
			return nil
		}
	}
	for _, b := range l.cands {
		for _, src := range sources {
			ok, err := c.mountBlob(ctx, b.Digest, src)
			if err != nil {
				return err
			}
			if ok {
				l.desc = descOf(b)
				c.opts.progress(Event{ID: id, Status: StatusMounted, Current: b.Size, Total: b.Size})
				return nil
			}
		}
	}
	c.opts.progress(Event{ID: id, Status: StatusCompressing})
	blob, err := compressLayer(ctx, st, l.layer, comp, tmp, false)
	if err != nil {
		return err
	}
	defer blob.f.Close()
	c.opts.progress(Event{ID: id, Status: StatusPushing, Total: blob.size})
	fl := &fileLayer{blob: blob, progress: func(n int64) {
		c.opts.progress(Event{ID: id, Status: StatusPushing, Current: n, Total: blob.size})
	}}
	if err := retry(ctx, c.opts, func() error { return pusher.Upload(ctx, c.repo, fl) }); err != nil {
		return err
	}
	b := store.Blob{Digest: blob.digest, MediaType: string(blob.mediaType), Size: blob.size}
	if err := st.AddLayerBlob(l.layer.ID, b); err != nil {
		return err
	}
	l.desc = descOf(b)
	c.opts.progress(Event{ID: id, Status: StatusPushed, Current: blob.size, Total: blob.size})
	return nil
}

// pushConfig gets the config blob into the registry: there already,
// mounted, or uploaded.
func (c *client) pushConfig(ctx context.Context, pusher *remote.Pusher, config []byte, mt types.MediaType, sources []name.Repository) error {
	d := digest.FromBytes(config)
	if ok, err := c.blobExists(ctx, d); err != nil || ok {
		return err
	}
	for _, src := range sources {
		if ok, err := c.mountBlob(ctx, d, src); err != nil || ok {
			return err
		}
	}
	return retry(ctx, c.opts, func() error { return pusher.Upload(ctx, c.repo, static.NewLayer(config, mt)) })
}

// blobExists asks the registry (HEAD) whether it has blob d.
func (c *client) blobExists(ctx context.Context, d digest.Digest) (bool, error) {
	var ok bool
	err := retry(ctx, c.opts, func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, c.blobURL(d), nil)
		if err != nil {
			return err
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			ok = true
			return nil
		case http.StatusNotFound:
			ok = false
			return nil
		}
		return transport.CheckError(resp, http.StatusOK)
	})
	if err != nil {
		return false, fmt.Errorf("blob %s: %w", d, err)
	}
	return ok, nil
}

// mountBlob asks the registry to mount blob d from repository src into
// c's (a cross-repository mount): true when it did. A registry that
// answers with an upload session instead has not; the session is
// dropped.
func (c *client) mountBlob(ctx context.Context, d digest.Digest, src name.Repository) (bool, error) {
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/uploads/?mount=%s&from=%s", c.repo.Scheme(), c.repo.RegistryStr(), c.repo.RepositoryStr(), d, src.RepositoryStr())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return false, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return false, fmt.Errorf("mount blob %s from %s: %w", d, src, err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusCreated:
		return true, nil
	case http.StatusAccepted:
		if loc := resp.Header.Get("Location"); loc != "" {
			if lu, err := req.URL.Parse(loc); err == nil {
				if del, err := http.NewRequestWithContext(ctx, http.MethodDelete, lu.String(), nil); err == nil {
					if resp, err := c.hc.Do(del); err == nil {
						resp.Body.Close()
					}
				}
			}
		}
		return false, nil
	}
	// A registry refusing mounts is no reason to fail: upload instead.
	return false, nil
}

// compressedBlob is a layer compressed into an unnamed temporary file.
type compressedBlob struct {
	f         *os.File
	digest    digest.Digest
	size      int64
	mediaType types.MediaType
}

// compressLayer writes layer l's tar (as it was applied) compressed with
// c into a temporary file, checking its diffID on the way. With fast,
// gzip is written at its fastest level (see saveGzipLevel); a push
// compresses at the default level, for the network.
func compressLayer(ctx context.Context, st *store.Store, l *store.Layer, c diff.Compression, tmp string, fast bool) (*compressedBlob, error) {
	f, err := unnamedFile(tmp)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	rc, err := st.LayerTar(ctx, l.ID)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var opts diff.CompressOptions
	if fast {
		opts.GzipLevel = saveGzipLevel
	}
	cb, err := compressWith(f, rc, l, c, opts)
	if err != nil {
		return nil, err
	}
	ok = true
	return cb, nil
}

// compressWith compresses the layer tar r with c, tuned by opts, into f.
func compressWith(f *os.File, r io.Reader, l *store.Layer, c diff.Compression, opts diff.CompressOptions) (*compressedBlob, error) {
	lw, err := diff.NewLayerWriterWith(f, c, opts)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(lw, r); err != nil {
		return nil, fmt.Errorf("compress: %w", err)
	}
	if err := lw.Close(); err != nil {
		return nil, fmt.Errorf("compress: %w", err)
	}
	if l.DiffID != "" && lw.DiffID() != l.DiffID {
		return nil, fmt.Errorf("%w: the stored layer gives diff ID %s, recorded %s", store.ErrDigestMismatch, lw.DiffID(), l.DiffID)
	}
	return &compressedBlob{f: f, digest: lw.Digest(), size: lw.Size(), mediaType: layerMediaType(c)}, nil
}

// saveGzipLevel is the gzip level of saved archives: the fastest. On the
// debian layer (120.6 MB) here, pgzip on 2 cores at level 1 writes 55.6
// MB at 2.2x the speed of the default level's 50.5 MB: an archive is
// written to a local disk, where time counts more than 10 % of size
// (docker saves layers uncompressed). The output does not depend on the
// number of cores (fixed 1 MiB blocks), so the same layer gives the same
// blob digest on every host.
const saveGzipLevel = pgzip.BestSpeed

// fileLayer is a compressed blob as go-containerregistry uploads it.
type fileLayer struct {
	blob     *compressedBlob
	progress func(n int64)
}

func (l *fileLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.blob.digest.String()) }
func (l *fileLayer) DiffID() (v1.Hash, error) {
	return v1.Hash{}, errors.New("diff ID not needed for upload")
}
func (l *fileLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(&progressReader{r: io.NewSectionReader(l.blob.f, 0, l.blob.size), f: l.progress}), nil
}
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, errors.New("uncompressed form not needed for upload")
}
func (l *fileLayer) Size() (int64, error)                { return l.blob.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return l.blob.mediaType, nil }

// progressReader tells f the bytes read so far.
type progressReader struct {
	r io.Reader
	n int64
	f func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if p.f != nil && n > 0 {
		p.f(p.n)
	}
	return n, err
}

// descOf is a stored blob as a manifest lists it.
func descOf(b store.Blob) v1.Descriptor {
	h, _ := v1.NewHash(b.Digest.String())
	return v1.Descriptor{MediaType: types.MediaType(b.MediaType), Size: b.Size, Digest: h}
}

// sameBlobs says whether the layers went as manifest m lists them.
func sameBlobs(m *v1.Manifest, ls []*pushLayer) bool {
	if len(m.Layers) != len(ls) {
		return false
	}
	for i, l := range ls {
		if m.Layers[i].Digest != l.desc.Digest {
			return false
		}
	}
	return true
}

// buildManifest makes the manifest of config and the layers' blobs:
// Docker schema2 when the stored manifest was and every blob has a
// Docker media type, else OCI.
func buildManifest(config []byte, ls []*pushLayer, stored *v1.Manifest) ([]byte, types.MediaType, error) {
	docker := stored != nil && stored.MediaType == types.DockerManifestSchema2
	for _, l := range ls {
		if l.desc.MediaType != types.DockerLayer && l.desc.MediaType != types.DockerUncompressedLayer {
			docker = false
		}
	}
	mt, cfgType := types.OCIManifestSchema1, types.OCIConfigJSON
	if docker {
		mt, cfgType = types.DockerManifestSchema2, types.DockerConfigJSON
	}
	m := v1.Manifest{SchemaVersion: 2, MediaType: mt, Config: v1.Descriptor{MediaType: cfgType, Size: int64(len(config))}}
	h, err := v1.NewHash(digest.FromBytes(config).String())
	if err != nil {
		return nil, "", err
	}
	m.Config.Digest = h
	m.Layers = []v1.Descriptor{}
	for _, l := range ls {
		d := l.desc
		if !docker {
			// A Docker media type in an OCI manifest: say it the OCI way.
			switch d.MediaType {
			case types.DockerLayer:
				d.MediaType = types.OCILayer
			case types.DockerUncompressedLayer:
				d.MediaType = types.OCIUncompressedLayer
			}
		}
		m.Layers = append(m.Layers, d)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, "", err
	}
	return b, mt, nil
}

// rawManifest is a manifest's bytes as go-containerregistry puts them.
type rawManifest struct {
	b  []byte
	mt types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.b, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }
