package main

import (
	"github.com/spf13/cobra"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/image"
	"github.com/layers-storage/layers/store"
)

func (a *app) saveCommand() *cobra.Command {
	var opts image.SaveOptions
	var output string
	cmd := &cobra.Command{
		Use:   "save [--format oci-archive|oci-dir|docker-archive] [--compression gzip|zstd|none] -o PATH IMAGE...",
		Short: "Write images to an OCI layout or archive",
		Long: `Write images to PATH: an OCI image layout in a tar (oci-archive, the
default) or a directory (oci-dir), or the docker save format
(docker-archive, uncompressed layers). An image given by ID goes under
all its names, one given by name under that name. Layers shared by
several images are written once; OCI layers are compressed with
--compression (default: what the image's commit recorded, else gzip).
PATH must not exist (oci-dir: or be an
empty directory); it appears only once complete.`,
		Args: cobra.MinimumNArgs(1),
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, args []string) error {
			if output == "" {
				return usagef("-o PATH is required")
			}
			switch opts.Format {
			case image.FormatOCIArchive, image.FormatOCIDir, image.FormatDockerArchive:
			default:
				return usagef("--format %q: want oci-archive, oci-dir or docker-archive", opts.Format)
			}
			if opts.Compression != "" {
				if _, err := diff.ParseCompression(opts.Compression); err != nil {
					return usagef("--compression: %v", err)
				}
				if opts.Format == image.FormatDockerArchive && opts.Compression != "none" {
					return usagef("--compression %s: a docker-archive's layers are uncompressed", opts.Compression)
				}
			}
			return image.Save(cmd.Context(), st, args, output, &opts)
		}),
		ValidArgsFunction: a.completeImages,
	}
	f := cmd.Flags()
	f.StringVar(&opts.Format, "format", image.FormatOCIArchive, "`oci-archive|oci-dir|docker-archive`")
	f.StringVar(&opts.Compression, "compression", "", "layer compression `gzip|zstd|none` of OCI formats (default gzip)")
	f.StringVarP(&output, "output", "o", "", "write to `PATH`")
	return cmd
}
