package run

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/layers-storage/layers/store"
)

// ProblemLeftoverRun is a container of a `layers run` that was killed:
// its state says running but its `layers run` process is gone; it may
// still be mounted, have runtime state and a process (fixable: the
// runtime's state deleted, which kills the process, the container
// unmounted, and removed when it was run with --rm).
const ProblemLeftoverRun store.ProblemKind = "leftover-run"

// ProblemLeftoverBundle is a bundle directory under the runroot that no
// running container owns (fixable: removed).
const ProblemLeftoverBundle store.ProblemKind = "leftover-bundle"

// ProblemLeftoverRuntimeState is the runtime's state of a container
// (under RUNROOT/runtime/<runtime>/) that no running `layers run` owns:
// a killed run whose container was removed since, or a runtime that
// failed to delete it (fixable: deleted through the runtime, which kills
// its processes, and what is left in its cgroup killed).
const ProblemLeftoverRuntimeState store.ProblemKind = "leftover-runtime-state"

// Leftovers lists what killed `layers run` processes left behind in st.
// It changes nothing.
func Leftovers(st *store.Store) ([]store.Problem, error) {
	return leftovers(st, false)
}

// Cleanup removes what killed `layers run` processes left behind in st
// (see ProblemLeftoverRun) and returns what it found, marked fixed.
// Containers whose `layers run` is still alive are left alone.
func Cleanup(st *store.Store) ([]store.Problem, error) {
	return leftovers(st, true)
}

func leftovers(st *store.Store, fix bool) ([]store.Problem, error) {
	cs, err := st.Containers()
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var probs []store.Problem
	var errs []error
	live := map[string]bool{}
	reported := map[string]bool{} // leftover runs, whose state is part of the problem
	for _, c := range cs {
		s := ContainerState(c)
		if s == nil || s.Status != StatusRunning {
			continue
		}
		if processStart(s.Pid) == s.PidStart && s.PidStart != 0 {
			live[c.ID] = true
			continue
		}
		p := store.Problem{Kind: ProblemLeftoverRun, ID: c.ID,
			Detail: fmt.Sprintf("container of a killed `layers run` (pid %d)", s.Pid)}
		if c.Mounted {
			p.Detail += ", still mounted"
		}
		if fix {
			if err := cleanupRun(st, c, s); err != nil {
				errs = append(errs, err)
			} else {
				p.Fixed = true
			}
		}
		probs = append(probs, p)
		reported[c.ID] = true
	}
	// The runtimes' state of containers no live run owns.
	rtRoot := filepath.Join(st.RunRoot(), "runtime")
	rts, err := os.ReadDir(rtRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("read %s: %w", rtRoot, err))
	}
	for _, rtDir := range rts {
		if !rtDir.IsDir() {
			continue
		}
		dir := filepath.Join(rtRoot, rtDir.Name())
		ents, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", dir, err))
			continue
		}
		for _, e := range ents {
			id := e.Name()
			if live[id] || reported[id] {
				continue
			}
			sp := filepath.Join(dir, id)
			if _, err := os.Lstat(sp); errors.Is(err, os.ErrNotExist) {
				continue // deleted by cleanupRun above
			}
			p := store.Problem{Kind: ProblemLeftoverRuntimeState, ID: id, Detail: rtDir.Name() + " state " + sp + " of no running container"}
			if fix {
				if err := deleteState(st.RunRoot(), rtDir.Name(), id); err != nil {
					errs = append(errs, err)
				} else {
					p.Fixed = true
				}
			}
			probs = append(probs, p)
		}
	}
	// Bundles of runs that are no longer running (a run killed after
	// writing its bundle whose container was removed since).
	dir := filepath.Join(st.RunRoot(), "bundles")
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("read %s: %w", dir, err))
	}
	for _, e := range ents {
		if live[e.Name()] {
			continue
		}
		bp := filepath.Join(dir, e.Name())
		if _, err := os.Lstat(bp); errors.Is(err, os.ErrNotExist) {
			continue // removed by cleanupRun above
		}
		p := store.Problem{Kind: ProblemLeftoverBundle, ID: e.Name(), Detail: "runtime bundle " + bp + " of no running container"}
		if fix {
			if err := os.RemoveAll(bp); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", bp, err))
			} else {
				p.Fixed = true
			}
		}
		probs = append(probs, p)
	}
	return probs, errors.Join(errs...)
}

// deleteState deletes runtime rtName's state of container id under
// runRoot through the runtime (which kills its processes); when that
// runtime is no longer installed, the container's cgroup is emptied and
// the state removed by hand.
func deleteState(runRoot, rtName, id string) error {
	rt, err := FindRuntime(rtName)
	if err != nil {
		rt = &Runtime{Name: rtName}
		if kerr := killCgroup(cgroupPath(id)); kerr != nil {
			return fmt.Errorf("container %s: %w", id, kerr)
		}
		if rerr := os.RemoveAll(filepath.Join(rt.stateRoot(runRoot), id)); rerr != nil {
			return fmt.Errorf("container %s: %w", id, rerr)
		}
		return nil
	}
	return rt.delete(runRoot, id)
}

// cleanupRun undoes what the killed run of c left: the runtime's state
// and process, the bundle, the run's mount, and with --rm the container.
func cleanupRun(st *store.Store, c *store.Container, s *State) error {
	if s.Runtime != "" {
		rt := &Runtime{Name: filepath.Base(s.Runtime), Path: s.Runtime, PrivateCgroup2: s.PrivateCgroup2}
		if err := rt.delete(st.RunRoot(), c.ID); err != nil {
			return fmt.Errorf("container %s: %w", c.ID, err)
		}
	}
	if err := os.RemoveAll(filepath.Join(st.RunRoot(), "bundles", c.ID)); err != nil {
		return fmt.Errorf("container %s: remove its bundle: %w", c.ID, err)
	}
	if s.Remove {
		if err := st.RemoveContainer(c.ID, true); err != nil {
			return fmt.Errorf("container %s: %w", c.ID, err)
		}
		return nil
	}
	if c.Mounted {
		// One Unmount for the run's one Mount: a mount of a shell user
		// made meanwhile stays.
		if err := st.Unmount(c.ID, false); err != nil {
			return fmt.Errorf("container %s: %w", c.ID, err)
		}
	}
	now := time.Now().UTC()
	s.Status, s.Finished = StatusExited, &now
	s.Error = fmt.Sprintf("layers run (pid %d) was killed", s.Pid)
	if err := st.SetContainerMetadata(c.ID, stateJSON(s)); err != nil {
		return fmt.Errorf("container %s: %w", c.ID, err)
	}
	return nil
}
