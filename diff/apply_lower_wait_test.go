package diff_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/layers-storage/layers/diff"
	. "github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
)

// gate is a lower layer's Ready that blocks until released (or failed),
// counting and announcing its calls.
type gate struct {
	release chan struct{}
	err     error // returned after release
	calls   atomic.Int32
	called  chan struct{} // gets a value per call, if anyone listens
}

func newGate() *gate {
	return &gate{release: make(chan struct{}), called: make(chan struct{}, 16)}
}

func (g *gate) ready(ctx context.Context) error {
	g.calls.Add(1)
	select {
	case g.called <- struct{}{}:
	default:
	}
	select {
	case <-g.release:
		return g.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitFixture applies lowers (bottom first, all complete) into dirs of a
// fresh tmpfs and returns their dirs and a fresh top dir.
func waitFixture(t *testing.T, lowers ...[]Entry) (dirs []string, top string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: owners, trusted xattrs")
	}
	fs := loopfs.New(t, "tmpfs", 0)
	for i, ents := range lowers {
		d := filepath.Join(fs, "l"+string(rune('0'+i)))
		must(t, os.Mkdir(d, 0o755))
		opts := diff.ApplyOptions{Whiteouts: diff.OverlayWhiteouts(false), Lowers: lowersOf(dirs)}
		if err := applyEntries(t, d, ents, opts); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	top = filepath.Join(fs, "top")
	must(t, os.Mkdir(top, 0o755))
	return dirs, top
}

func applyAsync(ctx context.Context, top string, ents []Entry, lowers []diff.Lower) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := diff.Apply(ctx, top, bytes.NewReader(Tar(ents...)), diff.ApplyOptions{Whiteouts: diff.OverlayWhiteouts(false), Lowers: lowers})
		done <- err
	}()
	return done
}

const waitLimit = 30 * time.Second

func TestApplyLowersNoLookupNoWait(t *testing.T) {
	dirs, top := waitFixture(t, []Entry{Dir("usr", 0o755), Dir("usr/lib", 0o755), Symlink("lib", "usr/lib")})
	g := newGate()
	defer close(g.release)
	// Every parent listed, root included: nothing to ask the lower.
	ents := []Entry{Dir("/", 0o755), Dir("usr", 0o755), Dir("usr/lib", 0o755), File("usr/lib/x", "x", 0o644), Dir("etc", 0o700), File("etc/y", "y", 0o600), Hardlink("etc/z", "etc/y")}
	select {
	case err := <-applyAsync(context.Background(), top, ents, []diff.Lower{{Dir: dirs[0], Ready: g.ready}}):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Apply waited for a lower layer it did not need")
	}
	if n := g.calls.Load(); n != 0 {
		t.Fatalf("Ready called %d times, want 0", n)
	}
	wantFile(t, filepath.Join(top, "usr/lib/x"), "x")
}

func TestApplyLowersLookupWaits(t *testing.T) {
	dirs, top := waitFixture(t, []Entry{Dir("usr", 0o755), Dir("usr/lib", 0o755), Symlink("lib", "usr/lib")})
	g := newGate()
	ents := []Entry{File("a", "a", 0o644), Dir("b", 0o755), File("b/x", "x", 0o644),
		File("lib/l1", "1", 0o644), File("lib/l2", "2", 0o644), File("c", "c", 0o644)}
	done := applyAsync(context.Background(), top, ents, []diff.Lower{{Dir: dirs[0], Ready: g.ready}})
	select {
	case <-g.called:
	case err := <-done:
		t.Fatalf("Apply returned (%v) without waiting for the lower layer", err)
	case <-time.After(waitLimit):
		t.Fatal("the lookup never asked for the lower layer")
	}
	// The entries before the one that needs the lower are in place; the
	// ones after it wait behind it.
	wantFile(t, filepath.Join(top, "a"), "a")
	wantFile(t, filepath.Join(top, "b/x"), "x")
	wantAbsent(t, filepath.Join(top, "c"))
	select {
	case err := <-done:
		t.Fatalf("Apply returned (%v) while the lower layer was not ready", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(g.release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Apply did not finish once the lower layer was ready")
	}
	wantFile(t, filepath.Join(top, "usr/lib/l1"), "1")
	wantFile(t, filepath.Join(top, "usr/lib/l2"), "2")
	wantFile(t, filepath.Join(top, "c"), "c")
	if n := g.calls.Load(); n != 1 {
		t.Fatalf("Ready called %d times, want once (it said ready)", n)
	}
}

func TestApplyLowersWaitOnlyForWhatIsNeeded(t *testing.T) {
	dirs, _ := waitFixture(t,
		[]Entry{Dir("deep", 0o700), Dir("d", 0o755)},
		[]Entry{Dir("d", 0o750, Owner(3, 3))},
	)
	// Lower 1 (top-most) has d: a lookup of d never needs lower 0.
	g0, g1 := newGate(), newGate()
	close(g1.release)
	defer close(g0.release)
	top := filepath.Join(filepath.Dir(dirs[0]), "top1")
	must(t, os.Mkdir(top, 0o755))
	lowers := []diff.Lower{{Dir: dirs[1], Ready: g1.ready}, {Dir: dirs[0], Ready: g0.ready}}
	select {
	case err := <-applyAsync(context.Background(), top, []Entry{File("d/x", "x", 0o644)}, lowers):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Apply waited for lower 0, which it did not need")
	}
	if g0.calls.Load() != 0 || g1.calls.Load() != 1 {
		t.Fatalf("Ready calls: lower 0 %d, lower 1 %d; want 0 and 1", g0.calls.Load(), g1.calls.Load())
	}
	wantDirAttrs(t, filepath.Join(top, "d"), 0o750, 3, 3, DefaultMtime)

	// deep is only in lower 0: lower 1 lacks it, so lower 0 must be
	// complete before the answer is known.
	top2 := filepath.Join(filepath.Dir(dirs[0]), "top2")
	must(t, os.Mkdir(top2, 0o755))
	h0 := newGate()
	done := applyAsync(context.Background(), top2, []Entry{File("deep/x", "x", 0o644)}, []diff.Lower{{Dir: dirs[1]}, {Dir: dirs[0], Ready: h0.ready}})
	select {
	case <-h0.called:
	case err := <-done:
		t.Fatalf("Apply returned (%v) without waiting for lower 0", err)
	case <-time.After(waitLimit):
		t.Fatal("Apply never asked for lower 0")
	}
	close(h0.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	wantDirAttrs(t, filepath.Join(top2, "deep"), 0o700, 0, 0, DefaultMtime)
}

func TestApplyLowersWaitCancelled(t *testing.T) {
	dirs, top := waitFixture(t, []Entry{Dir("d", 0o755)})
	g := newGate()
	defer close(g.release)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := applyAsync(ctx, top, []Entry{File("d/x", "x", 0o644)}, []diff.Lower{{Dir: dirs[0], Ready: g.ready}})
	select {
	case <-g.called:
	case err := <-done:
		t.Fatalf("Apply returned (%v) without waiting", err)
	case <-time.After(waitLimit):
		t.Fatal("Apply never asked for the lower layer")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || errors.Is(err, diff.ErrLowerFailed) {
			t.Fatalf("err = %v, want context.Canceled (not a failed lower)", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("cancelling ctx did not end the wait")
	}
	wantAbsent(t, filepath.Join(top, "d"))
}

func TestApplyLowersFailedLower(t *testing.T) {
	dirs, top := waitFixture(t, []Entry{Dir("d", 0o755)})
	cause := errors.New("pull of layer 1 failed: connection reset")
	g := newGate()
	g.err = cause
	close(g.release)
	err := <-applyAsync(context.Background(), top, []Entry{File("ok", "", 0o644), File("d/x", "x", 0o644)}, []diff.Lower{{Dir: dirs[0], Ready: g.ready}})
	if !errors.Is(err, diff.ErrLowerFailed) || !errors.Is(err, cause) {
		t.Fatalf("err = %v, want ErrLowerFailed wrapping the cause", err)
	}
	for _, want := range []string{`entry "d/x"`, dirs[0], "connection reset"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestApplyLowersBadOptions(t *testing.T) {
	dirs, top := waitFixture(t, []Entry{Dir("d", 0o755)})
	for _, c := range []struct {
		name string
		opts diff.ApplyOptions
		want string
	}{
		{"delete format", diff.ApplyOptions{Lowers: []diff.Lower{{Dir: dirs[0]}}}, "only for the overlay whiteout format"},
		{"no dir", diff.ApplyOptions{Whiteouts: diff.OverlayWhiteouts(false), Lowers: []diff.Lower{{}}}, "lower layer 0 has no directory"},
		{"missing dir", diff.ApplyOptions{Whiteouts: diff.OverlayWhiteouts(false), Lowers: []diff.Lower{{Dir: filepath.Join(dirs[0], "nope")}}}, "open lower layer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := diff.Apply(context.Background(), top, bytes.NewReader(Tar(File("d/x", "x", 0o644))), c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}
