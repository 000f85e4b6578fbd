package main

import (
	"archive/tar"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layers-storage/layers/fixtures"
)

// TestUsageErrors: exit 2, the error line and a hint naming the verb, and
// no store touched (the root does not even exist).
func TestUsageErrors(t *testing.T) {
	noRoot := filepath.Join(t.TempDir(), "never-made")
	cases := []struct {
		args      []string
		want, cmd string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`, "layers"},
		{[]string{"--no-such-flag", "images"}, "unknown flag: --no-such-flag", "layers"},
		{[]string{"images", "--no-such-flag"}, "unknown flag: --no-such-flag", "layers images"},
		{[]string{"create"}, "accepts 1 arg(s), received 0", "layers create"},
		{[]string{"mount", "a", "b"}, "accepts 1 arg(s), received 2", "layers mount"},
		{[]string{"rm"}, "requires at least 1 arg(s)", "layers rm"},
		{[]string{"images", "a", "b"}, "accepts at most 1 arg(s), received 2", "layers images"},
		{[]string{"ps", "extra"}, `unknown command "extra"`, "layers ps"},
		{[]string{"ps", "--filter", "foo=bar"}, `--filter "foo=bar": want KEY=VALUE, KEY one of ancestor, exited, id, image, mounted, name, status`, "layers ps"},
		{[]string{"ps", "-f", "exited=x"}, `--filter "exited=x": want an exit status, a number`, "layers ps"},
		{[]string{"ps", "-f", "mounted=maybe"}, `--filter "mounted=maybe": want true or false`, "layers ps"},
		{[]string{"ps", "--format", "xml"}, `--format "xml": want table, json or a Go template such as '{{.ID}}'`, "layers ps"},
		{[]string{"ps", "--format", "{{.Nope}}"}, `can't evaluate field Nope`, "layers ps"},
		{[]string{"images", "--format", "{{.ID"}, `unclosed action (fields: .ID .Names`, "layers images"},
		{[]string{"info", "--format", "{{.Root}}"}, `--format "{{.Root}}": want table or json`, "layers info"},
		{[]string{"completion", "powershell"}, `invalid argument "powershell"`, "layers completion"},
		{[]string{"layer", "nope"}, `unknown command "nope"`, "layers layer"},
		{[]string{"--storage-opt", "novalue", "images"}, `--storage-opt: invalid storage option "novalue": want KEY=VALUE`, "layers images"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, "_"), func(t *testing.T) {
			res := runBin(t, nil, nil, append([]string{"--root", noRoot, "--runroot", noRoot}, c.args...)...)
			checkUsage(t, res, c.want, c.cmd)
			if _, err := os.Stat(noRoot); !os.IsNotExist(err) {
				t.Fatalf("a usage error made the root: %v", err)
			}
		})
	}
}

// TestVersionCompletion: verbs that need no store.
func TestVersionCompletion(t *testing.T) {
	noRoot := filepath.Join(t.TempDir(), "never-made")
	res := runBin(t, nil, nil, "--root", noRoot, "version")
	if res.code != 0 || !strings.HasPrefix(res.stdout, "layers ") || res.stderr != "" {
		t.Fatalf("version: %s", res)
	}
	var v versionJSON
	res = runBin(t, nil, nil, "--root", noRoot, "version", "--format", "json")
	decode(t, res.stdout, &v)
	if v.Version == "" || !strings.HasPrefix(v.Go, "go") {
		t.Fatalf("version json: %+v", v)
	}
	for shell, marker := range map[string]string{"bash": "complete -o default -F __start_layers layers", "zsh": "#compdef layers", "fish": "complete -c layers"} {
		res := runBin(t, nil, nil, "--root", noRoot, "completion", shell)
		if res.code != 0 || res.stderr != "" || !strings.Contains(res.stdout, marker) {
			t.Fatalf("completion %s: exit %d, stderr %q, no %q in %d bytes", shell, res.code, res.stderr, marker, len(res.stdout))
		}
	}
	if _, err := os.Stat(noRoot); !os.IsNotExist(err) {
		t.Fatalf("version or completion made the root: %v", err)
	}
}

// TestErrors: every error is exit 1 with exactly one stderr line
// "layers: what failed: why", and changes nothing.
func TestErrors(t *testing.T) {
	r := newRoot(t, "overlay")
	img := importFixture(t, r, "localhost/busybox:fixture")

	t.Run("unknown image", func(t *testing.T) {
		r.fails(t, `create container: image "nosuch": image not known`, "create", "nosuch")
		r.fails(t, "image not known", "rmi", "nosuch")
		r.fails(t, "image not known", "tag", "nosuch", "x:y")
		r.fails(t, `no container, image or layer "nosuch"`, "inspect", "nosuch")
		r.fails(t, "layer not known", "layer", "diff", "0000")
		r.fails(t, "layer not known", "layer", "apply", "--parent", "0000")
	})

	t.Run("invalid names", func(t *testing.T) {
		r.fails(t, "invalid name", "create", "--name", "-bad", img.id)
		r.fails(t, "invalid name", "tag", img.id, "UPPER/case")
		c := strings.TrimSpace(r.ok(t, "create", "--name", "taken", img.id))
		r.fails(t, "name already in use", "create", "--name", "taken", img.id)
		r.ok(t, "rm", c)
	})

	t.Run("ambiguous prefix", func(t *testing.T) {
		// Random IDs: among 17 containers two share their first hex digit.
		byFirst := map[byte][]string{}
		var ids []string
		var prefix string
		for len(ids) < 17 && prefix == "" {
			id := strings.TrimSpace(r.ok(t, "create", img.id))
			ids = append(ids, id)
			byFirst[id[0]] = append(byFirst[id[0]], id)
			if len(byFirst[id[0]]) == 2 {
				prefix = id[:1]
			}
		}
		res := r.fails(t, "ambiguous ID prefix", "mount", prefix)
		for _, id := range byFirst[prefix[0]] {
			if !strings.Contains(res.stderr, id) {
				t.Errorf("the error does not name %s: %s", id, res)
			}
		}
		r.fails(t, "ambiguous ID prefix", "rm", prefix)
		r.fails(t, "ambiguous ID prefix", "inspect", prefix)
		// A longer, unique prefix works.
		one := byFirst[prefix[0]][0]
		r.ok(t, "inspect", one[:20])
		r.ok(t, append([]string{"rm"}, ids...)...)
		if out := r.ok(t, "ps", "-q"); out != "" {
			t.Fatalf("containers left: %q", out)
		}
	})

	t.Run("image in use", func(t *testing.T) {
		c := strings.TrimSpace(r.ok(t, "create", "--name", "user", img.name))
		r.fails(t, "in use by container "+c, "rmi", img.id)
		var imgs []imageJSON
		decode(t, r.ok(t, "images", "--format", "json"), &imgs)
		if len(imgs) != 1 {
			t.Fatalf("a refused rmi removed the image: %+v", imgs)
		}
		// -f removes the image; the container keeps its layers and runs on.
		r.ok(t, "rmi", "-f", img.id)
		decode(t, r.ok(t, "images", "--format", "json"), &imgs)
		if len(imgs) != 0 {
			t.Fatalf("rmi -f left %+v", imgs)
		}
		mnt := strings.TrimSpace(r.ok(t, "mount", "user"))
		if _, err := os.Stat(filepath.Join(mnt, "bin/busybox")); err != nil {
			t.Fatalf("the container lost its image's files: %v", err)
		}
		// ps shows the removed image by ID.
		if out := r.ok(t, "ps"); !strings.Contains(out, img.id[:12]) {
			t.Fatalf("ps: %q", out)
		}
		// rm of a mounted container unmounts it first.
		r.ok(t, "rm", "user")
		if ms := mountsUnder(t, r.dir); len(ms) != 0 {
			t.Fatalf("rm left mounts: %v", ms)
		}
		r.ok(t, "prune")
		img = importFixture(t, r, "localhost/busybox:fixture")
	})

	t.Run("removed container", func(t *testing.T) {
		c := strings.TrimSpace(r.ok(t, "create", img.id))
		r.ok(t, "rm", c)
		r.fails(t, "container not known", "mount", c)
		r.fails(t, "container not known", "umount", c)
		r.fails(t, "container not known", "diff", c)
		r.fails(t, "container not known", "rm", c)
	})

	t.Run("several arguments, one line", func(t *testing.T) {
		c := strings.TrimSpace(r.ok(t, "create", img.id))
		res := r.fails(t, `container "nosuch1"`, "rm", "nosuch1", c, "nosuch2")
		if !strings.Contains(res.stderr, `"nosuch2"`) {
			t.Fatalf("second failure not reported: %s", res)
		}
		if out := r.ok(t, "ps", "-q"); out != "" {
			t.Fatalf("rm stopped at the first bad argument: %q left", out)
		}
	})

	t.Run("storage options", func(t *testing.T) {
		r.fails(t, `unknown storage option "nosuch"`, "--storage-opt", "nosuch=1", "images")
		r.fails(t, `sync="maybe": want true or false`, "--storage-opt", "sync=maybe", "images")
		r.ok(t, "--storage-opt", "sync=true", "images")
	})

	t.Run("wrong driver", func(t *testing.T) {
		wrong := *r
		wrong.driver = "vfs"
		checkFailure(t, wrong.exec(t, nil, "images"), "driver does not match the root: the root was made with driver overlay, not vfs")
		// From the environment too; and no driver at all means the recorded one.
		res := runBin(t, nil, []string{"LAYERS_ROOT=" + r.dir, "LAYERS_RUNROOT=" + r.runDir, "LAYERS_DRIVER=vfs"}, "images")
		checkFailure(t, res, "the root was made with driver overlay, not vfs")
		res = runBin(t, nil, []string{"LAYERS_ROOT=" + r.dir, "LAYERS_RUNROOT=" + r.runDir}, "info", "--format", "json")
		var in infoJSON
		decode(t, res.stdout, &in)
		if in.Driver != "overlay" || in.Root != r.dir || in.Images != 1 {
			t.Fatalf("info from the environment: %+v", in)
		}
		wrong.driver = "nosuch"
		checkFailure(t, wrong.exec(t, nil, "images"), "driver does not match the root")
		fresh := &root{dir: filepath.Join(filepath.Dir(r.dir), "fresh"), runDir: r.runDir, driver: "nosuch"}
		checkFailure(t, fresh.exec(t, nil, "images"), `unknown driver "nosuch"`)
		// The failed first open left nothing that would pin the root
		// to no driver: the next open with a good one takes it.
		if ents, err := os.ReadDir(fresh.dir); err != nil || len(ents) != 1 || ents[0].Name() != "store.lock" {
			t.Fatalf("a failed first open left %v (%v), want only store.lock", ents, err)
		}
		fresh.driver = "vfs"
		fresh.ok(t, "images")
	})

	t.Run("flags override the environment", func(t *testing.T) {
		other := filepath.Join(filepath.Dir(r.dir), "other")
		res := runBin(t, nil, []string{"LAYERS_ROOT=" + other, "LAYERS_DRIVER=vfs"}, "--root", r.dir, "--driver", "overlay", "--runroot", r.runDir, "info", "--format", "json")
		var in infoJSON
		decode(t, res.stdout, &in)
		if in.Root != r.dir || in.Driver != "overlay" {
			t.Fatalf("info: %+v (%s)", in, res)
		}
	})

	t.Run("bad tar", func(t *testing.T) {
		res := r.exec(t, []byte("this is not a tar"), "layer", "apply")
		checkFailure(t, res, "apply layer")
		// An entry outside the layer: one clear line, the layer and the
		// operation named once.
		res = r.exec(t, fixtures.Tar(fixtures.Raw(tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}, "x")), "layer", "apply")
		checkFailure(t, res, `: entry "../escape": path climbs above the layer root`)
		id, _, _ := strings.Cut(strings.TrimPrefix(res.stderr, "layers: apply layer "), ":")
		if !strings.HasPrefix(res.stderr, "layers: apply layer ") || len(id) != 64 || strings.Count(res.stderr, id) != 1 || strings.Count(res.stderr, "apply layer") != 1 {
			t.Fatalf("want \"layers: apply layer ID: entry ...\" naming the layer once: %s", res)
		}
		var ls []layerJSON
		decode(t, r.ok(t, "layers", "--format", "json"), &ls)
		if len(ls) != 1 {
			t.Fatalf("a failed apply left a layer: %+v", ls)
		}
	})

	t.Run("check finds and repairs", func(t *testing.T) {
		junk := filepath.Join(r.dir, "blobs", "sha256", strings.Repeat("ab", 32))
		if err := os.WriteFile(junk, []byte("junk"), 0o600); err != nil {
			t.Fatal(err)
		}
		res := r.exec(t, nil, "check")
		checkFailure(t, res, "check: 1 problem found (layers check --repair fixes them)")
		if !strings.HasPrefix(res.stdout, "orphan-blob "+filepath.Base(junk)) {
			t.Fatalf("check: %s", res)
		}
		var problems []struct {
			Kind, ID string
			Fixed    bool
		}
		res = r.exec(t, nil, "check", "--format", "json")
		decode(t, res.stdout, &problems)
		if len(problems) != 1 || problems[0].Kind != "orphan-blob" || problems[0].Fixed {
			t.Fatalf("check json: %+v", problems)
		}
		out := r.ok(t, "check", "--repair")
		if !strings.Contains(out, "(fixed)") {
			t.Fatalf("check --repair: %q", out)
		}
		if _, err := os.Stat(junk); !os.IsNotExist(err) {
			t.Fatalf("repair left the orphan blob: %v", err)
		}
		if out := r.ok(t, "check"); out != "no problems found\n" {
			t.Fatalf("check after repair: %q", out)
		}
	})

	t.Run("terminal refused", func(t *testing.T) {
		tty, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
		if err != nil {
			t.Skip("no pty:", err)
		}
		defer tty.Close()
		if !isTerminal(tty) || isTerminal(os.NewFile(^uintptr(0), "bad")) {
			t.Fatal("isTerminal")
		}
	})

	if names := strings.Fields(r.ok(t, "images", "-q", "--no-trunc")); !slices.Equal(names, []string{img.id}) {
		t.Fatalf("images at the end: %v", names)
	}
}
