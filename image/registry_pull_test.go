package image

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/diff"
	"github.com/layers-storage/layers/fixtures"
	"github.com/layers-storage/layers/store"
)

// TestPullCompressions pulls images whose layers are gzip, zstd and
// uncompressed, OCI and Docker schema2, and compares the root trees with
// the same layers applied locally.
func TestPullCompressions(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	bb := busybox(t)
	layers := [][]byte{bb, extraLayer("a"), extraLayer("b")}
	want := appliedTree(t, layers)
	ctx := context.Background()
	cases := []struct {
		name   string
		comp   []diff.Compression
		docker bool
	}{
		{"oci-gzip", []diff.Compression{diff.Gzip, diff.Gzip, diff.Gzip}, false},
		{"oci-zstd", []diff.Compression{diff.Zstd, diff.Zstd, diff.Zstd}, false},
		{"oci-none", []diff.Compression{diff.Uncompressed, diff.Uncompressed, diff.Uncompressed}, false},
		{"oci-mixed", []diff.Compression{diff.Zstd, diff.Uncompressed, diff.Gzip}, false},
		{"docker-gzip", []diff.Compression{diff.Gzip, diff.Gzip, diff.Gzip}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ref := reg.host + "/comp/" + c.name + ":v1"
			raw := pushRaw(t, ref, layers, rawOpts{comp: c.comp, docker: c.docker})
			st := newStore(t, "")
			img, err := Pull(ctx, st, ref, &PullOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if img.Digest != raw.digest {
				t.Errorf("image digest %s, pushed manifest %s", img.Digest, raw.digest)
			}
			if img.ID != digest.FromBytes(raw.config).Encoded() {
				t.Errorf("image ID %s is not the config's digest", img.ID)
			}
			if len(img.Names) != 1 || img.Names[0] != ref {
				t.Errorf("names %v, want [%s]", img.Names, ref)
			}
			m, err := st.ImageManifest(img.ID)
			if err != nil || string(m) != string(raw.manifest) {
				t.Errorf("stored manifest differs from the pushed one (%v)", err)
			}
			for i, id := range img.Layers {
				l, err := st.Layer(id)
				if err != nil {
					t.Fatal(err)
				}
				if !hasBlob(l, raw.descs[i].Digest.String()) {
					t.Errorf("layer %d does not remember blob %s: %+v", i, raw.descs[i].Digest, l.Blobs)
				}
				for _, b := range l.Blobs {
					if b.Digest.String() == raw.descs[i].Digest.String() && (b.MediaType != string(raw.descs[i].MediaType) || b.Size != raw.descs[i].Size) {
						t.Errorf("layer %d blob recorded as %+v, pushed %+v", i, b, raw.descs[i])
					}
				}
			}
			fixtures.AssertTreesEqual(t, want, rootTree(t, st, img.ID), fixtures.IgnorePaths("/"))
		})
	}
}

// TestPullSkipsPresentLayers counts the blob downloads through a proxy:
// a second image sharing two of three layers downloads one layer blob,
// and pulling an image again downloads no layer at all.
func TestPullSkipsPresentLayers(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	p := newProxy(t, reg)
	bb := busybox(t)
	pushRaw(t, p.host+"/skip/a:1", [][]byte{bb, extraLayer("a"), extraLayer("b")}, rawOpts{})
	pushRaw(t, p.host+"/skip/b:1", [][]byte{bb, extraLayer("a"), extraLayer("c")}, rawOpts{})
	st := newStore(t, "")
	ctx := context.Background()
	p.reset()
	if _, err := Pull(ctx, st, p.host+"/skip/a:1", &PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := p.count("GET blob"); n != 4 {
		t.Errorf("first pull: %d blob GETs, want 4 (3 layers + config): %s", n, p)
	}
	p.reset()
	var evs atomic.Int64
	opts := &PullOptions{RemoteOptions: RemoteOptions{Progress: func(e Event) {
		if e.Status == StatusExists {
			evs.Add(1)
		}
	}}}
	img, err := Pull(ctx, st, p.host+"/skip/b:1", opts)
	if err != nil {
		t.Fatal(err)
	}
	if n := p.count("GET blob"); n != 2 {
		t.Errorf("second image: %d blob GETs, want 2 (1 layer + config): %s", n, p)
	}
	if evs.Load() != 2 {
		t.Errorf("%d layers reported as existing, want 2", evs.Load())
	}
	ls, _ := st.Layers()
	if len(ls) != 4 {
		t.Errorf("%d layers stored, want 4", len(ls))
	}
	if len(img.Layers) != 3 {
		t.Errorf("image has %d layers", len(img.Layers))
	}
	p.reset()
	if _, err := Pull(ctx, st, p.host+"/skip/a:1", nil); err != nil {
		t.Fatal(err)
	}
	if n := p.count("GET blob"); n != 1 {
		t.Errorf("pull again: %d blob GETs, want 1 (the config): %s", n, p)
	}
}

// TestPullPlatformIndex pushes an index of two platforms and pulls each,
// and the host's by default; a platform the index lacks fails clearly.
func TestPullPlatformIndex(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	bb := busybox(t)
	other := "arm64"
	if hostArch == "arm64" {
		other = "amd64"
	}
	host := pushRaw(t, reg.host+"/multi/img:host", [][]byte{bb, extraLayer("host")}, rawOpts{arch: hostArch, noTagPut: true})
	oth := pushRaw(t, reg.host+"/multi/img:other", [][]byte{bb, extraLayer("other")}, rawOpts{arch: other, noTagPut: true})
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{
		{MediaType: types.OCIManifestSchema1, Size: int64(len(oth.manifest)), Digest: v1.Hash{Algorithm: "sha256", Hex: oth.digest.Encoded()}, Platform: &v1.Platform{OS: "linux", Architecture: other, Variant: "v8"}},
		{MediaType: types.OCIManifestSchema1, Size: int64(len(host.manifest)), Digest: v1.Hash{Algorithm: "sha256", Hex: host.digest.Encoded()}, Platform: &v1.Platform{OS: "linux", Architecture: hostArch}},
	}}
	ib, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(reg.host + "/multi/img:latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(ref, rawManifest{ib, types.OCIImageIndex}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	arch := func(st *store.Store, id string) string {
		cfg, err := st.ImageConfig(id)
		if err != nil {
			t.Fatal(err)
		}
		var c struct{ Architecture string }
		if err := json.Unmarshal(cfg, &c); err != nil {
			t.Fatal(err)
		}
		return c.Architecture
	}
	for _, c := range []struct{ platform, arch string }{{"", hostArch}, {"linux/" + other, other}, {"linux/" + hostArch, hostArch}} {
		st := newStore(t, "")
		img, err := Pull(ctx, st, reg.host+"/multi/img", &PullOptions{Platform: c.platform})
		if err != nil {
			t.Fatalf("platform %q: %v", c.platform, err)
		}
		if got := arch(st, img.ID); got != c.arch {
			t.Errorf("platform %q: pulled %s", c.platform, got)
		}
		wantDigest := host.digest
		if c.arch == other {
			wantDigest = oth.digest
		}
		if img.Digest != wantDigest {
			t.Errorf("platform %q: digest %s, want %s", c.platform, img.Digest, wantDigest)
		}
	}
	st := newStore(t, "")
	_, err = Pull(ctx, st, reg.host+"/multi/img", &PullOptions{Platform: "linux/s390x"})
	if !errors.Is(err, ErrNoPlatform) || !strings.Contains(err.Error(), "linux/"+hostArch) {
		t.Errorf("pull of a missing platform: %v, want ErrNoPlatform listing the index's", err)
	}
	_, err = Pull(ctx, st, reg.host+"/multi/img", &PullOptions{Platform: "linux"})
	if err == nil {
		t.Error("platform without an architecture accepted")
	}
	assertNothingNew(t, st, 0, 0)
}

// TestPullAuthTLS pulls from a registry with htpasswd auth behind TLS
// with a self-signed certificate: with the CA and credentials it works,
// with --insecure instead of the CA too; without credentials or without
// trusting the certificate it fails clearly.
func TestPullAuthTLS(t *testing.T) {
	reg := startRegistry(t, registryOpts{tls: true, user: "alice", pass: "s3cret"})
	bb := busybox(t)
	ref := reg.host + "/auth/img:1"
	// Push with go-containerregistry through a transport trusting the CA.
	pushAuthRaw(t, reg, ref, [][]byte{bb})
	ctx := context.Background()

	st := newStore(t, "")
	img, err := Pull(ctx, st, ref, &PullOptions{RemoteOptions: RemoteOptions{RootCAs: reg.pool, Keychain: keychainFor(reg)}})
	if err != nil {
		t.Fatalf("with CA and credentials: %v", err)
	}
	if len(img.Layers) != 1 {
		t.Errorf("image has %d layers", len(img.Layers))
	}

	st2 := newStore(t, "")
	if _, err := Pull(ctx, st2, ref, &PullOptions{RemoteOptions: RemoteOptions{Insecure: true, Keychain: keychainFor(reg)}}); err != nil {
		t.Errorf("insecure with credentials: %v", err)
	}

	// The default keychain reads $DOCKER_CONFIG/config.json.
	dir := t.TempDir()
	cfg := `{"auths":{"` + reg.host + `":{"auth":"YWxpY2U6czNjcmV0"}}}` // alice:s3cret
	if err := os.WriteFile(dir+"/config.json", []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	t.Setenv("HOME", t.TempDir())
	st3 := newStore(t, "")
	if _, err := Pull(ctx, st3, ref, &PullOptions{RemoteOptions: RemoteOptions{RootCAs: reg.pool}}); err != nil {
		t.Errorf("credentials from DOCKER_CONFIG: %v", err)
	}

	st4 := newStore(t, "")
	_, err = Pull(ctx, st4, ref, &PullOptions{RemoteOptions: RemoteOptions{RootCAs: reg.pool, Keychain: staticKeychain{}}})
	if err == nil || !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Errorf("without credentials: %v, want UNAUTHORIZED", err)
	}
	_, err = Pull(ctx, st4, ref, &PullOptions{RemoteOptions: RemoteOptions{Keychain: keychainFor(reg), Retries: -1}})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted certificate: %v, want a certificate error", err)
	}
	assertNothingNew(t, st4, 0, 0)
}

// pushAuthRaw is pushRaw through reg's CA and credentials.
func pushAuthRaw(t *testing.T, reg *testRegistry, ref string, layers [][]byte) {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: reg.pool}
	pushRaw(t, ref, layers, rawOpts{remote: []remote.Option{remote.WithTransport(tr), remote.WithAuthFromKeychain(keychainFor(reg))}})
}

// TestPullBadBlobs breaks one blob of a three-layer image in each way a
// registry or a network can, and checks that the pull fails with the
// right error and leaves nothing: no image, no layer (not even the good
// ones below the bad one), a clean Check.
func TestPullBadBlobs(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	p := newProxy(t, reg)
	bb := busybox(t)
	layers := [][]byte{bb, extraLayer("a"), extraLayer("b")}
	ctx := context.Background()
	cases := []struct {
		name   string
		break_ func(t *testing.T, ri *rawImage)
		want   error
		text   string
	}{
		{"wrong-digest", func(t *testing.T, ri *rawImage) {
			// Same size, same tar inside (diffID fine): only the gzip
			// header's OS byte differs, so only the blob digest catches it.
			path := reg.blobPath(digest.Digest(ri.descs[2].Digest.String()))
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[9] ^= 0xff
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}, ErrBlobCorrupt, "content has digest"},
		{"truncated", func(t *testing.T, ri *rawImage) {
			// A registry that serves half the blob, and says so.
			p.tamper = shortBlob(reg, ri.descs[2].Digest.String())
		}, ErrBlobCorrupt, "truncated"},
		{"too-long", func(t *testing.T, ri *rawImage) {
			path := reg.blobPath(digest.Digest(ri.descs[2].Digest.String()))
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("trailing garbage"))
			f.Close()
		}, ErrBlobCorrupt, "more bytes"},
		{"missing", func(t *testing.T, ri *rawImage) {
			if err := os.Remove(reg.blobPath(digest.Digest(ri.descs[2].Digest.String()))); err != nil {
				t.Fatal(err)
			}
		}, ErrBlobMissing, ""},
		{"cut-every-time", func(t *testing.T, ri *rawImage) {
			p.tamper = cutBlob(ri.descs[2].Digest.String(), -1)
		}, ErrBlobCorrupt, "truncated"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			defer func() { p.tamper = nil }()
			ref := p.host + "/bad/" + c.name + ":1"
			// A distinct top layer per case: the registry shares blobs.
			ls := append(layers[:2:2], extraLayer("bad-"+c.name+string(rune('0'+i))))
			ri := pushRaw(t, ref, ls, rawOpts{})
			c.break_(t, ri)
			st := newStore(t, "")
			_, err := Pull(ctx, st, ref, &PullOptions{RemoteOptions: fastRetry()})
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("pull: %v, want %v (%q)", err, c.want, c.text)
			}
			if !strings.Contains(err.Error(), ri.descs[2].Digest.String()) {
				t.Errorf("error does not name the blob: %v", err)
			}
			assertNothingNew(t, st, 0, 0)
		})
	}
	t.Run("diffid-mismatch", func(t *testing.T) {
		ref := p.host + "/bad/diffid:1"
		ri := pushRaw(t, ref, [][]byte{bb, extraLayer("d1"), extraLayer("d2")}, rawOpts{config: func(cfg []byte) []byte {
			var m map[string]any
			if err := json.Unmarshal(cfg, &m); err != nil {
				t.Fatal(err)
			}
			ids := m["rootfs"].(map[string]any)["diff_ids"].([]any)
			ids[2] = digest.FromString("something else").String()
			b, _ := json.Marshal(m)
			return b
		}})
		st := newStore(t, "")
		_, err := Pull(ctx, st, ref, &PullOptions{})
		if !errors.Is(err, store.ErrDigestMismatch) || !strings.Contains(err.Error(), ri.descs[2].Digest.String()) {
			t.Fatalf("pull: %v, want ErrDigestMismatch naming the layer", err)
		}
		assertNothingNew(t, st, 0, 0)
	})
	t.Run("keeps-older-layers", func(t *testing.T) {
		// Layers that were stored before the failed pull stay.
		st := newStore(t, "")
		good := p.host + "/bad/good:1"
		pushRaw(t, good, [][]byte{bb}, rawOpts{})
		if _, err := Pull(ctx, st, good, nil); err != nil {
			t.Fatal(err)
		}
		ref := p.host + "/bad/older:1"
		ri := pushRaw(t, ref, [][]byte{bb, extraLayer("o1"), extraLayer("o2")}, rawOpts{})
		if err := os.Remove(reg.blobPath(digest.Digest(ri.descs[2].Digest.String()))); err != nil {
			t.Fatal(err)
		}
		if _, err := Pull(ctx, st, ref, &PullOptions{RemoteOptions: fastRetry()}); !errors.Is(err, ErrBlobMissing) {
			t.Fatalf("pull: %v", err)
		}
		assertNothingNew(t, st, 1, 1)
	})
}

// cutBlob returns a proxy tamper that answers GETs of blob d with half
// the body then a cut connection, times times (-1: always).
func cutBlob(d string, times int) func(w http.ResponseWriter, r *http.Request) bool {
	var n atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
			return false
		}
		if times >= 0 && n.Add(1) > int64(times) {
			return false
		}
		hj, ok := w.(http.Hijacker)
		if !ok {
			return false
		}
		conn, _, err := hj.Hijack()
		if err != nil {
			return false
		}
		// Claim a long body, send a little, hang up.
		conn.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: application/octet-stream\r\n\r\n"))
		conn.Write(make([]byte, 10))
		conn.Close()
		return true
	}
}

// TestPullRetriesCutDownloads cuts a blob's download twice: the pull
// retries, resumes, and succeeds with the right content.
func TestPullRetriesCutDownloads(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	p := newProxy(t, reg)
	bb := busybox(t)
	ref := p.host + "/retry/img:1"
	ri := pushRaw(t, ref, [][]byte{bb, extraLayer("r")}, rawOpts{})
	p.tamper = resumeCut(reg, ri.descs[0].Digest.String(), 2)
	st := newStore(t, "")
	opts := fastRetry()
	opts.Retries = 3
	img, err := Pull(context.Background(), st, ref, &PullOptions{RemoteOptions: opts})
	if err != nil {
		t.Fatalf("pull: %v (%s)", err, p)
	}
	if n := p.count("GET blob range"); n != 2 {
		t.Errorf("%d range requests, want 2 (resumes): %s", n, p)
	}
	fixtures.AssertTreesEqual(t, appliedTree(t, [][]byte{bb, extraLayer("r")}), rootTree(t, st, img.ID), fixtures.IgnorePaths("/"))
}

// resumeCut answers the first times GETs of blob d with the right bytes
// from the requested offset, cut after a third of what is left.
func resumeCut(reg *testRegistry, d string, times int) func(w http.ResponseWriter, r *http.Request) bool {
	match := blobGET(reg, d, times)
	return func(w http.ResponseWriter, r *http.Request) bool {
		b, off, status, ok := match(r)
		if !ok {
			return false
		}
		hj, _ := w.(http.Hijacker)
		conn, _, err := hj.Hijack()
		if err != nil {
			return false
		}
		defer conn.Close()
		rest := b[off:]
		hdr := "HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\nContent-Length: " + strconv.Itoa(len(rest)) + "\r\n"
		if status == http.StatusPartialContent {
			hdr += "Content-Range: bytes " + strconv.Itoa(off) + "-" + strconv.Itoa(len(b)-1) + "/" + strconv.Itoa(len(b)) + "\r\n"
		}
		conn.Write([]byte(hdr + "\r\n"))
		conn.Write(rest[:len(rest)/3])
		return true
	}
}

// blobGET matches the first times GETs of blob d, and returns the blob,
// the offset their Range asks for ("bytes=N-"; 0 without one) and the
// status to answer with; ok is false for any other request.
func blobGET(reg *testRegistry, d string, times int) func(r *http.Request) (b []byte, off, status int, ok bool) {
	var n atomic.Int64
	return func(r *http.Request) ([]byte, int, int, bool) {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+d) || n.Add(1) > int64(times) {
			return nil, 0, 0, false
		}
		b, err := os.ReadFile(reg.blobPath(digest.Digest(d)))
		if err != nil {
			return nil, 0, 0, false
		}
		rg := r.Header.Get("Range")
		if rg == "" {
			return b, 0, http.StatusOK, true
		}
		var off int
		if _, err := fmt.Sscanf(rg, "bytes=%d-", &off); err != nil || off > len(b) {
			return nil, 0, 0, false
		}
		return b, off, http.StatusPartialContent, true
	}
}

// shortBlob answers GETs of blob d with its first half, with a
// Content-Length that says so.
func shortBlob(reg *testRegistry, d string) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
			return false
		}
		b, err := os.ReadFile(reg.blobPath(digest.Digest(d)))
		if err != nil {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)/2))
		w.WriteHeader(http.StatusOK)
		w.Write(b[:len(b)/2])
		return true
	}
}

// TestPullCanceled cancels a pull after its bottom layer is downloaded,
// while the next blob hangs: the pull fails with the cancellation and
// leaves no layer.
func TestPullCanceled(t *testing.T) {
	reg := startRegistry(t, registryOpts{})
	p := newProxy(t, reg)
	bb := busybox(t)
	ref := p.host + "/cancel/img:1"
	ri := pushRaw(t, ref, [][]byte{bb, extraLayer("x")}, rawOpts{})
	hang := ri.descs[1].Digest.String()
	p.tamper = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+hang) {
			<-r.Context().Done()
			return true
		}
		return false
	}
	st := newStore(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Cancel once the bottom layer is downloaded (and being applied, or
	// applied: overlay completes a chain's layers together at the end).
	bottom := ri.descs[0].Digest.Hex[:12]
	opts := &PullOptions{RemoteOptions: RemoteOptions{Progress: func(e Event) {
		if e.ID == bottom && e.Status == StatusDownloaded {
			go func() {
				time.Sleep(50 * time.Millisecond)
				cancel()
			}()
		}
	}}}
	_, err := Pull(ctx, st, ref, opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("pull: %v, want context.Canceled", err)
	}
	assertNothingNew(t, st, 0, 0)
}
