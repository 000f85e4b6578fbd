package graphdriver

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// InitFunc creates a driver rooted at home with the given storage options.
// It returns an error wrapping ErrNotSupported when the host or the
// filesystem of home cannot carry the driver.
type InitFunc func(home string, options map[string]string) (Driver, error)

// Registration describes a driver to the registry.
type Registration struct {
	// Name is what users pass to --driver.
	Name string
	// Priority orders drivers when choosing a default: higher is tried first.
	Priority int
	// New creates the driver.
	New InitFunc
}

// The registry is the one piece of package state: drivers add themselves
// from init functions, before any goroutine can read it.
var (
	registryMu sync.RWMutex
	registry   = map[string]Registration{}
)

// Register adds a driver. It panics on a duplicate or empty name, which is a
// programming error caught at start-up.
func Register(r Registration) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if r.Name == "" || r.New == nil {
		panic("graphdriver: Register with empty name or nil New")
	}
	if _, dup := registry[r.Name]; dup {
		panic("graphdriver: driver " + r.Name + " registered twice")
	}
	registry[r.Name] = r
}

// Names returns the registered driver names, highest priority first.
func Names() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	regs := make([]Registration, 0, len(registry))
	for _, r := range registry {
		regs = append(regs, r)
	}
	sort.Slice(regs, func(i, j int) bool {
		if regs[i].Priority != regs[j].Priority {
			return regs[i].Priority > regs[j].Priority
		}
		return regs[i].Name < regs[j].Name
	})
	names := make([]string, len(regs))
	for i, r := range regs {
		names[i] = r.Name
	}
	return names
}

// New creates the driver registered as name. Options whose key starts with
// the name of another registered driver ("vfs.copy" when name is overlay)
// are that driver's and are not passed on, so one set of --storage-opt
// values serves whichever driver ends up chosen; any other key goes to the
// driver, which refuses those it does not take.
func New(name, home string, options map[string]string) (Driver, error) {
	registryMu.RLock()
	r, ok := registry[name]
	own := make(map[string]string, len(options))
	for k, v := range options {
		prefix, _, dotted := strings.Cut(k, ".")
		if _, other := registry[prefix]; dotted && other && prefix != name {
			continue
		}
		own[k] = v
	}
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownDriver, name, strings.Join(Names(), ", "))
	}
	d, err := r.New(home, own)
	if err != nil {
		return nil, fmt.Errorf("driver %s: %w", name, err)
	}
	return d, nil
}

// Default creates the highest-priority driver that works for home. Drivers
// that report ErrNotSupported are skipped; any other error (a bad option, a
// broken root) is returned, since silently falling back would hide it.
func Default(home string, options map[string]string) (Driver, error) {
	var reasons []string
	for _, name := range Names() {
		d, err := New(name, home, options)
		if err == nil {
			return d, nil
		}
		if !errors.Is(err, ErrNotSupported) {
			return nil, err
		}
		reasons = append(reasons, err.Error())
	}
	return nil, fmt.Errorf("no usable driver for %s: %w (%s)", home, ErrNotSupported, strings.Join(reasons, "; "))
}
