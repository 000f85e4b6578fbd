package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/store"
)

// LoadOptions tune Load.
type LoadOptions struct {
	// Platform is "os/arch[/variant]", the image to pick from a
	// multi-platform index; "" means the host's.
	Platform string
	// TempDir holds a compressed archive while it is decompressed (an
	// unnamed file); "" means the store root's tmp directory.
	TempDir string
	// Warn receives notes (names that are not references, entries
	// changed on the way in); nil discards them.
	Warn func(msg string)
}

// Load stores the images of the archive or layout at path in st and
// returns them, in the archive's order. The format is detected: a
// directory or a tar (compressed or not) holding an OCI layout
// (oci-layout, index.json) or docker save's manifest.json. Names are kept
// (OCI org.opencontainers.image.ref.name or io.containerd.image.name,
// docker RepoTags). From an index every image is loaded, except that of a
// multi-platform image only the platform asked for (the host's by
// default) is. Every digest is verified (manifests, configs, layer
// blobs, diffIDs), and a failure stores nothing: no layer and no image.
// Layers stored already (same chainID) are not applied again.
func Load(ctx context.Context, st *store.Store, path string, opts *LoadOptions) ([]*store.Image, error) {
	if opts == nil {
		opts = &LoadOptions{}
	}
	imgs, err := load(ctx, st, path, opts)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return imgs, nil
}

// loadImage is one image found in an archive, checked but not stored.
type loadImage struct {
	config   []byte
	manifest []byte // OCI only
	names    []string
	layers   []loadLayer
}

// loadLayer is one layer of a loadImage.
type loadLayer struct {
	name   string // the file in the archive
	diffID digest.Digest
	// desc is the OCI descriptor (digest and size verified); nil in a
	// docker-archive, whose layers the diffIDs verify.
	desc *v1.Descriptor
	size int64
}

func load(ctx context.Context, st *store.Store, p string, opts *LoadOptions) ([]*store.Image, error) {
	want, err := wantPlatform(opts.Platform)
	if err != nil {
		return nil, err
	}
	src, err := openSource(p, st, opts.TempDir)
	if err != nil {
		return nil, err
	}
	defer src.close()
	var plan []*loadImage
	switch {
	case src.has("index.json"):
		plan, err = planOCI(src, want, opts)
	case src.has("manifest.json"):
		plan, err = planDocker(src, opts)
	default:
		return nil, fmt.Errorf("%w: neither an OCI layout (index.json) nor a docker archive (manifest.json)", ErrUnknownFormat)
	}
	if err != nil {
		return nil, err
	}
	if len(plan) == 0 {
		return nil, errors.New("the archive has no image")
	}
	return storeImages(ctx, st, src, plan, opts)
}

// openSource opens path as a directory or an (uncompressed, gzip or
// zstd) tar.
func openSource(p string, st *store.Store, tmp string) (source, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return openDir(p)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	magic := make([]byte, 4)
	n, _ := io.ReadFull(f, magic)
	if c := diff.DetectCompression(magic[:n]); c != diff.Uncompressed {
		// A compressed tar cannot be read in place: decompress it into
		// an unnamed file first.
		if tmp == "" {
			tmp = filepath.Join(st.Root(), "tmp")
			if _, err := os.Stat(tmp); err != nil {
				tmp = os.TempDir()
			}
		}
		plain, err := unnamedFile(tmp)
		if err != nil {
			f.Close()
			return nil, err
		}
		_, err = f.Seek(0, io.SeekStart)
		if err == nil {
			var dr io.ReadCloser
			dr, _, err = diff.DecompressStream(f)
			if err == nil {
				_, err = io.Copy(plain, dr)
				dr.Close()
			}
		}
		f.Close()
		if err != nil {
			plain.Close()
			return nil, fmt.Errorf("decompress %s: %w", c, err)
		}
		f = plain
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	s, err := indexTar(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// planOCI reads an OCI layout's index and every manifest and config it
// leads to, checked, and the names of each image.
func planOCI(src source, want v1.Platform, opts *LoadOptions) ([]*loadImage, error) {
	raw, err := readSmall(src, "index.json")
	if err != nil {
		return nil, err
	}
	idx, err := v1.ParseIndexManifest(strings.NewReader(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	var plan []*loadImage
	var have []string
	for _, desc := range idx.Manifests {
		names := ociNames(desc.Annotations, opts.Warn)
		switch {
		case desc.MediaType.IsIndex():
			// One name for several platforms: the one asked for.
			m, err := pickPlatform(src, desc, want)
			if err != nil {
				return nil, err
			}
			li, err := planOCIImage(src, m, names)
			if err != nil {
				return nil, err
			}
			plan = append(plan, li)
		case desc.MediaType.IsImage():
			if desc.Platform != nil && desc.Platform.OS != "unknown" {
				have = append(have, desc.Platform.String())
			}
			if desc.Platform != nil && !platformMatches(want, desc.Platform) {
				continue
			}
			li, err := planOCIImage(src, desc, names)
			if err != nil {
				return nil, err
			}
			plan = append(plan, li)
		default:
			return nil, fmt.Errorf("index.json: manifest %s: %w media type %q", desc.Digest, ErrUnsupported, desc.MediaType)
		}
	}
	if len(plan) == 0 && len(have) > 0 {
		return nil, fmt.Errorf("%w %s in index.json (it has %s)", ErrNoPlatform, want.String(), strings.Join(have, ", "))
	}
	return plan, nil
}

// pickPlatform reads the nested index desc and returns its image of
// platform want.
func pickPlatform(src source, desc v1.Descriptor, want v1.Platform) (v1.Descriptor, error) {
	raw, err := readBlob(src, digest.Digest(desc.Digest.String()), desc.Size)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("index %s: %w", desc.Digest, err)
	}
	idx, err := v1.ParseIndexManifest(strings.NewReader(string(raw)))
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("index %s: %w", desc.Digest, err)
	}
	var have []string
	for _, m := range idx.Manifests {
		if m.Platform != nil && m.Platform.OS != "unknown" {
			have = append(have, m.Platform.String())
		}
		if m.MediaType.IsImage() && platformMatches(want, m.Platform) {
			return m, nil
		}
	}
	return v1.Descriptor{}, fmt.Errorf("%w %s in index %s (it has %s)", ErrNoPlatform, want.String(), desc.Digest, strings.Join(have, ", "))
}

// planOCIImage reads and checks image manifest desc and its config, and
// that every layer blob is there with the size the manifest says.
func planOCIImage(src source, desc v1.Descriptor, names []string) (*loadImage, error) {
	md := digest.Digest(desc.Digest.String())
	raw, err := readBlob(src, md, desc.Size)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", md, err)
	}
	m, err := v1.ParseManifest(strings.NewReader(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", md, err)
	}
	config, err := readBlob(src, digest.Digest(m.Config.Digest.String()), m.Config.Size)
	if err != nil {
		return nil, fmt.Errorf("config of manifest %s: %w", md, err)
	}
	diffIDs, err := configDiffIDs(config)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", md, err)
	}
	if len(diffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("manifest %s: %w: %d layers, the config %d diff_ids", md, ErrBlobCorrupt, len(m.Layers), len(diffIDs))
	}
	li := &loadImage{config: config, manifest: raw, names: names}
	for i, l := range m.Layers {
		if !slices.Contains(layerMediaTypes, l.MediaType) {
			return nil, fmt.Errorf("manifest %s: layer %d (%s): %w media type %q", md, i+1, l.Digest, ErrUnsupported, l.MediaType)
		}
		d := digest.Digest(l.Digest.String())
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("manifest %s: layer %d: %w", md, i+1, err)
		}
		name := blobPath(d)
		rc, size, err := src.open(name)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: layer %d: %w", md, i+1, err)
		}
		rc.Close()
		if size != l.Size {
			return nil, fmt.Errorf("manifest %s: layer %d (%s): %w: %d bytes, the manifest says %d", md, i+1, d, ErrBlobCorrupt, size, l.Size)
		}
		li.layers = append(li.layers, loadLayer{name: name, diffID: diffIDs[i], desc: &m.Layers[i], size: size})
	}
	return li, nil
}

// tagOnly is an OCI ref.name that is a tag alone ("latest", "1.0"), which
// names no repository.
var tagOnly = regexp.MustCompile(`^[\w][\w.-]*$`)

// ociNames are the names an index entry's annotations give: containerd's
// full name, else the OCI ref.name when it is a whole reference (skopeo
// and podman write those; a bare tag names nothing).
func ociNames(ann map[string]string, warn func(string)) []string {
	n := ann[annotationContainerdName]
	if n == "" {
		n = ann[annotationRefName]
		if n == "" || (tagOnly.MatchString(n) && !strings.Contains(n, "/")) {
			return nil
		}
	}
	full, err := store.NormalizeName(n)
	if err != nil {
		if warn != nil {
			warn(fmt.Sprintf("name %q ignored: %v", n, err))
		}
		return nil
	}
	return []string{full}
}

// planDocker reads a docker archive's manifest.json and the configs it
// names, checked.
func planDocker(src source, opts *LoadOptions) ([]*loadImage, error) {
	raw, err := readSmall(src, "manifest.json")
	if err != nil {
		return nil, err
	}
	var entries []dockerManifestEntry
	if err := json.Unmarshal(raw, &entries); err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	var plan []*loadImage
	for i, e := range entries {
		config, err := readSmall(src, e.Config)
		if err != nil {
			return nil, fmt.Errorf("manifest.json: image %d: config: %w", i+1, err)
		}
		// The config's file is named by its digest (<hex>.json, or
		// blobs/sha256/<hex> since docker 25): check it.
		base := strings.TrimSuffix(filepath.Base(e.Config), ".json")
		if want := digest.NewDigestFromEncoded(digest.SHA256, base); want.Validate() == nil {
			if got := digest.FromBytes(config); got != want {
				return nil, fmt.Errorf("manifest.json: image %d: config %s: %w: its content hashes to %s", i+1, e.Config, ErrBlobCorrupt, got)
			}
		}
		diffIDs, err := configDiffIDs(config)
		if err != nil {
			return nil, fmt.Errorf("manifest.json: image %d: %w", i+1, err)
		}
		if len(diffIDs) != len(e.Layers) {
			return nil, fmt.Errorf("manifest.json: image %d: %w: %d layers, the config %d diff_ids", i+1, ErrBlobCorrupt, len(e.Layers), len(diffIDs))
		}
		li := &loadImage{config: config}
		for _, t := range e.RepoTags {
			full, err := store.NormalizeName(t)
			if err != nil {
				if opts.Warn != nil {
					opts.Warn(fmt.Sprintf("name %q ignored: %v", t, err))
				}
				continue
			}
			li.names = append(li.names, full)
		}
		for j, l := range e.Layers {
			rc, size, err := src.open(l)
			if err != nil {
				return nil, fmt.Errorf("manifest.json: image %d: layer %d: %w", i+1, j+1, err)
			}
			rc.Close()
			li.layers = append(li.layers, loadLayer{name: l, diffID: diffIDs[j], size: size})
		}
		plan = append(plan, li)
	}
	return plan, nil
}

// storeImages applies the layers of every image of plan, then records
// the images; on any failure it removes what it stored.
func storeImages(ctx context.Context, st *store.Store, src source, plan []*loadImage, opts *LoadOptions) ([]*store.Image, error) {
	// The same image under several names is one image.
	var merged []*loadImage
	byConfig := map[digest.Digest]*loadImage{}
	for _, li := range plan {
		d := digest.FromBytes(li.config)
		if m := byConfig[d]; m != nil {
			for _, n := range li.names {
				if !slices.Contains(m.names, n) {
					m.names = append(m.names, n)
				}
			}
			continue
		}
		byConfig[d] = li
		merged = append(merged, li)
	}

	var createdLayers, createdImages []string
	undo := func() {
		for i := len(createdImages) - 1; i >= 0; i-- {
			_, _ = st.RemoveImage(createdImages[i], false)
		}
		for i := len(createdLayers) - 1; i >= 0; i-- {
			_ = st.RemoveLayer(createdLayers[i], false)
		}
	}
	tops := make([]string, len(merged))
	for n, li := range merged {
		readers := make([]*verifyReader, len(li.layers))
		srcs := make([]store.LayerSource, len(li.layers))
		for i, l := range li.layers {
			var blob *store.Blob
			if l.desc != nil {
				b := blobOf(*l.desc)
				blob = &b
			}
			srcs[i] = store.LayerSource{DiffID: l.diffID, Blob: blob, Open: func(context.Context) (io.ReadCloser, error) {
				rc, size, err := src.open(l.name)
				if err != nil {
					return nil, err
				}
				var want digest.Digest
				if l.desc != nil {
					want = digest.Digest(l.desc.Digest.String())
				}
				readers[i] = newVerifyReader(rc, want, size, "layer "+l.name)
				return &readCloser{Reader: readers[i], Closer: rc}, nil
			}}
		}
		stored, err := st.ApplyLayers(ctx, "", srcs)
		for i, lay := range stored {
			if readers[i] != nil && readers[i].n > 0 {
				createdLayers = append(createdLayers, lay.ID)
			}
		}
		if err == nil {
			// A blob the apply did not read to its end is only good if
			// the rest is what its digest says.
			for i, r := range readers {
				if r == nil {
					continue
				}
				if ferr := r.finish(); ferr != nil {
					err = fmt.Errorf("layer %d: %w", i+1, ferr)
					break
				}
			}
		}
		if err != nil {
			// The verdict of the blob's digest says more than what the
			// apply made of a damaged stream.
			for _, r := range readers {
				if r != nil && r.err != nil {
					if !errors.Is(err, r.err) {
						err = r.err
					}
					break
				}
			}
			undo()
			return nil, fmt.Errorf("image %d of %d: %w", n+1, len(merged), err)
		}
		if len(stored) > 0 {
			tops[n] = stored[len(stored)-1].ID
		}
	}
	out := make([]*store.Image, 0, len(merged))
	for n, li := range merged {
		id := digest.FromBytes(li.config).Encoded()
		_, existed := st.Image(id)
		img, err := st.CreateImage(store.ImageOptions{Config: li.config, Manifest: li.manifest, TopLayer: tops[n], Names: li.names})
		if err != nil {
			undo()
			return nil, fmt.Errorf("image %d of %d: %w", n+1, len(merged), err)
		}
		if existed != nil {
			createdImages = append(createdImages, img.ID)
		}
		out = append(out, img)
	}
	return out, nil
}

// readCloser joins a reader and what closes it.
type readCloser struct {
	io.Reader
	io.Closer
}
