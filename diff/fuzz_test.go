package diff

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzApply feeds arbitrary streams to Apply over a lower tree full of
// symlinks that point out of the root, and checks that nothing outside the
// root changed: neither a canary directory beside each root nor one shared
// by the whole process (the seeds' absolute symlinks point at it). Errors
// are fine; panics, hangs and escapes are not. Some inputs go to the
// overlay format with the lower tree given as a lower layer, which must
// not change either.
func FuzzApply(f *testing.F) {
	atRequireRoot(f)
	shared := newBreakoutEnv(f)
	sharedBefore := shared.snapshot(f)

	// Seeds: the hostile table's tars, aimed at the shared canaries, and a
	// few ordinary layers.
	for _, c := range breakoutCases() {
		if c.ents != nil {
			f.Add(atBuildTar(f, c.ents(shared.out)...))
		}
	}
	normal := atBuildTar(f,
		atDir("etc", 0o755), atFile("etc/passwd", "root:x:0:0", 0o644), atSymlink("lib", "usr/lib"),
		atFile("lib/x", "x", 0o755), atLink("etc/hard", "etc/passwd"), atDev("p", 'p', 0, 0),
		atWh("old"), atOpq("etc"), atWithXattr(atFile("cap", "c", 0o755), "security.capability", atCapV2, "trusted.overlay.opaque", "y"),
		atFile("esc/x", "through the lower symlink", 0o644), atFile("rel/x", "clamped", 0o644), atWh("d/sub"),
	)
	f.Add(normal)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(normal)
	zw.Close()
	f.Add(gz.Bytes())
	f.Add(atBuildTar(f))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			t.Skip("inputs above 1 MiB only slow the fuzzer down")
		}
		env := newBreakoutEnv(t)
		atMkLower("f:etc/passwd=lower", "f:d/sub/f=f", "d:usr/lib", "l:lib->usr/lib",
			"l:esc->"+env.out, "l:shared->"+shared.out, "l:rel->../../../outside", "l:up->../..",
			"l:canary->"+filepath.Join(env.out, "canary"))(t, env.root)
		before := env.snapshot(t)

		// Vary the options by the input, so that every combination is
		// reached without doubling the work per input.
		sum := sha256.Sum256(data)
		opts := ApplyOptions{noOpenat2: sum[0]&1 == 1, RejectDevices: sum[0]&2 == 2, noWriters: sum[0]&4 == 4}
		if sum[0]&4 == 4 {
			opts.Whiteouts = OverlayWhiteouts(sum[0]&8 == 8)
		}
		root := env.root
		if opts.Whiteouts != nil && sum[1]&1 == 1 {
			// The lower tree as the overlay layer below an empty one: the
			// lower must stay as it is too (its snapshot includes it).
			opts.Lowers = []Lower{{Dir: env.root}}
			root = filepath.Join(t.TempDir(), "top")
			atMust(t, os.Mkdir(root, 0o755))
			env.root = "/nonexistent"
			before = env.snapshot(t)
		}
		// A small compressed input may expand to gigabytes; bound the time.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		Apply(ctx, root, bytes.NewReader(data), opts)

		env.checkIntact(t, before)
		shared.checkIntact(t, sharedBefore)
		if _, err := os.Stat(shared.root); err != nil {
			t.Fatalf("shared root: %v", err)
		}
	})
}
