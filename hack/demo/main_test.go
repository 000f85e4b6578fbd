package main

import (
	"bytes"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/layers-storage/layers/fixtures"
)

// TestDemo runs the demo end to end, so `make demo` keeps working, and
// checks that what it printed is the real output of each step.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts, and the busybox layer has files owned by other users")
	}
	if _, err := fixtures.BusyboxLayer(); errors.Is(err, fixtures.ErrNoBusybox) {
		t.Skip(err)
	}
	var out bytes.Buffer
	if err := run(&out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []*regexp.Regexp{
		// images: the imported fixture, with its short ID.
		regexp.MustCompile(`(?m)^    \$ layers images\n    REPOSITORY +TAG +IMAGE ID .*\n    localhost/busybox +demo +[0-9a-f]{12} `),
		// create prints the container's ID; mount the path only.
		regexp.MustCompile(`(?m)^    \$ layers create --name demo localhost/busybox:demo\n    [0-9a-f]{64}\n`),
		regexp.MustCompile(`(?m)^    \$ layers mount demo\n    /\S+\n`),
		// diff lists exactly the three changes made.
		regexp.MustCompile(`(?m)^    \$ layers diff demo\n((    [ACD] /.*\n)+)`),
		// ps shows it mounted.
		regexp.MustCompile(`(?m)^    \$ layers ps\n    CONTAINER ID .*\n    [0-9a-f]{12} +localhost/busybox:demo +demo +yes `),
		// the exported changes applied as a new layer.
		regexp.MustCompile(`(?m)^    \$ layers layer diff [0-9a-f]{12} \| layers layer apply --parent [0-9a-f]{12}\n    [0-9a-f]{64}\n`),
		// the hostile tar refused with one error line.
		regexp.MustCompile(`(?m)^    \$ layers layer apply < hostile.tar\n    layers: apply layer [0-9a-f]{64}: .*\n`),
		// commit prints the new image's ID; run prints the process's
		// output (the committed file, the user, workdir and env asked
		// for); ps shows the kept container's exit status.
		regexp.MustCompile(`(?m)^    \$ layers commit -m demo changes demo localhost/busybox:committed\n    [0-9a-f]{64}\n`),
		regexp.MustCompile(`(?m)^    \$ layers run --rm localhost/busybox:committed cat /hello.txt /srv/data/note\n    hello, layers\n    written before commit\n`),
		regexp.MustCompile(`(?m)^    \$ layers run --name ran .*\n    app in /srv/data, for layers\n    /etc/group is gone, as committed\n`),
		regexp.MustCompile(`(?m)^    \$ layers ps\n    CONTAINER ID .* STATUS\n(    .*\n)*    [0-9a-f]{12} +localhost/busybox:committed +ran +no +.* ago +exited \(0\)\n`),
		// prune frees the applied layer and the image's; check is clean.
		regexp.MustCompile(`(?m)^    \$ layers prune\n(    removed layer [0-9a-f]{64}\n){2}    freed 2 layers, `),
		regexp.MustCompile(`(?m)^    \$ layers layers\n    LAYER ID +PARENT +KIND +SIZE +CREATED +DIFF ID\n    \$ layers check\n    no problems found\n`),
	} {
		if !want.MatchString(s) {
			t.Errorf("no match for %s in the demo's output:\n%s", want, s)
		}
	}
	diff := regexp.MustCompile(`(?m)^    \$ layers diff demo\n((    [ACD] /.*\n)+)`).FindStringSubmatch(s)
	if diff != nil {
		got := strings.Fields(strings.ReplaceAll(diff[1], "\n", " "))
		for _, change := range []string{"/hello.txt", "/etc/group", "/srv/data"} {
			if !strings.Contains(strings.Join(got, " "), change) {
				t.Errorf("diff does not list %s: %v", change, got)
			}
		}
	}
}
