package main

import (
	"bytes"
	"testing"
	"time"
)

func TestQuotePath(t *testing.T) {
	for in, want := range map[string]string{
		"/etc/passwd":       "/etc/passwd",
		"/with space":       "/with space",
		"/café/ünïcode":     "/café/ünïcode",
		"/a\"b":             `"/a\"b"`,
		`/back\slash`:       `"/back\\slash"`,
		"/new\nline":        `"/new\nline"`,
		"/tab\t/cr\r/bel\a": `"/tab\t/cr\r/bel\a"`,
		"/\x01\x1f\x7f":     `"/\001\037\177"`,
		"/\b\v\f":           `"/\b\v\f"`,
	} {
		if got := quotePath(in); got != want {
			t.Errorf("quotePath(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestHumanSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 999: "999B", 1000: "1kB", 1980000: "1.98MB", 5e9: "5GB", 1e18: "1EB"} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %s, want %s", n, got, want)
		}
	}
}

func TestAgo(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{
		-time.Second:             "Less than a second ago",
		0:                        "Less than a second ago",
		time.Second:              "1 second ago",
		59 * time.Second:         "59 seconds ago",
		time.Minute:              "1 minute ago",
		47 * time.Hour:           "47 hours ago",
		3 * 24 * time.Hour:       "3 days ago",
		21 * 24 * time.Hour:      "3 weeks ago",
		90 * 24 * time.Hour:      "3 months ago",
		3 * 365 * 24 * time.Hour: "3 years ago",
	} {
		if got := ago(now.Add(-d), now); got != want {
			t.Errorf("ago(%s) = %s, want %s", d, got, want)
		}
	}
}

func TestSplitName(t *testing.T) {
	for in, want := range map[string][2]string{
		"":                                 {"<none>", "<none>"},
		"docker.io/library/busybox:latest": {"docker.io/library/busybox", "latest"},
		"localhost:5000/x/y:v1":            {"localhost:5000/x/y", "v1"},
		"localhost:5000/x/y@sha256:abcd":   {"localhost:5000/x/y", "<none>"},
		"quay.io/a/b:t@sha256:abcd":        {"quay.io/a/b", "t"},
	} {
		repo, tag := splitName(in)
		if repo != want[0] || tag != want[1] {
			t.Errorf("splitName(%q) = %q, %q, want %q", in, repo, tag, want)
		}
	}
}

func TestTableTrimsPadding(t *testing.T) {
	var b bytes.Buffer
	tb := newTable(&b, "A", "LONGER", "C")
	tb.row("x", "", "")
	tb.row("yyyyyy", "z", "w")
	if err := tb.flush(); err != nil {
		t.Fatal(err)
	}
	want := "A        LONGER   C\nx\nyyyyyy   z        w\n"
	if b.String() != want {
		t.Fatalf("table:\n%q\nwant\n%q", b.String(), want)
	}
}

func TestShortID(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for in, want := range map[string]string{id: "0123456789ab", "sha256:" + id: "0123456789ab", "abc": "abc", "": ""} {
		if got := shortID(in); got != want {
			t.Errorf("shortID(%q) = %q, want %q", in, got, want)
		}
	}
	lf := listFlags{noTrunc: true}
	if lf.id(id) != id {
		t.Error("--no-trunc shortened")
	}
}
