package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/syncbuf"
	"github.com/layers-storage/layers/store"
)

// groupLayer adds a group listing app as a member, for supplementary
// groups.
func groupLayer() []byte {
	return fixtures.Tar(
		fixtures.Dir("etc", 0o755),
		fixtures.File("etc/group", "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:nobody,app\nother:x:2001:nobody\n", 0o644),
	)
}

// TestRun runs the busybox fixture image with each runtime through every
// option, checking what the process saw and what is left afterwards.
func TestRun(t *testing.T) {
	for _, name := range runtimes {
		t.Run(name, func(t *testing.T) {
			rt := needRuntime(t, name)
			st := newStore(t)
			cfg := defaultConfig()
			cfg.Env = append(cfg.Env, "FOO=image", "BAR=image")
			addImage(t, st, "localhost/bb:1", cfg, groupLayer())
			entry := defaultConfig()
			entry.Entrypoint = []string{"sh", "-c", `echo "entry $0 $1"`}
			entry.Cmd = []string{"a", "b"}
			addImage(t, st, "localhost/entry:1", entry)
			testRun(t, st, rt, name)
		})
	}
}

func testRun(t *testing.T, st *testStore, rt *Runtime, name string) {
	run := func(t *testing.T, o Options, args ...string) result {
		t.Helper()
		o.Runtime, o.Remove, o.Command = name, true, args
		return runIn(t, st, "localhost/bb:1", o)
	}
	want := func(t *testing.T, r result, code int, stdout string) {
		t.Helper()
		if r.err != nil || r.code != code || r.stdout != stdout {
			t.Fatalf("got code %d, err %v, stdout %q (stderr %q); want code %d, stdout %q", r.code, r.err, r.stdout, r.stderr, code, stdout)
		}
	}

	t.Run("exit status", func(t *testing.T) {
		want(t, run(t, Options{}, "true"), 0, "")
		want(t, run(t, Options{}, "sh", "-c", "exit 3"), 3, "")
	})
	t.Run("output", func(t *testing.T) {
		r := run(t, Options{}, "sh", "-c", "echo out; echo err >&2; echo out2")
		want(t, r, 0, "out\nout2\n")
		if r.stderr != "err\n" {
			t.Fatalf("stderr %q", r.stderr)
		}
	})
	t.Run("stdin", func(t *testing.T) {
		want(t, run(t, Options{Stdin: strings.NewReader("from stdin\n")}, "cat"), 0, "from stdin\n")
		// Without -i the process reads nothing.
		want(t, run(t, Options{}, "cat"), 0, "")
	})
	t.Run("env", func(t *testing.T) {
		r := run(t, Options{Env: []string{"BAR=cli", "NEW=x y"}}, "sh", "-c", `echo "$FOO|$BAR|$NEW|$HOME|$HOSTNAME|$PATH"`)
		f := strings.Split(strings.TrimSpace(r.stdout), "|")
		if r.err != nil || len(f) != 6 || f[0] != "image" || f[1] != "cli" || f[2] != "x y" || f[3] != "/root" || len(f[4]) != 12 || f[5] != "/bin" {
			t.Fatalf("%+v", r)
		}
		want(t, run(t, Options{Hostname: "box"}, "hostname"), 0, "box\n")
	})
	t.Run("workdir", func(t *testing.T) {
		want(t, run(t, Options{}, "pwd"), 0, "/\n")
		want(t, run(t, Options{WorkDir: "/tmp"}, "pwd"), 0, "/tmp\n")
		// A missing working directory is made, as docker does.
		want(t, run(t, Options{WorkDir: "/srv/new"}, "pwd"), 0, "/srv/new\n")
		if r := run(t, Options{WorkDir: "rel"}, "pwd"); !errors.Is(r.err, ErrBadOption) || ExitCode(r.err) != ExitFailure {
			t.Fatalf("relative workdir: %+v", r)
		}
	})
	t.Run("user", func(t *testing.T) {
		want(t, run(t, Options{}, "id"), 0, "uid=0(root) gid=0(root)\n")
		want(t, run(t, Options{User: "app"}, "id"), 0, "uid=1000(app) gid=1000(app) groups=2000(extra)\n")
		want(t, run(t, Options{User: "app"}, "sh", "-c", "echo $HOME"), 0, "/home/app\n")
		want(t, run(t, Options{User: "app:other"}, "id"), 0, "uid=1000(app) gid=2001(other)\n")
		want(t, run(t, Options{User: "1000"}, "id"), 0, "uid=1000(app) gid=1000(app) groups=2000(extra)\n")
		want(t, run(t, Options{User: "1234:5"}, "id"), 0, "uid=1234 gid=5\n")
		want(t, run(t, Options{User: "4321"}, "id"), 0, "uid=4321 gid=0(root)\n")
		// A non-root user has no effective capabilities.
		want(t, run(t, Options{User: "app"}, "sh", "-c", "grep CapEff /proc/self/status"), 0, "CapEff:\t0000000000000000\n")
		want(t, run(t, Options{}, "sh", "-c", "grep CapEff /proc/self/status"), 0, "CapEff:\t00000000800405fb\n")
		for _, bad := range []string{"nosuch", "app:nosuch", "app:"} {
			r := run(t, Options{User: bad}, "id")
			if !errors.Is(r.err, ErrUnknownUser) || ExitCode(r.err) != ExitFailure || r.stdout != "" {
				t.Fatalf("user %q: %+v", bad, r)
			}
		}
	})
	t.Run("volumes", func(t *testing.T) {
		host := t.TempDir()
		if err := os.WriteFile(filepath.Join(host, "in"), []byte("from host\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		rw, err := ParseVolume(host + ":/data")
		if err != nil {
			t.Fatal(err)
		}
		want(t, run(t, Options{Volumes: []Volume{rw}}, "sh", "-c", "cat /data/in; echo from container > /data/out"), 0, "from host\n")
		if b, err := os.ReadFile(filepath.Join(host, "out")); err != nil || string(b) != "from container\n" {
			t.Fatalf("written through the volume: %q, %v", b, err)
		}
		ro, err := ParseVolume(host + ":/data:ro")
		if err != nil || !ro.ReadOnly {
			t.Fatal(ro, err)
		}
		r := run(t, Options{Volumes: []Volume{ro}}, "sh", "-c", "cat /data/in; echo x > /data/out2")
		if r.err != nil || r.code == 0 || r.stdout != "from host\n" || !strings.Contains(r.stderr, "Read-only file system") {
			t.Fatalf(":ro: %+v", r)
		}
		if _, err := os.Stat(filepath.Join(host, "out2")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("written through a read-only volume: %v", err)
		}
		for _, bad := range []string{host, "rel:/data", host + ":rel", host + ":/data:rx", "/nonexistent-dir:/data", host + ":/"} {
			if _, err := ParseVolume(bad); err == nil {
				t.Errorf("volume %q accepted", bad)
			}
		}
	})
	t.Run("read-only", func(t *testing.T) {
		r := run(t, Options{ReadOnly: true}, "sh", "-c", "touch /x")
		if r.err != nil || r.code == 0 || !strings.Contains(r.stderr, "Read-only file system") {
			t.Fatalf("%+v", r)
		}
		want(t, run(t, Options{ReadOnly: true}, "sh", "-c", "touch /tmp/x && echo ok"), 0, "ok\n")
		want(t, run(t, Options{}, "sh", "-c", "touch /x && echo ok"), 0, "ok\n")
	})
	t.Run("isolation", func(t *testing.T) {
		// Own pid namespace: the process is pid 1; loopback only.
		want(t, run(t, Options{}, "sh", "-c", "echo $$"), 0, "1\n")
		want(t, run(t, Options{}, "sh", "-c", "ls /sys/class/net"), 0, "lo\n")
		r := run(t, Options{Network: NetworkHost}, "sh", "-c", "ls /sys/class/net | wc -l")
		if n, _ := strconv.Atoi(strings.TrimSpace(r.stdout)); r.err != nil || n < 2 {
			t.Fatalf("--network host: %+v", r)
		}
		want(t, run(t, Options{}, "sh", "-c", "cat /proc/kcore | wc -c"), 0, "0\n")
		r = run(t, Options{}, "sh", "-c", "echo 1 > /proc/sys/kernel/sysrq")
		if r.code == 0 {
			t.Fatalf("/proc/sys writable: %+v", r)
		}
		if r := run(t, Options{Network: "bridge"}, "true"); !errors.Is(r.err, ErrBadOption) {
			t.Fatalf("--network bridge: %+v", r)
		}
	})
	t.Run("entrypoint", func(t *testing.T) {
		r := runIn(t, st, "localhost/entry:1", Options{Runtime: name, Remove: true})
		want(t, r, 0, "entry a b\n")
		r = runIn(t, st, "localhost/entry:1", Options{Runtime: name, Remove: true, Command: []string{"x", "y"}})
		want(t, r, 0, "entry x y\n")
	})
	t.Run("command not found", func(t *testing.T) {
		r := run(t, Options{}, "nosuchcmd")
		if !errors.Is(r.err, ErrCommandNotFound) || ExitCode(r.err) != ExitNotFound || !strings.Contains(r.err.Error(), `"nosuchcmd"`) {
			t.Fatalf("%+v", r)
		}
		r = run(t, Options{}, "/etc/passwd")
		if !errors.Is(r.err, ErrNotExecutable) || ExitCode(r.err) != ExitNotExecutable {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("kill", func(t *testing.T) {
		// Killed from outside: 128+9, as a shell reports it.
		o := Options{Runtime: name, Remove: true, Command: []string{"sleep", "60"}}
		o.Started = func(id string) { killContainer(t, st, rt, id) }
		r := runIn(t, st, "localhost/bb:1", o)
		if r.err != nil || r.code != 137 {
			t.Fatalf("%+v", r)
		}
	})
	// Signals to layers reach the process, with and without a terminal:
	// each is sent once the process said it handles it.
	for _, tty := range []bool{false, true} {
		t.Run(fmt.Sprintf("signals tty=%v", tty), func(t *testing.T) {
			var out syncbuf.Buffer
			o := Options{Runtime: name, Remove: true, TTY: tty, Stdout: &out, Command: []string{"sh", "-c",
				`trap "echo usr1" USR1; trap "echo term; exit 42" TERM; echo ready; while :; do sleep 0.05; done`}}
			o.Started = func(string) {
				waitFor(t, "ready", func() bool { return strings.Contains(out.String(), "ready") })
				_ = syscall.Kill(os.Getpid(), syscall.SIGUSR1)
				waitFor(t, "usr1", func() bool { return strings.Contains(out.String(), "usr1") })
				_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			}
			code, err := Run(t.Context(), st.Store, "localhost/bb:1", &o)
			got := strings.ReplaceAll(out.String(), "\r\n", "\n")
			if err != nil || code != 42 || got != "ready\nusr1\nterm\n" {
				t.Fatalf("code %d, err %v, output %q", code, err, out.String())
			}
		})
	}
	t.Run("seccomp", func(t *testing.T) {
		// Outside the default profile: unshare (a new user namespace)
		// fails with EPERM; ordinary programs run.
		r := run(t, Options{}, "sh", "-c", "unshare -U true; echo $?; cat /proc/self/status | grep Seccomp:")
		if r.err != nil || r.code != 0 || r.stdout != "1\nSeccomp:\t2\n" || !strings.Contains(r.stderr, "Operation not permitted") {
			t.Fatalf("%+v", r)
		}
		// Unconfined, the same call works: the failure above was the
		// filter's.
		r = run(t, Options{Seccomp: SeccompUnconfined}, "sh", "-c", "unshare -U true; echo $?; cat /proc/self/status | grep Seccomp:")
		if r.err != nil || r.code != 0 || r.stdout != "0\nSeccomp:\t0\n" {
			t.Fatalf("unconfined: %+v", r)
		}
		want(t, run(t, Options{}, "sh", "-c", "ls / >/dev/null && date >/dev/null && sleep 0 && echo ok"), 0, "ok\n")
		if r := run(t, Options{Seccomp: "nosuch.json"}, "true"); !errors.Is(r.err, ErrBadOption) {
			t.Fatalf("bad seccomp option: %+v", r)
		}
	})
	t.Run("etc files", func(t *testing.T) {
		hostResolv, err := os.ReadFile("/etc/resolv.conf")
		if err != nil {
			t.Skipf("the host has no /etc/resolv.conf to give the container: %v", err)
		}
		r := run(t, Options{Hostname: "box1"}, "sh", "-c", "cat /etc/hostname; cat /etc/hosts; echo --; cat /etc/resolv.conf; echo --")
		if r.err != nil || r.code != 0 {
			t.Fatalf("%+v", r)
		}
		parts := strings.Split(r.stdout, "--\n")
		if len(parts) != 3 || !strings.HasPrefix(parts[0], "box1\n127.0.0.1\tlocalhost") || !strings.Contains(parts[0], "::1\tlocalhost") || !strings.Contains(parts[0], "127.0.1.1\tbox1\n") {
			t.Fatalf("hostname, hosts: %q", r.stdout)
		}
		if strings.Contains(parts[1], "nameserver") {
			t.Fatalf("--network none keeps name servers: %q", parts[1])
		}
		// --network host: the host's resolv.conf as it is, the host's
		// hosts with the container's name added.
		r = run(t, Options{Network: NetworkHost, Hostname: "box2"}, "sh", "-c", "cat /etc/resolv.conf; echo --; cat /etc/hosts")
		parts = strings.Split(r.stdout, "--\n")
		if r.err != nil || len(parts) != 2 || parts[0] != string(hostResolv) || !strings.Contains(parts[1], "127.0.1.1\tbox2\n") {
			t.Fatalf("--network host: %+v", r)
		}
		// The image's own files are untouched: a kept container's layer
		// holds at most empty mount points.
		r = runIn(t, st, "localhost/bb:1", Options{Runtime: name, Name: "etc-" + name, Command: []string{"true"}})
		want(t, r, 0, "")
		c, err := st.Container("etc-" + name)
		if err != nil {
			t.Fatal(err)
		}
		rootfs, err := st.Mount(c.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"hosts", "hostname", "resolv.conf"} {
			if fi, err := os.Stat(filepath.Join(rootfs, "etc", f)); err == nil && fi.Size() != 0 {
				t.Errorf("/etc/%s written into the container's layer: %d bytes", f, fi.Size())
			}
		}
		if err := st.RemoveContainer(c.ID, true); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("rm", func(t *testing.T) {
		want(t, run(t, Options{Name: "gone"}, "sh", "-c", "exit 5"), 5, "")
		if cs, err := st.Containers(); err != nil || len(cs) != 0 {
			t.Fatalf("containers after --rm: %v %v", cs, err)
		}
		assertNoRunState(t, st, rt)
		// Also when the process could not start.
		if r := run(t, Options{}, "nosuchcmd"); r.err == nil {
			t.Fatal(r)
		}
		if cs, _ := st.Containers(); len(cs) != 0 {
			t.Fatalf("containers after a failed start: %v", cs)
		}
	})
	t.Run("kept", func(t *testing.T) {
		r := runIn(t, st, "localhost/bb:1", Options{Runtime: name, Name: "kept-" + name, Command: []string{"sh", "-c", "echo data > /file; exit 3"}})
		want(t, r, 3, "")
		c, err := st.Container("kept-" + name)
		if err != nil {
			t.Fatal(err)
		}
		s := ContainerState(c)
		if c.Mounted || s == nil || s.Status != StatusExited || s.ExitCode == nil || *s.ExitCode != 3 || StatusText(c) != "exited (3)" {
			t.Fatalf("kept container: %+v, state %+v", c, s)
		}
		// Its changes stay in its layer.
		changes, err := st.Changes(context.Background(), c.ID)
		if err != nil || !hasChange(changes, "/file") {
			t.Fatalf("changes: %v %v", changes, err)
		}
		// A second run of the same name is refused, before anything starts.
		r = runIn(t, st, "localhost/bb:1", Options{Runtime: name, Name: "kept-" + name, Command: []string{"true"}})
		if !errors.Is(r.err, store.ErrNameInUse) {
			t.Fatalf("name reused: %+v", r)
		}
		if err := st.RemoveContainer(c.ID, false); err != nil {
			t.Fatal(err)
		}
		assertNoRunState(t, st, rt)
	})
}

func hasChange(cs []diff.Change, p string) bool {
	for _, c := range cs {
		if c.Path == p {
			return true
		}
	}
	return false
}

// killContainer sends SIGKILL to the container's process through the
// runtime, once the runtime reports it running (a kill while the runtime
// still starts it fails the run itself).
func killContainer(t *testing.T, st *testStore, rt *Runtime, id string) {
	for i := 0; ; i++ {
		cmd := rt.command(st.RunRoot(), "", "state", id)
		var out strings.Builder
		cmd.Stdout = &out
		if rt.startAndWait(cmd, nil) == nil && strings.Contains(out.String(), `"status": "running"`) {
			break
		}
		if i == 250 {
			t.Errorf("%s state: never running: %s", rt.Name, out.String())
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd := rt.command(st.RunRoot(), "", "kill", id, "KILL")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := rt.startAndWait(cmd, nil); err != nil {
		t.Errorf("%s kill: %v: %s", rt.Name, err, out.String())
	}
}

// assertNoRunState checks that no container is mounted and that neither
// bundles nor runtime state are left under the runroot.
func assertNoRunState(t *testing.T, st *testStore, rt *Runtime) {
	t.Helper()
	for _, dir := range []string{filepath.Join(st.RunRoot(), "bundles"), rt.stateRoot(st.RunRoot())} {
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if len(ents) != 0 {
			t.Fatalf("%s holds %v", dir, ents)
		}
	}
	cs, err := st.Containers()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Mounted {
			t.Fatalf("container %s still mounted", c.ID)
		}
	}
	rep, err := st.Check(context.Background(), store.CheckOptions{})
	if err != nil || !rep.Clean() {
		t.Fatalf("check: %+v %v", rep, err)
	}
}

// TestRunErrors: failures before any process runs leave nothing behind
// and say what failed.
func TestRunErrors(t *testing.T) {
	needRuntime(t, "")
	st := newStore(t)
	addImage(t, st, "localhost/bb:1", defaultConfig())
	noCmd := defaultConfig()
	noCmd.Cmd = nil
	addImage(t, st, "localhost/nocmd:1", noCmd)
	for _, tc := range []struct {
		image string
		o     Options
		is    error
		msg   string
	}{
		{"localhost/bb:1", Options{Runtime: "/nonexistent/runc"}, ErrNoRuntime, "runtime /nonexistent/runc: OCI runtime not found"},
		{"localhost/bb:1", Options{Runtime: "nosuch-runtime"}, ErrNoRuntime, "runtime nosuch-runtime: OCI runtime not found: not found in $PATH"},
		{"localhost/nosuch:1", Options{}, store.ErrImageUnknown, "image not known"},
		{"localhost/nocmd:1", Options{}, ErrNoCommand, "no command"},
	} {
		r := runIn(t, st, tc.image, tc.o)
		if !errors.Is(r.err, tc.is) || !strings.Contains(r.err.Error(), tc.msg) || ExitCode(r.err) != ExitFailure || r.code != 0 {
			t.Errorf("%s %+v: %+v, want %v containing %q", tc.image, tc.o, r, tc.is, tc.msg)
		}
	}
	if cs, err := st.Containers(); err != nil || len(cs) != 0 {
		t.Fatalf("containers left: %v %v", cs, err)
	}
}

// TestResolveUser reads the image's passwd and group inside its root: a
// symlink pointing at a host file is resolved inside the root.
func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	host := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(host, []byte("evil:x:66:66::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(host, filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../../../../../"+host, filepath.Join(root, "etc/group")); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := ResolveUser(fd, "evil"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("a host passwd through a symlink: %v", err)
	}
	// The same name, once the link's target exists inside the root.
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(host)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, host), []byte("# c\n\nbad line\nevil:x:77:78:E:/home/e:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := ResolveUser(fd, "evil")
	if err != nil || u.UID != 77 || u.GID != 78 || u.Home != "/home/e" {
		t.Fatalf("%+v %v", u, err)
	}
	// A passwd that is not a regular file is an error, not a hang.
	if err := os.Remove(filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "etc/passwd"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ResolveUser(fd, "evil"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("fifo passwd: %v", err)
	}
	// Numbers need no passwd; 2^32-1 is not a uid.
	if u, err := ResolveUser(fd, "12:34"); err == nil || u != nil {
		// The fifo is still there: reading passwd fails first.
		t.Fatalf("%+v %v", u, err)
	}
	if err := os.Remove(filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	if u, err := ResolveUser(fd, "12:34"); err != nil || u.UID != 12 || u.GID != 34 || u.Home != "/" {
		t.Fatalf("%+v %v", u, err)
	}
	if _, err := ResolveUser(fd, "4294967295"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("uid 2^32-1: %v", err)
	}
}

// TestArgsEnv: docker's entrypoint/cmd and environment rules.
func TestArgsEnv(t *testing.T) {
	cfg := &ocispec.ImageConfig{Entrypoint: []string{"/e", "-x"}, Cmd: []string{"c1", "c2"}}
	if a, _ := Args(cfg, nil); strings.Join(a, " ") != "/e -x c1 c2" {
		t.Fatal(a)
	}
	if a, _ := Args(cfg, []string{"o"}); strings.Join(a, " ") != "/e -x o" {
		t.Fatal(a)
	}
	if _, err := Args(&ocispec.ImageConfig{}, nil); !errors.Is(err, ErrNoCommand) {
		t.Fatal(err)
	}
	env := MergeEnv([]string{"A=1", "B=2", "C"}, []string{"B=3", "D=4", "A="})
	if strings.Join(env, ",") != "A=,B=3,C,D=4" {
		t.Fatal(env)
	}
}
