package main

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runner "github.com/layers-storage/layers/run"
)

// needRuntimes skips without runtime name.
func needRuntime(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (hack/deps.sh installs runc and crun)", name)
	}
}

// checkRunFailure checks a failure of run: exit code, one "layers: ..."
// line containing want, nothing on stdout.
func checkRunFailure(t *testing.T, res result, code int, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(res.stderr, "\n"), "\n")
	if res.code != code || res.stdout != "" || len(lines) != 1 || !strings.HasPrefix(lines[0], "layers: ") || !strings.Contains(lines[0], want) {
		t.Fatalf("want exit %d and one line \"layers: ...%s...\": %s", code, want, res)
	}
}

// TestRunCLI runs `layers run` as a process with each runtime: exit
// statuses, streams, options, ps, and its own failures.
func TestRunCLI(t *testing.T) {
	for _, rt := range []string{"runc", "crun"} {
		t.Run(rt, func(t *testing.T) {
			needRuntime(t, rt)
			r := newRoot(t, "")
			img := importFixture(t, r, "localhost/busybox:run", "sh")
			run := func(stdin []byte, args ...string) result {
				return r.exec(t, stdin, append([]string{"run", "--runtime", rt}, args...)...)
			}

			res := run(nil, "--rm", img.name, "sh", "-c", "echo out; echo err >&2; exit 3")
			if res.code != 3 || res.stdout != "out\n" || res.stderr != "err\n" {
				t.Fatalf("%s", res)
			}
			envFile := filepath.Join(t.TempDir(), "env")
			if err := os.WriteFile(envFile, []byte("# comment\n\nB=from file\nA=overridden\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			res = run(nil, "--rm", "-e", "A=1", "--env-file", envFile, "-w", "/tmp", "-u", "app", "--hostname", "h1", img.name,
				"sh", "-c", `echo "$A|$B"; pwd; id -un; hostname`)
			if res.code != 0 || res.stdout != "1|from file\n/tmp\napp\nh1\n" {
				t.Fatalf("%s", res)
			}
			// -i passes stdin; the flags end at the image.
			res = run([]byte("piped\n"), "--rm", "-i", img.name, "sh", "-c", `cat; echo "$0"`, "-w")
			if res.code != 0 || res.stdout != "piped\n-w\n" {
				t.Fatalf("%s", res)
			}
			host := t.TempDir()
			res = run(nil, "--rm", "--read-only", "-v", host+":/out", img.name, "sh", "-c", "echo v > /out/f && touch /f")
			if b, _ := os.ReadFile(filepath.Join(host, "f")); res.code != 1 || string(b) != "v\n" || !strings.Contains(res.stderr, "Read-only") {
				t.Fatalf("%s (file %q)", res, b)
			}

			// Kept: ps shows the exit status.
			res = run(nil, "--name", "keep", img.name, "sh", "-c", "exit 4")
			if res.code != 4 || res.stderr != "" {
				t.Fatalf("%s", res)
			}
			var cs []containerJSON
			decode(t, r.ok(t, "ps", "--format", "json"), &cs)
			if len(cs) != 1 || cs[0].Name != "keep" || cs[0].Mounted || cs[0].Status != "exited (4)" || cs[0].ExitCode == nil || *cs[0].ExitCode != 4 {
				t.Fatalf("ps: %+v", cs)
			}
			table := lines(r.ok(t, "ps"))
			if len(table) != 2 || !strings.HasSuffix(table[0], "STATUS") || !strings.HasSuffix(table[1], "exited (4)") {
				t.Fatalf("ps:\n%s", strings.Join(table, "\n"))
			}
			r.ok(t, "rm", "keep")

			// Failures: 125 (127 for a missing command), one line.
			checkRunFailure(t, run(nil, "--rm", "localhost/nosuch:1", "true"), 125, "image not known")
			checkRunFailure(t, run(nil, "--rm", img.name, "nosuchcmd"), 127, `"nosuchcmd": executable file not found in $PATH`)
			checkRunFailure(t, run(nil, "--rm", "-u", "nobody-here", img.name, "id"), 125, "unknown user")
			checkRunFailure(t, run(nil, "--rm", "-v", "/nonexistent:/x", img.name, "true"), 125, "/nonexistent")
			checkRunFailure(t, r.exec(t, nil, "run", "--rm", "--runtime", "/nonexistent/runtime", img.name, "true"), 125, "OCI runtime not found")
			if res := run(nil, "--bad-flag", img.name); res.code != 125 || !strings.Contains(res.stderr, "unknown flag") {
				t.Fatalf("%s", res)
			}
			checkRunFailure(t, run(nil, "--rm", "--security-opt", "apparmor=x", img.name, "true"), 125, `--security-opt "apparmor=x": bad option`)
			// -t without a terminal here (stdin a pipe): the process has
			// one, fed from the pipe (whose input the terminal echoes, in
			// whatever order against the process's output).
			res = run([]byte("typed\n"), "--rm", "-t", img.name, "sh", "-c", `[ -t 0 ] && [ -t 1 ] && tty; read x; echo "x=$x"; exit 5`)
			if res.code != 5 || !strings.Contains(res.stdout, "/dev/pts/0\r\n") || !strings.HasSuffix(res.stdout, "x=typed\r\n") || res.stderr != "" {
				t.Fatalf("-t with a pipe: %s", res)
			}
			// The default seccomp profile, and without it.
			res = run(nil, "--rm", img.name, "unshare", "-U", "true")
			if res.code != 1 || !strings.Contains(res.stderr, "Operation not permitted") {
				t.Fatalf("seccomp: %s", res)
			}
			if res = run(nil, "--rm", "--security-opt", "seccomp=unconfined", img.name, "unshare", "-U", "true"); res.code != 0 {
				t.Fatalf("seccomp=unconfined: %s", res)
			}
			// -t on a terminal (script(1) makes one): the process has a
			// terminal and its exit status comes through.
			if script, err := exec.LookPath("script"); err == nil {
				line := strings.Join([]string{layersBin, "--root", r.dir, "--runroot", r.runDir, "run", "--rm", "-t", "--runtime", rt, img.name, "sh", "-c", "'tty; echo $TERM; exit 6'"}, " ")
				cmd := exec.Command(script, "-qec", line, "/dev/null")
				cmd.Env = cleanEnv()
				// script's input stays open while it runs: at its end
				// script types an end-of-file byte into its terminal,
				// which our raw terminal passes on (the container's
				// terminal echoes it as ^@).
				pr, pw, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				cmd.Stdin = pr
				out, err := cmd.Output()
				pr.Close()
				pw.Close()
				if cmd.ProcessState.ExitCode() != 6 || string(out) != "/dev/pts/0\r\nxterm\r\n" {
					t.Fatalf("-t: %v: %q", err, out)
				}
			}
			if out := r.ok(t, "ps", "-q"); out != "" {
				t.Fatalf("containers left: %q", out)
			}
			if out := r.ok(t, "check"); out != "no problems found\n" {
				t.Fatalf("check: %q", out)
			}
		})
	}
}

// startBin starts the binary with args, its stdout read line by line.
func startBin(t *testing.T, args ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(layersBin, args...)
	cmd.Env = cleanEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewScanner(out)
}

// TestRunSignal: SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGTERM
// sent to `layers run` reach the process, with each runtime, with and
// without -t; the exit status is the process's (its TERM trap exits 3).
func TestRunSignal(t *testing.T) {
	for _, rt := range []string{"runc", "crun"} {
		for _, tty := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/tty=%v", rt, tty), func(t *testing.T) {
				needRuntime(t, rt)
				r := newRoot(t, "")
				img := importFixture(t, r, "localhost/busybox:run", "sh")
				script := `for s in INT HUP QUIT USR1 USR2; do trap "echo got $s" $s; done; trap "echo got TERM; exit 3" TERM; echo ready; while :; do sleep 0.05; done`
				args := []string{"--root", r.dir, "--runroot", r.runDir, "run", "--rm", "--runtime", rt}
				if tty {
					args = append(args, "-t")
				}
				cmd, sc := startBin(t, append(args, img.name, "sh", "-c", script)...)
				line := func() string {
					if !sc.Scan() {
						return "(EOF)"
					}
					return strings.TrimSuffix(sc.Text(), "\r")
				}
				if l := line(); l != "ready" {
					t.Fatalf("first line %q", l)
				}
				for _, s := range []struct {
					sig  syscall.Signal
					name string
				}{{syscall.SIGINT, "INT"}, {syscall.SIGHUP, "HUP"}, {syscall.SIGQUIT, "QUIT"}, {syscall.SIGUSR1, "USR1"}, {syscall.SIGUSR2, "USR2"}, {syscall.SIGTERM, "TERM"}} {
					if err := cmd.Process.Signal(s.sig); err != nil {
						t.Fatal(err)
					}
					if l := line(); l != "got "+s.name {
						t.Fatalf("after SIG%s: %q", s.name, l)
					}
				}
				err := cmd.Wait()
				if cmd.ProcessState.ExitCode() != 3 {
					t.Fatalf("exit %v", err)
				}
				if out := r.ok(t, "ps", "-q"); out != "" {
					t.Fatalf("containers left: %q", out)
				}
				for _, dir := range []string{filepath.Join(r.runDir, "bundles"), filepath.Join(r.runDir, "runtime", rt)} {
					if ents, _ := os.ReadDir(dir); len(ents) != 0 {
						t.Fatalf("%s holds %v", dir, ents)
					}
				}
			})
		}
	}
}

// TestRunKilled: a `layers run` killed with SIGKILL leaves its container
// running and mounted; check reports it, check --repair stops the
// process, removes the runtime's state and unmounts (and removes the
// container of a --rm run). A container removed after its run was killed
// leaves the runtime's state of a container the store no longer knows:
// check reports it and check --repair deletes it, killing the process.
func TestRunKilled(t *testing.T) {
	for _, rt := range []string{"runc", "crun"} {
		t.Run(rt, func(t *testing.T) {
			needRuntime(t, rt)
			r := newRoot(t, "")
			img := importFixture(t, r, "localhost/busybox:run", "sh")
			for _, mode := range []string{"keep", "rm", "forgotten"} {
				// A sleep of its own length, so that another run's stray
				// sleep is not taken for this one's.
				sleep := fmt.Sprintf("sleep %d", 100000+rand.IntN(900000))
				args := []string{"--root", r.dir, "--runroot", r.runDir, "run", "--runtime", rt, "--name", "victim", img.name, "sh", "-c", "echo up; " + sleep}
				if mode == "rm" {
					args = append(args[:4], append([]string{"run", "--rm"}, args[5:]...)...)
				}
				cmd, sc := startBin(t, args...)
				if !sc.Scan() || sc.Text() != "up" {
					t.Fatalf("%s: no output", mode)
				}
				// The sleep starts after "up": on a loaded machine, later
				// than the kill and the check below (a CI run failed so).
				for deadline := time.Now().Add(5 * time.Second); !hasProcess(sleep); time.Sleep(20 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("%s: the container's sleep never started", mode)
					}
				}
				_ = cmd.Process.Kill()
				_ = cmd.Wait()

				var cs []containerJSON
				decode(t, r.ok(t, "ps", "--format", "json"), &cs)
				if len(cs) != 1 || cs[0].Status != "running" || !cs[0].Mounted {
					t.Fatalf("%s: after the kill: %+v", mode, cs)
				}
				id := cs[0].ID
				want := runner.ProblemLeftoverRun
				if mode == "forgotten" {
					r.ok(t, "rm", "-f", "victim")
					want = runner.ProblemLeftoverRuntimeState
				}
				res := r.exec(t, nil, "check")
				if res.code != 1 || !strings.Contains(res.stdout, string(want)) || !strings.Contains(res.stdout, id) {
					t.Fatalf("%s: check: %s", mode, res)
				}
				if !hasProcess(sleep) {
					t.Fatalf("%s: check stopped the process", mode)
				}
				res = r.exec(t, nil, "check", "--repair")
				if res.code != 0 || !strings.Contains(res.stdout, string(want)) {
					t.Fatalf("%s: check --repair: %s", mode, res)
				}
				if out := r.ok(t, "check"); out != "no problems found\n" {
					t.Fatalf("%s: check after repair: %q", mode, out)
				}
				decode(t, r.ok(t, "ps", "--format", "json"), &cs)
				if mode == "keep" {
					if len(cs) != 1 || cs[0].Mounted || cs[0].Status != "exited (?)" {
						t.Fatalf("after repair: %+v", cs)
					}
					r.ok(t, "rm", "victim")
				} else if len(cs) != 0 {
					t.Fatalf("%s: container kept: %+v", mode, cs)
				}
				if mounts := mountsUnder(t, filepath.Dir(r.dir)); len(mounts) != 0 {
					t.Fatalf("mounts left: %v", mounts)
				}
				for _, dir := range []string{filepath.Join(r.runDir, "bundles"), filepath.Join(r.runDir, "runtime", rt)} {
					if ents, _ := os.ReadDir(dir); len(ents) != 0 {
						t.Fatalf("%s holds %v", dir, ents)
					}
				}
				// The container's process was killed with its state, and
				// its cgroup is gone.
				deadline := time.Now().Add(5 * time.Second)
				for hasProcess(sleep) {
					if time.Now().After(deadline) {
						t.Fatalf("%s: the container's sleep still runs", mode)
					}
					time.Sleep(50 * time.Millisecond)
				}
				if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/pids", id)); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s: cgroup left: %v", mode, err)
				}
			}
		})
	}
}

// hasProcess reports whether a process with exactly cmdline (spaces for
// NULs) runs.
func hasProcess(cmdline string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")) == cmdline {
			return true
		}
	}
	return false
}
