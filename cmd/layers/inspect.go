package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"text/template"

	"github.com/spf13/cobra"

	"github.com/layers-storage/layers/store"
)

// The objects `inspect` prints: the list fields of each kind, plus what
// only a detailed view shows, and "type" to tell them apart.
type (
	imageDetail struct {
		Type string `json:"type"`
		imageJSON
		TopLayer string          `json:"top_layer"`
		Config   json.RawMessage `json:"config"`
		Manifest json.RawMessage `json:"manifest,omitempty"`
	}
	containerDetail struct {
		Type string `json:"type"`
		containerJSON
		MountCount int             `json:"mount_count"`
		MountPath  string          `json:"mount_path,omitempty"`
		Metadata   json.RawMessage `json:"metadata,omitempty"`
	}
	layerDetail struct {
		Type string `json:"type"`
		layerJSON
		TarSize int64        `json:"tar_size"`
		Blobs   []store.Blob `json:"blobs"`
	}
)

func (a *app) addInspectCommand(root *cobra.Command) {
	var format string
	var tmpl *template.Template
	inspect := &cobra.Command{
		Use:   "inspect [-f TEMPLATE] IMAGE|CONTAINER|LAYER...",
		Short: "Show details of containers, images or layers as JSON",
		Long: `Show details as one JSON array, an object per argument, each with a
"type" (container, image or layer). An argument is looked up as a
container first, then an image, then a layer, each by ID, unique ID
prefix or name.

With -f, a Go template runs for each argument instead, over the fields by
Go name, as docker's: '{{.MountPath}}', '{{json .Config}}'.`,
		Args: cobra.MinimumNArgs(1),
		PreRunE: func(*cobra.Command, []string) error {
			if format == "" {
				return nil
			}
			var err error
			if tmpl, err = parseTemplate(format); err != nil {
				return usagef("--format %q: %v", format, err)
			}
			return nil
		},
		RunE: a.verb(true, func(_ *cobra.Command, st *store.Store, args []string) error {
			out := make([]any, 0, len(args))
			for _, ref := range args {
				d, err := inspectOne(st, ref)
				if err != nil {
					return err
				}
				out = append(out, d)
			}
			return printEntries(a.stdout, &listFlags{tmpl: tmpl}, out)
		}),
	}
	inspect.Flags().StringVarP(&format, "format", "f", "", "a Go `TEMPLATE` to run for each argument over its fields by Go name (.Type .ID .Name ... .MountPath .Config), instead of JSON")
	root.AddCommand(inspect)
}

// inspectOne looks ref up as a container, an image, then a layer. An
// ambiguous prefix within one kind is an error, not a reason to look on.
func inspectOne(st *store.Store, ref string) (any, error) {
	c, err := st.Container(ref)
	if err == nil {
		d := &containerDetail{Type: "container", containerJSON: toContainerJSON(c), Metadata: c.Metadata}
		if d.MountCount, d.MountPath, err = st.Mounted(c.ID); err != nil {
			return nil, fmt.Errorf("inspect %s: %w", ref, err)
		}
		return d, nil
	}
	if !errors.Is(err, store.ErrContainerUnknown) {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	img, err := st.Image(ref)
	if err == nil {
		d := &imageDetail{Type: "image", imageJSON: toImageJSON(img), TopLayer: img.TopLayer}
		if d.Config, err = st.ImageConfig(img.ID); err != nil {
			return nil, fmt.Errorf("inspect %s: %w", ref, err)
		}
		if img.Digest != "" {
			if d.Manifest, err = st.ImageManifest(img.ID); err != nil {
				return nil, fmt.Errorf("inspect %s: %w", ref, err)
			}
		}
		return d, nil
	}
	if !errors.Is(err, store.ErrImageUnknown) {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	l, err := st.Layer(ref)
	if err == nil {
		d := &layerDetail{Type: "layer", layerJSON: toLayerJSON(l), TarSize: l.TarSize, Blobs: l.Blobs}
		if d.Blobs == nil {
			d.Blobs = []store.Blob{}
		}
		return d, nil
	}
	if !errors.Is(err, store.ErrLayerUnknown) {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	return nil, fmt.Errorf("inspect: no container, image or layer %q", ref)
}
