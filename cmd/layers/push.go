package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/image"
	"github.com/layers-storage/layers/store"
)

func (a *app) pushCommand() *cobra.Command {
	var rf registryFlags
	var compression string
	cmd := &cobra.Command{
		Use:   "push [--insecure] [--compression gzip|zstd|none] IMAGE [REF]",
		Short: "Push an image to a registry",
		Long: `Push an image to a registry and print the manifest's digest.

REF defaults to the name IMAGE was given by, or the image's only name.
Blobs the registry has are not sent again; blobs another repository of
the same registry has (one of the image's names) are mounted from it.
A layer is compressed once, when first pushed, and its blob remembered:
pushing again sends nothing and gives the same digest. Without
--compression, a blob the root remembers for a layer is reused whatever
its compression, and new blobs get the compression the image's commit
recorded, else gzip.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, args []string) error {
			if compression != "" {
				if _, err := diff.ParseCompression(compression); err != nil {
					return usagef("--compression: %v", err)
				}
			}
			ro, done, err := a.remoteOptions(&rf)
			if err != nil {
				return err
			}
			dest := ""
			if len(args) == 2 {
				dest = args[1]
			}
			d, err := image.Push(cmd.Context(), st, args[0], dest, &image.PushOptions{RemoteOptions: ro, Compression: compression})
			done()
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, d)
			return nil
		}),
		ValidArgsFunction: a.completeImages,
	}
	rf.add(cmd)
	cmd.Flags().StringVar(&compression, "compression", "", "compress new blobs with `gzip|zstd|none` and push every layer so (default: reuse remembered blobs, gzip new ones)")
	return cmd
}
