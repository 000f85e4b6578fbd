package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/graphdriver"
	runner "github.com/layers-storage/layers/run"
	"github.com/layers-storage/layers/store"
)

// infoJSON is `info --format json`.
type infoJSON struct {
	Root         string       `json:"root"`
	RunRoot      string       `json:"run_root"`
	Driver       string       `json:"driver"`
	DriverStatus []statusJSON `json:"driver_status"`
	Drivers      []string     `json:"drivers"`
	Sync         bool         `json:"sync"`
	Kernel       string       `json:"kernel"`
	Filesystems  []string     `json:"filesystems"`
	Images       int          `json:"images"`
	Containers   int          `json:"containers"`
	Layers       int          `json:"layers"`
	Version      versionJSON  `json:"version"`
}

type statusJSON struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// interestingFS are the filesystems `info` looks for in /proc/filesystems:
// those the drivers use or run on.
var interestingFS = []string{"overlay", "btrfs", "xfs", "ext4", "tmpfs"}

func (a *app) addAdminCommands(root *cobra.Command) {
	var infoFlags listFlags
	info := &cobra.Command{
		Use:   "info",
		Short: "Show the root, the driver and its status, and the kernel features found",
		Args:  cobra.NoArgs,
		RunE: a.verb(true, func(_ *cobra.Command, st *store.Store, _ []string) error {
			asJSON, err := infoFlags.json()
			if err != nil {
				return err
			}
			in, err := gatherInfo(st)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, in)
			}
			t := newTable(a.stdout, "KEY", "VALUE")
			t.row("root", in.Root)
			t.row("runroot", in.RunRoot)
			t.row("driver", in.Driver)
			for _, s := range in.DriverStatus {
				t.row("  "+s.Key, s.Value)
			}
			t.row("drivers", strings.Join(in.Drivers, ", "))
			t.row("sync", fmt.Sprint(in.Sync))
			t.row("kernel", in.Kernel)
			t.row("filesystems", strings.Join(in.Filesystems, ", "))
			t.row("images", fmt.Sprint(in.Images))
			t.row("containers", fmt.Sprint(in.Containers))
			t.row("layers", fmt.Sprint(in.Layers))
			t.row("version", in.Version.Version)
			return t.flush()
		}),
	}
	infoFlags.add(info)

	var checkFlags listFlags
	var digests, repair bool
	check := &cobra.Command{
		Use:   "check [--digests] [--repair]",
		Short: "Verify metadata, layer data and mounts; --repair fixes what it finds",
		Long: `Verify the database against the driver's data, the mount counts against
the kernel's mounts, and the image blobs; print the problems found, and
exit 1 when there are any.

--digests also recomputes every image layer's diff ID from its data (it
reads all of it): what finds layers damaged by a power loss.
--repair fixes what can be fixed and removes what cannot be: damaged
layers with everything that depends on them (images, containers).`,
		Args: cobra.NoArgs,
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, _ []string) error {
			asJSON, err := checkFlags.json()
			if err != nil {
				return err
			}
			copts := store.CheckOptions{Digests: digests}
			var rep *store.Report
			verb := "check"
			// What killed `layers run`s left (runtime state, their
			// mounts) goes first, so that the store sees it undone.
			var runProbs []store.Problem
			var runErr error
			if repair {
				verb = "repair"
				runProbs, runErr = runner.Cleanup(st)
				rep, err = st.Repair(cmd.Context(), store.RepairOptions{CheckOptions: copts, RemoveDamaged: true})
			} else {
				runProbs, runErr = runner.Leftovers(st)
				rep, err = st.Check(cmd.Context(), copts)
			}
			if rep != nil {
				rep.Problems = append(runProbs, rep.Problems...)
			}
			err = errors.Join(runErr, err)
			if rep != nil {
				if perr := a.printReport(rep, asJSON); perr != nil && err == nil {
					err = perr
				}
			}
			if err != nil {
				return err
			}
			if unfixed := countUnfixed(rep); unfixed > 0 {
				hint := " (layers check --repair fixes them)"
				if repair {
					hint = ""
				}
				return fmt.Errorf("%s: %d problem%s found%s", verb, unfixed, plural(unfixed), hint)
			}
			return nil
		}),
	}
	checkFlags.add(check)
	check.Flags().BoolVar(&digests, "digests", false, "recompute every image layer's diff ID")
	check.Flags().BoolVar(&repair, "repair", false, "fix what is found, removing damaged layers and what depends on them")

	var pruneFlags listFlags
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove the layers no image or container uses; prints what was freed",
		Args:  cobra.NoArgs,
		RunE: a.verb(true, func(cmd *cobra.Command, st *store.Store, _ []string) error {
			asJSON, err := pruneFlags.json()
			if err != nil {
				return err
			}
			rep, err := st.Prune(cmd.Context())
			if rep != nil {
				switch {
				case asJSON:
					_ = writeJSON(a.stdout, rep)
				case !a.quiet:
					for _, id := range rep.Layers {
						fmt.Fprintf(a.stdout, "removed layer %s\n", id)
					}
					fmt.Fprintf(a.stdout, "freed %d layer%s, %s\n", len(rep.Layers), plural(len(rep.Layers)), humanSize(rep.Size))
				}
			}
			return err
		}),
	}
	pruneFlags.add(prune)

	root.AddCommand(info, check, prune)
}

func gatherInfo(st *store.Store) (*infoJSON, error) {
	in := &infoJSON{
		Root:         st.Root(),
		RunRoot:      st.RunRoot(),
		Driver:       st.DriverName(),
		DriverStatus: []statusJSON{},
		Drivers:      graphdriver.Names(),
		Sync:         st.Sync(),
		Filesystems:  []string{},
		Version:      buildVersion(),
	}
	for _, s := range st.DriverStatus() {
		in.DriverStatus = append(in.DriverStatus, statusJSON{Key: s.Key, Value: s.Value})
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		in.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	if have, err := graphdriver.KernelFilesystems(); err == nil {
		for _, fs := range interestingFS {
			if have[fs] {
				in.Filesystems = append(in.Filesystems, fs)
			}
		}
	}
	imgs, err := st.Images()
	if err != nil {
		return nil, fmt.Errorf("info: %w", err)
	}
	cs, err := st.Containers()
	if err != nil {
		return nil, fmt.Errorf("info: %w", err)
	}
	ls, err := st.Layers()
	if err != nil {
		return nil, fmt.Errorf("info: %w", err)
	}
	in.Images, in.Containers, in.Layers = len(imgs), len(cs), len(ls)
	return in, nil
}

func (a *app) printReport(rep *store.Report, asJSON bool) error {
	if asJSON {
		ps := rep.Problems
		if ps == nil {
			ps = []store.Problem{}
		}
		return writeJSON(a.stdout, ps)
	}
	if a.quiet {
		return nil
	}
	for _, p := range rep.Problems {
		fmt.Fprintln(a.stdout, p.String())
	}
	if len(rep.Problems) == 0 {
		fmt.Fprintln(a.stdout, "no problems found")
	}
	return nil
}

func countUnfixed(rep *store.Report) int {
	n := 0
	for _, p := range rep.Problems {
		if !p.Fixed {
			n++
		}
	}
	return n
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
