package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/store"
)

// layerJSON is a layer in `layers --format json`: the contract's fields,
// which never change meaning.
type layerJSON struct {
	ID      string    `json:"id"`
	Parent  string    `json:"parent"`
	DiffID  string    `json:"diff_id"`
	ChainID string    `json:"chain_id"`
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	Kind    string    `json:"kind"`
}

func toLayerJSON(l *store.Layer) layerJSON {
	return layerJSON{ID: l.ID, Parent: l.Parent, DiffID: l.DiffID.String(), ChainID: l.ChainID.String(), Size: l.Size, Created: l.Created, Kind: string(l.Kind)}
}

func (a *app) addLayerCommands(root *cobra.Command) {
	var lf listFlags
	list := &cobra.Command{
		Use:   "layers",
		Short: "List layers, image and read-write ones",
		Args:  cobra.NoArgs,
		RunE: a.verb(true, func(_ *cobra.Command, st *store.Store, _ []string) error {
			asJSON, err := lf.json()
			if err != nil {
				return err
			}
			ls, err := st.Layers()
			if err != nil {
				return fmt.Errorf("list layers: %w", err)
			}
			return a.printLayers(ls, &lf, asJSON)
		}),
	}
	lf.addList(list, layerJSON{})

	layer := &cobra.Command{
		Use:   "layer",
		Short: "Layer changesets as raw tar streams",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}

	layerDiff := &cobra.Command{
		Use:   "diff LAYER",
		Short: "Write a layer's changeset (an uncompressed OCI layer tar) to stdout",
		Long: `Write a layer's changeset, an uncompressed OCI layer tar, to stdout. An
image layer comes out byte for byte as it was applied (its diff ID
matches); a read-write layer is exported from its current content.`,
		Args: cobra.ExactArgs(1),
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, args []string) error {
			if isTerminal(a.stdout) {
				return usagef("refusing to write a tar to a terminal: redirect stdout")
			}
			rc, err := st.LayerTar(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			_, err = io.Copy(a.stdout, rc)
			if cerr := rc.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("diff of layer %s: %w", args[0], err)
			}
			return nil
		}),
	}

	var parent string
	layerApply := &cobra.Command{
		Use:   "apply [--parent LAYER]",
		Short: "Apply a layer tar from stdin (uncompressed, gzip or zstd) as a new layer; prints its ID",
		Args:  cobra.NoArgs,
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, _ []string) error {
			if isTerminal(a.stdin) {
				return usagef("stdin is a terminal: pipe a layer tar in")
			}
			l, err := st.ApplyDiff(cmd.Context(), parent, a.stdin, &store.ApplyOptions{
				Warn: func(msg string) { fmt.Fprintf(a.stderr, "layers: warning: %s\n", msg) },
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, l.ID)
			return nil
		}),
	}
	layerApply.Flags().StringVar(&parent, "parent", "", "the new layer's parent `LAYER` (ID or prefix)")

	layer.AddCommand(layerDiff, layerApply)
	root.AddCommand(list, layer)
}

func (a *app) printLayers(ls []*store.Layer, lf *listFlags, asJSON bool) error {
	if asJSON || lf.tmpl != nil {
		out := make([]layerJSON, 0, len(ls))
		for _, l := range ls {
			out = append(out, toLayerJSON(l))
		}
		return printEntries(a.stdout, lf, out)
	}
	if a.quiet {
		for _, l := range ls {
			fmt.Fprintln(a.stdout, lf.id(l.ID))
		}
		return nil
	}
	now := time.Now()
	t := newTable(a.stdout, "LAYER ID", "PARENT", "KIND", "SIZE", "CREATED", "DIFF ID")
	for _, l := range ls {
		t.row(lf.id(l.ID), lf.id(l.Parent), string(l.Kind), humanSize(l.Size), ago(l.Created, now), lf.id(l.DiffID.String()))
	}
	return t.flush()
}

// isTerminal reports whether f is a terminal (an *os.File whose fd
// answers TCGETS).
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(file.Fd()), unix.TCGETS)
	return err == nil
}
