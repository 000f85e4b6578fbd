package image

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/store"
)

// CommitOptions tune Commit.
type CommitOptions struct {
	// Compression is "gzip", "zstd" or "none": the compression the new
	// layer's blob gets when it is first pushed or saved (the layer
	// itself is stored uncompressed, as podman and docker do). "" means
	// gzip. It is recorded in the image's metadata (see
	// ImageCompression), where Push and Save find it.
	Compression string
	// Message is the history entry's comment (docker commit -m).
	Message string
	// Author is the image's and the history entry's author.
	Author string
	// Changes are Dockerfile instructions applied to the config, like
	// docker commit --change: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
	// ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR.
	Changes []string
	// SourceDateEpoch, when set, is the image's creation time and clamps
	// every later mtime of the layer down to it, so that committing the
	// same content at another time gives the same layer and image IDs.
	// See ParseSourceDateEpoch.
	SourceDateEpoch *time.Time
	// Warn receives notes about entries changed on the way in; nil
	// discards them.
	Warn func(msg string)
}

// ParseSourceDateEpoch parses a SOURCE_DATE_EPOCH value (seconds since
// 1970, UTC); "" gives nil.
func ParseSourceDateEpoch(s string) (*time.Time, error) {
	if s == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("SOURCE_DATE_EPOCH %q: not a number of seconds", s)
	}
	t := time.Unix(n, 0).UTC()
	return &t, nil
}

// Commit makes a new image of container cref's changes, named ref ("" for
// none), and returns it. The changes become a new read-only layer on the
// container's image (store.CommitContainer): in place, without copying,
// where the driver can and the container is not mounted, the container
// then going on from the new layer; otherwise streamed once into it. The
// diffID is computed in the same pass, and a layer with the same chainID
// stored already is reused. Layers of earlier in-place commits of the
// container are in the image too, each with a history entry. The config inherits
// the base image's (environment, entrypoint, command, workdir, user,
// labels, ports, volumes), with opts.Changes applied, the new diffID
// appended and a history entry. A failure leaves nothing behind.
func Commit(ctx context.Context, st *store.Store, cref, ref string, opts *CommitOptions) (*store.Image, error) {
	if opts == nil {
		opts = &CommitOptions{}
	}
	img, err := commit(ctx, st, cref, ref, opts)
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", cref, err)
	}
	return img, nil
}

// imageConfig is an image config as Commit writes it: the fields it
// inherits and changes, with the base's history kept byte for byte.
type imageConfig struct {
	Architecture string            `json:"architecture"`
	Author       string            `json:"author,omitempty"`
	Created      *time.Time        `json:"created,omitempty"`
	History      []json.RawMessage `json:"history,omitempty"`
	OS           string            `json:"os"`
	OSVersion    string            `json:"os.version,omitempty"`
	OSFeatures   []string          `json:"os.features,omitempty"`
	Variant      string            `json:"variant,omitempty"`
	RootFS       struct {
		Type    string          `json:"type"`
		DiffIDs []digest.Digest `json:"diff_ids"`
	} `json:"rootfs"`
	Config v1.Config `json:"config"`
}

// historyEntry is one entry of an image config's history.
type historyEntry struct {
	Created    *time.Time `json:"created,omitempty"`
	CreatedBy  string     `json:"created_by,omitempty"`
	Author     string     `json:"author,omitempty"`
	Comment    string     `json:"comment,omitempty"`
	EmptyLayer bool       `json:"empty_layer,omitempty"`
}

func commit(ctx context.Context, st *store.Store, cref, ref string, opts *CommitOptions) (*store.Image, error) {
	meta, err := compressionMetadata(opts.Compression)
	if err != nil {
		return nil, err
	}
	var names []string
	if ref != "" {
		full, err := store.NormalizeName(ref)
		if err != nil {
			return nil, err
		}
		names = []string{full}
	}
	c, err := st.Container(cref)
	if err != nil {
		return nil, err
	}
	baseRaw, err := st.ImageConfig(c.Image)
	if err != nil {
		return nil, fmt.Errorf("image of the container: %w", err)
	}
	var cfg imageConfig
	if err := json.Unmarshal(baseRaw, &cfg); err != nil {
		return nil, fmt.Errorf("config of image %s: %w", c.Image, err)
	}
	if err := applyChanges(&cfg.Config, opts.Changes); err != nil {
		return nil, err
	}
	id, err := newLayerID()
	if err != nil {
		return nil, err
	}
	var rewrite func(io.Reader) io.ReadCloser
	if opts.SourceDateEpoch != nil {
		epoch := *opts.SourceDateEpoch
		rewrite = func(r io.Reader) io.ReadCloser { return clampMtimes(r, epoch) }
	}
	layer, err := st.CommitContainer(ctx, c.ID, &store.CommitOptions{ID: id, Rewrite: rewrite, Warn: opts.Warn})
	if err != nil {
		return nil, fmt.Errorf("store the changes: %w", err)
	}
	undo := func() {
		// Only a layer this commit made (not one it found stored). A
		// commit in place put the container on it, which keeps it: the
		// container's tree is the same either way.
		if layer.ID == id {
			_ = st.RemoveLayer(id, false)
		}
	}

	created := time.Now().UTC()
	if opts.SourceDateEpoch != nil {
		created = *opts.SourceDateEpoch
	}
	cfg.Created = &created
	cfg.Author = opts.Author
	if cfg.RootFS.Type == "" {
		cfg.RootFS.Type = "layers"
	}
	// Earlier commits in place of this container are layers under the
	// new one: the image lists them too.
	earlier, err := layersBetween(st, c.Image, layer.Parent)
	if err != nil {
		undo()
		return nil, err
	}
	for _, l := range earlier {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.DiffID)
		lc := l.Created.UTC()
		h, err := json.Marshal(historyEntry{Created: &lc, CreatedBy: "layers commit (an earlier commit of this container)"})
		if err != nil {
			undo()
			return nil, err
		}
		cfg.History = append(cfg.History, h)
	}
	cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, layer.DiffID)
	createdBy := "layers commit"
	for _, ch := range opts.Changes {
		createdBy += " --change " + strconv.Quote(ch)
	}
	h, err := json.Marshal(historyEntry{Created: &created, CreatedBy: createdBy, Author: opts.Author, Comment: opts.Message})
	if err != nil {
		undo()
		return nil, err
	}
	cfg.History = append(cfg.History, h)
	raw, err := json.Marshal(&cfg)
	if err != nil {
		undo()
		return nil, err
	}
	img, err := st.CreateImage(store.ImageOptions{Config: raw, TopLayer: layer.ID, Names: names, Metadata: meta})
	if err != nil {
		undo()
		return nil, err
	}
	return img, nil
}

// layersBetween returns the layers from image imageRef's top layer
// (excluded) up to layer top (included), bottom first: the layers earlier
// commits in place put under a container.
func layersBetween(st *store.Store, imageRef, top string) ([]*store.Layer, error) {
	img, err := st.Image(imageRef)
	if err != nil {
		return nil, fmt.Errorf("image of the container: %w", err)
	}
	var between []*store.Layer
	for id := top; id != img.TopLayer; {
		if id == "" {
			return nil, fmt.Errorf("the container's layers are not on its image %s", img.ID)
		}
		l, err := st.Layer(id)
		if err != nil {
			return nil, err
		}
		between = append(between, l)
		id = l.Parent
	}
	slices.Reverse(between)
	return between, nil
}

// newLayerID is a random layer ID, so that Commit can tell the layer it
// made from one the store had already.
func newLayerID() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("layer ID: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// clampMtimes rewrites the layer tar r with every mtime later than epoch
// set to epoch (and no atime or ctime), the SOURCE_DATE_EPOCH convention.
// Closing the result stops the rewrite.
func clampMtimes(r io.Reader, epoch time.Time) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(clampTar(pw, r, epoch))
	}()
	return pr
}

func clampTar(w io.Writer, r io.Reader, epoch time.Time) error {
	tr := tar.NewReader(r)
	bw := bufio.NewWriterSize(w, 256<<10)
	tw := tar.NewWriter(bw)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("clamp mtimes: %w", err)
		}
		if h.ModTime.After(epoch) {
			h.ModTime = epoch
		}
		h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
		for _, k := range []string{"atime", "ctime", "mtime"} {
			delete(h.PAXRecords, k)
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("clamp mtimes: %s: %w", h.Name, err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("clamp mtimes: %s: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("clamp mtimes: %w", err)
	}
	return bw.Flush()
}
