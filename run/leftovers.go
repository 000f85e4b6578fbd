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
