package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
)

// Gzip layers are inflated by a pigz process when pigz is installed, as
// containerd does with unpigz: inflate cannot be split across cores, so
// its speed per core is what a pull of a big layer waits for, and zlib's
// inflate in pigz (with its CRC on a thread of its own) needs about half
// the CPU of Go's (klauspost) on the same blob here (smallfiles, 176 MB:
// pigz -dc 1.0 s user, klauspost 1.7-2.0 s). On two cores that CPU is
// taken from the apply running beside it. Without pigz, or for zstd and
// uncompressed layers, the stream goes to the store as it is and the
// store decompresses it in process.

// gunzipper finds the external gzip decompressor: its path and the
// arguments that make it inflate stdin to stdout; "" when there is none.
func gunzipper() (string, []string) {
	if p, err := exec.LookPath("pigz"); err == nil {
		return p, []string{"-d", "-c"}
	}
	if p, err := exec.LookPath("unpigz"); err == nil {
		return p, []string{"-c"}
	}
	return "", nil
}

// inflated returns r as the store should read it: a gzip stream inflated
// by pigz when that is installed (and external is true), else r itself
// (peeked bytes kept). The returned reader's Close stops the process and
// waits for the goroutine that reads r; unblock, when not nil, is called
// then to end a read of r that may wait long (a download). r stays the
// caller's.
func inflated(ctx context.Context, r io.Reader, external bool, unblock func()) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if !external || !bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		return io.NopCloser(br), nil
	}
	bin, args := gunzipper()
	if bin == "" {
		return io.NopCloser(br), nil
	}
	return startGunzip(ctx, br, bin, args, unblock)
}

// extGunzip reads the output of an external decompressor fed from src.
type extGunzip struct {
	cmd     *exec.Cmd
	out     io.ReadCloser
	stderr  *capped
	fed     chan struct{} // closed when the feeder ended
	ferr    error         // the feeder's read error (the source's, say a failed download)
	unblock func()
	done    bool
	err     error // sticky result after the end of the output
	once    sync.Once
}

func startGunzip(ctx context.Context, src io.Reader, bin string, args []string, unblock func()) (*extGunzip, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	g := &extGunzip{cmd: cmd, stderr: &capped{max: 4 << 10}, fed: make(chan struct{}), unblock: unblock}
	cmd.Stderr = g.stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("decompress gzip: %w", err)
	}
	if g.out, err = cmd.StdoutPipe(); err != nil {
		in.Close()
		return nil, fmt.Errorf("decompress gzip: %w", err)
	}
	if err := cmd.Start(); err != nil {
		in.Close()
		g.out.Close()
		return nil, fmt.Errorf("decompress gzip: start %s: %w", bin, err)
	}
	// Fed from a goroutine of our own rather than exec's, so that Close
	// need not wait for a source that blocks (a download in progress):
	// the feeder ends at its next write once the process is gone.
	go func() {
		defer close(g.fed)
		_, err := io.Copy(feedWriter{in}, src)
		var we *writeFailed
		if errors.As(err, &we) {
			err = nil // the process stopped reading: its status says why
		}
		g.ferr = err
		in.Close()
	}()
	return g, nil
}

func (g *extGunzip) Read(p []byte) (int, error) {
	if g.done {
		return 0, g.err
	}
	n, err := g.out.Read(p)
	if err == nil {
		return n, nil
	}
	g.done = true
	g.err = g.finish(err)
	return n, g.err
}

// finish waits for the process after its output ended (with rerr) and
// returns the stream's verdict: io.EOF, or why it is not whole.
func (g *extGunzip) finish(rerr error) error {
	werr := g.cmd.Wait()
	// A source that failed (a download cut short) says more than what
	// pigz made of the bytes it got, and a stream whose source failed is
	// not whole even if it inflated cleanly.
	<-g.fed
	if g.ferr != nil {
		return g.ferr
	}
	if werr == nil && errors.Is(rerr, io.EOF) {
		return io.EOF
	}
	msg := strings.TrimSpace(g.stderr.String())
	if msg == "" && werr != nil {
		msg = werr.Error()
	} else if msg == "" {
		msg = rerr.Error()
	}
	return fmt.Errorf("decompress gzip: %s", msg)
}

// Close stops the process if its output was not read to the end, and
// waits for the feeder either way, so that nothing reads the source
// after Close.
func (g *extGunzip) Close() error {
	g.once.Do(func() {
		if !g.done {
			g.done, g.err = true, errors.New("decompress gzip: closed")
			_ = g.cmd.Process.Kill()
			g.out.Close()
			if g.unblock != nil {
				g.unblock()
			}
			_ = g.cmd.Wait()
		}
		<-g.fed
	})
	return nil
}

// feedWriter marks its write errors as writeFailed.
type feedWriter struct{ w io.Writer }

func (f feedWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		err = &writeFailed{err}
	}
	return n, err
}

// writeFailed marks a failed write to the process in the feeder.
type writeFailed struct{ err error }

func (e *writeFailed) Error() string { return e.err.Error() }

// capped keeps the first max bytes written to it (a process's stderr).
type capped struct {
	mu  sync.Mutex
	b   bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - c.b.Len(); room > 0 {
		c.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}
