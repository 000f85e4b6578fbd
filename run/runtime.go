package run

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Runtime is an OCI runtime binary and how to call it on this host.
type Runtime struct {
	// Name is "runc", "crun" or the base name of a runtime given by path.
	Name string
	// Path is the binary.
	Path string
	// PrivateCgroup2 runs the runtime in a mount namespace of its own
	// where the cgroup2 mount of a hybrid cgroup v1/v2 host is detached:
	// crun 1.8 refuses such hosts ("cgroups in hybrid mode not
	// supported") and works in v1 mode without it.
	PrivateCgroup2 bool
}

// unifiedMount is where a hybrid host mounts cgroup2 beside the v1
// hierarchies under the /sys/fs/cgroup tmpfs.
const unifiedMount = "/sys/fs/cgroup/unified"

// CgroupLayout says which cgroup hierarchies the host mounts: "v2"
// (unified), "hybrid" (v1 hierarchies plus cgroup2 at
// /sys/fs/cgroup/unified) or "v1".
func CgroupLayout() string {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return "v2"
	}
	if err := unix.Statfs(unifiedMount, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return "hybrid"
	}
	return "v1"
}

// FindRuntime returns the runtime to use. name is "runc", "crun" (looked
// up on PATH), a path to a runtime binary, or "" to pick what works on
// this host: crun, then runc. crun is the faster (here `layers run --rm
// IMAGE true` takes ~0.6 of the time with crun that it takes with runc:
// crun starts and compiles the seccomp filter faster), also on hybrid
// cgroup v1/v2 hosts, which crun 1.8 refuses and where it runs from a
// private mount namespace without the cgroup2 mount (PrivateCgroup2). A
// runtime that is not found fails with ErrNoRuntime.
func FindRuntime(name string) (*Runtime, error) {
	layout := CgroupLayout()
	mk := func(p string) *Runtime {
		base := filepath.Base(p)
		return &Runtime{Name: base, Path: p, PrivateCgroup2: layout == "hybrid" && strings.Contains(base, "crun")}
	}
	if name == "" {
		for _, n := range []string{"crun", "runc"} {
			if p, err := exec.LookPath(n); err == nil {
				return mk(p), nil
			}
		}
		return nil, fmt.Errorf("%w: neither runc nor crun is in $PATH", ErrNoRuntime)
	}
	if strings.Contains(name, "/") {
		fi, err := os.Stat(name)
		if err != nil {
			return nil, fmt.Errorf("runtime %s: %w: %w", name, ErrNoRuntime, err)
		}
		if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("runtime %s: %w: not an executable file", name, ErrNoRuntime)
		}
		abs, err := filepath.Abs(name)
		if err != nil {
			return nil, fmt.Errorf("runtime %s: %w", name, err)
		}
		return mk(abs), nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("runtime %s: %w: not found in $PATH", name, ErrNoRuntime)
	}
	return mk(p), nil
}

// stateRoot is where the runtime keeps its state for containers of a
// runroot: one directory per runtime, so that runc and crun never read
// each other's state.
func (r *Runtime) stateRoot(runRoot string) string {
	return filepath.Join(runRoot, "runtime", r.Name)
}

// command makes the runtime's command line: global options (state root,
// a JSON log that tells the runtime's own errors from the process's exit
// status), then the verb and its arguments.
func (r *Runtime) command(runRoot, logPath string, args ...string) *exec.Cmd {
	g := []string{"--root", r.stateRoot(runRoot)}
	if logPath != "" {
		g = append(g, "--log", logPath, "--log-format", "json")
	}
	return exec.Command(r.Path, append(g, args...)...)
}

// startAndWait starts cmd and waits for it on one locked OS thread: the
// runtime's parent-death signal is tied to the thread that started it,
// and with PrivateCgroup2 that thread is the one whose mount namespace
// the runtime inherits. started, when not nil, is called once cmd runs
// (or with the error that kept it from running).
func (r *Runtime) startAndWait(cmd *exec.Cmd, started func(error)) error {
	done := make(chan error, 1)
	go func() {
		// The thread is never unlocked: with a private mount namespace
		// it must not run other goroutines, and it ends with this one.
		runtime.LockOSThread()
		if r.PrivateCgroup2 {
			if err := privateCgroup2(); err != nil {
				if started != nil {
					started(err)
				}
				done <- err
				return
			}
		}
		err := cmd.Start()
		if started != nil {
			started(err)
		}
		if err != nil {
			done <- err
			return
		}
		done <- cmd.Wait()
	}()
	return <-done
}

// privateCgroup2 moves the calling thread into a mount namespace of its
// own, private, without the host's cgroup2 mount.
func privateCgroup2() error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare the mount namespace for crun: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the runtime's mounts private: %w", err)
	}
	if err := unix.Unmount(unifiedMount, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detach %s for crun: %w", unifiedMount, err)
	}
	return nil
}

// runtimeError returns the last error the runtime logged in its JSON log
// at logPath, "" when it logged none: a runtime that failed says why
// there, a process that exited non-zero leaves no error.
func runtimeError(logPath string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		var e struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if e.Level == "error" || e.Level == "fatal" {
			last = strings.TrimSpace(e.Msg)
		}
	}
	return last
}

// delete removes the runtime's state of container id and kills what
// still runs of it: what a killed `layers run` leaves. A runtime killed
// while it started the container may have left state it cannot read
// (crun writes its status file only after the process runs), so that its
// delete kills nothing: the processes left in the container's cgroup are
// killed and the cgroup removed whatever the runtime did.
func (r *Runtime) delete(runRoot, id string) error {
	cmd := r.command(runRoot, "", "delete", "--force", id)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	var errs []error
	if err := r.startAndWait(cmd, nil); err != nil {
		msg := strings.TrimSpace(out.String())
		// Nothing to delete is what we want.
		if !strings.Contains(msg, "does not exist") && !strings.Contains(msg, "not found") && !strings.Contains(msg, "No such file") {
			errs = append(errs, fmt.Errorf("%s delete %s: %w: %s", r.Name, id, err, msg))
		}
	}
	if err := killCgroup(cgroupPath(id)); err != nil {
		errs = append(errs, fmt.Errorf("container %s: %w", id, err))
	}
	if err := os.RemoveAll(filepath.Join(r.stateRoot(runRoot), id)); err != nil {
		errs = append(errs, fmt.Errorf("remove %s's state of %s: %w", r.Name, id, err))
	}
	return errors.Join(errs...)
}

// cgroupPath is the cgroup of container id (the spec's cgroupsPath,
// relative to each hierarchy's root): where runc and crun put it when
// the spec names none, named here so that cleaning up can find it.
func cgroupPath(id string) string { return "/" + id }

// cgroupDirs returns the directories of cgroup path in every mounted
// hierarchy that has it.
func cgroupDirs(path string) []string {
	const root = "/sys/fs/cgroup"
	var st unix.Statfs_t
	roots := []string{root}
	if err := unix.Statfs(root, &st); err == nil && st.Type != unix.CGROUP2_SUPER_MAGIC {
		// v1 or hybrid: one mount per hierarchy below the tmpfs.
		roots = nil
		ents, _ := os.ReadDir(root)
		for _, e := range ents {
			if e.IsDir() {
				roots = append(roots, filepath.Join(root, e.Name()))
			}
		}
	}
	var dirs []string
	for _, r := range roots {
		d := filepath.Join(r, path)
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// killCgroup kills every process in cgroup path with SIGKILL, waits for
// it to be empty and removes it.
func killCgroup(path string) error {
	dirs := cgroupDirs(path)
	if len(dirs) == 0 {
		return nil
	}
	for i := 0; ; i++ {
		pids := map[int]bool{}
		for _, d := range dirs {
			b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
					pids[pid] = true
				}
			}
		}
		if len(pids) == 0 {
			break
		}
		if i == 500 {
			return fmt.Errorf("cgroup %s: %d processes survive SIGKILL", path, len(pids))
		}
		for pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var errs []error
	for _, d := range dirs {
		// A process just killed may keep the cgroup busy for a moment.
		var err error
		for i := 0; i < 100; i++ {
			if err = unix.Rmdir(d); err == nil || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			if !errors.Is(err, unix.EBUSY) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
