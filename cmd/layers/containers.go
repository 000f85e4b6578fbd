package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"

	runner "github.com/layers-storage/layers/run"
	"github.com/layers-storage/layers/store"
)

// containerJSON is a container in `ps --format json`: the contract's
// fields, which never change meaning.
type containerJSON struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Image   string    `json:"image"`
	Layer   string    `json:"layer"`
	Mounted bool      `json:"mounted"`
	Created time.Time `json:"created"`
	// Status is "created", "running" or "exited (N)" (containers of run);
	// ExitCode the exit status of run's process once it exited.
	Status   string `json:"status"`
	ExitCode *int   `json:"exit_code,omitempty"`
}

func toContainerJSON(c *store.Container) containerJSON {
	j := containerJSON{ID: c.ID, Name: c.Name, Image: c.Image, Layer: c.Layer, Mounted: c.Mounted, Created: c.Created, Status: containerStatus(c)}
	if s := runner.ContainerState(c); s != nil {
		j.ExitCode = s.ExitCode
	}
	return j
}

func (a *app) addContainerCommands(root *cobra.Command) {
	var lf listFlags
	var filterArgs []string
	var filter containerFilter
	ps := &cobra.Command{
		Use:   "ps",
		Short: "List containers",
		Args:  cobra.NoArgs,
		RunE: a.verb(true, func(_ *cobra.Command, st *store.Store, _ []string) error {
			asJSON, err := lf.json()
			if err != nil {
				return err
			}
			cs, err := st.Containers()
			if err != nil {
				return fmt.Errorf("list containers: %w", err)
			}
			if len(filter) > 0 {
				m, err := filter.resolve(st)
				if err != nil {
					return fmt.Errorf("list containers: %w", err)
				}
				cs = slices.DeleteFunc(cs, func(c *store.Container) bool { return !m.match(c) })
			}
			return a.printContainers(st, cs, &lf, asJSON)
		}),
	}
	lf.addList(ps, containerJSON{})
	acceptAll(ps, "container")
	ps.Flags().StringArrayVarP(&filterArgs, "filter", "f", nil,
		"list only containers that match `KEY=VALUE` (repeatable; the values of one key are alternatives, different keys must all match): "+filterHelp())
	_ = ps.RegisterFlagCompletionFunc("filter", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return filterCompletions(), cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveNoFileComp
	})
	checkFormat := ps.PreRunE
	ps.PreRunE = func(cmd *cobra.Command, args []string) error {
		var err error
		if filter, err = parseContainerFilter(filterArgs); err != nil {
			return err
		}
		return checkFormat(cmd, args)
	}

	var name string
	create := &cobra.Command{
		Use:   "create [--name N] IMAGE",
		Short: "Create a container (a read-write layer on the image); prints its ID",
		Args:  cobra.ExactArgs(1),
		RunE: a.verb(true, func(_ *cobra.Command, st *store.Store, args []string) error {
			c, err := st.CreateContainer(args[0], &store.ContainerOptions{Name: name})
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, c.ID)
			return nil
		}),
		ValidArgsFunction: a.completeImages,
	}
	create.Flags().StringVar(&name, "name", "", "the container's `NAME`")

	var rmForce, rmAll bool
	rm := &cobra.Command{
		Use:   "rm [-f] (CONTAINER... | -a)",
		Short: "Remove containers (unmounting them first)",
		Args:  argsOrAll(&rmAll),
		RunE: a.verb(true, func(_ *cobra.Command, st *store.Store, args []string) error {
			if rmAll {
				var err error
				if args, err = containerIDs(st, false); err != nil {
					return err
				}
			}
			return forEachRef(args, func(ref string) error { return st.RemoveContainer(ref, rmForce) })
		}),
		ValidArgsFunction: a.completeContainers,
	}
	rm.Flags().BoolVarP(&rmForce, "force", "f", false, "detach a mount that stays busy")
	rm.Flags().BoolVarP(&rmAll, "all", "a", false, "remove every container")

	mount := &cobra.Command{
		Use:   "mount CONTAINER",
		Short: "Mount a container's root filesystem; prints its path",
		Long: `Mount a container's root filesystem and print its path, nothing else:
cd "$(layers mount c)". Mounts are counted across processes: each mount
is undone by one umount.`,
		Args: cobra.ExactArgs(1),
		RunE: a.verb(true, func(_ *cobra.Command, st *store.Store, args []string) error {
			p, err := st.Mount(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, p)
			return nil
		}),
		ValidArgsFunction: a.completeContainers,
	}

	var umountForce, umountAll bool
	umount := &cobra.Command{
		Use:     "umount [-f] (CONTAINER | -a)",
		Aliases: []string{"unmount"},
		Short:   "Undo one mount of a container (-f: all of them; -a: of every mounted container)",
		Args: func(cmd *cobra.Command, args []string) error {
			if umountAll {
				return argsOrAll(&umountAll)(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: a.verb(true, func(_ *cobra.Command, st *store.Store, args []string) error {
			if umountAll {
				var err error
				if args, err = containerIDs(st, true); err != nil {
					return err
				}
			}
			return forEachRef(args, func(ref string) error { return st.Unmount(ref, umountForce) })
		}),
		ValidArgsFunction: a.completeContainers,
	}
	umount.Flags().BoolVarP(&umountForce, "force", "f", false, "undo every mount, detaching a busy one")
	umount.Flags().BoolVarP(&umountAll, "all", "a", false, "unmount every mounted container")

	diff := &cobra.Command{
		Use:   "diff CONTAINER",
		Short: "List a container's changes against its image (A, C, D /path)",
		Long: `List what a container changed against its image, one change a line:
"A /path" added, "C /path" changed, "D /path" deleted. A path with a
control character, a backslash or a double quote is printed in double
quotes with C escapes, as git does.`,
		Args: cobra.ExactArgs(1),
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, args []string) error {
			changes, err := st.Changes(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			for _, c := range changes {
				fmt.Fprintf(a.stdout, "%s %s\n", c.Kind, quotePath(c.Path))
			}
			return nil
		}),
		ValidArgsFunction: a.completeContainers,
	}

	root.AddCommand(ps, create, rm, mount, umount, diff)
}

func (a *app) printContainers(st *store.Store, cs []*store.Container, lf *listFlags, asJSON bool) error {
	if asJSON || lf.tmpl != nil {
		out := make([]containerJSON, 0, len(cs))
		for _, c := range cs {
			out = append(out, toContainerJSON(c))
		}
		return printEntries(a.stdout, lf, out)
	}
	if a.quiet {
		for _, c := range cs {
			fmt.Fprintln(a.stdout, lf.id(c.ID))
		}
		return nil
	}
	// People know images by name: the first name of each, else its ID.
	imageNames := map[string]string{}
	if imgs, err := st.Images(); err == nil {
		for _, img := range imgs {
			if len(img.Names) > 0 {
				imageNames[img.ID] = img.Names[0]
			}
		}
	}
	now := time.Now()
	t := newTable(a.stdout, "CONTAINER ID", "IMAGE", "NAME", "MOUNTED", "CREATED", "STATUS")
	for _, c := range cs {
		img := imageNames[c.Image]
		if img == "" {
			img = lf.id(c.Image)
		}
		mounted := "no"
		if c.Mounted {
			mounted = "yes"
		}
		t.row(lf.id(c.ID), img, c.Name, mounted, ago(c.Created, now), containerStatus(c))
	}
	return t.flush()
}

// completeContainers offers container names and short IDs.
func (a *app) completeContainers(_ *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
	st, err := a.store()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cs, err := st.Containers()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, c := range cs {
		if c.Name != "" {
			out = append(out, c.Name)
		}
		out = append(out, shortID(c.ID))
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// argsOrAll accepts one or more arguments, or none with --all (*all).
func argsOrAll(all *bool) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if *all && len(args) > 0 {
			return usagef("--all takes no arguments")
		}
		if *all {
			return nil
		}
		return cobra.MinimumNArgs(1)(cmd, args)
	}
}

// containerIDs returns the IDs of every container, or of the mounted ones.
func containerIDs(st *store.Store, mountedOnly bool) ([]string, error) {
	cs, err := st.Containers()
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var ids []string
	for _, c := range cs {
		if c.Mounted || !mountedOnly {
			ids = append(ids, c.ID)
		}
	}
	return ids, nil
}
