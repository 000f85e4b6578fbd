package image

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/layers-storage/layers/store"
)

// Errors callers may branch on; each comes wrapped with the blob, layer or
// reference it is about.
var (
	// ErrBlobMissing means the registry does not have a blob the manifest
	// names.
	ErrBlobMissing = errors.New("blob missing from the registry")
	// ErrBlobCorrupt means a blob's content does not match its descriptor:
	// another digest, fewer bytes (truncated) or more.
	ErrBlobCorrupt = errors.New("blob content does not match its descriptor")
	// ErrNoPlatform means an image index has no image for the platform
	// asked for (or the host's).
	ErrNoPlatform = errors.New("no image for the platform")
	// ErrUnsupported means a manifest or layer kind that layers cannot
	// store (Docker schema 1, foreign layers, unknown media types).
	ErrUnsupported = errors.New("unsupported")
)

// Defaults of RemoteOptions.
const (
	// DefaultJobs is how many blobs move at once: enough to keep a fast
	// link busy while the layer below applies, few enough that the
	// registry does not throttle.
	DefaultJobs = 4
	// DefaultRetries is how many times a transfer failing with a transient
	// error (connection reset, timeout, 5xx, 429) is tried again.
	DefaultRetries = 5
)

// RemoteOptions say how to reach a registry; Pull and Push share them.
type RemoteOptions struct {
	// Insecure allows plain http and certificates that do not verify
	// (self-signed), like docker's insecure-registries.
	Insecure bool
	// Keychain finds credentials; nil means authn.DefaultKeychain (docker's
	// config.json with its credential helpers, containers' auth.json).
	Keychain authn.Keychain
	// RootCAs, when set, are the certificate authorities TLS trusts
	// instead of the system's.
	RootCAs *x509.CertPool
	// Transport is the HTTP transport under authentication and retries;
	// nil means a clone of http.DefaultTransport (with RootCAs and
	// Insecure applied).
	Transport http.RoundTripper
	// Progress receives what happens to each blob; nil discards it.
	Progress ProgressFunc
	// Jobs bounds the blobs transferred at once; 0 means DefaultJobs.
	Jobs int
	// Retries bounds the attempts after a transient error; 0 means
	// DefaultRetries, a negative value none.
	Retries int
	// IdleTimeout cuts a request whose connection moved no byte for that
	// long (a registry gone silent mid-blob), failing it with
	// ErrIdleTimeout, which is retried like any transient error; 0 means
	// DefaultIdleTimeout, a negative value never.
	IdleTimeout time.Duration
	// retryDelay is the first backoff delay (doubling each time); 0
	// means one second. Tests shorten it.
	retryDelay time.Duration
}

func (o *RemoteOptions) jobs() int {
	if o.Jobs > 0 {
		return o.Jobs
	}
	return DefaultJobs
}

func (o *RemoteOptions) retries() int { return zeroDefault(o.Retries, DefaultRetries) }

// zeroDefault reads an option where 0 means def and a negative value
// none (0).
func zeroDefault[T int | time.Duration](v, def T) T {
	switch {
	case v < 0:
		return 0
	case v == 0:
		return def
	}
	return v
}

func (o *RemoteOptions) progress(e Event) {
	if o.Progress != nil {
		o.Progress(e)
	}
}

// baseTransport is the transport every request goes through, before
// authentication.
func (o *RemoteOptions) baseTransport() http.RoundTripper {
	if o.Transport != nil {
		return o.Transport
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: o.RootCAs, InsecureSkipVerify: o.Insecure} //nolint:gosec // asked for with --insecure
	// Several blobs of one registry at once, each on its own connection.
	t.MaxIdleConnsPerHost = 16
	return t
}

// transport is baseTransport with the idle timeout applied.
func (o *RemoteOptions) transport() http.RoundTripper {
	base := o.baseTransport()
	if idle := o.idleTimeout(); idle > 0 {
		return &idleTransport{rt: base, idle: idle}
	}
	return base
}

// parseReference normalises ref as docker does and parses it for the
// registry: the normalised name is what the store records.
func parseReference(ref string, insecure bool) (string, name.Reference, error) {
	full, err := store.NormalizeName(ref)
	if err != nil {
		return "", nil, err
	}
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(full, opts...)
	if err != nil {
		return "", nil, fmt.Errorf("%w %q: %v", store.ErrInvalidName, ref, err)
	}
	return full, r, nil
}

// client talks to one repository of a registry with an authenticated
// transport, shared by go-containerregistry's calls and our own blob
// requests.
type client struct {
	repo name.Repository
	tr   http.RoundTripper
	hc   *http.Client
	opts *RemoteOptions
}

// newClient authenticates to repo's registry (credentials from the
// keychain) for the given actions on repo, plus pull on the extra
// repositories (mount sources).
func newClient(ctx context.Context, repo name.Repository, opts *RemoteOptions, push bool, extra ...name.Repository) (*client, error) {
	kc := opts.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	auth, err := authn.Resolve(ctx, kc, repo)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", repo.RegistryStr(), err)
	}
	action := transport.PullScope
	if push {
		action = transport.PushScope
	}
	scopes := []string{repo.Scope(action)}
	for _, e := range extra {
		scopes = append(scopes, e.Scope(transport.PullScope))
	}
	var tr http.RoundTripper
	err = retry(ctx, opts, func() error {
		var err error
		tr, err = transport.NewWithContext(ctx, repo.Registry, auth, opts.transport(), scopes)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", repo.RegistryStr(), err)
	}
	return &client{repo: repo, tr: tr, hc: &http.Client{Transport: tr}, opts: opts}, nil
}

// remoteOptions are the options of go-containerregistry calls through c.
func (c *client) remoteOptions(ctx context.Context) []remote.Option {
	return []remote.Option{remote.WithTransport(c.tr), remote.WithContext(ctx), remote.WithJobs(c.opts.jobs())}
}

// blobURL is the registry URL of blob d in c's repository (the scheme
// is fixed up by the transport, after its ping).
func (c *client) blobURL(d digest.Digest) string {
	return fmt.Sprintf("%s://%s/v2/%s/blobs/%s", c.repo.Scheme(), c.repo.RegistryStr(), c.repo.RepositoryStr(), d)
}

// transientError marks an error worth another attempt.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

// isTransient says whether err may go away when tried again: network
// errors, cut bodies, and the HTTP statuses registries use for overload.
func isTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var te *transientError
	if errors.As(err, &te) || errors.Is(err, ErrIdleTimeout) {
		return true
	}
	var he *transport.Error
	if errors.As(err, &he) {
		switch he.StatusCode {
		case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
			http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF)
}

// retry runs f until it succeeds, fails with an error that is not
// transient, or has been retried opts.retries() times, waiting 1, 2, 4...
// seconds (capped at 30) in between.
func retry(ctx context.Context, opts *RemoteOptions, f func() error) error {
	delay := opts.retryDelay
	if delay == 0 {
		delay = time.Second
	}
	for attempt := 0; ; attempt++ {
		err := f()
		if err == nil || !isTransient(err) || attempt >= opts.retries() {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 30*time.Second)
	}
}

// fetchBlob downloads blob d of size bytes into w, verifying both while
// it streams; onBytes is told of each chunk written. A transfer cut by a
// transient error resumes where it stopped (a range request; from the
// start, skipping what w has, when the registry ignores ranges). Only
// when the whole blob matched does fetchBlob return nil; w may have
// received a prefix otherwise.
func (c *client) fetchBlob(ctx context.Context, d digest.Digest, size int64, w io.Writer, onBytes func(int64)) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("blob %q: %w", d, err)
	}
	h := d.Algorithm().Hash()
	var off int64
	err := retry(ctx, c.opts, func() error {
		n, err := c.fetchFrom(ctx, d, off, size, io.MultiWriter(w, h), onBytes)
		off += n
		return err
	})
	if err != nil && off > 0 && errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("blob %s: %w: %d of %d bytes arrived (truncated), %d attempts: %v", d, ErrBlobCorrupt, off, size, c.opts.retries()+1, err)
	}
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	if size >= 0 && off != size {
		return fmt.Errorf("blob %s: %w: %d bytes, the manifest says %d (truncated)", d, ErrBlobCorrupt, off, size)
	}
	if got := digest.NewDigest(d.Algorithm(), h); got != d {
		return fmt.Errorf("blob %s: %w: its content has digest %s", d, ErrBlobCorrupt, got)
	}
	return nil
}

// fetchFrom makes one request for blob d from offset off, copying the
// bytes after off into w; it returns how many it copied.
func (c *client) fetchFrom(ctx context.Context, d digest.Digest, off, size int64, w io.Writer, onBytes func(int64)) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.blobURL(d), nil)
	if err != nil {
		return 0, err
	}
	if off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		if off > 0 {
			// No range support: skip what we have.
			if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
				return 0, &transientError{fmt.Errorf("skip %d bytes already read: %w", off, err)}
			}
		}
	case http.StatusPartialContent:
		var start int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start); err != nil || start != off {
			return 0, fmt.Errorf("registry answered range %d- with %q", off, resp.Header.Get("Content-Range"))
		}
	case http.StatusNotFound:
		return 0, fmt.Errorf("%w (%s)", ErrBlobMissing, c.repo)
	default:
		return 0, transport.CheckError(resp, http.StatusOK)
	}
	// Never more than the manifest says plus one byte, to tell "too long"
	// without reading a hostile stream forever.
	var body io.Reader = resp.Body
	if size >= 0 {
		body = io.LimitReader(resp.Body, size-off+1)
	}
	n, err := copyCounting(w, body, onBytes)
	if size >= 0 && off+n > size {
		return n, fmt.Errorf("%w: more bytes than the manifest's %d", ErrBlobCorrupt, size)
	}
	if err != nil {
		var we *writeError
		if errors.As(err, &we) {
			return n, we.err // the destination failed: not the network's fault
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return n, &transientError{fmt.Errorf("read: %w", err)}
	}
	if size >= 0 && off+n < size {
		// The body ended early: a cut connection looks like this too.
		return n, &transientError{fmt.Errorf("body ended after %d of %d bytes: %w", off+n, size, io.ErrUnexpectedEOF)}
	}
	return n, nil
}

// writeError marks a failure of the destination in copyCounting.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }

// copyCounting copies r to w in 256 KiB chunks, telling onBytes of each.
func copyCounting(w io.Writer, r io.Reader, onBytes func(int64)) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, rerr := r.Read(buf)
		if k > 0 {
			if _, err := w.Write(buf[:k]); err != nil {
				return n, &writeError{err}
			}
			n += int64(k)
			if onBytes != nil {
				onBytes(int64(k))
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// shortID is the first 12 hex characters of a digest, as docker shows
// layers.
func shortID(e string) string {
	if len(e) > 12 {
		e = e[:12]
	}
	return e
}

// splitPlatform parses "os/arch[/variant]".
func splitPlatform(s string) (goos, arch, variant string, err error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return "", "", "", fmt.Errorf("platform %q: want os/arch[/variant]", s)
	}
	for _, p := range parts {
		if p == "" {
			return "", "", "", fmt.Errorf("platform %q: want os/arch[/variant]", s)
		}
	}
	goos, arch = parts[0], parts[1]
	if len(parts) == 3 {
		variant = parts[2]
	}
	return goos, arch, variant, nil
}
