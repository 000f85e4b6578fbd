package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layers-storage/layers/internal/loopfs"
)

// startRegistry runs Debian's docker-registry on a free port of
// 127.0.0.1 (plain http, storage on a tmpfs) until the test ends, and
// returns its host:port. The registry tests proper (TLS, auth, broken
// blobs) are image's; these check the verbs' contract.
func startRegistry(t *testing.T) string {
	t.Helper()
	const bin = "/usr/bin/docker-registry"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s not found (hack/deps.sh installs Debian's docker-registry): %v", bin, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := ln.Addr().String()
	ln.Close()
	storage := filepath.Join(loopfs.New(t, "tmpfs", 0), "registry")
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", storage, host)
	cfgPath := filepath.Join(t.TempDir(), "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			return host
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry not answering on %s: %v", host, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lastLine is the last line of out.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	return lines[len(lines)-1]
}

// TestPushPull pushes the fixture image with the binary, pulls it into
// another root, and checks what each prints: progress lines then the
// digest or ID on stdout, nothing but the result with --quiet, nothing on
// stderr; a second push gives the same digest, a second pull downloads
// nothing.
func TestPushPull(t *testing.T) {
	host := startRegistry(t)
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			src := newRoot(t, driver)
			img := importFixture(t, src, "localhost/busybox:fixture", "sh")
			ref := host + "/cli/" + driver + ":1"

			out := src.ok(t, "push", img.name, ref)
			digest := lastLine(out)
			if !strings.HasPrefix(digest, "sha256:") || len(digest) != 71 {
				t.Fatalf("push printed %q last", out)
			}
			if !strings.Contains(out, ": pushed") {
				t.Errorf("push without progress lines: %q", out)
			}
			if again := src.ok(t, "--quiet", "push", img.id, ref); again != digest+"\n" {
				t.Errorf("second push printed %q, want only %s", again, digest)
			}

			dst := newRoot(t, driver)
			out = dst.ok(t, "pull", ref)
			if got := lastLine(out); got != img.id {
				t.Fatalf("pull printed %q last, want the image ID %s", got, img.id)
			}
			if !strings.Contains(out, ": applied") {
				t.Errorf("pull without progress lines: %q", out)
			}
			if again := dst.ok(t, "-q", "pull", "--idle-timeout", "30s", ref); again != img.id+"\n" {
				t.Errorf("pull -q printed %q", again)
			}
			var imgs []imageJSON
			decode(t, dst.ok(t, "images", "--format", "json"), &imgs)
			if len(imgs) != 1 || imgs[0].ID != img.id || imgs[0].Digest != digest || len(imgs[0].Names) != 1 || imgs[0].Names[0] != ref {
				t.Errorf("images after pull: %+v", imgs)
			}
			// The pulled image runs as a container: mount shows busybox.
			cid := strings.TrimSpace(dst.ok(t, "create", ref))
			dir := strings.TrimSpace(dst.ok(t, "mount", cid))
			if _, err := os.Stat(filepath.Join(dir, "bin/busybox")); err != nil {
				t.Errorf("mounted pulled image: %v", err)
			}
			dst.ok(t, "umount", cid)
			dst.ok(t, "rm", cid)
			if out := dst.ok(t, "check"); strings.TrimSpace(out) != "" && !strings.Contains(out, "no problems") {
				t.Errorf("check after pull: %q", out)
			}
		})
	}
}

// TestPullPushErrors: failures are one stderr line and exit 1, with
// nothing stored; bad flags are usage errors.
func TestPullPushErrors(t *testing.T) {
	host := startRegistry(t)
	r := newRoot(t, "vfs")
	r.fails(t, "MANIFEST_UNKNOWN", "pull", host+"/nothing/here:1")
	r.fails(t, "invalid name", "pull", "UPPER/case")
	var imgs []imageJSON
	decode(t, r.ok(t, "images", "--format", "json"), &imgs)
	if len(imgs) != 0 {
		t.Errorf("images after failed pulls: %+v", imgs)
	}
	checkUsage(t, r.exec(t, nil, "pull", "--platform", "linux", host+"/x:1"), "--platform", "layers pull")
	checkUsage(t, r.exec(t, nil, "pull", "--platform", "linux//v7", host+"/x:1"), "--platform", "layers pull")
	checkUsage(t, r.exec(t, nil, "pull"), "accepts 1 arg", "layers pull")
	checkUsage(t, r.exec(t, nil, "push", "--compression", "lz4", "img", host+"/x:1"), "--compression", "layers push")
	checkUsage(t, r.exec(t, nil, "push", "--jobs", "0", "img", host+"/x:1"), "--jobs", "layers push")
	checkUsage(t, r.exec(t, nil, "pull", "--idle-timeout", "-1s", host+"/x:1"), "--idle-timeout", "layers pull")
	checkUsage(t, r.exec(t, nil, "pull", "--idle-timeout", "soon", host+"/x:1"), "--idle-timeout", "layers pull")
	r.fails(t, "image not known", "push", "nosuchimage", host+"/x:1")
}
