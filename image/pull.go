package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/layers-storage/layers/store"
)

// PullOptions tune Pull.
type PullOptions struct {
	RemoteOptions
	// Platform is "os/arch[/variant]", the image to pick from an index;
	// "" means the host's.
	Platform string
	// TempDir holds the blobs being downloaded (unnamed files); "" means
	// the store root's tmp directory, so that blobs land on the store's
	// filesystem rather than on /tmp.
	TempDir string
}

// maxConfigSize bounds an image config (or manifest) read into memory.
const maxConfigSize = 16 << 20

// Layer media types Pull stores; the store tells the compression from
// the bytes themselves.
var layerMediaTypes = []types.MediaType{
	types.DockerLayer, types.DockerUncompressedLayer,
	types.OCILayer, types.OCIUncompressedLayer, types.OCILayerZStd,
}

// Pull fetches image ref (normalised as docker does) from its registry
// into st and returns the stored image, named ref. Layers the store has
// (same chainID) are not downloaded; the others download at once (up to
// opts.Jobs), each applied as its bytes arrive (store.ApplyLayers: with
// overlay several layers at once, with other drivers bottom first). Any failure (a blob missing, cut short or not matching its
// digest, a layer not matching the config's diff_ids) fails the whole
// pull and leaves nothing of it in st: no image, no layer it created.
func Pull(ctx context.Context, st *store.Store, ref string, opts *PullOptions) (*store.Image, error) {
	if opts == nil {
		opts = &PullOptions{}
	}
	img, err := pull(ctx, st, ref, opts)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	return img, nil
}

func pull(ctx context.Context, st *store.Store, ref string, opts *PullOptions) (*store.Image, error) {
	want, err := wantPlatform(opts.Platform)
	if err != nil {
		return nil, err
	}
	full, r, err := parseReference(ref, opts.Insecure)
	if err != nil {
		return nil, err
	}
	c, err := newClient(ctx, r.Context(), &opts.RemoteOptions, false)
	if err != nil {
		return nil, err
	}
	rawManifest, m, err := c.imageManifest(ctx, r, want)
	if err != nil {
		return nil, err
	}
	config, err := c.fetchSmall(ctx, m.Config.Digest.String(), m.Config.Size)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	diffIDs, err := configDiffIDs(config)
	if err != nil {
		return nil, err
	}
	if len(diffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("%w: the manifest has %d layers, the config %d diff_ids", ErrBlobCorrupt, len(m.Layers), len(diffIDs))
	}
	for i, l := range m.Layers {
		if !slices.Contains(layerMediaTypes, l.MediaType) {
			return nil, fmt.Errorf("layer %d (%s): %w media type %q", i+1, l.Digest, ErrUnsupported, l.MediaType)
		}
	}
	top, err := pullLayers(ctx, st, c, m.Layers, diffIDs, opts)
	if err != nil {
		return nil, err
	}
	img, err := st.CreateImage(store.ImageOptions{Config: config, Manifest: rawManifest, TopLayer: top.id, Names: []string{full}})
	if err != nil {
		top.undo(st)
		return nil, err
	}
	return img, nil
}

// wantPlatform parses opts' platform, defaulting to the host's.
func wantPlatform(s string) (v1.Platform, error) {
	if s == "" {
		p := v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
		if runtime.GOARCH == "arm" {
			p.Variant = "v7"
		}
		return p, nil
	}
	goos, arch, variant, err := splitPlatform(s)
	if err != nil {
		return v1.Platform{}, err
	}
	return v1.Platform{OS: goos, Architecture: arch, Variant: variant}, nil
}

// platformMatches says whether an index entry's platform is what was
// asked for. A variant asked for must match (arm64's "" and "v8" are the
// same); none asked for takes any.
func platformMatches(want v1.Platform, have *v1.Platform) bool {
	if have == nil || have.OS != want.OS || have.Architecture != want.Architecture {
		return false
	}
	if want.Variant == "" {
		return true
	}
	norm := func(p v1.Platform) string {
		if p.Architecture == "arm64" && p.Variant == "" {
			return "v8"
		}
		return p.Variant
	}
	return norm(want) == norm(*have)
}

// imageManifest returns the raw image manifest ref names, through an
// index when it names one (picking want's platform), and its parse.
func (c *client) imageManifest(ctx context.Context, r name.Reference, want v1.Platform) ([]byte, *v1.Manifest, error) {
	var desc *remote.Descriptor
	err := retry(ctx, c.opts, func() error {
		var err error
		desc, err = remote.Get(r, c.remoteOptions(ctx)...)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("manifest: %w", err)
	}
	if desc.MediaType.IsIndex() {
		idx, err := v1.ParseIndexManifest(strings.NewReader(string(desc.Manifest)))
		if err != nil {
			return nil, nil, fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		var chosen *v1.Descriptor
		var have []string
		for i := range idx.Manifests {
			m := &idx.Manifests[i]
			if m.Platform != nil && m.Platform.OS != "unknown" {
				have = append(have, m.Platform.String())
			}
			if chosen == nil && m.MediaType.IsImage() && platformMatches(want, m.Platform) {
				chosen = m
			}
		}
		if chosen == nil {
			return nil, nil, fmt.Errorf("%w %s in index %s (it has %s)", ErrNoPlatform, want.String(), desc.Digest, strings.Join(have, ", "))
		}
		err = retry(ctx, c.opts, func() error {
			var err error
			desc, err = remote.Get(c.repo.Digest(chosen.Digest.String()), c.remoteOptions(ctx)...)
			return err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("manifest %s of %s: %w", chosen.Digest, want.String(), err)
		}
	}
	if !desc.MediaType.IsImage() {
		return nil, nil, fmt.Errorf("manifest %s: %w media type %q", desc.Digest, ErrUnsupported, desc.MediaType)
	}
	m, err := v1.ParseManifest(strings.NewReader(string(desc.Manifest)))
	if err != nil {
		return nil, nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	return desc.Manifest, m, nil
}

// fetchSmall downloads a small blob (a config) into memory, verified.
func (c *client) fetchSmall(ctx context.Context, d string, size int64) ([]byte, error) {
	if size > maxConfigSize {
		return nil, fmt.Errorf("blob %s: %d bytes is more than the %d a config may have", d, size, maxConfigSize)
	}
	var buf bytesWriter
	if err := c.fetchBlob(ctx, digest.Digest(d), size, &buf, nil); err != nil {
		return nil, err
	}
	return buf.b, nil
}

type bytesWriter struct{ b []byte }

func (w *bytesWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// pulled is the result of pullLayers: the top layer, and the layers the
// pull created, to remove if what follows fails.
type pulled struct {
	id      string
	created []string
}

// undo removes the layers the pull created, top first. A layer that
// something else took up meanwhile (an image of a concurrent pull) is
// left: RemoveLayer refuses it.
func (p *pulled) undo(st *store.Store) {
	for i := len(p.created) - 1; i >= 0; i-- {
		_ = st.RemoveLayer(p.created[i], false)
	}
	p.created = nil
}

// pullLayer is one layer of the image being pulled.
type pullLayer struct {
	desc    v1.Descriptor
	diffID  digest.Digest
	chainID digest.Digest
	sp      *spool
}

// pullLayers stores the layers of an image and returns its top layer.
func pullLayers(ctx context.Context, st *store.Store, c *client, descs []v1.Descriptor, diffIDs []digest.Digest, opts *PullOptions) (*pulled, error) {
	chains := chainIDs(diffIDs)
	ls := make([]*pullLayer, len(descs))
	for i, d := range descs {
		ls[i] = &pullLayer{desc: d, diffID: diffIDs[i], chainID: chains[i]}
	}
	// The layers stored already: the longest stored prefix of the chain
	// (a stored layer's parents are stored).
	have := 0
	var parent string
	for i := len(ls) - 1; i >= 0; i-- {
		l, err := st.LayerByChainID(ls[i].chainID)
		if errors.Is(err, store.ErrLayerUnknown) {
			continue
		}
		if err != nil {
			return nil, err
		}
		have, parent = i+1, l.ID
		break
	}
	for i := 0; i < have; i++ {
		l := ls[i]
		opts.progress(Event{ID: shortID(l.desc.Digest.Hex), Status: StatusExists, Total: l.desc.Size})
		// Remember the blob for pushing the layer again as it came.
		if stored, err := st.LayerByChainID(l.chainID); err == nil && !hasBlob(stored, l.desc.Digest.String()) {
			if err := st.AddLayerBlob(stored.ID, blobOf(l.desc)); err != nil {
				return nil, fmt.Errorf("layer %d (%s): %w", i+1, l.desc.Digest, err)
			}
		}
	}
	res := &pulled{id: parent}
	if have == len(ls) {
		return res, nil
	}

	tmp := opts.TempDir
	if tmp == "" {
		tmp = filepath.Join(st.Root(), "tmp")
		if _, err := os.Stat(tmp); err != nil {
			tmp = os.TempDir()
		}
	}
	todo := ls[have:]
	for _, l := range todo {
		sp, err := newSpool(tmp)
		if err != nil {
			for _, l := range todo {
				if l.sp != nil {
					l.sp.finish(err)
					l.sp.closeReader()
				}
			}
			return nil, err
		}
		l.sp = sp
		opts.progress(Event{ID: shortID(l.desc.Digest.Hex), Status: StatusWaiting, Total: l.desc.Size})
	}

	g, gctx := errgroup.WithContext(ctx)
	// Downloads, bottom first, at most jobs at once. A download's error
	// is the pull's: it ends the others and the applier.
	jobs := make(chan struct{}, opts.jobs())
	for _, l := range todo {
		g.Go(func() error {
			select {
			case jobs <- struct{}{}:
			case <-gctx.Done():
				l.sp.finish(gctx.Err())
				return nil
			}
			defer func() { <-jobs }()
			err := download(gctx, c, l, &opts.RemoteOptions)
			l.sp.finish(err)
			if err != nil && !errors.Is(err, errSpoolClosed) {
				return err
			}
			return nil
		})
	}
	// The applier: store.ApplyLayers reads each layer from its spool;
	// with overlay several layers apply at once, others one after the
	// other. Layers it stored are ours to remove if the pull fails.
	g.Go(func() error {
		defer func() {
			for _, l := range todo {
				l.sp.closeReader()
			}
		}()
		readers := make([]*countReader, len(todo))
		srcs := make([]store.LayerSource, len(todo))
		for i, l := range todo {
			blob := blobOf(l.desc)
			srcs[i] = store.LayerSource{DiffID: l.diffID, Blob: &blob, Open: func(ctx context.Context) (io.ReadCloser, error) {
				opts.progress(Event{ID: shortID(l.desc.Digest.Hex), Status: StatusApplying, Total: l.desc.Size})
				readers[i] = &countReader{r: l.sp.reader(ctx)}
				return io.NopCloser(readers[i]), nil
			}}
		}
		stored, err := st.ApplyLayers(gctx, res.id, srcs)
		for i, lay := range stored {
			if readers[i] != nil && readers[i].n > 0 {
				res.created = append(res.created, lay.ID)
			}
		}
		if err != nil {
			l := todo[min(len(stored), len(todo)-1)]
			// A download's own error, if one ended with one, says more
			// than what the apply made of it (a cut gzip stream).
			for _, l := range todo {
				if done, derr := l.sp.result(); done && derr != nil && !errors.Is(derr, errSpoolClosed) && !errors.Is(derr, context.Canceled) {
					err = derr
					break
				}
			}
			opts.progress(Event{ID: shortID(l.desc.Digest.Hex), Status: StatusFailed, Err: err})
			return fmt.Errorf("layer %d of %d (%s): %w", have+len(stored)+1, len(ls), l.desc.Digest, err)
		}
		for i, l := range todo {
			r := readers[i]
			if r != nil && r.n > 0 && !r.r.(*spoolReader).sawEOF {
				// The apply stopped reading before the end of the blob:
				// the layer is only good if the rest of the blob is what
				// it says.
				if err := l.sp.wait(gctx); err != nil {
					return fmt.Errorf("layer %d of %d (%s): %w", have+i+1, len(ls), l.desc.Digest, err)
				}
			}
			l.sp.closeReader()
			if r == nil || r.n == 0 {
				opts.progress(Event{ID: shortID(l.desc.Digest.Hex), Status: StatusExists, Total: l.desc.Size})
			} else {
				opts.progress(Event{ID: shortID(l.desc.Digest.Hex), Status: StatusApplied, Current: l.desc.Size, Total: l.desc.Size})
			}
		}
		res.id = stored[len(stored)-1].ID
		return nil
	})
	if err := g.Wait(); err != nil {
		res.undo(st)
		return nil, err
	}
	return res, nil
}

// download fetches l's blob into its spool.
func download(ctx context.Context, c *client, l *pullLayer, o *RemoteOptions) error {
	id := shortID(l.desc.Digest.Hex)
	start := time.Now()
	var done int64
	lastReport := start
	o.progress(Event{ID: id, Status: StatusDownloading, Total: l.desc.Size})
	err := c.fetchBlob(ctx, digest.Digest(l.desc.Digest.String()), l.desc.Size, l.sp, func(n int64) {
		done += n
		if now := time.Now(); now.Sub(lastReport) > 50*time.Millisecond {
			lastReport = now
			o.progress(Event{ID: id, Status: StatusDownloading, Current: done, Total: l.desc.Size})
		}
	})
	if err != nil {
		if !errors.Is(err, errSpoolClosed) {
			o.progress(Event{ID: id, Status: StatusFailed, Err: err})
		}
		return err
	}
	o.progress(Event{ID: id, Status: StatusDownloaded, Current: done, Total: l.desc.Size})
	return nil
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// blobOf is a layer descriptor as the store records blobs.
func blobOf(d v1.Descriptor) store.Blob {
	return store.Blob{Digest: digest.Digest(d.Digest.String()), MediaType: string(d.MediaType), Size: d.Size}
}

// hasBlob says whether l is known by blob d already.
func hasBlob(l *store.Layer, d string) bool {
	for _, b := range l.Blobs {
		if b.Digest.String() == d {
			return true
		}
	}
	return false
}
