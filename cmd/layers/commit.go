package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/image"
	"github.com/layers-storage/layers/store"
)

func (a *app) commitCommand() *cobra.Command {
	var opts image.CommitOptions
	cmd := &cobra.Command{
		Use:   "commit [--compression gzip|zstd|none] [-m MSG] [--author A] [--change INSTR]... CONTAINER [REF]",
		Short: "Make an image of a container's changes",
		Long: `Make a new image of a container's changes and print its ID.

The changes become one new layer on the container's image, stored
uncompressed; --compression, recorded with the image, is the form push
and save give its blobs unless told otherwise. On overlay, an unmounted
container is committed in place: its changes become the layer without
being copied, and the container goes on from it (its diff then shows
only what changes after the commit; a second commit adds a second
layer). A mounted container's changes are copied. The
config inherits the image's (environment, entrypoint, command, workdir,
user, labels, ports, volumes), with --change instructions applied as
docker commit --change does: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR (CMD and ENTRYPOINT in the
JSON or the shell form). SOURCE_DATE_EPOCH in the environment pins the
creation time and clamps later mtimes, so that the same content gives
the same image ID.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, args []string) error {
			if _, err := diff.ParseCompression(opts.Compression); err != nil {
				return usagef("--compression: %v", err)
			}
			epoch, err := image.ParseSourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH"))
			if err != nil {
				return usagef("%v", err)
			}
			opts.SourceDateEpoch = epoch
			opts.Warn = func(msg string) { a.debugf("%s", msg) }
			ref := ""
			if len(args) == 2 {
				ref = args[1]
			}
			img, err := image.Commit(cmd.Context(), st, args[0], ref, &opts)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, img.ID)
			return nil
		}),
		ValidArgsFunction: a.completeContainers,
	}
	f := cmd.Flags()
	f.StringVar(&opts.Compression, "compression", "gzip", "compression `gzip|zstd|none` of the new layer's blob when pushed or saved")
	f.StringVarP(&opts.Message, "message", "m", "", "history comment `MSG`")
	f.StringVarP(&opts.Author, "author", "a", "", "`AUTHOR` of the image")
	f.StringArrayVarP(&opts.Changes, "change", "c", nil, "Dockerfile `INSTRUCTION` to apply to the config (repeatable)")
	return cmd
}
