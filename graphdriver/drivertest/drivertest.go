// Package drivertest is the conformance suite every graph driver passes.
// A driver runs it from its own _test.go with one call:
//
//	func TestSuite(t *testing.T) {
//		drivertest.Run(t, func(t testing.TB) graphdriver.Driver { ... })
//	}
//
// The suite uses nothing but the graphdriver API (the Driver interface and
// the Changes, Diff and ApplyDiff helpers), so it holds for every driver
// whether it has native capabilities or the naive differ. Layers are built
// by applying fixture tars (package fixtures) to layers made with Create;
// the mounted result is snapshotted and compared with the tree
// fixtures.Expect computes from the same entries, an oracle written apart
// from diff.Apply.
//
// Decisions the suite enforces, where the driver contract leaves room:
//   - Put of a layer without a matching Get (never mounted, or one Put too
//     many) is a no-op returning nil, as in moby's and containers/storage's
//     drivers: cleanup paths may call it safely, and the store keeps its
//     own counts to catch unbalanced callers. It must not disturb other
//     references.
//   - Removing a layer that has children is allowed to succeed: refusing
//     is the store's job, not the driver's. Removing the children
//     afterwards must still succeed.
//   - Removing a mounted layer unmounts it.
//   - An image layer (Create) changes only through ApplyDiff: its mount
//     may be read-only (overlay's is), so the suite writes through the
//     mounts of read-write layers only, and accepts EROFS from others.
//   - Create of an existing ID fails with graphdriver.ErrLayerExists; Get
//     of an unknown ID fails with graphdriver.ErrLayerNotExist.
//   - Changes may list, besides the edits, a "C" for directories above an
//     edit (their mtime moved, and docker lists them too); nothing else.
//   - A driver with a native differ (graphdriver.Differ) gives exactly the
//     naive differ's answer: every Changes and Diff of the suite is
//     compared with NaiveChanges and NaiveDiff, the tar byte for byte.
//
// Cases that need what the host or filesystem lacks (root for devices,
// security.capability and trusted.* xattrs; user xattrs) skip, saying why.
package drivertest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/moby/sys/mountinfo"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/graphdriver"
)

// Factory returns a new, empty driver with a home of its own. It fails t if
// the driver cannot be created. Run calls it once per case and calls the
// driver's Cleanup when the case ends.
type Factory func(t testing.TB) graphdriver.Driver

// HomeFactory returns a Factory that makes each driver with newDriver in a
// fresh home of its own: a new directory under base (a loop filesystem the
// test made), or a test temp dir when base is "".
func HomeFactory(base string, newDriver graphdriver.InitFunc, options map[string]string) Factory {
	return func(t testing.TB) graphdriver.Driver {
		t.Helper()
		home := t.TempDir()
		if base != "" {
			var err error
			if home, err = os.MkdirTemp(base, "home-"); err != nil {
				t.Fatal(err)
			}
		}
		d, err := newDriver(home, options)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
}

// Run runs every conformance case against drivers made by newDriver.
func Run(t *testing.T, newDriver Factory) {
	for _, c := range lifecycleCases {
		t.Run(c.name, func(t *testing.T) {
			c.run(newHarness(t, newDriver))
		})
	}
	for _, c := range treeCases() {
		t.Run(c.name, func(t *testing.T) {
			runTreeCase(newHarness(t, newDriver), c)
		})
	}
	for _, c := range editCases() {
		t.Run(c.name, func(t *testing.T) {
			runEditCase(newHarness(t, newDriver), c)
		})
	}
	for _, c := range gapCases {
		t.Run(c.name, func(t *testing.T) {
			c.run(newHarness(t, newDriver))
		})
	}
}

// harness is one case's driver with helpers that fail the test with a
// message saying which step broke.
type harness struct {
	t   *testing.T
	d   graphdriver.Driver
	ctx context.Context

	mu     sync.Mutex
	mounts map[string]string // id -> path Get returned
	counts map[string]int    // id -> Gets not yet Put, through the harness
}

func newHarness(t *testing.T, newDriver Factory) *harness {
	d := newDriver(t)
	if d == nil {
		t.Fatal("factory returned a nil driver")
	}
	h := &harness{t: t, d: d, ctx: context.Background(), mounts: map[string]string{}, counts: map[string]int{}}
	t.Cleanup(func() {
		if err := d.Cleanup(); err != nil {
			t.Errorf("driver Cleanup: %v", err)
		}
	})
	// Registered after Cleanup, so it runs before it: every mount the case
	// made and balanced must be gone while the driver still lives.
	t.Cleanup(h.checkNoLeakedMounts)
	return h
}

// id makes a layer ID from a readable name: 64 hex characters, like the
// store's, so drivers that check the format are satisfied.
func id(name string) string {
	s := sha256.Sum256([]byte(name))
	return hex.EncodeToString(s[:])
}

func (h *harness) fatalf(format string, args ...any) {
	h.t.Helper()
	h.t.Fatalf(format, args...)
}

// create makes a read-only layer name on parent ("" for none).
func (h *harness) create(name, parent string) {
	h.t.Helper()
	if err := h.d.Create(id(name), idOrEmpty(parent), nil); err != nil {
		h.fatalf("Create(%s, parent %q): %v", name, parent, err)
	}
}

// createRW makes a read-write layer name on parent.
func (h *harness) createRW(name, parent string) {
	h.t.Helper()
	if err := h.d.CreateReadWrite(id(name), idOrEmpty(parent), nil); err != nil {
		h.fatalf("CreateReadWrite(%s, parent %q): %v", name, parent, err)
	}
}

func idOrEmpty(name string) string {
	if name == "" {
		return ""
	}
	return id(name)
}

// apply applies tar to layer name (already created on parent).
func (h *harness) apply(name, parent string, tar io.Reader) diff.ApplyResult {
	h.t.Helper()
	res, err := graphdriver.ApplyDiff(h.ctx, h.d, id(name), idOrEmpty(parent), tar, diff.ApplyOptions{})
	if err != nil {
		h.fatalf("ApplyDiff(%s, parent %q): %v", name, parent, err)
	}
	return res
}

// layer creates read-only layer name on parent and applies entries to it.
func (h *harness) layer(name, parent string, entries ...fixtures.Entry) {
	h.t.Helper()
	h.create(name, parent)
	h.apply(name, parent, bytes.NewReader(fixtures.Tar(entries...)))
}

// get mounts layer name, remembering the path for the leak check.
func (h *harness) get(name string) string {
	h.t.Helper()
	p, err := h.d.Get(id(name), graphdriver.MountOpts{})
	if err != nil {
		h.fatalf("Get(%s): %v", name, err)
	}
	if p == "" {
		h.fatalf("Get(%s) returned an empty path", name)
	}
	h.mu.Lock()
	h.mounts[name] = p
	h.counts[name]++
	h.mu.Unlock()
	return p
}

// put releases one reference on layer name.
func (h *harness) put(name string) {
	h.t.Helper()
	if err := h.d.Put(id(name)); err != nil {
		h.t.Errorf("Put(%s): %v", name, err)
	}
	h.mu.Lock()
	h.counts[name]--
	h.mu.Unlock()
}

// with runs fn with layer name mounted.
func (h *harness) with(name string, fn func(root string)) {
	h.t.Helper()
	root := h.get(name)
	defer h.put(name)
	fn(root)
}

// snap returns the tree of layer name, root mtime left open (nobody
// decides when a layer root was last written).
func (h *harness) snap(name string) fixtures.Tree {
	h.t.Helper()
	var tr fixtures.Tree
	h.with(name, func(root string) {
		var err error
		tr, err = fixtures.Snapshot(root, fixtures.WithoutOverlayXattrs())
		if err != nil {
			h.fatalf("snapshot of layer %s: %v", name, err)
		}
	})
	if r := tr["/"]; r != nil {
		r.IgnoreMtime = true
	}
	return tr
}

// check compares layer name's tree with want.
func (h *harness) check(name string, want fixtures.Tree, opts ...fixtures.CompareOption) {
	h.t.Helper()
	got := h.snap(name)
	if diffs := fixtures.Compare(want, got, opts...); len(diffs) > 0 {
		const max = 40
		n := len(diffs)
		if n > max {
			diffs = append(diffs[:max:max], fmt.Sprintf("... and %d more", n-max))
		}
		h.t.Errorf("layer %s: tree differs from expected (want vs got), %d difference(s):\n  %s", name, n, strings.Join(diffs, "\n  "))
	}
}

// expect computes the tree of a layer stack with the fixtures oracle.
func (h *harness) expect(layers ...[]fixtures.Entry) fixtures.Tree {
	h.t.Helper()
	want, err := fixtures.Expect(layers...)
	if err != nil {
		h.fatalf("fixture model: %v", err)
	}
	return want
}

// diffTar returns layer name's changes against parent as tar bytes.
func (h *harness) diffTar(name, parent string) []byte {
	h.t.Helper()
	rc, err := graphdriver.Diff(h.ctx, h.d, id(name), idOrEmpty(parent))
	if err != nil {
		h.fatalf("Diff(%s, parent %q): %v", name, parent, err)
	}
	b, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		h.fatalf("Diff(%s, parent %q): reading the tar: %v", name, parent, err)
	}
	if _, native := h.d.(graphdriver.Differ); native {
		// A native differ must give the naive one's tar, byte for byte.
		rc, err := graphdriver.NaiveDiff(h.ctx, h.d, id(name), idOrEmpty(parent))
		if err != nil {
			h.fatalf("NaiveDiff(%s, parent %q): %v", name, parent, err)
		}
		naive, err := io.ReadAll(rc)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			h.fatalf("NaiveDiff(%s, parent %q): reading the tar: %v", name, parent, err)
		}
		if !bytes.Equal(b, naive) {
			h.t.Errorf("Diff(%s, parent %q): the native tar differs from the naive differ's:\n  native: %s\n  naive:  %s",
				name, parent, tarListing(b), tarListing(naive))
		}
	}
	return b
}

// tarListing describes a tar's entries for messages.
func tarListing(b []byte) string {
	var out []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err != nil {
			if err != io.EOF {
				out = append(out, "error: "+err.Error())
			}
			break
		}
		out = append(out, fmt.Sprintf("%c %s %o %d:%d %d %s %v", hdr.Typeflag, hdr.Name, hdr.Mode, hdr.Uid, hdr.Gid, hdr.Size, hdr.ModTime.Format("2006-01-02T15:04:05.999999999"), hdr.PAXRecords))
	}
	return strings.Join(out, "; ")
}

// changes returns layer name's changes against parent as "K /path" lines.
func (h *harness) changes(name, parent string) []string {
	h.t.Helper()
	cs, err := graphdriver.Changes(h.ctx, h.d, id(name), idOrEmpty(parent))
	if err != nil {
		h.fatalf("Changes(%s, parent %q): %v", name, parent, err)
	}
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	sort.Strings(out)
	if _, native := h.d.(graphdriver.Differ); native {
		// A native differ must give the naive one's answer exactly.
		ncs, err := graphdriver.NaiveChanges(h.ctx, h.d, id(name), idOrEmpty(parent))
		if err != nil {
			h.fatalf("NaiveChanges(%s, parent %q): %v", name, parent, err)
		}
		naive := make([]string, len(ncs))
		for i, c := range ncs {
			naive[i] = c.String()
		}
		sort.Strings(naive)
		if strings.Join(out, "\n") != strings.Join(naive, "\n") {
			h.t.Errorf("Changes(%s, parent %q): native %q, naive differ %q", name, parent, out, naive)
		}
	}
	return out
}

// checkChanges fails unless got holds every want line and, besides them,
// only optional lines and "C" lines for directories above a wanted path.
func (h *harness) checkChanges(got, want []string, optional ...string) {
	h.t.Helper()
	if problems := changesProblems(got, want, optional); len(problems) > 0 {
		h.t.Errorf("Changes wrong:\n  %s\nwant (plus optional C of parent dirs):\n  %s\ngot:\n  %s",
			strings.Join(problems, "\n  "), strings.Join(want, "\n  "), strings.Join(got, "\n  "))
	}
}

// changesProblems lists how got departs from want under checkChanges'
// rule; none means it matches. A line listed twice is a problem too: a
// differ that reports a path twice would export it twice.
func changesProblems(got, want, optional []string) []string {
	have := map[string]int{}
	for _, g := range got {
		have[g]++
	}
	var problems []string
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[w] = true
		if have[w] == 0 {
			problems = append(problems, "missing "+w)
		}
	}
	for _, o := range optional {
		wanted[o] = true
	}
	for _, g := range got {
		if have[g] > 1 {
			problems = append(problems, "listed twice "+g)
			have[g] = 1
		}
		if wanted[g] {
			continue
		}
		if p, ok := strings.CutPrefix(g, "C "); ok && isAncestorOfAny(p, want) {
			continue
		}
		problems = append(problems, "unexpected "+g)
	}
	return problems
}

func isAncestorOfAny(dir string, changes []string) bool {
	for _, c := range changes {
		p := c[2:]
		if dir == "/" || strings.HasPrefix(p, dir+"/") {
			return true
		}
	}
	return false
}

// mounted reports whether p is a mount point; errors count as "no" since
// only a positive answer changes what the suite checks.
func mounted(p string) bool {
	m, err := mountinfo.Mounted(p)
	return err == nil && m
}

// checkNoLeakedMounts fails the case if a layer whose references all went
// back still has its path mounted.
func (h *harness) checkNoLeakedMounts() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, p := range h.mounts {
		if h.counts[name] == 0 && h.d.Exists(id(name)) && mounted(p) {
			h.t.Errorf("layer %s: %s still mounted after its last Put", name, p)
		}
	}
}

// feature probes whether the driver's layers can hold something, by trying
// it in a scratch read-write layer; the case skips with why when not.
func (h *harness) need(feature string) {
	h.t.Helper()
	if os.Geteuid() != 0 {
		switch feature {
		case "devices", "security.capability", "trusted xattrs", "chown":
			h.t.Skipf("%s need root", feature)
		}
	}
	probe := "probe-" + feature
	h.createRW(probe, "")
	var err error
	h.with(probe, func(root string) {
		err = probeFeature(root, feature)
	})
	if rerr := h.d.Remove(id(probe)); rerr != nil {
		h.fatalf("Remove(%s): %v", probe, rerr)
	}
	if err != nil {
		h.t.Skipf("driver's layers cannot hold %s: %v", feature, err)
	}
}

// errBadFeature is a programming error in the suite.
var errBadFeature = errors.New("unknown feature")
