package run

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/store"
)

// Sentinel errors, wrapped with context, for callers to branch on (the
// CLI maps them to exit statuses with ExitCode).
var (
	// ErrNoRuntime means the OCI runtime asked for (or any, when none was
	// named) is not installed.
	ErrNoRuntime = errors.New("OCI runtime not found")
	// ErrRuntime means the runtime failed to run the container (as
	// opposed to the process exiting with a failure status).
	ErrRuntime = errors.New("OCI runtime failed")
	// ErrUnknownUser means a user or group name the image's /etc/passwd
	// or /etc/group does not have.
	ErrUnknownUser = errors.New("unknown user")
	// ErrNoCommand means neither the image nor the caller gives a
	// command.
	ErrNoCommand = errors.New("no command")
	// ErrCommandNotFound means the command is not in the image.
	ErrCommandNotFound = errors.New("executable file not found")
	// ErrNotExecutable means the command is in the image but cannot be
	// executed.
	ErrNotExecutable = errors.New("permission denied: not an executable file")
	// ErrBadOption means an option with a bad value (a volume, the
	// network, the working directory).
	ErrBadOption = errors.New("bad option")
)

// Exit statuses of `layers run` for its own failures, as docker run has
// them: the process's own status is passed through otherwise.
const (
	ExitFailure       = 125 // layers or the runtime failed
	ExitNotExecutable = 126 // the command cannot be executed
	ExitNotFound      = 127 // the command is not in the image
)

// ExitCode returns the exit status `layers run` gives for an error of
// Run: 126 and 127 for a command that cannot run (as docker), 125 for
// every other failure.
func ExitCode(err error) int {
	switch {
	case errors.Is(err, ErrCommandNotFound):
		return ExitNotFound
	case errors.Is(err, ErrNotExecutable):
		return ExitNotExecutable
	default:
		return ExitFailure
	}
}

// Network modes.
const (
	NetworkNone = "none" // a network namespace of its own, loopback only
	NetworkHost = "host" // the host's network namespace
)

// Options say how to run a container: the flags of `layers run`.
type Options struct {
	// Name is the container's name; "" for none.
	Name string
	// Remove removes the container when the process ends (or fails to
	// start).
	Remove bool
	// Runtime is "runc", "crun", a path to a runtime, or "" to pick the
	// one that works on the host (FindRuntime).
	Runtime string
	// Command replaces the image's cmd (the entrypoint stays).
	Command []string
	// Env are K=V set after the image's environment (overriding it).
	Env []string
	// WorkDir replaces the image's working directory.
	WorkDir string
	// User is "USER[:GROUP]", names or numbers; "" is the image's user.
	User string
	// Volumes are bind mounts of host paths.
	Volumes []Volume
	// Network is NetworkNone ("" means it) or NetworkHost.
	Network string
	// Hostname is the container's host name; "" means the first 12
	// characters of its ID (the host's with NetworkHost).
	Hostname string
	// ReadOnly mounts the container's root read-only.
	ReadOnly bool
	// TTY gives the process a terminal of its own (a pseudo-terminal
	// the runtime makes in the container), whose input is Stdin and whose
	// output goes to Stdout; Stderr is not used. When Stdin is a terminal
	// it is in raw mode meanwhile and its size is passed on.
	TTY bool
	// Seccomp is "" for the default seccomp profile (DefaultSeccomp) or
	// SeccompUnconfined for none.
	Seccomp string
	// Stdin, when not nil, is the process's standard input (-i);
	// otherwise it reads /dev/null.
	Stdin io.Reader
	// Stdout and Stderr receive the process's output; an *os.File is
	// passed to the process as is.
	Stdout, Stderr io.Writer
	// Started, when not nil, is called with the container's ID once the
	// runtime runs (tests and callers that want to signal it).
	Started func(id string)
}

// State is what Run records in the container's metadata (key "run"),
// for `ps` and for cleaning up after a killed `layers run`.
type State struct {
	// Status is StatusRunning or StatusExited.
	Status string `json:"status"`
	// ExitCode is the process's exit status once it exited (128+N when
	// killed by signal N); nil when unknown.
	ExitCode *int `json:"exit_code,omitempty"`
	// Error says why the run failed or was cut short, if it was.
	Error string `json:"error,omitempty"`
	// Runtime is the OCI runtime's path and Cgroup2 whether it ran in a
	// private mount namespace without cgroup2 (see Runtime).
	Runtime        string `json:"runtime,omitempty"`
	PrivateCgroup2 bool   `json:"private_cgroup2,omitempty"`
	// Pid and PidStart identify the `layers run` process (its start time
	// in clock ticks since boot, so that a reused pid is not taken for
	// it).
	Pid      int    `json:"pid,omitempty"`
	PidStart uint64 `json:"pid_start,omitempty"`
	// Remove records --rm.
	Remove   bool       `json:"remove,omitempty"`
	Started  time.Time  `json:"started"`
	Finished *time.Time `json:"finished,omitempty"`
}

// States of a run container.
const (
	StatusRunning = "running"
	StatusExited  = "exited"
)

// ContainerState returns the run state recorded in c's metadata, nil for
// a container that `layers run` did not make.
func ContainerState(c *store.Container) *State {
	if len(c.Metadata) == 0 {
		return nil
	}
	var m struct {
		Run *State `json:"run"`
	}
	if json.Unmarshal(c.Metadata, &m) != nil {
		return nil
	}
	return m.Run
}

// StatusText describes a container for `ps`: "created", "running" or
// "exited (N)".
func StatusText(c *store.Container) string {
	s := ContainerState(c)
	switch {
	case s == nil:
		return "created"
	case s.Status == StatusRunning:
		return "running"
	case s.ExitCode != nil:
		return fmt.Sprintf("exited (%d)", *s.ExitCode)
	default:
		return "exited (?)"
	}
}

func stateJSON(s *State) json.RawMessage {
	b, _ := json.Marshal(struct {
		Run *State `json:"run"`
	}{s})
	return b
}

// Run runs a container of image imageRef in the foreground: it creates
// the container (a read-write layer), mounts it, writes an OCI bundle
// made from the image config and o under the store's runroot, runs the
// runtime with the caller's standard streams, and returns the process's
// exit status. SIGINT, SIGTERM and SIGHUP are forwarded to the process
// meanwhile. With o.Remove the container is removed afterwards; otherwise
// it is unmounted and its metadata records the exit status.
//
// An error means the run itself failed (ExitCode says which status to
// exit with); the container is then removed when the process never
// started, so that a failed run leaves nothing.
func Run(ctx context.Context, st *store.Store, imageRef string, o *Options) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	rt, err := FindRuntime(o.Runtime)
	if err != nil {
		return 0, err
	}
	if o.Network != "" && o.Network != NetworkNone && o.Network != NetworkHost {
		return 0, fmt.Errorf("network %q: %w: want none or host", o.Network, ErrBadOption)
	}
	if o.Seccomp != "" && o.Seccomp != SeccompUnconfined {
		return 0, fmt.Errorf("seccomp=%s: %w: want seccomp=unconfined (or no option for the default profile)", o.Seccomp, ErrBadOption)
	}
	img, err := st.Image(imageRef)
	if err != nil {
		return 0, err
	}
	raw, err := st.ImageConfig(img.ID)
	if err != nil {
		return 0, err
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return 0, fmt.Errorf("image %s: config: %w", imageRef, err)
	}
	args, err := Args(&cfg.Config, o.Command)
	if err != nil {
		return 0, fmt.Errorf("image %s: %w", imageRef, err)
	}
	env := MergeEnv(cfg.Config.Env, o.Env)
	if !hasEnv(env, "PATH") {
		env = append(env, "PATH="+defaultPath)
	}
	cwd := o.WorkDir
	if cwd == "" {
		cwd = cfg.Config.WorkingDir
	}
	if cwd == "" {
		cwd = "/"
	}
	if !path.IsAbs(cwd) {
		return 0, fmt.Errorf("working directory %q: %w: not absolute", cwd, ErrBadOption)
	}
	userSpec := o.User
	if userSpec == "" {
		userSpec = cfg.Config.User
	}

	self, selfStart := os.Getpid(), processStart(os.Getpid())
	state := &State{
		Status: StatusRunning, Runtime: rt.Path, PrivateCgroup2: rt.PrivateCgroup2,
		Pid: self, PidStart: selfStart, Remove: o.Remove, Started: time.Now().UTC(),
	}
	c, err := st.CreateContainer(img.ID, &store.ContainerOptions{Name: o.Name, Metadata: stateJSON(state)})
	if err != nil {
		return 0, err
	}
	r := &runner{st: st, rt: rt, c: c, o: o, state: state, arch: cfg.Architecture}
	code, started, err := r.run(args, env, cwd, userSpec)
	if ferr := r.finish(code, started, err); ferr != nil && err == nil {
		err = ferr
	}
	return code, err
}

// runner is one Run after its container exists.
type runner struct {
	st     *store.Store
	rt     *Runtime
	c      *store.Container
	o      *Options
	state  *State
	bundle string
	arch   string // the image's architecture
}

// run mounts the container, writes the bundle and runs the runtime.
// started says whether the runtime ran (so the process may have).
func (r *runner) run(args, env []string, cwd, userSpec string) (code int, started bool, err error) {
	o := r.o
	rootfs, err := r.st.Mount(r.c.ID)
	if err != nil {
		return 0, false, err
	}
	rootfd, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false, fmt.Errorf("open the container's root: %w", err)
	}
	defer unix.Close(rootfd)
	user, err := ResolveUser(rootfd, userSpec)
	if err != nil {
		return 0, false, err
	}
	hostname := o.Hostname
	if hostname == "" {
		if o.Network == NetworkHost {
			hostname, _ = os.Hostname()
		} else {
			hostname = r.c.ID[:12]
		}
	}
	env = MergeEnv([]string{"HOSTNAME=" + hostname, "HOME=" + user.Home}, env)
	if o.TTY && !hasEnv(env, "TERM") {
		env = append(env, "TERM=xterm")
	}
	if err := checkCommand(rootfd, args[0], cwd, env); err != nil {
		return 0, false, err
	}
	r.bundle = filepath.Join(r.st.RunRoot(), "bundles", r.c.ID)
	if err := os.MkdirAll(r.bundle, 0o700); err != nil {
		return 0, false, fmt.Errorf("make the bundle: %w", err)
	}
	etc, err := etcFiles(r.bundle, hostname, o.Network)
	if err != nil {
		return 0, false, err
	}
	spec, err := makeSpec(&specInput{id: r.c.ID, rootfs: rootfs, args: args, env: env, cwd: cwd, user: user, hostname: hostname, etc: etc, arch: r.arch, opts: o})
	if err != nil {
		return 0, false, err
	}
	b, err := marshalSpec(spec)
	if err != nil {
		return 0, false, fmt.Errorf("make the bundle: %w", err)
	}
	if err := os.WriteFile(filepath.Join(r.bundle, "config.json"), b, 0o600); err != nil {
		return 0, false, fmt.Errorf("make the bundle: %w", err)
	}
	if err := os.MkdirAll(r.rt.stateRoot(r.st.RunRoot()), 0o700); err != nil {
		return 0, false, fmt.Errorf("make the runtime's state directory: %w", err)
	}
	return r.runtime()
}

// forwarded are the signals `layers run` passes on to the process,
// in every mode: the ones a user or a supervisor sends to ask a
// program to stop, reload or act.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// runtime runs the OCI runtime in the foreground and returns the
// process's exit status: `runtime run`, which passes the process its
// standard streams, forwards the signals it receives to it and returns
// its status. With a terminal (-t) see runtimeTTY.
func (r *runner) runtime() (int, bool, error) {
	if r.o.TTY {
		return r.runtimeTTY()
	}
	o := r.o
	logPath := filepath.Join(r.bundle, "runtime.log")
	cmd := r.rt.command(r.st.RunRoot(), logPath, "run", "--bundle", r.bundle, r.c.ID)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.Stdin, o.Stdout, o.Stderr
	// The runtime gets a process group of its own, so that a signal
	// reaches the process once, forwarded by us (a terminal's ^C goes to
	// its foreground group only: us). A runtime outside the terminal's
	// foreground group must not read it (SIGTTIN): terminal input is
	// copied through a pipe instead.
	if isTerminal(o.Stdin) {
		pr, pw, err := os.Pipe()
		if err != nil {
			return 0, false, fmt.Errorf("pipe for standard input: %w", err)
		}
		defer pr.Close()
		defer pw.Close()
		cmd.Stdin = pr
		stop, err := copyInput(pw, o.Stdin, func() { pw.Close() })
		if err != nil {
			return 0, false, err
		}
		defer stop()
	}
	// If layers dies, so does the runtime (a killed runtime's container
	// keeps running until cleaned up; see Cleanup).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	// Notified (never ignored, which the runtime would inherit), so that
	// layers survives them and they reach the process once.
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, forwarded...)
	defer signal.Stop(sigc)

	startedc := make(chan error, 1)
	waitc := make(chan error, 1)
	go func() { waitc <- r.rt.startAndWait(cmd, func(err error) { startedc <- err }) }()
	if err := <-startedc; err != nil {
		<-waitc
		return 0, false, fmt.Errorf("%w: start %s: %w", ErrRuntime, r.rt.Name, err)
	}
	if o.Started != nil {
		go o.Started(r.c.ID)
	}
	var werr error
	for done := false; !done; {
		select {
		case s := <-sigc:
			_ = cmd.Process.Signal(s)
		case werr = <-waitc:
			done = true
		}
	}
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		return 0, true, fmt.Errorf("%w: %s: %w", ErrRuntime, r.rt.Name, werr)
	}
	code := 0
	if ee != nil {
		code = exitStatus(ee.Sys().(syscall.WaitStatus))
	}
	if code != 0 {
		if msg := runtimeError(logPath); msg != "" {
			return code, true, fmt.Errorf("%w: %s: %s", ErrRuntime, r.rt.Name, msg)
		}
	}
	return code, true, nil
}

// exitStatus is a shell's status for ws: the exit code, or 128+N when
// signal N killed the process.
func exitStatus(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// finish removes the bundle, and the container with --rm (or when the
// process never started), or else unmounts it and records how it ended.
func (r *runner) finish(code int, started bool, runErr error) error {
	var errs []error
	if r.bundle != "" {
		if err := os.RemoveAll(r.bundle); err != nil {
			errs = append(errs, fmt.Errorf("remove the bundle: %w", err))
		}
	}
	if started && (runErr != nil || r.o.TTY) {
		// The runtime failed half-way, or ran the container detached
		// (-t), which leaves its state: make sure none of it (and nothing
		// it started) stays.
		if err := r.rt.delete(r.st.RunRoot(), r.c.ID); err != nil {
			errs = append(errs, err)
		}
	}
	if r.o.Remove || !started {
		if err := r.st.RemoveContainer(r.c.ID, true); err != nil {
			errs = append(errs, fmt.Errorf("remove container %s: %w", r.c.ID, err))
		}
		return errors.Join(errs...)
	}
	if err := r.st.Unmount(r.c.ID, false); err != nil {
		errs = append(errs, fmt.Errorf("unmount container %s: %w", r.c.ID, err))
	}
	now := time.Now().UTC()
	r.state.Status, r.state.Finished = StatusExited, &now
	if runErr != nil {
		r.state.Error = runErr.Error()
	} else {
		r.state.ExitCode = &code
	}
	if err := r.st.SetContainerMetadata(r.c.ID, stateJSON(r.state)); err != nil {
		errs = append(errs, fmt.Errorf("record the exit status of container %s: %w", r.c.ID, err))
	}
	return errors.Join(errs...)
}

// isTerminal reports whether s is a terminal device.
func isTerminal(s any) bool {
	f, ok := s.(*os.File)
	if !ok || f == nil {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// processStart returns pid's start time in clock ticks since boot (field
// 22 of /proc/PID/stat), 0 when the process does not exist.
func processStart(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it follow the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); the start time is field 22.
	if len(f) < 20 {
		return 0
	}
	var v uint64
	if _, err := fmt.Sscan(f[19], &v); err != nil {
		return 0
	}
	return v
}
