package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/layers-storage/layers/store"
)

// Defaults of the global flags when neither flag nor environment says.
const (
	defaultRoot    = "/var/lib/layers"
	defaultRunRoot = "/run/layers"
)

// app is one invocation: the global options, the streams, and the store,
// opened on first use so that verbs that need none (version, completion,
// help) never touch a root.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	root, runRoot, driver string
	storageOpts           []string
	quiet, debug          bool

	st     *store.Store
	opened time.Time
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *app {
	return &app{stdin: stdin, stdout: stdout, stderr: stderr}
}

// rootCommand builds the command tree. Each verb group lives in its own
// file and adds itself here; later groups (images: pull, push, save, load,
// commit; run) are one file and one line each.
func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "layers",
		Short: "Container image storage: images, containers and layers on overlay, btrfs or vfs",
		Long: `layers stores container images as layers of a graph driver (overlay,
btrfs, vfs) and gives containers copy-on-write root filesystems.

Global options may also come from the environment: LAYERS_ROOT,
LAYERS_RUNROOT, LAYERS_DRIVER.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// A verb's arguments are checked by the verb; bare "layers FOO"
		// is an unknown verb.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		// The contract's completion verb replaces cobra's default one
		// (which would add powershell and differ in flags).
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{msg: err.Error()} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.root, "root", envOr("LAYERS_ROOT", defaultRoot), "store root `DIR` (env LAYERS_ROOT)")
	pf.StringVar(&a.runRoot, "runroot", envOr("LAYERS_RUNROOT", defaultRunRoot), "runtime state `DIR` (env LAYERS_RUNROOT)")
	pf.StringVar(&a.driver, "driver", os.Getenv("LAYERS_DRIVER"), "graph driver `NAME` (env LAYERS_DRIVER; default: the one recorded in the root, else the best for the host)")
	pf.StringArrayVar(&a.storageOpts, "storage-opt", nil, "storage option `KEY=VALUE` (repeatable)")
	pf.BoolVarP(&a.quiet, "quiet", "q", false, "print only IDs (lists) or nothing (other verbs)")
	pf.BoolVar(&a.debug, "debug", false, "print timings and details on stderr")

	a.addImageCommands(root)
	a.addRegistryCommands(root)
	root.AddCommand(a.commitCommand(), a.saveCommand(), a.loadCommand())
	root.AddCommand(a.runCommand())
	a.addContainerCommands(root)
	a.addLayerCommands(root)
	a.addAdminCommands(root)
	a.addMiscCommands(root)
	return root
}

// envOr returns the environment variable key, or def when it is unset or
// empty.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// store opens the store on first use.
func (a *app) store() (*store.Store, error) {
	if a.st != nil {
		return a.st, nil
	}
	opts, err := store.ParseStorageOptions(a.storageOpts)
	if err != nil {
		return nil, usagef("--storage-opt: %v", err)
	}
	start := time.Now()
	st, err := store.Open(store.Options{Root: a.root, RunRoot: a.runRoot, Driver: a.driver, DriverOptions: opts})
	if err != nil {
		return nil, err
	}
	a.st = st
	a.opened = time.Now()
	a.debugf("opened store %s (driver %s) in %s", st.Root(), st.DriverName(), a.opened.Sub(start))
	return st, nil
}

// close closes the store if it was opened; calling it again does nothing.
// The process exits right after, so the database is left to the exit (see
// store.CloseForExit): that saves SQLite's checkpoint on close.
func (a *app) close() error {
	if a.st == nil {
		return nil
	}
	err := a.st.CloseForExit()
	a.debugf("verb ran in %s", time.Since(a.opened))
	a.st = nil
	return err
}

func (a *app) debugf(format string, args ...any) {
	if a.debug {
		fmt.Fprintf(a.stderr, "debug: "+format+"\n", args...)
	}
}

// verb adapts a verb's body to cobra: the store is opened first (when
// needStore), and an error of the body is a failure (exit 1) unless it
// is a usageError (exit 2).
func (a *app) verb(needStore bool, body func(cmd *cobra.Command, st *store.Store, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		var st *store.Store
		if needStore {
			var err error
			if st, err = a.store(); err != nil {
				return asFailure(err)
			}
		}
		return asFailure(body(cmd, st, args))
	}
}

func asFailure(err error) error {
	var u *usageError
	if err == nil || errors.As(err, &u) {
		return err
	}
	return &failure{err: err}
}
