package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/layers-storage/layers/image"
	"github.com/layers-storage/layers/store"
)

func (a *app) loadCommand() *cobra.Command {
	var opts image.LoadOptions
	var input string
	cmd := &cobra.Command{
		Use:   "load [--platform os/arch[/variant]] -i PATH",
		Short: "Load images from an OCI layout or archive",
		Long: `Load the images of PATH and print their IDs, one a line.

PATH is an OCI image layout (a directory, or a tar: oci-archive) or a
docker save / podman save archive (docker-archive); a gzip or zstd
compressed tar is read too. Names are kept. Of a multi-platform index,
the image of --platform is loaded (default: the host's). Every digest is
checked; a damaged archive loads nothing. Layers the root has already
are not applied again.`,
		Args: cobra.NoArgs,
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, _ []string) error {
			if input == "" {
				return usagef("-i PATH is required")
			}
			if opts.Platform != "" {
				if err := checkPlatform(opts.Platform); err != nil {
					return err
				}
			}
			opts.Warn = func(msg string) { a.debugf("%s", msg) }
			imgs, err := image.Load(cmd.Context(), st, input, &opts)
			if err != nil {
				return err
			}
			for _, img := range imgs {
				fmt.Fprintln(a.stdout, img.ID)
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVarP(&input, "input", "i", "", "read from `PATH`")
	f.StringVar(&opts.Platform, "platform", "", "`os/arch[/variant]` to pick from a multi-platform index (default: the host's)")
	return cmd
}
