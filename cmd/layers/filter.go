package main

import (
	"errors"
	"maps"
	"slices"
	"strings"

	"github.com/layers-storage/layers/store"
)

// containerFilter is `ps --filter KEY=VALUE`, as docker's and podman's:
// the values of one key are alternatives, different keys must all match.
type containerFilter map[string][]string

// containerFilterKeys are the keys ps --filter knows, with what a value
// matches.
var containerFilterKeys = map[string]string{
	"id":      "an ID prefix",
	"name":    "part of the name",
	"image":   "an image ID, prefix or name",
	"status":  "created, running or exited",
	"mounted": "true or false",
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
		f[k] = append(f[k], v)
	}
	return f, nil
}

// images resolves the image values to image IDs; a reference that names no
// image matches no container, as in docker.
func (f containerFilter) images(st *store.Store) (map[string]bool, error) {
	ids := map[string]bool{}
	for _, ref := range f["image"] {
		img, err := st.Image(ref)
		if err != nil {
			if errors.Is(err, store.ErrImageUnknown) {
				continue
			}
			return nil, err
		}
		ids[img.ID] = true
	}
	return ids, nil
}

// filterValues are the values of the keys that have a fixed set, for
// parsing and completion.
var filterValues = map[string][]string{
	"status":  {"created", "running", "exited"},
	"mounted": {"true", "false"},
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

// match reports whether c passes the filter; imageIDs is what images
// returned.
func (f containerFilter) match(c *store.Container, imageIDs map[string]bool) bool {
	anyOf := func(key string, ok func(v string) bool) bool {
		vs, asked := f[key]
		return !asked || slices.ContainsFunc(vs, ok)
	}
	status := containerStatus(c)
	return anyOf("id", func(v string) bool { return strings.HasPrefix(c.ID, v) }) &&
		anyOf("name", func(v string) bool { return c.Name != "" && strings.Contains(c.Name, v) }) &&
		anyOf("image", func(string) bool { return imageIDs[c.Image] }) &&
		anyOf("status", func(v string) bool { return status == v || strings.HasPrefix(status, v+" ") }) &&
		anyOf("mounted", func(v string) bool { return (v == "true") == c.Mounted })
}

// filterHelp lists the keys for --filter's help, sorted.
func filterHelp() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(containerFilterKeys)) {
		parts = append(parts, k+" ("+containerFilterKeys[k]+")")
	}
	return strings.Join(parts, ", ")
}
