package main

import (
	"bufio"
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
			checkRunFailure(t, run(nil, "--rm", "-t", img.name, "true"), 125, "-t: bad option: standard input is not a terminal")
			// -t on a terminal (script(1) makes one): the process has a
			// terminal and its exit status comes through.
			if script, err := exec.LookPath("script"); err == nil {
				line := strings.Join([]string{layersBin, "--root", r.dir, "--runroot", r.runDir, "run", "--rm", "-t", "--runtime", rt, img.name, "sh", "-c", "'tty; echo $TERM; exit 6'"}, " ")
				cmd := exec.Command(script, "-qec", line, "/dev/null")
				cmd.Env = cleanEnv()
				out, err := cmd.Output()
				if cmd.ProcessState.ExitCode() != 6 || !strings.Contains(string(out), "/dev/pts/0\r\nxterm\r\n") {
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

// TestRunSignal: SIGTERM to `layers run` reaches the process.
func TestRunSignal(t *testing.T) {
	needRuntime(t, "runc")
	r := newRoot(t, "")
	img := importFixture(t, r, "localhost/busybox:run", "sh")
	cmd := exec.Command(layersBin, "--root", r.dir, "--runroot", r.runDir, "run", "--rm", img.name,
		"sh", "-c", `trap "echo term; exit 42" TERM; echo ready; while :; do sleep 0.05; done`)
	cmd.Env = cleanEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("first line %q", sc.Text())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !sc.Scan() || sc.Text() != "term" {
		t.Fatalf("after SIGTERM: %q", sc.Text())
	}
	err = cmd.Wait()
	if cmd.ProcessState.ExitCode() != 42 {
		t.Fatalf("exit %v", err)
	}
	if out := r.ok(t, "ps", "-q"); out != "" {
		t.Fatalf("containers left: %q", out)
	}
}

// TestRunKilled: a `layers run` killed with SIGKILL leaves its container
// running and mounted; check reports it, check --repair stops the
// process, removes the runtime's state and unmounts (and removes the
// container of a --rm run).
func TestRunKilled(t *testing.T) {
	for _, rt := range []string{"runc", "crun"} {
		t.Run(rt, func(t *testing.T) {
			needRuntime(t, rt)
			r := newRoot(t, "")
			img := importFixture(t, r, "localhost/busybox:run", "sh")
			// A sleep of its own length, so that another run's stray
			// sleep is not taken for this one's.
			sleep := fmt.Sprintf("sleep %d", 100000+rand.IntN(900000))
			for _, rm := range []bool{false, true} {
				args := []string{"--root", r.dir, "--runroot", r.runDir, "run", "--runtime", rt, "--name", "victim", img.name, "sh", "-c", "echo up; " + sleep}
				if rm {
					args = append(args[:4], append([]string{"run", "--rm"}, args[5:]...)...)
				}
				cmd := exec.Command(layersBin, args...)
				cmd.Env = cleanEnv()
				out, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				if sc := bufio.NewScanner(out); !sc.Scan() || sc.Text() != "up" {
					t.Fatalf("rm=%v: no output", rm)
				}
				_ = cmd.Process.Kill()
				_ = cmd.Wait()

				var cs []containerJSON
				decode(t, r.ok(t, "ps", "--format", "json"), &cs)
				if len(cs) != 1 || cs[0].Status != "running" || !cs[0].Mounted {
					t.Fatalf("after the kill: %+v", cs)
				}
				res := r.exec(t, nil, "check")
				if res.code != 1 || !strings.Contains(res.stdout, string(runner.ProblemLeftoverRun)) || !strings.Contains(res.stdout, cs[0].ID) {
					t.Fatalf("check: %s", res)
				}
				res = r.exec(t, nil, "check", "--repair")
				if res.code != 0 || !strings.Contains(res.stdout, string(runner.ProblemLeftoverRun)) {
					t.Fatalf("check --repair: %s", res)
				}
				if out := r.ok(t, "check"); out != "no problems found\n" {
					t.Fatalf("check after repair: %q", out)
				}
				decode(t, r.ok(t, "ps", "--format", "json"), &cs)
				if rm {
					if len(cs) != 0 {
						t.Fatalf("--rm container kept: %+v", cs)
					}
				} else {
					if len(cs) != 1 || cs[0].Mounted || cs[0].Status != "exited (?)" {
						t.Fatalf("after repair: %+v", cs)
					}
					r.ok(t, "rm", "victim")
				}
				if mounts := mountsUnder(t, filepath.Dir(r.dir)); len(mounts) != 0 {
					t.Fatalf("mounts left: %v", mounts)
				}
				for _, dir := range []string{filepath.Join(r.runDir, "bundles"), filepath.Join(r.runDir, "runtime", rt)} {
					if ents, _ := os.ReadDir(dir); len(ents) != 0 {
						t.Fatalf("%s holds %v", dir, ents)
					}
				}
			}
			// The container's process was killed with its state.
			deadline := time.Now().Add(5 * time.Second)
			for hasProcess(sleep) {
				if time.Now().After(deadline) {
					t.Fatal("the container's sleep still runs")
				}
				time.Sleep(50 * time.Millisecond)
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
