package image

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/internal/loopfs"
	"github.com/layers-storage/layers/internal/syncbuf"
	"github.com/layers-storage/layers/store"
	_ "github.com/layers-storage/layers/store/all" // every driver
)

// registryBin is Debian's distribution registry (package docker-registry,
// installed by hack/deps.sh).
const registryBin = "/usr/bin/docker-registry"

// testRegistry is a real registry process on 127.0.0.1.
type testRegistry struct {
	host    string // 127.0.0.1:port
	storage string // the registry's filesystem storage root
	pool    *x509.CertPool
	user    string
	pass    string
}

type registryOpts struct {
	tls        bool
	user, pass string
}

// startRegistry runs docker-registry on a free port of 127.0.0.1 with
// its storage on a fresh tmpfs, until the test ends.
func startRegistry(t testing.TB, o registryOpts) *testRegistry {
	t.Helper()
	if _, err := os.Stat(registryBin); err != nil {
		t.Skipf("%s not found (hack/deps.sh installs Debian's docker-registry): %v", registryBin, err)
	}
	dir := t.TempDir()
	r := &testRegistry{storage: filepath.Join(loopfs.New(t, "tmpfs", 0), "registry"), user: o.user, pass: o.pass}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.host = ln.Addr().String()
	ln.Close()

	var cfg strings.Builder
	fmt.Fprintf(&cfg, "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n")
	fmt.Fprintf(&cfg, "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n", r.storage)
	fmt.Fprintf(&cfg, "http:\n  addr: %s\n", r.host)
	if o.tls {
		certFile, keyFile, pool := selfSignedCert(t, dir)
		r.pool = pool
		fmt.Fprintf(&cfg, "  tls:\n    certificate: %s\n    key: %s\n", certFile, keyFile)
	}
	if o.user != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(o.pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		pw := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(pw, []byte(o.user+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&cfg, "auth:\n  htpasswd:\n    realm: layers-test\n    path: %s\n", pw)
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	var logBuf syncbuf.Buffer
	cmd := exec.Command(registryBin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", registryBin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	scheme := "http"
	hc := &http.Client{Timeout: time.Second}
	if o.tls {
		scheme = "https"
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.pool}}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := hc.Get(scheme + "://" + r.host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("registry exited: %v\n%s", err, logBuf.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry not answering on %s: %v\n%s", r.host, err, logBuf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

// blobPath is where the registry keeps blob d's bytes.
func (r *testRegistry) blobPath(d digest.Digest) string {
	e := d.Encoded()
	return filepath.Join(r.storage, "docker/registry/v2/blobs", string(d.Algorithm()), e[:2], e, "data")
}

// selfSignedCert writes a certificate for 127.0.0.1 and its key into
// dir, and returns their paths and a pool trusting it.
func selfSignedCert(t testing.TB, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "layers test registry"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// proxy is a reverse proxy in front of a plain-http registry that counts
// requests by kind and may tamper with them.
type proxy struct {
	host   string
	mu     sync.Mutex
	counts map[string]int
	// tamper, when set, may answer a request itself (returning true).
	tamper func(w http.ResponseWriter, r *http.Request) bool
}

// newProxy starts a counting proxy to reg.
func newProxy(t testing.TB, reg *testRegistry) *proxy {
	t.Helper()
	target, _ := url.Parse("http://" + reg.host)
	rp := httputil.NewSingleHostReverseProxy(target)
	p := &proxy{counts: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.counts[requestKind(r)]++
		tamper := p.tamper
		p.mu.Unlock()
		if tamper != nil && tamper(w, r) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// requestKind names a registry request: "GET blob", "HEAD blob",
// "POST upload", "POST mount", "PUT upload", "PATCH upload", "GET
// manifest", "PUT manifest", ...
func requestKind(r *http.Request) string {
	p := r.URL.Path
	switch {
	case strings.Contains(p, "/blobs/uploads"):
		if r.Method == http.MethodPost && r.URL.Query().Get("mount") != "" {
			return "POST mount"
		}
		return r.Method + " upload"
	case strings.Contains(p, "/blobs/"):
		if r.Header.Get("Range") != "" {
			return r.Method + " blob range"
		}
		return r.Method + " blob"
	case strings.Contains(p, "/manifests/"):
		return r.Method + " manifest"
	}
	return r.Method + " " + p
}

// count returns the requests of the kinds seen since the last reset.
func (p *proxy) count(kinds ...string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, k := range kinds {
		n += p.counts[k]
	}
	return n
}

func (p *proxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts = map[string]int{}
}

func (p *proxy) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := json.Marshal(p.counts)
	return string(b)
}

// newStore opens a store on a fresh tmpfs with driver ("" for the
// default), closed when the test ends.
func newStore(t testing.TB, driver string) *store.Store {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts, and the fixture layer has files owned by other users")
	}
	dir := loopfs.New(t, "tmpfs", 0)
	st, err := store.Open(store.Options{Root: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run"), Driver: driver})
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
			}
		}
	})
	return st
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

// extraLayer is a small layer on busybox with a file, a whiteout of a
// busybox entry and an opaque directory: what a tree comparison notices.
func extraLayer(tag string) []byte {
	return fixtures.Tar(
		fixtures.Dir("etc/", 0o755),
		fixtures.File("etc/"+tag, "layer "+tag+"\n", 0o644, fixtures.Owner(1000, 1000)),
		fixtures.Dir("data/", 0o700),
		fixtures.File("data/blob", strings.Repeat(tag, 4096), 0o600),
		fixtures.Symlink("link-"+tag, "/etc/"+tag),
	)
}

// storeImage stores an image of the uncompressed layers (bottom first)
// in st, named names, and returns it.
func storeImage(t testing.TB, st *store.Store, layers [][]byte, names ...string) *store.Image {
	t.Helper()
	ctx := context.Background()
	parent := ""
	for _, l := range layers {
		layer, err := st.ApplyDiff(ctx, parent, bytes.NewReader(l), nil)
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
		parent = layer.ID
	}
	cfg, err := fixtures.ImageConfig(layers, "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.CreateImage(store.ImageOptions{Config: cfg, TopLayer: parent, Names: names})
	if err != nil {
		t.Fatalf("create image: %v", err)
	}
	return img
}

// appliedTree is the root tree of layers applied in a store of their own:
// what a pull of an image of those layers must give.
func appliedTree(t testing.TB, layers [][]byte) fixtures.Tree {
	t.Helper()
	local := newStore(t, "")
	return rootTree(t, local, storeImage(t, local, layers).ID)
}

// rootTree mounts a new container of image ref in st and snapshots it.
func rootTree(t testing.TB, st *store.Store, ref string) fixtures.Tree {
	t.Helper()
	c, err := st.CreateContainer(ref, nil)
	if err != nil {
		t.Fatalf("create container: %v", err)
	}
	defer func() {
		if err := st.RemoveContainer(c.ID, true); err != nil {
			t.Errorf("remove container: %v", err)
		}
	}()
	dir, err := st.Mount(c.ID)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	defer func() {
		if err := st.Unmount(c.ID, false); err != nil {
			t.Errorf("unmount: %v", err)
		}
	}()
	tree, err := fixtures.Snapshot(dir, fixtures.WithoutOverlayXattrs())
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return tree
}

// rawImage is an image pushed with go-containerregistry directly, with
// blobs compressed as the test says.
type rawImage struct {
	manifest []byte
	digest   digest.Digest
	config   []byte
	blobs    [][]byte
	descs    []v1.Descriptor
}

// rawOpts tune pushRaw.
type rawOpts struct {
	arch     string                  // config architecture; "" the host's
	comp     []diff.Compression      // per layer; missing ones gzip
	config   func(cfg []byte) []byte // rewrite the config (bad diff IDs)
	docker   bool                    // Docker schema2 media types instead of OCI
	noTagPut bool                    // upload blobs and manifest by digest only
	remote   []remote.Option         // transport and auth
}

// pushRaw pushes an image of the uncompressed layers to ref with
// go-containerregistry (not with Push, which is under test).
func pushRaw(t testing.TB, ref string, layers [][]byte, o rawOpts) *rawImage {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := fixtures.ImageConfig(layers, "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if o.arch != "" {
		var m map[string]any
		if err := json.Unmarshal(cfg, &m); err != nil {
			t.Fatal(err)
		}
		m["architecture"] = o.arch
		if cfg, err = json.Marshal(m); err != nil {
			t.Fatal(err)
		}
	}
	if o.config != nil {
		cfg = o.config(cfg)
	}
	ri := &rawImage{config: cfg}
	cfgType, manType := types.OCIConfigJSON, types.OCIManifestSchema1
	if o.docker {
		cfgType, manType = types.DockerConfigJSON, types.DockerManifestSchema2
	}
	for i, l := range layers {
		c := diff.Gzip
		if i < len(o.comp) {
			c = o.comp[i]
		}
		blob, err := fixtures.Compress(l, c)
		if err != nil {
			t.Fatal(err)
		}
		mt := map[diff.Compression]types.MediaType{diff.Gzip: types.OCILayer, diff.Zstd: types.OCILayerZStd, diff.Uncompressed: types.OCIUncompressedLayer}[c]
		if o.docker {
			mt = map[diff.Compression]types.MediaType{diff.Gzip: types.DockerLayer, diff.Uncompressed: types.DockerUncompressedLayer}[c]
		}
		sl := static.NewLayer(blob, mt)
		if err := remote.WriteLayer(r.Context(), sl, o.remote...); err != nil {
			t.Fatalf("push layer: %v", err)
		}
		h, _ := sl.Digest()
		ri.blobs = append(ri.blobs, blob)
		ri.descs = append(ri.descs, v1.Descriptor{MediaType: mt, Size: int64(len(blob)), Digest: h})
	}
	cl := static.NewLayer(cfg, cfgType)
	if err := remote.WriteLayer(r.Context(), cl, o.remote...); err != nil {
		t.Fatalf("push config: %v", err)
	}
	ch, _ := cl.Digest()
	m := v1.Manifest{SchemaVersion: 2, MediaType: manType, Config: v1.Descriptor{MediaType: cfgType, Size: int64(len(cfg)), Digest: ch}, Layers: ri.descs}
	if ri.manifest, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	ri.digest = digest.FromBytes(ri.manifest)
	target := r
	if o.noTagPut {
		target = r.Context().Digest(ri.digest.String())
	}
	if err := remote.Put(target, rawManifest{ri.manifest, manType}, o.remote...); err != nil {
		t.Fatalf("push manifest: %v", err)
	}
	return ri
}

// hostArch is the architecture the host's platform default picks.
var hostArch = runtime.GOARCH

// assertNothingNew checks that st has exactly the layers and images it
// had (before), and that Check finds nothing wrong.
func assertNothingNew(t testing.TB, st *store.Store, beforeLayers, beforeImages int) {
	t.Helper()
	ls, err := st.Layers()
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := st.Images()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != beforeLayers || len(imgs) != beforeImages {
		t.Errorf("store has %d layers and %d images, want %d and %d", len(ls), len(imgs), beforeLayers, beforeImages)
	}
	rep, err := st.Check(context.Background(), store.CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() {
		t.Errorf("check: %v", rep.Problems)
	}
	ents, err := os.ReadDir(filepath.Join(st.Root(), "tmp"))
	if err == nil {
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".lock") {
				t.Errorf("left in tmp: %s", e.Name())
			}
		}
	}
}

// keychainFor is a keychain that knows reg's user.
func keychainFor(reg *testRegistry) authn.Keychain {
	return staticKeychain{host: reg.host, auth: &authn.Basic{Username: reg.user, Password: reg.pass}}
}

type staticKeychain struct {
	host string
	auth authn.Authenticator
}

func (k staticKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if r.RegistryStr() == k.host {
		return k.auth, nil
	}
	return authn.Anonymous, nil
}

// fastRetry are remote options whose retries wait milliseconds.
func fastRetry() RemoteOptions {
	return RemoteOptions{retryDelay: time.Millisecond, Retries: 2}
}
