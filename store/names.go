package store

import (
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
)

// DefaultDomain is the registry of names without one, as docker has it.
const DefaultDomain = "docker.io"

// The reference grammar's two harder patterns are compiled on first use:
// compiled at package initialisation they cost every process that links
// the store (every CLI verb) their compile time, and only the verbs that
// parse a name need them. Tags and container names are one character
// class and a length, checked by validName without a regexp.
var (
	// pathComponent is one component of a repository path (the
	// distribution reference grammar).
	pathComponent = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	})
	// domainPattern is a registry host with an optional port (or an
	// IPv6 address in brackets).
	domainPattern = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?$`)
	})
)

// validName reports whether s is first (one of the characters of
// firstChars) followed by letters, digits, '_', '.' or '-', maxLen
// characters at most: the grammar of tags (first may be '_') and of
// container names (a letter or digit first).
func validName(s, firstChars string, maxLen int) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	if !isAlnum(s[0]) && strings.IndexByte(firstChars, s[0]) < 0 {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// isAlnum reports whether c is an ASCII letter or digit.
func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// validTag reports whether tag matches the reference grammar's
// [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
func validTag(tag string) bool { return validName(tag, "_", 128) }

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
		if !validTag(tag) {
			return bad("tag must be letters, digits, '_', '.' or '-' (at most 128), not starting with '.' or '-'")
		}
	}
	domain, path := DefaultDomain, name
	if i := strings.IndexByte(name, '/'); i >= 0 {
		if first := name[:i]; strings.ContainsAny(first, ".:") || first == "localhost" {
			domain, path = first, name[i+1:]
			if !domainPattern().MatchString(domain) {
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
		if !pathComponent().MatchString(c) {
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
