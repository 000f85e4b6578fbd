package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
)

// mountTree creates a container of image ref in r, mounts it with the
// binary, snapshots it and removes it.
func mountTree(t *testing.T, r *root, ref string) fixtures.Tree {
	t.Helper()
	cid := strings.TrimSpace(r.ok(t, "create", ref))
	mnt := strings.TrimSpace(r.ok(t, "mount", cid))
	tree, err := fixtures.Snapshot(mnt, fixtures.WithoutOverlayXattrs())
	if err != nil {
		t.Fatal(err)
	}
	r.ok(t, "rm", "-f", cid)
	// The root directory has no entry in a layer tar.
	tree["/"].IgnoreMtime = true
	return tree
}

// TestCommitSaveLoad commits a changed container with the binary, saves
// the image in each format, loads it into a fresh root and checks the
// printed IDs, names and root filesystems.
func TestCommitSaveLoad(t *testing.T) {
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			src := newRoot(t, driver)
			base := importFixture(t, src, "localhost/busybox:fixture", "sh")
			cid := strings.TrimSpace(src.ok(t, "create", "--name", "work", base.name))
			mnt := strings.TrimSpace(src.ok(t, "mount", "work"))
			if err := os.WriteFile(filepath.Join(mnt, "etc/motd"), []byte("committed\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(mnt, "etc/group")); err != nil {
				t.Fatal(err)
			}
			src.ok(t, "umount", "work")
			out := src.ok(t, "commit", "-m", "motd", "--author", "Ann", "--change", "ENV GREETING=hi", "--change", `CMD ["cat", "/etc/motd"]`, cid, "localhost/motd:1")
			id := strings.TrimSpace(out)
			if len(lines(out)) != 1 || len(id) != 64 {
				t.Fatalf("commit printed %q, want an image ID", out)
			}
			var cfg struct {
				Config struct {
					Env []string `json:"Env"`
					Cmd []string `json:"Cmd"`
				} `json:"config"`
			}
			// The store keeps the config under its digest.
			raw, err := os.ReadFile(filepath.Join(src.dir, "blobs/sha256", id))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &cfg); err != nil {
				t.Fatal(err)
			}
			if strings.Join(cfg.Config.Env, ",") != "PATH=/bin,GREETING=hi" || strings.Join(cfg.Config.Cmd, " ") != "cat /etc/motd" {
				t.Errorf("config %+v", cfg.Config)
			}
			want := mountTree(t, src, id)
			if want["/etc/motd"] == nil || want["/etc/group"] != nil {
				t.Fatalf("committed tree lacks the changes")
			}
			out2 := loopfs.New(t, "tmpfs", 0)
			for _, format := range []string{"oci-archive", "oci-dir", "docker-archive"} {
				t.Run(format, func(t *testing.T) {
					p := filepath.Join(out2, format)
					if out := src.ok(t, "save", "--format", format, "-o", p, "localhost/motd:1", base.id); out != "" {
						t.Errorf("save printed %q", out)
					}
					dst := newRoot(t, driver)
					out := dst.ok(t, "load", "-i", p)
					if got := lines(out); len(got) != 2 || got[0] != id || got[1] != base.id {
						t.Fatalf("load printed %q, want %s and %s", out, id, base.id)
					}
					images := dst.ok(t, "images", "--format", "json")
					if !strings.Contains(images, `"localhost/motd:1"`) || !strings.Contains(images, `"localhost/busybox:fixture"`) {
						t.Errorf("names not kept: %s", images)
					}
					fixtures.AssertTreesEqual(t, want, mountTree(t, dst, "localhost/motd:1"))
				})
			}
		})
	}
}

// TestCommitSaveLoadErrors checks the verbs' usage errors (exit 2) and
// failures (exit 1, one line, nothing stored).
func TestCommitSaveLoadErrors(t *testing.T) {
	r := newRoot(t, "vfs")
	img := importFixture(t, r, "localhost/busybox:fixture", "sh")
	cid := strings.TrimSpace(r.ok(t, "create", img.name))
	dir := loopfs.New(t, "tmpfs", 0)

	checkUsage(t, r.exec(t, nil, "commit", "--compression", "lz4", cid), "--compression", "layers commit")
	checkUsage(t, r.exec(t, nil, "commit"), "accepts between 1 and 2 arg(s)", "layers commit")
	checkUsage(t, r.exec(t, nil, "save", img.id), "-o PATH is required", "layers save")
	checkUsage(t, r.exec(t, nil, "save", "--format", "tarball", "-o", filepath.Join(dir, "x"), img.id), "--format", "layers save")
	checkUsage(t, r.exec(t, nil, "save", "--format", "docker-archive", "--compression", "gzip", "-o", filepath.Join(dir, "x"), img.id), "uncompressed", "layers save")
	checkUsage(t, r.exec(t, nil, "load"), "-i PATH is required", "layers load")
	checkUsage(t, r.exec(t, nil, "load", "--platform", "linux", "-i", dir), "--platform", "layers load")
	res := r.exec(t, nil, "commit", cid)
	if res.code != 0 {
		t.Fatalf("commit without a name: %s", res)
	}
	unnamed := strings.TrimSpace(res.stdout)

	r.fails(t, "container not known", "commit", "nosuch", "x:1")
	r.fails(t, `bad change "RUN make"`, "commit", "--change", "RUN make", cid, "x:1")
	res = r.exec(t, []byte{}, "commit", cid, "x:1")
	if res.code != 0 {
		t.Fatalf("commit: %s", res)
	}
	withEpoch := func(epoch string) string {
		res := runBin(t, nil, []string{"SOURCE_DATE_EPOCH=" + epoch}, "--root", r.dir, "--runroot", r.runDir, "--driver", "vfs", "commit", cid)
		if res.code != 0 {
			t.Fatalf("commit with SOURCE_DATE_EPOCH: %s", res)
		}
		return strings.TrimSpace(res.stdout)
	}
	if a, b := withEpoch("1700000000"), withEpoch("1700000000"); a != b || a == unnamed {
		t.Errorf("SOURCE_DATE_EPOCH commits gave %s and %s (unpinned %s)", a, b, unnamed)
	}
	res = runBin(t, nil, []string{"SOURCE_DATE_EPOCH=soon"}, "--root", r.dir, "--runroot", r.runDir, "--driver", "vfs", "commit", cid)
	checkUsage(t, res, "SOURCE_DATE_EPOCH", "layers commit")

	r.fails(t, "image not known", "save", "-o", filepath.Join(dir, "x"), "nosuch")
	exists := filepath.Join(dir, "exists")
	os.WriteFile(exists, []byte("x"), 0o644)
	r.fails(t, "exists already", "save", "-o", exists, img.id)

	before := r.ok(t, "images", "-q")
	r.fails(t, "no such file", "load", "-i", filepath.Join(dir, "nosuch"))
	r.fails(t, "unknown archive format", "load", "-i", dir)
	// A damaged archive: a byte of the layer flipped.
	good := filepath.Join(dir, "good.tar")
	r.ok(t, "save", "--format", "docker-archive", "-o", good, img.id)
	b, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(b), "bin/busybox")
	b[i+4096] ^= 1
	bad := filepath.Join(dir, "bad.tar")
	os.WriteFile(bad, b, 0o644)
	fresh := newRoot(t, "vfs")
	fresh.fails(t, "digest mismatch", "load", "-i", bad)
	if out := fresh.ok(t, "images", "-q"); out != "" {
		t.Errorf("a damaged archive left images: %q", out)
	}
	if out := fresh.ok(t, "layers", "-q"); out != "" {
		t.Errorf("a damaged archive left layers: %q", out)
	}
	if after := r.ok(t, "images", "-q"); len(lines(after)) != len(lines(before)) {
		t.Errorf("images changed: %q -> %q", before, after)
	}
}
