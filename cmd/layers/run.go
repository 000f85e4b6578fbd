package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	runner "github.com/layers-storage/layers/run"
	"github.com/layers-storage/layers/store"
)

// exitStatus is a verb's result that sets the exit status itself: `run`
// passes its process's status through, and fails with 125 (126, 127)
// where other verbs fail with 1. err, when set, is printed as the one
// "layers: ..." line.
type exitStatus struct {
	code int
	err  error
}

func (e *exitStatus) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitStatus) Unwrap() error { return e.err }

func (a *app) runCommand() *cobra.Command {
	var (
		o                 runner.Options
		envs, envFiles    []string
		volumes           []string
		interactive, tty  bool
		network, hostname string
		securityOpts      []string
	)
	cmd := &cobra.Command{
		Use:   "run [--rm] [--name N] [--runtime runc|crun|PATH] [-e K=V]... [--env-file F] [-w DIR] [-u USER[:GROUP]] [-v HOST:CTR[:ro]]... [--network none|host] [--hostname H] [-i] [-t] [--read-only] [--security-opt seccomp=unconfined] IMAGE [CMD...]",
		Short: "Run a process in a new container of an image, in the foreground",
		Long: `Run a process in a new container of IMAGE with an OCI runtime (runc or
crun), as podman run does, and exit with its exit status.

The process is the image's entrypoint followed by CMD (the image's cmd when
none is given), with the image's environment, then -e and --env-file; its
working directory and user come from the image unless -w and -u say
otherwise (users and groups by name are looked up in the image's own
/etc/passwd and /etc/group). Standard output and error stream through; -i
passes standard input. -t gives the process a terminal of its own (a
pseudo-terminal made by the runtime; ours, if we have one, is raw
meanwhile and its size changes are passed on); it works without a
terminal here too. SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2
are passed on to the process (the kernel ignores those the container's
first process does not handle, as in podman and docker without --init).

The process runs under podman's default seccomp profile (system calls
such as unshare, mount and keyctl fail with EPERM) unless
--security-opt seccomp=unconfined. /etc/hostname, /etc/hosts and
/etc/resolv.conf are files made for the run and bind-mounted: hosts
names localhost and the host name; resolv.conf is the host's with
--network host, and the host's without its name servers with --network
none (there is no network to reach them).

The runtime is crun, the faster, or runc when crun is not installed, or
--runtime (on hosts with a hybrid cgroup v1/v2 layout, which crun 1.8
refuses, crun runs in a private mount namespace without the cgroup2
mount).
Without --rm the container stays, unmounted, and ps shows its exit status.

Exit status: the process's (128+N when it was killed by signal N); 125
when layers or the runtime failed, 126 when the command cannot be
executed, 127 when it is not in the image.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			o.Command = args[1:]
			o.Network, o.Hostname, o.TTY = network, hostname, tty
			env, err := readEnv(envFiles, envs)
			if err != nil {
				return &exitStatus{code: runner.ExitFailure, err: err}
			}
			o.Env = env
			for _, so := range securityOpts {
				switch so {
				case "seccomp=unconfined":
					o.Seccomp = runner.SeccompUnconfined
				default:
					return &exitStatus{code: runner.ExitFailure, err: fmt.Errorf("--security-opt %q: %w: only seccomp=unconfined is known", so, runner.ErrBadOption)}
				}
			}
			o.Volumes = nil
			for _, v := range volumes {
				vol, err := runner.ParseVolume(v)
				if err != nil {
					return &exitStatus{code: runner.ExitFailure, err: err}
				}
				o.Volumes = append(o.Volumes, vol)
			}
			o.Stdout, o.Stderr = a.stdout, a.stderr
			if interactive || tty {
				o.Stdin = a.stdin
			}
			st, err := a.store()
			if err != nil {
				return &exitStatus{code: runner.ExitFailure, err: err}
			}
			code, err := runner.Run(c.Context(), st, args[0], &o)
			if err != nil {
				return &exitStatus{code: runner.ExitCode(err), err: err}
			}
			if cerr := a.close(); cerr != nil {
				return &exitStatus{code: runner.ExitFailure, err: fmt.Errorf("close store: %w", cerr)}
			}
			if code != 0 {
				return &exitStatus{code: code}
			}
			return nil
		},
		ValidArgsFunction: a.completeImages,
	}
	// Flags end at IMAGE: what follows is the process's command line.
	cmd.Flags().SetInterspersed(false)
	f := cmd.Flags()
	f.BoolVar(&o.Remove, "rm", false, "remove the container when the process exits")
	f.StringVar(&o.Name, "name", "", "the container's `NAME`")
	f.StringVar(&o.Runtime, "runtime", "", "OCI runtime: `runc|crun|PATH` (default: crun, else runc)")
	f.StringArrayVarP(&envs, "env", "e", nil, "set `K=V` in the environment (K alone: the value here; repeatable)")
	f.StringArrayVar(&envFiles, "env-file", nil, "read K=V lines from `FILE` (repeatable)")
	f.StringVarP(&o.WorkDir, "workdir", "w", "", "working `DIR` inside the container")
	f.StringVarP(&o.User, "user", "u", "", "`USER[:GROUP]`, names or numbers")
	f.StringArrayVarP(&volumes, "volume", "v", nil, "bind mount `HOST:CTR[:ro]` (repeatable)")
	f.StringVar(&network, "network", runner.NetworkNone, "`none` (loopback only) or host")
	f.StringVar(&hostname, "hostname", "", "the container's host `NAME` (default: its short ID)")
	f.BoolVarP(&interactive, "interactive", "i", false, "pass standard input")
	f.BoolVarP(&tty, "tty", "t", false, "give the process a terminal")
	f.BoolVar(&o.ReadOnly, "read-only", false, "mount the container's root read-only")
	f.StringArrayVar(&securityOpts, "security-opt", nil, "`seccomp=unconfined`: no seccomp filter (default: podman's profile)")
	return cmd
}

// readEnv returns the environment of --env-file files then -e values, as
// docker reads them: "K=V" sets K, a bare "K" takes K's value here (and
// is left out when K is unset here); in files, blank lines and lines
// starting with # are skipped.
func readEnv(files, envs []string) ([]string, error) {
	var out []string
	add := func(kv string) {
		if strings.Contains(kv, "=") {
			out = append(out, kv)
		} else if v, ok := os.LookupEnv(kv); ok {
			out = append(out, kv+"="+v)
		}
	}
	for _, name := range files {
		fh, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("env file: %w", err)
		}
		sc := bufio.NewScanner(fh)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimLeft(sc.Text(), " \t")
			if line == "" || line[0] == '#' {
				continue
			}
			if k, _, _ := strings.Cut(line, "="); k == "" || strings.ContainsAny(k, " \t") {
				fh.Close()
				return nil, fmt.Errorf("env file %s:%d: %w: %q is not K=V", name, n, runner.ErrBadOption, line)
			}
			add(line)
		}
		err = sc.Err()
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("env file %s: %w", name, err)
		}
	}
	for _, kv := range envs {
		if k, _, _ := strings.Cut(kv, "="); k == "" {
			return nil, fmt.Errorf("-e %q: %w: empty name", kv, runner.ErrBadOption)
		}
		add(kv)
	}
	return out, nil
}

// containerStatus is a container's STATUS column: "created", "running"
// or "exited (N)" for containers of `run`.
func containerStatus(c *store.Container) string { return runner.StatusText(c) }
