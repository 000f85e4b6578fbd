package run

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ociVersion is the runtime-spec version the bundles claim: the one
// runc 1.1 and crun 1.8 implement, whose fields are all we write.
const ociVersion = "1.0.2"

// defaultPath is the PATH of an image that sets none, as docker has it.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultCapabilities are podman's default capabilities (containers.conf
// default_capabilities of podman 4): what a process running as root in
// the container gets.
var DefaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
	"CAP_SETUID", "CAP_SYS_CHROOT",
}

// MaskedPaths and ReadonlyPaths are podman's defaults: kernel interfaces
// that leak host information or allow changing the host are hidden or
// made read-only.
var (
	MaskedPaths = []string{
		"/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
		"/sys/dev/block", "/sys/devices/virtual/powercap", "/sys/firmware", "/sys/fs/selinux",
	}
	ReadonlyPaths = []string{
		"/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

// Volume is a host directory (or file) bind-mounted into the container.
type Volume struct {
	Source, Destination string
	ReadOnly            bool
}

// ParseVolume parses -v's HOST:CTR[:ro|rw]. Both paths must be absolute;
// the host path must exist (nothing is created on the host behind the
// caller's back).
func ParseVolume(s string) (Volume, error) {
	parts := strings.Split(s, ":")
	var v Volume
	switch len(parts) {
	case 3:
		switch parts[2] {
		case "ro":
			v.ReadOnly = true
		case "rw":
		default:
			return v, fmt.Errorf("volume %q: %w: mode %q is not ro or rw", s, ErrBadOption, parts[2])
		}
		fallthrough
	case 2:
		v.Source, v.Destination = parts[0], parts[1]
	default:
		return v, fmt.Errorf("volume %q: %w: want HOST:CONTAINER[:ro]", s, ErrBadOption)
	}
	if !filepath.IsAbs(v.Source) || !path.IsAbs(v.Destination) {
		return v, fmt.Errorf("volume %q: %w: both paths must be absolute", s, ErrBadOption)
	}
	if path.Clean(v.Destination) == "/" {
		return v, fmt.Errorf("volume %q: %w: cannot mount over the container's root", s, ErrBadOption)
	}
	if _, err := os.Stat(v.Source); err != nil {
		return v, fmt.Errorf("volume %q: %w", s, err)
	}
	v.Source, v.Destination = filepath.Clean(v.Source), path.Clean(v.Destination)
	return v, nil
}

// MergeEnv returns base with each K=V of over replacing the variable K
// (or appended): the image's environment, then the caller's.
func MergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	idx := map[string]int{}
	for i, kv := range out {
		k, _, _ := strings.Cut(kv, "=")
		idx[k] = i
	}
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// hasEnv reports whether env sets key.
func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			return true
		}
	}
	return false
}

// getEnv returns key's value in env, "" when unset.
func getEnv(env []string, key string) string {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}

// Args returns the process arguments as docker forms them: the image's
// entrypoint, then cmd, or the caller's command instead of the image's
// cmd when there is one.
func Args(cfg *ocispec.ImageConfig, cmd []string) ([]string, error) {
	args := append([]string(nil), cfg.Entrypoint...)
	if len(cmd) > 0 {
		args = append(args, cmd...)
	} else {
		args = append(args, cfg.Cmd...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("%w: the image has no entrypoint or command and none was given", ErrNoCommand)
	}
	return args, nil
}

// specInput is everything a bundle's config.json is made of.
type specInput struct {
	id       string
	rootfs   string
	args     []string
	env      []string
	cwd      string
	user     *User
	hostname string
	etc      []specs.Mount // /etc/hosts and co., bind-mounted
	arch     string        // the image's architecture (GOARCH names)
	opts     *Options
}

// makeSpec builds the runtime spec: podman's defaults for mounts,
// capabilities, masked paths and namespaces, with resource limits no
// higher than the caller's own hard limits (a runtime fails to raise
// them without CAP_SYS_RESOURCE, which root lacks on some hosts).
func makeSpec(in *specInput) (*specs.Spec, error) {
	o := in.opts
	caps := append([]string(nil), DefaultCapabilities...)
	pcaps := &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
	if in.user.UID != 0 {
		// As podman: a non-root user keeps the bounding set only, so
		// that it gains capabilities through setuid or file caps only.
		pcaps.Effective, pcaps.Permitted = nil, nil
	}
	rlimits, err := rlimits()
	if err != nil {
		return nil, err
	}
	s := &specs.Spec{
		Version: ociVersion,
		Process: &specs.Process{
			Terminal:        o.TTY,
			User:            specs.User{UID: in.user.UID, GID: in.user.GID, AdditionalGids: in.user.AdditionalGids},
			Args:            in.args,
			Env:             in.env,
			Cwd:             in.cwd,
			Capabilities:    pcaps,
			Rlimits:         rlimits,
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: in.rootfs, Readonly: o.ReadOnly},
		Hostname: in.hostname,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: cgroupPath(in.id),
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace},
				{Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
			},
			MaskedPaths:   MaskedPaths,
			ReadonlyPaths: ReadonlyPaths,
			Resources: &specs.LinuxResources{
				// Only the devices the runtime creates by default.
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
		},
	}
	if o.Network == NetworkHost {
		// sysfs cannot be mounted without a network namespace of one's
		// own; the host's is bound read-only instead, as podman does.
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}})
	} else {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}})
	}
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}})
	if o.ReadOnly {
		// As podman's --read-only (with its default --read-only-tmpfs):
		// the places programs expect to write stay writable, and empty.
		for _, d := range []string{"/tmp", "/var/tmp", "/run"} {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: d, Type: "tmpfs", Source: "tmpfs", Options: []string{"rw", "nosuid", "nodev", "mode=1777"}})
		}
	}
	s.Mounts = append(s.Mounts, in.etc...)
	if o.Seccomp != SeccompUnconfined {
		s.Linux.Seccomp = DefaultSeccomp(caps, in.arch)
	}
	for _, v := range o.Volumes {
		mo := []string{"rbind", "rprivate"}
		if v.ReadOnly {
			mo = append(mo, "ro")
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: v.Destination, Type: "bind", Source: v.Source, Options: mo})
	}
	if o.TTY {
		s.Process.ConsoleSize = terminalSize(o.Stdin, o.Stdout)
	}
	return s, nil
}

// terminalSize is the size of the first of the caller's streams that is
// a terminal, nil when none is.
func terminalSize(streams ...any) *specs.Box {
	fd := terminalOf(streams...)
	if fd < 0 {
		return nil
	}
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil {
		return nil
	}
	return &specs.Box{Height: uint(ws.Row), Width: uint(ws.Col)}
}

// maxNofile is podman's RLIMIT_NOFILE for root; the caller's hard limit
// caps it.
const maxNofile = 1048576

// rlimits returns RLIMIT_NOFILE and RLIMIT_NPROC at the caller's hard
// limits (capped at podman's 1048576): what podman gives, without asking
// for more than the runtime may set.
func rlimits() ([]specs.POSIXRlimit, error) {
	var out []specs.POSIXRlimit
	for _, r := range []struct {
		name string
		res  int
	}{{"RLIMIT_NOFILE", unix.RLIMIT_NOFILE}, {"RLIMIT_NPROC", unix.RLIMIT_NPROC}} {
		var lim unix.Rlimit
		if err := unix.Getrlimit(r.res, &lim); err != nil {
			return nil, fmt.Errorf("getrlimit %s: %w", r.name, err)
		}
		v := min(lim.Max, maxNofile)
		out = append(out, specs.POSIXRlimit{Type: r.name, Hard: v, Soft: v})
	}
	return out, nil
}

// checkCommand looks args[0] up inside the root the way the runtime will
// (through PATH of the container's environment when it has no slash), so
// that a missing or non-executable command fails with a clear error
// before a runtime is started: ErrCommandNotFound or ErrNotExecutable.
func checkCommand(rootfd int, args0, cwd string, env []string) error {
	var candidates []string
	switch {
	case strings.Contains(args0, "/"):
		p := args0
		if !path.IsAbs(p) {
			p = path.Join(cwd, p)
		}
		candidates = []string{p}
	default:
		for _, dir := range filepath.SplitList(getEnv(env, "PATH")) {
			if dir == "" || !path.IsAbs(dir) {
				continue
			}
			candidates = append(candidates, path.Join(dir, args0))
		}
	}
	var notExec string
	for _, p := range candidates {
		f, err := openInRoot(rootfd, p, unix.O_PATH)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		err = unix.Fstat(int(f.Fd()), &st)
		f.Close()
		if err != nil {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0 {
			return nil
		}
		if notExec == "" {
			notExec = p
		}
	}
	if notExec != "" {
		return fmt.Errorf("%s: %w", notExec, ErrNotExecutable)
	}
	if strings.Contains(args0, "/") {
		return fmt.Errorf("%s: %w", args0, ErrCommandNotFound)
	}
	return fmt.Errorf("%q: %w in $PATH (%s)", args0, ErrCommandNotFound, getEnv(env, "PATH"))
}
