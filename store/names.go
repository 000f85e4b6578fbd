package store

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"
)

// DefaultDomain is the registry of names without one, as docker has it.
const DefaultDomain = "docker.io"

var (
	// pathComponent is one component of a repository path (the
	// distribution reference grammar).
	pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	// tagPattern is a tag.
	tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	// domainPattern is a registry host with an optional port (or an
	// IPv6 address in brackets).
	domainPattern = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?$`)
)

// NormalizeName turns an image reference into the full form names are
// stored in, as docker does: "busybox" is
// "docker.io/library/busybox:latest", "quay.io/x/y" is
// "quay.io/x/y:latest", a reference with a digest keeps it and gets no
// default tag. The first path component is a registry when it has a '.'
// or a ':' or is "localhost". Malformed references fail with
// ErrInvalidName.
func NormalizeName(ref string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w %q: %s", ErrInvalidName, ref, why)
	}
	if ref == "" {
		return bad("empty reference")
	}
	if len(ref) > 4096 {
		return bad("too long")
	}
	name, dig, hasDigest := strings.Cut(ref, "@")
	if hasDigest {
		if _, err := digest.Parse(dig); err != nil {
			return bad("digest: " + err.Error())
		}
	}
	tag := ""
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name, tag = name[:i], name[i+1:]
		if !tagPattern.MatchString(tag) {
			return bad("tag must be letters, digits, '_', '.' or '-' (at most 128), not starting with '.' or '-'")
		}
	}
	domain, path := DefaultDomain, name
	if i := strings.IndexByte(name, '/'); i >= 0 {
		if first := name[:i]; strings.ContainsAny(first, ".:") || first == "localhost" {
			domain, path = first, name[i+1:]
			if !domainPattern.MatchString(domain) {
				return bad("registry " + domain + " is not a host[:port]")
			}
		}
	}
	if domain == "index.docker.io" {
		domain = DefaultDomain
	}
	if path == "" {
		return bad("no repository")
	}
	if isID(path) {
		return bad("a repository name cannot be 64 hex characters (that is an ID)")
	}
	for _, c := range strings.Split(path, "/") {
		if !pathComponent.MatchString(c) {
			return bad("repository path component " + fmt.Sprintf("%q", c) + " must be lower-case letters and digits separated by '.', '_', '__' or '-'")
		}
	}
	if domain == DefaultDomain && !strings.Contains(path, "/") {
		path = "library/" + path
	}
	out := domain + "/" + path
	if tag == "" && !hasDigest {
		tag = "latest"
	}
	if tag != "" {
		out += ":" + tag
	}
	if hasDigest {
		out += "@" + dig
	}
	return out, nil
}
