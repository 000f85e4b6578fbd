package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/store"
)

// layersBin is the binary under test, built once by TestMain: the tests
// run it as a process, as scripts and people do.
var layersBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "layers-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	layersBin = filepath.Join(dir, "layers")
	// Built as `make layers` builds it (see the Makefile: without cgo).
	build := exec.Command("go", "build", "-o", layersBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// root is a store root on a fresh tmpfs, with the driver the test asked
// for.
type root struct {
	dir, runDir, driver string
}

// newRoot makes a root on its own tmpfs. When the test ends it fails if
// anything is still mounted under it (a leaked mount), and detaches it so
// that the tmpfs can go.
func newRoot(t testing.TB, driver string) *root {
	t.Helper()
	return newRootOn(t, driver, "tmpfs", 0)
}

// newRootOn is newRoot on a fresh filesystem of type fstype and at least
// size bytes (loopfs).
func newRootOn(t testing.TB, driver, fstype string, size int64) *root {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts, and the fixture layer has files owned by other users")
	}
	if _, err := fixtures.BusyboxLayer(); errors.Is(err, fixtures.ErrNoBusybox) {
		t.Skip(err)
	}
	fs := loopfs.New(t, fstype, size)
	r := &root{dir: filepath.Join(fs, "root"), runDir: filepath.Join(fs, "run"), driver: driver}
	t.Cleanup(func() {
		for _, m := range mountsUnder(t, fs) {
			t.Errorf("leaked mount %s", m)
			_ = exec.Command("umount", "-l", m).Run()
		}
	})
	return r
}

// mountsUnder lists the mount points strictly below dir.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatalf("mountinfo: %v", err)
	}
	var out []string
	for _, m := range ms {
		if m.Mountpoint != dir {
			out = append(out, m.Mountpoint)
		}
	}
	return out
}

// result is what one run of the binary did.
type result struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("layers %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// exec runs the binary with the root's global flags (given as flags, so
// that the environment cannot leak into the test).
func (r *root) exec(t testing.TB, stdin []byte, args ...string) result {
	t.Helper()
	full := append([]string{"--root", r.dir, "--runroot", r.runDir}, args...)
	if r.driver != "" {
		full = append([]string{"--driver", r.driver}, full...)
	}
	return runBin(t, stdin, nil, full...)
}

func runBin(t testing.TB, stdin []byte, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(layersBin, args...)
	cmd.Env = append(cleanEnv(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	res := result{args: args, stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	default:
		t.Fatalf("run layers %v: %v", args, err)
	}
	return res
}

// cleanEnv is the test's environment without LAYERS_* variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LAYERS_") {
			env = append(env, kv)
		}
	}
	return env
}

// ok runs a command that must succeed with nothing on stderr, and
// returns its stdout.
func (r *root) ok(t testing.TB, args ...string) string {
	t.Helper()
	res := r.exec(t, nil, args...)
	if res.code != 0 || res.stderr != "" {
		t.Fatalf("want success: %s", res)
	}
	return res.stdout
}

// fails runs a command that must fail with status 1 and exactly one
// stderr line "layers: ..." containing want, and nothing on stdout.
func (r *root) fails(t testing.TB, want string, args ...string) result {
	t.Helper()
	res := r.exec(t, nil, args...)
	checkFailure(t, res, want)
	return res
}

func checkFailure(t testing.TB, res result, want string) {
	t.Helper()
	if res.code != 1 {
		t.Fatalf("want exit 1: %s", res)
	}
	lines := strings.Split(strings.TrimSuffix(res.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "layers: ") || !strings.HasSuffix(res.stderr, "\n") {
		t.Fatalf("want exactly one stderr line \"layers: ...\": %s", res)
	}
	if !strings.Contains(lines[0], want) {
		t.Fatalf("want stderr to contain %q: %s", want, res)
	}
}

// usage checks a usage error: exit 2, the error line and the hint line.
func checkUsage(t testing.TB, res result, want, hintCmd string) {
	t.Helper()
	if res.code != 2 {
		t.Fatalf("want exit 2: %s", res)
	}
	lines := strings.Split(strings.TrimSuffix(res.stderr, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "layers: ") || !strings.Contains(lines[0], want) {
		t.Fatalf("want a \"layers: ...%s...\" line and a hint: %s", want, res)
	}
	if hint := fmt.Sprintf("Run '%s --help' for usage.", hintCmd); lines[1] != hint {
		t.Fatalf("want hint %q: %s", hint, res)
	}
	if res.stdout != "" {
		t.Fatalf("want nothing on stdout: %s", res)
	}
}

// fixtureImage is the busybox fixture image imported into a root.
type fixtureImage struct {
	id, layer string
	diffID    string
	name      string
}

// importFixture stores the busybox fixture image in r with the store
// library, as `load` will once the images issue provides it, under name
// (normalised) with the given command in its config (so that several
// fixture images get distinct IDs).
func importFixture(t testing.TB, r *root, name string, cmd ...string) fixtureImage {
	t.Helper()
	layer, err := fixtures.BusyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := fixtures.ImageConfig([][]byte{layer}, cmd...)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Options{Root: r.dir, RunRoot: r.runDir, Driver: r.driver})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l, err := st.ApplyDiff(context.Background(), "", bytes.NewReader(layer), nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.CreateImage(store.ImageOptions{Config: cfg, TopLayer: l.ID, Names: []string{name}})
	if err != nil {
		t.Fatal(err)
	}
	full, err := store.NormalizeName(name)
	if err != nil {
		t.Fatal(err)
	}
	return fixtureImage{id: img.ID, layer: l.ID, diffID: l.DiffID.String(), name: full}
}

// lines splits output into its non-empty lines.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if sc.Text() != "" {
			out = append(out, sc.Text())
		}
	}
	return out
}

// drivers are the drivers every end-to-end flow runs on.
var drivers = []string{"overlay", "vfs"}
