package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/layers-storage/layers/fixtures"
)

// BenchmarkRun times `layers run --rm IMAGE true` as a whole process (store
// open, container create, mount, bundle, runtime, unmount, remove) against
// `runc run` alone on a bundle prepared once (the busybox fixture tree,
// `runc spec`'s config running true), interleaved in the same run so that
// both see the same machine; and `layers run --runtime crun` too when crun
// is installed (the default runtime; crun-runc-ratio: against the same
// runc alone). Everything is on tmpfs. The goal:
// layers within 2x of runc alone (runc-ratio below 2), and at least 3x
// faster than podman's 0.224 s on this host (layers-s/op below 0.075).
func BenchmarkRun(b *testing.B) {
	if _, err := exec.LookPath("runc"); err != nil {
		b.Skip("runc not installed")
	}
	r := newRoot(b, "")
	img := importFixture(b, r, "localhost/busybox:bench", "true")

	// The baseline's bundle: the same tree, runc's own default config.
	base := filepath.Join(filepath.Dir(r.dir), "baseline")
	rootfs := filepath.Join(base, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		b.Fatal(err)
	}
	layer, err := fixtures.BusyboxLayer()
	if err != nil {
		b.Fatal(err)
	}
	untar := exec.Command("tar", "-x", "-C", rootfs)
	untar.Stdin = bytes.NewReader(layer)
	if out, err := untar.CombinedOutput(); err != nil {
		b.Fatalf("tar: %v: %s", err, out)
	}
	if out, err := exec.Command("runc", "spec", "--bundle", base).CombinedOutput(); err != nil {
		b.Fatalf("runc spec: %v: %s", err, out)
	}
	cfgPath := filepath.Join(base, "config.json")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		b.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		b.Fatal(err)
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"], proc["args"] = false, []string{"true"}
	if raw, err = json.Marshal(spec); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, raw, 0o644); err != nil {
		b.Fatal(err)
	}
	stateRoot := filepath.Join(base, "state")

	_, errCrun := exec.LookPath("crun")
	layersRun := func(rt string) {
		cmd := exec.Command(layersBin, "--root", r.dir, "--runroot", r.runDir, "run", "--rm", "--runtime", rt, img.name, "true")
		cmd.Env = cleanEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("layers run: %v: %s", err, out)
		}
	}
	runcRun := func() {
		if out, err := exec.Command("runc", "--root", stateRoot, "run", "--bundle", base, "bench").CombinedOutput(); err != nil {
			b.Fatalf("runc run: %v: %s", err, out)
		}
	}
	// Warm the page cache and the paths once.
	layersRun("runc")
	runcRun()
	if errCrun == nil {
		layersRun("crun")
	}

	var tLayers, tRunc, tCrun time.Duration
	b.ResetTimer()
	n := 0
	for b.Loop() {
		t0 := time.Now()
		layersRun("runc")
		t1 := time.Now()
		runcRun()
		t2 := time.Now()
		tLayers += t1.Sub(t0)
		tRunc += t2.Sub(t1)
		if errCrun == nil {
			layersRun("crun")
			tCrun += time.Since(t2)
		}
		n++
	}
	b.ReportMetric(tLayers.Seconds()/float64(n), "layers-s/op")
	b.ReportMetric(tRunc.Seconds()/float64(n), "runc-s/op")
	b.ReportMetric(tLayers.Seconds()/tRunc.Seconds(), "runc-ratio")
	b.ReportMetric(0.224/(tLayers.Seconds()/float64(n)), "x-faster-than-podman-0.224s")
	if errCrun == nil {
		// The same run with crun (in a private mount namespace on hybrid
		// cgroup hosts such as this one), against runc alone.
		b.ReportMetric(tCrun.Seconds()/float64(n), "layers-crun-s/op")
		b.ReportMetric(tCrun.Seconds()/tRunc.Seconds(), "crun-runc-ratio")
	}
}
