package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// decode unmarshals JSON output strictly into v.
func decode(t *testing.T, out string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value in %q", out)
	}
}

// TestFlow runs every verb of the contract that needs neither registry
// nor runtime, in the order a user would, on each driver, checking table
// and JSON output.
func TestFlow(t *testing.T) {
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			testFlow(t, newRoot(t, driver))
		})
	}
}

func testFlow(t *testing.T, r *root) {
	img := importFixture(t, r, "localhost/busybox:fixture", "sh")

	// info
	var info infoJSON
	decode(t, r.ok(t, "info", "--format", "json"), &info)
	if info.Root != r.dir || info.RunRoot != r.runDir || info.Driver != r.driver || info.Images != 1 || info.Layers != 1 || info.Containers != 0 {
		t.Fatalf("info: %+v", info)
	}
	if len(info.DriverStatus) == 0 || info.Kernel == "" || !slices.Contains(info.Drivers, r.driver) {
		t.Fatalf("info: %+v", info)
	}
	if out := r.ok(t, "info"); !strings.Contains(out, "driver") || !strings.Contains(out, r.driver) {
		t.Fatalf("info table: %q", out)
	}

	// images
	var imgs []imageJSON
	decode(t, r.ok(t, "images", "--format", "json"), &imgs)
	if len(imgs) != 1 {
		t.Fatalf("images: %+v", imgs)
	}
	if i := imgs[0]; i.ID != img.id || !slices.Equal(i.Names, []string{img.name}) || !slices.Equal(i.Layers, []string{img.layer}) ||
		i.Size <= 0 || i.Digest != "" || time.Since(i.Created) > time.Hour {
		t.Fatalf("images: %+v, want %+v", i, img)
	}
	table := lines(r.ok(t, "images"))
	if len(table) != 2 || !regexp.MustCompile(`^REPOSITORY\s+TAG\s+IMAGE ID\s+CREATED\s+SIZE\s+LAYERS$`).MatchString(table[0]) ||
		!regexp.MustCompile(`^localhost/busybox\s+fixture\s+`+img.id[:12]+`\s+.* ago\s+\S+B\s+1$`).MatchString(table[1]) {
		t.Fatalf("images table:\n%s", strings.Join(table, "\n"))
	}
	// Columns line up: every row starts its IMAGE ID at the header's column.
	if strings.Index(table[0], "IMAGE ID") != strings.Index(table[1], img.id[:12]) {
		t.Fatalf("images table not aligned:\n%s", strings.Join(table, "\n"))
	}
	if out := r.ok(t, "images", "--no-trunc"); !strings.Contains(out, img.id) {
		t.Fatalf("images --no-trunc: %q", out)
	}
	if out := r.ok(t, "--quiet", "images"); out != img.id[:12]+"\n" {
		t.Fatalf("images -q: %q", out)
	}
	if out, want := r.ok(t, "images", "--format", `{{.ID}} {{join .Names ","}} {{len .Layers}}`), img.id+" "+img.name+" 1\n"; out != want {
		t.Fatalf("images --format template: %q, want %q", out, want)
	}
	if out := r.ok(t, "images", "-a"); out != strings.Join(table, "\n")+"\n" {
		t.Fatalf("images -a (docker's habit) differs from images:\n%s", out)
	}

	// create: prints the ID bare.
	out := r.ok(t, "create", "--name", "c1", "localhost/busybox:fixture")
	cid := strings.TrimSuffix(out, "\n")
	if !hexID.MatchString(cid) || out != cid+"\n" {
		t.Fatalf("create printed %q, want an ID and a newline", out)
	}

	// Shell completion offers the container by name and short ID, and
	// images by name.
	if res := r.exec(t, nil, "__complete", "mount", ""); res.code != 0 || !strings.Contains(res.stdout, "c1\n") || !strings.Contains(res.stdout, cid[:12]+"\n") {
		t.Fatalf("completion of mount: %s", res)
	}
	if res := r.exec(t, nil, "__complete", "create", ""); res.code != 0 || !strings.Contains(res.stdout, img.name+"\n") {
		t.Fatalf("completion of create: %s", res)
	}

	// ps
	var cs []containerJSON
	decode(t, r.ok(t, "ps", "--format", "json"), &cs)
	if len(cs) != 1 || cs[0].ID != cid || cs[0].Name != "c1" || cs[0].Image != img.id || !hexID.MatchString(cs[0].Layer) || cs[0].Mounted {
		t.Fatalf("ps: %+v", cs)
	}
	rwLayer := cs[0].Layer

	// mount: prints the path only; the image's files are there.
	out = r.ok(t, "mount", "c1")
	mnt := strings.TrimSuffix(out, "\n")
	if !filepath.IsAbs(mnt) || strings.ContainsAny(mnt, "\n\t ") {
		t.Fatalf("mount printed %q", out)
	}
	if _, err := os.Stat(filepath.Join(mnt, "bin/busybox")); err != nil {
		t.Fatalf("mounted root: %v", err)
	}
	// A mount in another process, by ID prefix, shares the mount.
	if out := r.ok(t, "mount", cid[:8]); out != mnt+"\n" {
		t.Fatalf("second mount printed %q, want %q", out, mnt)
	}
	if err := os.WriteFile(filepath.Join(mnt, "hello.txt"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	weird := "we\"ird\\na\tme\x01"
	if err := os.WriteFile(filepath.Join(mnt, "tmp", weird), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "tmp", "café"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "etc/group")); err != nil {
		t.Fatal(err)
	}
	decode(t, r.ok(t, "ps", "--format", "json"), &cs)
	if !cs[0].Mounted {
		t.Fatalf("ps after mount: %+v", cs)
	}
	table = lines(r.ok(t, "ps"))
	if len(table) != 2 || !regexp.MustCompile(`^CONTAINER ID\s+IMAGE\s+NAME\s+MOUNTED\s+CREATED\s+STATUS$`).MatchString(table[0]) ||
		!regexp.MustCompile(`^`+cid[:12]+`\s+localhost/busybox:fixture\s+c1\s+yes\s+.* ago\s+created$`).MatchString(table[1]) {
		t.Fatalf("ps table:\n%s", strings.Join(table, "\n"))
	}
	if out, want := r.ok(t, "ps", "--format", "{{.ID}}\t{{.Name}} {{.Mounted}} {{upper .Status}}"), cid+"\tc1 true CREATED\n"; out != want {
		t.Fatalf("ps --format template: %q, want %q", out, want)
	}
	if out := r.ok(t, "ps", "--all"); out != strings.Join(table, "\n")+"\n" {
		t.Fatalf("ps --all (docker's habit) differs from ps:\n%s", out)
	}

	// diff, with git's quoting.
	got := lines(r.ok(t, "diff", "c1"))
	for _, want := range []string{"A /hello.txt", `A "/tmp/we\"ird\\na\tme\001"`, "A /tmp/café", "C /tmp", "D /etc/group"} {
		if !slices.Contains(got, want) {
			t.Errorf("diff: no line %q in\n%s", want, strings.Join(got, "\n"))
		}
	}

	// layers
	var ls []layerJSON
	decode(t, r.ok(t, "layers", "--format", "json"), &ls)
	if len(ls) != 2 {
		t.Fatalf("layers: %+v", ls)
	}
	if l := ls[0]; l.ID != img.layer || l.Parent != "" || l.Kind != "image" || l.DiffID != img.diffID || l.ChainID != img.diffID || l.Size <= 0 {
		t.Fatalf("image layer: %+v", l)
	}
	if l := ls[1]; l.ID != rwLayer || l.Parent != img.layer || l.Kind != "container" || l.DiffID != "" || l.ChainID != "" {
		t.Fatalf("container layer: %+v", l)
	}
	table = lines(r.ok(t, "layers"))
	if len(table) != 3 || !strings.HasPrefix(table[0], "LAYER ID") || !strings.HasPrefix(table[1], img.layer[:12]+" ") ||
		!strings.Contains(table[2], " "+img.layer[:12]+" ") || !strings.Contains(table[2], "container") {
		t.Fatalf("layers table:\n%s", strings.Join(table, "\n"))
	}
	// {{json .}} is the entry as --format json prints it, on one line.
	var fromTemplate []layerJSON
	for _, line := range lines(r.ok(t, "layers", "--format", "{{json .}}")) {
		var l layerJSON
		decode(t, line, &l)
		fromTemplate = append(fromTemplate, l)
	}
	if len(fromTemplate) != len(ls) || fromTemplate[0].ID != ls[0].ID || fromTemplate[1].Kind != ls[1].Kind {
		t.Fatalf("layers --format '{{json .}}': %+v, want %+v", fromTemplate, ls)
	}

	// inspect -f: a template per argument, over the fields by Go name.
	if out, want := r.ok(t, "inspect", "-f", "{{.Type}} {{.ID}} {{.Name}}", "c1"), "container "+cid+" c1\n"; out != want {
		t.Fatalf("inspect -f: %q, want %q", out, want)
	}
	var cfgFromTemplate map[string]any
	decode(t, r.ok(t, "inspect", "--format", "{{json .Config}}", "localhost/busybox:fixture"), &cfgFromTemplate)
	if _, ok := cfgFromTemplate["rootfs"]; !ok {
		t.Fatalf("inspect --format '{{json .Config}}': %v, want the image config", cfgFromTemplate)
	}
	if res := r.exec(t, nil, "inspect", "-f", "{{.MountPath}}", "localhost/busybox:fixture"); res.code != 1 || !strings.Contains(res.stderr, "can't evaluate field MountPath") {
		t.Fatalf("inspect -f with a container's field on an image: %s", res)
	}
	checkUsage(t, r.exec(t, nil, "inspect", "-f", "{{.ID", "c1"), "unclosed action", "layers inspect")

	// inspect: one array, an object per argument, each typed.
	var details []map[string]any
	decode(t, r.ok(t, "inspect", "c1", "localhost/busybox:fixture", img.layer[:10]), &details)
	if len(details) != 3 || details[0]["type"] != "container" || details[0]["id"] != cid || details[0]["mount_path"] != mnt ||
		details[0]["mount_count"] != float64(2) {
		t.Fatalf("inspect container: %+v", details)
	}
	if details[1]["type"] != "image" || details[1]["id"] != img.id || details[1]["top_layer"] != img.layer {
		t.Fatalf("inspect image: %+v", details[1])
	}
	if cfg, ok := details[1]["config"].(map[string]any); !ok || cfg["rootfs"] == nil {
		t.Fatalf("inspect image config: %+v", details[1]["config"])
	}
	if details[2]["type"] != "layer" || details[2]["id"] != img.layer || details[2]["diff_id"] != img.diffID {
		t.Fatalf("inspect layer: %+v", details[2])
	}

	// tag, and rmi of one of two names untags only.
	r.ok(t, "tag", img.id[:12], "other:v1")
	decode(t, r.ok(t, "images", "--format", "json"), &imgs)
	if len(imgs) != 1 || !slices.Equal(imgs[0].Names, []string{"docker.io/library/other:v1", img.name}) {
		t.Fatalf("images after tag: %+v", imgs)
	}
	if out := r.ok(t, "rmi", "other:v1"); out != "" {
		t.Fatalf("rmi printed %q", out)
	}
	decode(t, r.ok(t, "images", "--format", "json"), &imgs)
	if len(imgs) != 1 || !slices.Equal(imgs[0].Names, []string{img.name}) {
		t.Fatalf("images after rmi of one name: %+v", imgs)
	}

	// umount, twice: the count is shared between processes.
	r.ok(t, "umount", "c1")
	if len(mountsUnder(t, r.dir)) == 0 && r.driver == "overlay" {
		t.Fatalf("one umount of two undid the overlay mount")
	}
	r.ok(t, "umount", "c1")
	if ms := mountsUnder(t, r.dir); len(ms) != 0 {
		t.Fatalf("mounts left after the last umount: %v", ms)
	}
	decode(t, r.ok(t, "ps", "--format", "json"), &cs)
	if cs[0].Mounted {
		t.Fatalf("ps after umount: %+v", cs)
	}

	// layer diff of the image layer: the tar applied, byte for byte.
	res := r.exec(t, nil, "layer", "diff", img.layer)
	if res.code != 0 || res.stderr != "" {
		t.Fatalf("layer diff: %s", res)
	}
	sum := sha256.Sum256([]byte(res.stdout))
	if "sha256:"+hex.EncodeToString(sum[:]) != img.diffID {
		t.Fatalf("layer diff of the image layer does not hash to its diff ID")
	}
	// layer diff of the container's layer: its changes as a tar.
	res = r.exec(t, nil, "layer", "diff", rwLayer)
	if res.code != 0 || res.stderr != "" {
		t.Fatalf("layer diff: %s", res)
	}
	names := tarNames(t, []byte(res.stdout))
	for _, want := range []string{"hello.txt", "etc/.wh.group"} {
		if !slices.Contains(names, want) {
			t.Fatalf("container layer tar: no %s in %v", want, names)
		}
	}

	// layer apply of that tar on the image layer: prints the new ID.
	res = r.exec(t, []byte(res.stdout), "layer", "apply", "--parent", img.layer[:12])
	newLayer := strings.TrimSuffix(res.stdout, "\n")
	if res.code != 0 || res.stderr != "" || !hexID.MatchString(newLayer) {
		t.Fatalf("layer apply: %s", res)
	}
	decode(t, r.ok(t, "layers", "--format", "json"), &ls)
	if len(ls) != 3 || ls[2].ID != newLayer || ls[2].Parent != img.layer || ls[2].Kind != "image" || !strings.HasPrefix(ls[2].DiffID, "sha256:") {
		t.Fatalf("layers after apply: %+v", ls)
	}

	// check: clean; with --digests too.
	if out := r.ok(t, "check"); out != "no problems found\n" {
		t.Fatalf("check: %q", out)
	}
	if out := r.ok(t, "check", "--digests"); out != "no problems found\n" {
		t.Fatalf("check --digests: %q", out)
	}
	var problems []map[string]any
	decode(t, r.ok(t, "check", "--format", "json"), &problems)
	if len(problems) != 0 {
		t.Fatalf("check json: %+v", problems)
	}

	// rm, rmi, prune: the applied layer is the only one left, then none.
	if out := r.ok(t, "rm", "c1"); out != "" {
		t.Fatalf("rm printed %q", out)
	}
	r.ok(t, "rmi", img.id)
	decode(t, r.ok(t, "layers", "--format", "json"), &ls)
	if len(ls) != 2 {
		t.Fatalf("layers after rmi (the applied layer keeps its parent): %+v", ls)
	}
	var pr struct {
		Layers []string `json:"layers"`
		Size   int64    `json:"size"`
	}
	decode(t, r.ok(t, "prune", "--format", "json"), &pr)
	if !slices.Equal(pr.Layers, []string{newLayer, img.layer}) || pr.Size <= 0 {
		t.Fatalf("prune: %+v", pr)
	}
	if out := r.ok(t, "prune"); out != "freed 0 layers, 0B\n" {
		t.Fatalf("second prune: %q", out)
	}
	for _, verb := range []string{"images", "ps", "layers"} {
		if out := r.ok(t, verb, "--format", "json"); out != "[]\n" {
			t.Fatalf("%s at the end: %q", verb, out)
		}
	}
	if out := r.ok(t, "check", "--digests"); out != "no problems found\n" {
		t.Fatalf("final check: %q", out)
	}
}

// tarNames lists the entry names of a tar.
func tarNames(t *testing.T, b []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatalf("tar: %v", err)
		}
		names = append(names, strings.TrimSuffix(h.Name, "/"))
	}
}

// `images REF` lists what docker's does: the names in REF's repository,
// any tag, or with a tag the one name; an image is listed by the rows of
// its names that match, and JSON gives each matching image whole.
func TestImagesFilter(t *testing.T) {
	r := newRoot(t, "vfs")
	img := importFixture(t, r, "localhost/busybox:fixture", "sh")
	r.ok(t, "tag", "localhost/busybox:fixture", "localhost/busybox:other")
	r.ok(t, "tag", "localhost/busybox:fixture", "example.com/elsewhere:1")
	rows := func(args ...string) []string {
		t.Helper()
		var out []string
		for _, l := range lines(r.ok(t, append([]string{"images"}, args...)...))[1:] {
			f := strings.Fields(l)
			out = append(out, f[0]+":"+f[1]+" "+f[2])
		}
		slices.Sort(out)
		return out
	}
	id := img.id[:12]
	for _, c := range []struct {
		ref  string
		want []string
	}{
		{"localhost/busybox", []string{"localhost/busybox:fixture " + id, "localhost/busybox:other " + id}},
		{"localhost/busybox:other", []string{"localhost/busybox:other " + id}},
		{"example.com/elsewhere", []string{"example.com/elsewhere:1 " + id}},
		{"localhost/busybox:nope", nil},
		{"busybox", nil}, // docker.io/library/busybox, another repository
	} {
		if got := rows(c.ref); !slices.Equal(got, c.want) {
			t.Errorf("images %s: %q, want %q", c.ref, got, c.want)
		}
	}
	var imgs []imageJSON
	decode(t, r.ok(t, "images", "--format", "json", "example.com/elsewhere"), &imgs)
	if len(imgs) != 1 || imgs[0].ID != img.id || len(imgs[0].Names) != 3 {
		t.Fatalf("images --format json example.com/elsewhere: %+v, want the image with its 3 names", imgs)
	}
	decode(t, r.ok(t, "images", "--format", "json", "localhost/busybox:nope"), &imgs)
	if len(imgs) != 0 {
		t.Fatalf("images --format json of a name nobody has: %+v", imgs)
	}
	r.fails(t, `invalid name "Bad::"`, "images", "Bad::")

	// dangling=true: images without a name, as docker's (a commit
	// without REF makes one).
	r.ok(t, "create", "--name", "c", "localhost/busybox:fixture")
	nameless := strings.TrimSpace(r.ok(t, "commit", "c"))
	for _, c := range []struct{ filter, want string }{
		{"dangling=true", nameless + "\n"},
		{"dangling=false", img.id + "\n"},
	} {
		if got := r.ok(t, "images", "-q", "--no-trunc", "-f", c.filter); got != c.want {
			t.Errorf("images -f %s: %q, want %q", c.filter, got, c.want)
		}
	}
	checkUsage(t, r.exec(t, nil, "images", "-f", "dangling=maybe"), `--filter "dangling=maybe": want dangling=true or dangling=false`, "layers images")
	checkUsage(t, r.exec(t, nil, "images", "-f", "reference=x"), `--filter "reference=x"`, "layers images")
}

// ps --filter, as docker's: the values of one key are alternatives,
// different keys must all match.
func TestPsFilter(t *testing.T) {
	r := newRoot(t, "vfs")
	importFixture(t, r, "localhost/busybox:fixture", "sh")
	web := strings.TrimSpace(r.ok(t, "create", "--name", "web-1", "localhost/busybox:fixture"))
	db := strings.TrimSpace(r.ok(t, "create", "--name", "db", "localhost/busybox:fixture"))
	r.ok(t, "mount", "web-1")
	// check runs ps with filters and compares the full IDs it lists.
	check := func(filters []string, want ...string) {
		t.Helper()
		args := []string{"ps", "--no-trunc", "-q"}
		for _, f := range filters {
			args = append(args, "--filter", f)
		}
		got := lines(r.ok(t, args...))
		slices.Sort(got)
		if want := slices.Sorted(slices.Values(want)); !slices.Equal(got, want) {
			t.Errorf("ps --filter %v: %q, want %q", filters, got, want)
		}
	}
	check([]string{"name=web"}, web)
	check([]string{"mounted=true"}, web)
	check([]string{"mounted=false"}, db)
	check([]string{"id=" + db[:8]}, db)
	check([]string{"image=localhost/busybox:fixture"}, web, db)
	check([]string{"image=localhost/nothing:here"})
	check([]string{"name=web", "name=db"}, web, db)
	check([]string{"name=web", "mounted=false"})
	check([]string{"status=created", "name=d"}, db)
	check([]string{"status=exited"})
	// ancestor= takes images built on the one named, as docker's does;
	// image= only that image.
	r.ok(t, "commit", "db", "localhost/derived:1")
	child := strings.TrimSpace(r.ok(t, "create", "--name", "child", "localhost/derived:1"))
	check([]string{"ancestor=localhost/busybox:fixture"}, web, db, child)
	check([]string{"image=localhost/busybox:fixture"}, web, db)
	check([]string{"ancestor=localhost/derived:1"}, child)
	check([]string{"ancestor=localhost/nothing:here"})
	// exited= and status=exited take containers of run whose process ended.
	if _, err := exec.LookPath("crun"); err == nil {
		if res := r.exec(t, nil, "run", "--name", "three", "localhost/busybox:fixture", "sh", "-c", "exit 3"); res.code != 3 {
			t.Fatalf("run: %s", res)
		}
		three := strings.TrimSpace(r.ok(t, "ps", "--no-trunc", "-q", "-f", "name=three"))
		if three == "" {
			t.Fatal("ps -f name=three lists nothing after run --name three")
		}
		check([]string{"exited=3"}, three)
		check([]string{"status=exited"}, three)
		check([]string{"exited=0", "exited=3"}, three)
		check([]string{"exited=0"})
	}
	if res := r.exec(t, nil, "__complete", "ps", "--filter", ""); res.code != 0 ||
		!strings.Contains(res.stdout, "name=\n") || !strings.Contains(res.stdout, "status=exited\n") || !strings.Contains(res.stdout, "mounted=true\n") {
		t.Fatalf("completion of ps --filter: %s", res)
	}
}

// umount -a, rm -a and rmi -a, as podman's: every mounted container,
// every container, every image.
func TestAllFlags(t *testing.T) {
	r := newRoot(t, "overlay")
	importFixture(t, r, "localhost/busybox:fixture", "sh")
	r.ok(t, "tag", "localhost/busybox:fixture", "localhost/busybox:second")
	for _, name := range []string{"c1", "c2", "c3"} {
		r.ok(t, "create", "--name", name, "localhost/busybox:fixture")
	}
	r.ok(t, "mount", "c1")
	r.ok(t, "mount", "c2")
	mounted := func() (n int) {
		t.Helper()
		var cs []containerJSON
		decode(t, r.ok(t, "ps", "--format", "json"), &cs)
		for _, c := range cs {
			if c.Mounted {
				n++
			}
		}
		return n
	}
	if n := mounted(); n != 2 {
		t.Fatalf("%d containers mounted, want 2", n)
	}
	if out := r.ok(t, "umount", "-a"); out != "" || mounted() != 0 {
		t.Fatalf("umount -a: printed %q, %d containers still mounted", out, mounted())
	}
	checkUsage(t, r.exec(t, nil, "rm", "-a", "c1"), "--all takes no arguments", "layers rm")
	checkUsage(t, r.exec(t, nil, "umount", "-a", "c1"), "--all takes no arguments", "layers umount")
	checkUsage(t, r.exec(t, nil, "rmi"), "requires at least 1 arg(s)", "layers rmi")
	// Images that containers use stay, as with rmi IMAGE.
	r.fails(t, "in use", "rmi", "-a")
	if out := r.ok(t, "images", "-q"); out == "" {
		t.Fatal("rmi -a without -f removed an image that containers use")
	}
	r.ok(t, "rm", "-a")
	if out := r.ok(t, "ps", "-q"); out != "" {
		t.Fatalf("ps after rm -a: %q", out)
	}
	r.ok(t, "rmi", "-a")
	if out := r.ok(t, "images", "-q") + r.ok(t, "layers", "-q"); out != "" {
		t.Fatalf("images and layers after rmi -a: %q", out)
	}
	if out := r.ok(t, "check"); !strings.Contains(out, "no problems") {
		t.Fatalf("check after rmi -a: %q", out)
	}
}
