package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestConcurrentCLI: 8 processes at a time create, mount, umount, mount
// again and remove containers on one root, 20 rounds each (5 with
// -short), while a shell user lists. Nothing fails, nothing stays mounted,
// check is clean. (50 rounds through the binary take a minute of two busy
// cores; the store's own tests do the 50-round churn in 8 processes.)
// LAYERS_SOAK_ROUNDS sets the rounds for `make soak`.
func TestConcurrentCLI(t *testing.T) {
	const workers = 8
	rounds := 20
	if testing.Short() {
		rounds = 5
	}
	if n, err := strconv.Atoi(os.Getenv("LAYERS_SOAK_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	r := newRoot(t, "overlay")
	img := importFixture(t, r, "localhost/busybox:fixture")
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds+1)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				name := fmt.Sprintf("w%d-%d", w, i)
				steps := [][]string{{"create", "--name", name, img.id}, {"mount", name}, {"umount", name}, {"mount", name}, {"rm", name}}
				for _, args := range steps {
					if res := r.exec(t, nil, args...); res.code != 0 || res.stderr != "" {
						errs <- fmt.Errorf("%s", res)
						return
					}
				}
			}
		})
	}
	wg.Go(func() {
		for range rounds {
			for _, verb := range []string{"ps", "layers", "images"} {
				if res := r.exec(t, nil, verb, "--format", "json"); res.code != 0 || res.stderr != "" {
					errs <- fmt.Errorf("%s", res)
					return
				}
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if out := r.ok(t, "ps", "-q"); out != "" {
		t.Fatalf("containers left: %q", out)
	}
	if ms := mountsUnder(t, r.dir); len(ms) != 0 {
		t.Fatalf("mounts left: %v", ms)
	}
	if out := r.ok(t, "check"); out != "no problems found\n" {
		t.Fatalf("check: %q", out)
	}
	if out := strings.Fields(r.ok(t, "layers", "-q", "--no-trunc")); len(out) != 1 || out[0] != img.layer {
		t.Fatalf("layers left: %v", out)
	}
}
