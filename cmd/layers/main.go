// Command layers is the command line of the layers toolkit: it lists,
// creates, mounts, diffs and removes images, containers and layers of a
// store root, as DESIGN.md's "CLI contract" describes. Every verb is a thin
// client of package store; this package holds flags, output formatting and
// exit codes only.
//
// Exit status: 0 on success; 1 on an error, reported as exactly one line
// "layers: what failed: why" on stderr; 2 on a usage error (bad flag,
// missing argument, unknown verb), reported with a hint line.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"modernc.org/sqlite"

	runner "github.com/layers-storage/layers/run"
	_ "github.com/layers-storage/layers/store/all" // every driver
)

// Exit statuses of the CLI contract.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	// The store's database commits with fdatasync, as SQLite built for
	// Linux does (modernc's transpiled library keeps fsync unless told):
	// the same durability (the data and the size needed to read it back),
	// without forcing the file's timestamps through the ext4 journal on
	// each commit. A process-wide setting of the SQLite library, which only
	// the store uses in this process. The error is ErrFdatasyncUnavailable
	// on platforms that cannot, where commits keep fsync.
	_, _ = sqlite.Fdatasync(true)
	// SIGINT and SIGTERM cancel the context, so that a long apply or
	// check stops and cleans up instead of dying half-way.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the exit status. It is main
// without the process: the store is closed before it returns.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := newApp(stdin, stdout, stderr)
	defer a.close()
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		if cerr := a.close(); cerr != nil {
			fmt.Fprintf(stderr, "layers: close store: %s\n", oneLine(cerr))
			return exitError
		}
		return exitOK
	}
	var es *exitStatus
	if errors.As(err, &es) {
		if es.err != nil {
			fmt.Fprintf(stderr, "layers: %s\n", oneLine(es.err))
		}
		return es.code
	}
	var f *failure
	if errors.As(err, &f) {
		fmt.Fprintf(stderr, "layers: %s\n", oneLine(f.err))
		return exitError
	}
	// Anything else came from cobra before a verb ran (unknown flag or
	// verb, wrong argument count) or is a usageError from a verb.
	fmt.Fprintf(stderr, "layers: %s\n", oneLine(err))
	path := "layers"
	if cmd != nil {
		path = cmd.CommandPath()
	}
	fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", path)
	if cmd != nil && cmd.Name() == "run" {
		// run's own failures are 125, so that its process's status 2
		// is never taken for a usage error.
		return runner.ExitFailure
	}
	return exitUsage
}

// failure marks an error of a verb that ran (exit 1), as opposed to a
// usage error (exit 2).
type failure struct{ err error }

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

// usageError is a verb's own usage error (a bad flag value cobra cannot
// check): exit 2.
type usageError struct{ msg string }

func (u *usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// oneLine keeps an error on one line, whatever its causes put in it
// (errors.Join separates with newlines), so stderr holds exactly one.
func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}
