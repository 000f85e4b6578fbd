package main

import (
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/layers-storage/layers/store"
)

// containerFilter is `ps --filter KEY=VALUE`, as docker's and podman's:
// the values of one key are alternatives, different keys must all match.
type containerFilter map[string][]string

// containerFilterKeys are the keys ps --filter knows, with what a value
// matches.
var containerFilterKeys = map[string]string{
	"id":       "an ID prefix",
	"name":     "part of the name",
	"image":    "an image ID, prefix or name",
	"ancestor": "an image, or one built on it (whose layers start with its layers)",
	"status":   "created, running or exited",
	"exited":   "the exit status of run's process",
	"mounted":  "true or false",
}

// filterValues are the values of the keys that have a fixed set, for
// parsing and completion.
var filterValues = map[string][]string{
	"status":  {"created", "running", "exited"},
	"mounted": {"true", "false"},
}

// parseContainerFilter checks the --filter arguments; an unknown key or a
// value that cannot match is a usage error.
func parseContainerFilter(args []string) (containerFilter, error) {
	f := containerFilter{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if _, known := containerFilterKeys[k]; !ok || !known {
			return nil, usagef("--filter %q: want KEY=VALUE, KEY one of %s", a, strings.Join(slices.Sorted(maps.Keys(containerFilterKeys)), ", "))
		}
		if vs, fixed := filterValues[k]; fixed && !slices.Contains(vs, v) {
			return nil, usagef("--filter %q: want %s", a, containerFilterKeys[k])
		}
		if _, err := strconv.Atoi(v); k == "exited" && err != nil {
			return nil, usagef("--filter %q: want an exit status, a number", a)
		}
		f[k] = append(f[k], v)
	}
	return f, nil
}

// filterCompletions offers "KEY=" for the open keys and "KEY=VALUE" for
// those with a fixed set of values.
func filterCompletions() []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(containerFilterKeys)) {
		if vs, ok := filterValues[k]; ok {
			for _, v := range vs {
				out = append(out, k+"="+v)
			}
			continue
		}
		out = append(out, k+"=")
	}
	return out
}

// filterHelp lists the keys for --filter's help, sorted.
func filterHelp() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(containerFilterKeys)) {
		parts = append(parts, k+" ("+containerFilterKeys[k]+")")
	}
	return strings.Join(parts, ", ")
}

// containerMatcher is a containerFilter with its image references
// resolved against a store.
type containerMatcher struct {
	f                   containerFilter
	images, descendants map[string]bool // image IDs that image= and ancestor= accept
}

// resolve looks the image and ancestor values up in st. A reference that
// names no image matches no container, as in docker.
func (f containerFilter) resolve(st *store.Store) (*containerMatcher, error) {
	m := &containerMatcher{f: f, images: map[string]bool{}, descendants: map[string]bool{}}
	lookup := func(ref string) (*store.Image, error) {
		img, err := st.Image(ref)
		if errors.Is(err, store.ErrImageUnknown) {
			return nil, nil
		}
		return img, err
	}
	for _, ref := range f["image"] {
		img, err := lookup(ref)
		if err != nil {
			return nil, err
		}
		if img != nil {
			m.images[img.ID] = true
		}
	}
	if len(f["ancestor"]) == 0 {
		return m, nil
	}
	all, err := st.Images()
	if err != nil {
		return nil, err
	}
	for _, ref := range f["ancestor"] {
		anc, err := lookup(ref)
		if err != nil {
			return nil, err
		}
		if anc == nil {
			continue
		}
		for _, img := range all {
			if img.ID == anc.ID || len(anc.Layers) > 0 && len(img.Layers) >= len(anc.Layers) && slices.Equal(img.Layers[:len(anc.Layers)], anc.Layers) {
				m.descendants[img.ID] = true
			}
		}
	}
	return m, nil
}

// match reports whether c passes the filter.
func (m *containerMatcher) match(c *store.Container) bool {
	anyOf := func(key string, ok func(v string) bool) bool {
		vs, asked := m.f[key]
		return !asked || slices.ContainsFunc(vs, ok)
	}
	status := containerStatus(c)
	return anyOf("id", func(v string) bool { return strings.HasPrefix(c.ID, v) }) &&
		anyOf("name", func(v string) bool { return c.Name != "" && strings.Contains(c.Name, v) }) &&
		anyOf("image", func(string) bool { return m.images[c.Image] }) &&
		anyOf("ancestor", func(string) bool { return m.descendants[c.Image] }) &&
		anyOf("status", func(v string) bool { return status == v || strings.HasPrefix(status, v+" ") }) &&
		anyOf("exited", func(v string) bool { return status == "exited ("+v+")" }) &&
		anyOf("mounted", func(v string) bool { return (v == "true") == c.Mounted })
}
