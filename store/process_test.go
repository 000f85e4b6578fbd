package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/internal/syncbuf"
	"github.com/layers-storage/layers/store"
)

// Helper processes: the test binary re-executed with LAYERS_STORE_HELPER
// naming what to do on the root in LAYERS_STORE_ROOT.
const (
	helperEnv = "LAYERS_STORE_HELPER"
	rootEnv   = "LAYERS_STORE_ROOT"
	crashEnv  = "LAYERS_STORE_CRASH_AT" // store's test hook: SIGKILL at a named point
	roundsEnv = "LAYERS_STORE_ROUNDS"
	// longEnv makes every driver run the full process tests; by default
	// the default (first) driver runs them in full and the others a
	// smaller share, so that the package stays under a minute with -race.
	longEnv = "LAYERS_STORE_LONG"
)

// full reports whether driver runs the process tests in full.
func full(driver string) bool {
	return os.Getenv(longEnv) != "" || driver == drivers()[0]
}

// TestHelperProcess is not a test: it is what helper processes run.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return // run as a test, it has nothing to do
	}
	if err := helper(mode, os.Getenv(rootEnv)); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helper(mode, root string) error {
	s, err := store.Open(store.Options{Root: root})
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()
	switch mode {
	case "churn":
		// Rounds of create, mount, write, unmount, remove. Names are
		// shared between processes on purpose: ErrNameInUse is the
		// documented conflict, anything else is a failure.
		pid := os.Getpid()
		conflicts := 0
		rounds, _ := strconv.Atoi(os.Getenv(roundsEnv))
		for round := range rounds {
			name := fmt.Sprintf("c%d", round%4)
			c, err := s.CreateContainer("base", &store.ContainerOptions{Name: name})
			if errors.Is(err, store.ErrNameInUse) {
				conflicts++
				if c, err = s.CreateContainer("base", nil); err != nil {
					return fmt.Errorf("round %d: create: %w", round, err)
				}
			} else if err != nil {
				return fmt.Errorf("round %d: create: %w", round, err)
			}
			p, err := s.Mount(c.ID)
			if err != nil {
				return fmt.Errorf("round %d: mount: %w", round, err)
			}
			if err := os.WriteFile(filepath.Join(p, "etc", "by"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
				return fmt.Errorf("round %d: write: %w", round, err)
			}
			if round%10 == 0 {
				// A second mount and a look at what changed.
				if _, err := s.Mount(c.ID); err != nil {
					return fmt.Errorf("round %d: mount again: %w", round, err)
				}
				ch, err := s.Changes(ctx, c.ID)
				if err != nil || len(ch) != 2 {
					return fmt.Errorf("round %d: changes %v: %w", round, ch, err)
				}
				if err := s.Unmount(c.ID, false); err != nil {
					return fmt.Errorf("round %d: unmount: %w", round, err)
				}
			}
			if err := s.Unmount(c.ID, false); err != nil {
				return fmt.Errorf("round %d: unmount: %w", round, err)
			}
			if round%2 == 0 {
				if _, err := s.Mount(c.ID); err != nil { // rm of a mounted container unmounts it
					return fmt.Errorf("round %d: mount before rm: %w", round, err)
				}
			}
			if err := s.RemoveContainer(c.ID, false); err != nil {
				return fmt.Errorf("round %d: rm: %w", round, err)
			}
		}
		fmt.Printf("conflicts %d\n", conflicts)
		return nil
	case "apply":
		// Apply layers and make containers until killed, saying on
		// stdout which step starts, so that the test knows where the
		// kill landed.
		step := func(name string, i int) { fmt.Printf("%s %d\n", name, i) }
		for i := 0; ; i++ {
			step("apply", i)
			l, err := s.ApplyDiff(ctx, "", bytes.NewReader(bigTar(uint64(i))), nil)
			if err != nil {
				return err
			}
			step("image", i)
			cfg := []byte(fmt.Sprintf(`{"rootfs":{"type":"layers","diff_ids":[%q]}}`, l.DiffID))
			img, err := s.CreateImage(store.ImageOptions{Config: cfg, TopLayer: l.ID, Names: []string{fmt.Sprintf("crash:%d", i)}})
			if err != nil {
				return err
			}
			step("create", i)
			c, err := s.CreateContainer(img.ID, nil)
			if err != nil {
				return err
			}
			step("mount", i)
			p, err := s.Mount(c.ID)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(p, "written"), bigTar(uint64(i)), 0o644); err != nil {
				return err
			}
			step("unmount", i)
			if err := s.Unmount(c.ID, false); err != nil {
				return err
			}
			step("commit", i)
			if _, err := s.CommitContainer(ctx, c.ID, nil); err != nil {
				return err
			}
			step("rm", i)
			if err := s.RemoveContainer(c.ID, false); err != nil {
				return err
			}
			step("rmi", i)
			if _, err := s.RemoveImage(img.ID, false); err != nil {
				return err
			}
			step("chain", i)
			var srcs []store.LayerSource
			for _, seed := range []uint64{uint64(i) + 1000, uint64(i) + 2000} {
				tb := filesTar(seed, 100)
				srcs = append(srcs, store.LayerSource{Open: func(context.Context) (io.ReadCloser, error) {
					return io.NopCloser(bytes.NewReader(tb)), nil
				}})
			}
			if _, err := s.ApplyLayers(ctx, "", srcs); err != nil {
				return err
			}
			step("prune", i)
			if _, err := s.Prune(ctx); err != nil {
				return err
			}
		}
	case "close-for-exit":
		// A CLI process's life: one verb, then CloseForExit and exit.
		if _, err := s.CreateContainer("keep", &store.ContainerOptions{Name: "exited"}); err != nil {
			return err
		}
		if err := s.CloseForExit(); err != nil {
			return err
		}
		if _, err := s.Containers(); !errors.Is(err, store.ErrClosed) {
			return fmt.Errorf("Containers after CloseForExit: %v, want ErrClosed", err)
		}
		return nil
	}
	return fmt.Errorf("unknown helper mode %q", mode)
}

// bigTar is a layer of 300 small files, seeded, so that applying it takes
// long enough to be killed in the middle.
func bigTar(seed uint64) []byte { return filesTar(seed, 300) }

// filesTar is a layer of n small files, seeded.
func filesTar(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	es := []fixtures.Entry{fixtures.Dir("data", 0o755)}
	for i := range n {
		b := make([]byte, 512+r.IntN(4096))
		for j := range b {
			b[j] = byte('a' + r.IntN(26))
		}
		es = append(es, fixtures.File(fmt.Sprintf("data/f%03d", i), string(b), 0o644))
	}
	return fixtures.Tar(es...)
}

func helperCmd(t testing.TB, mode, root string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, rootEnv+"="+root)
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// mountsUnder returns the mount points under dir.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// Eight processes create, mount, unmount and remove containers on one root
// at once, 50 rounds each (15 for drivers other than the default, unless
// LAYERS_STORE_LONG is set; LAYERS_SOAK_ROUNDS sets it for `make soak`).
func TestConcurrentProcesses(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		s := open(t, driver, root)
		mustImage(t, s, []string{"base"}, baseTar)
		const procs = 8
		rounds := 50
		if !full(driver) {
			rounds = 15
		}
		if n, err := strconv.Atoi(os.Getenv("LAYERS_SOAK_ROUNDS")); err == nil && n > 0 {
			rounds = n
		}
		cmds := make([]*exec.Cmd, procs)
		outs := make([]*bytes.Buffer, procs)
		for i := range cmds {
			cmds[i] = helperCmd(t, "churn", root, roundsEnv+"="+strconv.Itoa(rounds))
			outs[i] = &bytes.Buffer{}
			cmds[i].Stdout, cmds[i].Stderr = outs[i], outs[i]
			if err := cmds[i].Start(); err != nil {
				t.Fatal(err)
			}
		}
		conflicts := 0
		for i, cmd := range cmds {
			if err := cmd.Wait(); err != nil {
				t.Errorf("process %d: %v\n%s", i, err, outs[i])
				continue
			}
			var n int
			if _, err := fmt.Sscanf(outs[i].String()[strings.Index(outs[i].String(), "conflicts"):], "conflicts %d", &n); err == nil {
				conflicts += n
			}
		}
		t.Logf("%d processes x %d rounds: %d name conflicts (ErrNameInUse) among %d creates", procs, rounds, conflicts, procs*rounds)
		cs, err := s.Containers()
		if err != nil || len(cs) != 0 {
			t.Fatalf("containers left: %v %v", cs, err)
		}
		if ls, _ := s.Layers(); len(ls) != 1 {
			t.Fatalf("layers left: %d, want the image's one", len(ls))
		}
		if m := mountsUnder(t, root); len(m) != 0 {
			t.Fatalf("mounts left: %v", m)
		}
		assertClean(t, s)
	})
}

// crashPoints are the store's named crash points (see crashPoint in the
// package) that the "apply" helper passes.
var crashPoints = []string{
	"apply-created", "apply-applied", "apply-completed", "container-started",
	"container-layer-made", "container-created", "mount-got", "unmount-put",
	"remove-marked", "drop-data-removed", "image-removed", "image-blobs-written",
	"chain-created", "chain-layer-completed",
	"commit-started", "commit-moved", "commit-read", "commit-recorded",
}

// A process killed with SIGKILL at any point of applying a layer, making
// an image and a container, mounting and removing them leaves the root
// consistent: the next Open cleans up, Check is clean, and what was
// stored before is still there. Every named crash point is hit, then the
// process is killed after random delays: 20 times on the default driver,
// 8 on others (52 kills in all with two drivers).
// LAYERS_STORE_CRASH_ROUNDS sets the number of random kills per driver,
// for longer campaigns.
func TestCrashSafety(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver, root string) {
		rounds := 20
		if !full(driver) {
			rounds = 8
		}
		if v := os.Getenv("LAYERS_STORE_CRASH_ROUNDS"); v != "" {
			rounds, _ = strconv.Atoi(v)
		}
		s := open(t, driver, root)
		img := mustImage(t, s, []string{"keep"}, baseTar, upperTar)
		keep, err := s.CreateContainer("keep", &store.ContainerOptions{Name: "keep"})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		verify := func(what string) {
			t.Helper()
			s, err := store.Open(store.Options{Root: root})
			if err != nil {
				t.Fatalf("%s: open: %v", what, err)
			}
			defer s.Close()
			r, err := s.Check(context.Background(), store.CheckOptions{Digests: true})
			if err != nil || !r.Clean() {
				t.Fatalf("%s: check: %v %v", what, r, err)
			}
			if got, err := s.Image("keep"); err != nil || got.ID != img.ID {
				t.Fatalf("%s: image lost: %v", what, err)
			}
			if c, err := s.Container("keep"); err != nil || c.ID != keep.ID {
				t.Fatalf("%s: container lost: %v", what, err)
			}
			// Leave only what was there before: the next round starts clean.
			for _, c := range must(s.Containers()) {
				if c.ID != keep.ID {
					if err := s.RemoveContainer(c.ID, true); err != nil {
						t.Fatalf("%s: %v", what, err)
					}
				}
			}
			for _, i := range must(s.Images()) {
				if i.ID != img.ID {
					if _, err := s.RemoveImage(i.ID, true); err != nil {
						t.Fatalf("%s: %v", what, err)
					}
				}
			}
			if _, err := s.Prune(context.Background()); err != nil {
				t.Fatalf("%s: prune: %v", what, err)
			}
			if ls := must(s.Layers()); len(ls) != 3 {
				t.Fatalf("%s: %d layers after cleanup, want 3", what, len(ls))
			}
		}
		killed := 0
		_, native := s.Driver().(graphdriver.Applier)
		_, inPlace := s.Driver().(graphdriver.ReadWriteCommitter)
		for _, point := range crashPoints {
			if strings.HasPrefix(point, "chain-") && !native {
				continue // chains of other drivers go through ApplyDiff's points
			}
			if strings.HasPrefix(point, "commit-") && !inPlace {
				continue // commits of other drivers go through ApplyDiff's points
			}
			cmd := helperCmd(t, "apply", root, crashEnv+"="+point)
			timer := time.AfterFunc(time.Minute, func() { _ = cmd.Process.Kill() })
			out, err := cmd.CombinedOutput()
			timer.Stop()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("crash at %s: the helper was not killed there: %v\n%s", point, err, out)
			}
			killed++
			verify("after a crash at " + point)
		}
		r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
		landed := map[string]int{}
		for i := range rounds {
			cmd := helperCmd(t, "apply", root)
			var out syncbuf.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// The kill comes a random delay after the helper has started
			// working (its first line), not counting its start-up.
			for start := time.Now(); out.Len() == 0 && time.Since(start) < 10*time.Second; {
				time.Sleep(time.Millisecond)
			}
			delay := time.Duration(r.IntN(300)) * time.Millisecond
			time.Sleep(delay)
			_ = cmd.Process.Kill()
			err := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !ee.Exited() && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL {
				killed++
			} else {
				t.Fatalf("random kill %d: helper failed on its own: %v\n%s", i, err, out.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			last := "start"
			if f := strings.Fields(lines[len(lines)-1]); len(f) == 2 {
				last = f[0]
			}
			landed[last]++
			verify(fmt.Sprintf("after a kill at %v (in step %s)", delay, last))
		}
		t.Logf("%d kills, root consistent after each; random kills landed in steps %v", killed, landed)
		if m := mountsUnder(t, root); len(m) != 0 {
			t.Fatalf("mounts left: %v", m)
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A layer that does not fit on the root's filesystem fails with a clear
// error and leaves nothing: no row, no driver data, no tar layout.
func TestFullDisk(t *testing.T) {
	for _, driver := range drivers() {
		t.Run(driver, func(t *testing.T) {
			root := filepath.Join(loopfs.New(t, "ext4", loopfs.MinExt4), "root")
			s := open(t, driver, root)
			base := mustApply(t, s, "", baseTar)[0]
			// 72 MiB of random data on a 64 MiB filesystem.
			r := rand.New(rand.NewPCG(1, 2))
			chunk := make([]byte, 1<<20)
			for i := range chunk {
				chunk[i] = byte(r.Uint32())
			}
			var es []fixtures.Entry
			for i := range 72 {
				es = append(es, fixtures.File(fmt.Sprintf("big%02d", i), string(chunk), 0o644))
			}
			_, err := s.ApplyDiff(context.Background(), base.ID, fixtures.Reader(es...), nil)
			if err == nil {
				t.Fatal("a layer larger than the disk applied")
			}
			if !errors.Is(err, store.ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("error does not say the disk is full: %v", err)
			}
			t.Logf("error: %v", err)
			ls, err := s.Layers()
			if err != nil || len(ls) != 1 {
				t.Fatalf("layers after failure: %v %v", ls, err)
			}
			assertClean(t, s)
			// The space is back: a small layer applies.
			if _, err := s.ApplyDiff(context.Background(), base.ID, bytes.NewReader(upperTar), nil); err != nil {
				t.Fatalf("apply after the failure: %v", err)
			}
			ents, _ := os.ReadDir(filepath.Join(root, "tar-layout"))
			if len(ents) != 2 {
				t.Fatalf("tar layouts: %d, want 2", len(ents))
			}
		})
	}
}
