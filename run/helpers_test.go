package run

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/store"
	_ "github.com/layers-storage/layers/store/all"
)

// runtimes are the runtimes every run test runs with.
var runtimes = []string{"runc", "crun"}

// needRuntime skips without root or without runtime name.
func needRuntime(t testing.TB, name string) *Runtime {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts and an OCI runtime")
	}
	rt, err := FindRuntime(name)
	if errors.Is(err, ErrNoRuntime) {
		t.Skipf("%v (hack/deps.sh installs runc and crun)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// testStore is a store on a fresh tmpfs, with its directory.
type testStore struct {
	*store.Store
	dir string
}

// newStore opens a store on a fresh tmpfs; when the test ends it checks
// that nothing is left mounted and the runtime kept no state.
func newStore(t testing.TB) *testStore {
	t.Helper()
	dir := loopfs.New(t, "tmpfs", 0)
	st, err := store.Open(store.Options{Root: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run")})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
		ms, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
		for _, m := range ms {
			if m.Mountpoint != dir {
				t.Errorf("leaked mount %s", m.Mountpoint)
				_ = exec.Command("umount", "-l", m.Mountpoint).Run()
			}
		}
	})
	return &testStore{Store: st, dir: dir}
}

// busybox returns the busybox fixture layer, skipping without it.
func busybox(t testing.TB) []byte {
	t.Helper()
	b, err := fixtures.BusyboxLayer()
	if errors.Is(err, fixtures.ErrNoBusybox) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// addImage stores an image of the busybox layer plus extra layers with
// config cfg (its rootfs filled in here) under name.
func addImage(t testing.TB, st *testStore, name string, cfg ocispec.ImageConfig, extra ...[]byte) string {
	t.Helper()
	layersTars := append([][]byte{busybox(t)}, extra...)
	img := ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		Config:   cfg,
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	parent := ""
	for _, l := range layersTars {
		img.RootFS.DiffIDs = append(img.RootFS.DiffIDs, digest.FromBytes(l))
		ly, err := st.ApplyDiff(context.Background(), parent, bytes.NewReader(l), nil)
		if err != nil {
			t.Fatal(err)
		}
		parent = ly.ID
	}
	b, err := json.Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	im, err := st.CreateImage(store.ImageOptions{Config: b, TopLayer: parent, Names: []string{name}})
	if err != nil {
		t.Fatal(err)
	}
	return im.ID
}

// result is one Run.
type result struct {
	code           int
	err            error
	stdout, stderr string
}

// runIn runs image with o (its streams set here) and a deadline.
func runIn(t testing.TB, st *testStore, image string, o Options) result {
	t.Helper()
	var out, errb bytes.Buffer
	o.Stdout, o.Stderr = &out, &errb
	done := make(chan result, 1)
	go func() {
		code, err := Run(context.Background(), st.Store, image, &o)
		done <- result{code: code, err: err, stdout: out.String(), stderr: errb.String()}
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(60 * time.Second):
		t.Fatalf("run %s %v: no exit after 60 s", image, o.Command)
		return result{}
	}
}

// defaultConfig is the fixture image's config: PATH, cmd sh, workdir /.
func defaultConfig() ocispec.ImageConfig {
	return ocispec.ImageConfig{Env: []string{"PATH=/bin"}, Cmd: []string{"sh"}, WorkingDir: "/"}
}
