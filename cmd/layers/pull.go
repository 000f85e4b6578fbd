package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/layers-storage/layers/image"
	"github.com/layers-storage/layers/store"
)

// addRegistryCommands adds pull and push.
func (a *app) addRegistryCommands(root *cobra.Command) {
	root.AddCommand(a.pullCommand(), a.pushCommand())
}

// registryFlags are the flags pull and push share.
type registryFlags struct {
	insecure bool
	jobs     int
	idle     time.Duration
}

func (f *registryFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.insecure, "insecure", false, "allow plain http and certificates that do not verify (self-signed)")
	cmd.Flags().IntVar(&f.jobs, "jobs", image.DefaultJobs, "blobs to transfer at once")
	cmd.Flags().DurationVar(&f.idle, "idle-timeout", image.DefaultIdleTimeout, "give up (and retry) a registry connection that moved no byte for this `long`; 0: never")
}

// remoteOptions turns the flags into library options, with progress on
// stdout: bars on a terminal, plain lines otherwise, nothing with
// --quiet. Stderr is kept for the one error line. Call the returned
// function before printing the result.
func (a *app) remoteOptions(f *registryFlags) (image.RemoteOptions, func(), error) {
	if f.jobs < 1 {
		return image.RemoteOptions{}, nil, usagef("--jobs must be at least 1, not %d", f.jobs)
	}
	if f.idle < 0 {
		return image.RemoteOptions{}, nil, usagef("--idle-timeout must not be negative, not %s", f.idle)
	}
	opts := image.RemoteOptions{Insecure: f.insecure, Jobs: f.jobs, IdleTimeout: f.idle}
	if f.idle == 0 {
		opts.IdleTimeout = -1 // the library's "never"
	}
	if a.quiet {
		return opts, func() {}, nil
	}
	pw := image.NewProgressWriter(a.stdout, isTerminal(a.stdout))
	opts.Progress = pw.Report
	return opts, pw.Close, nil
}

func (a *app) pullCommand() *cobra.Command {
	var rf registryFlags
	var platform string
	cmd := &cobra.Command{
		Use:   "pull [--insecure] [--platform os/arch[/variant]] REF",
		Short: "Pull an image from a registry",
		Long: `Pull an image from a registry and print its ID.

REF is normalised as docker does: "busybox" is
docker.io/library/busybox:latest. Credentials come from
~/.docker/config.json (and its credential helpers), $DOCKER_CONFIG, or
containers' auth.json ($REGISTRY_AUTH_FILE). From an index, the image of
--platform is pulled (default: the host's). Layers the root has already
are not downloaded. Progress goes to stdout (bars on a terminal, one line
a step otherwise, nothing with --quiet); the image ID is the last line.`,
		Args: cobra.ExactArgs(1),
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, args []string) error {
			if platform != "" {
				if err := checkPlatform(platform); err != nil {
					return err
				}
			}
			ro, done, err := a.remoteOptions(&rf)
			if err != nil {
				return err
			}
			img, err := image.Pull(cmd.Context(), st, args[0], &image.PullOptions{RemoteOptions: ro, Platform: platform})
			done()
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, img.ID)
			return nil
		}),
	}
	rf.add(cmd)
	cmd.Flags().StringVar(&platform, "platform", "", "`os/arch[/variant]` to pick from an image index (default: the host's)")
	return cmd
}

// checkPlatform rejects a --platform that is not os/arch[/variant] as a
// usage error, before any network traffic.
func checkPlatform(p string) error {
	n, parts := 0, 1
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			if i == n {
				return usagef("--platform %q: want os/arch[/variant]", p)
			}
			n = i + 1
			parts++
		}
	}
	if n == len(p) || parts < 2 || parts > 3 {
		return usagef("--platform %q: want os/arch[/variant]", p)
	}
	return nil
}
