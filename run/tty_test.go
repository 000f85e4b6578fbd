package run

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/syncbuf"
)

// waitFor polls cond until it holds or 20 s passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("timed out waiting for %s", what)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openPty opens a pseudo-terminal pair for a test: the master (the
// "user" side) and the slave, given to Run as its terminal.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// TestRunTTY: -t without a terminal of our own gives the process one
// (input from a pipe reaches it, its output comes back); with a terminal
// of our own, it is raw while the process runs and restored afterwards,
// its size is the container's, and size changes (SIGWINCH) follow.
func TestRunTTY(t *testing.T) {
	for _, name := range runtimes {
		t.Run(name, func(t *testing.T) {
			rt := needRuntime(t, name)
			st := newStore(t)
			addImage(t, st, "localhost/bb:1", defaultConfig())
			run := func(o Options, args ...string) result {
				o.Runtime, o.Remove, o.Command, o.TTY = name, true, args, true
				return runIn(t, st, "localhost/bb:1", o)
			}

			// No terminal here: stdin is a pipe (a reader), stdout a buffer.
			r := run(Options{Stdin: strings.NewReader("")}, "sh", "-c", `[ -t 0 ] && [ -t 1 ] && tty && echo "$TERM"; exit 6`)
			if r.err != nil || r.code != 6 || r.stdout != "/dev/pts/0\r\nxterm\r\n" {
				t.Fatalf("%+v %v", r, r.err)
			}
			// Piped input reaches the process through its terminal (which
			// echoes it); the pipe's end is the terminal's end of file.
			r = run(Options{Stdin: strings.NewReader("hello\n")}, "sh", "-c", `read x; echo "got $x"; cat; echo "cat done"`)
			if r.err != nil || r.code != 0 || !strings.Contains(r.stdout, "got hello\r\n") || !strings.HasSuffix(r.stdout, "cat done\r\n") {
				t.Fatalf("%+v %v", r, r.err)
			}
			// Without -i (no Stdin) the process still has a terminal.
			r = run(Options{}, "tty")
			if r.err != nil || r.code != 0 || r.stdout != "/dev/pts/0\r\n" {
				t.Fatalf("%+v %v", r, r.err)
			}

			// A terminal of our own.
			master, slave := openPty(t)
			if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 33, Col: 77}); err != nil {
				t.Fatal(err)
			}
			var out syncbuf.Buffer
			var rawDuring bool
			o := Options{Runtime: name, Remove: true, TTY: true, Stdin: slave, Stdout: &out}
			o.Command = []string{"sh", "-c", `stty size; while [ "$(stty size)" != "40 100" ]; do sleep 0.05; done; echo resized; read x; echo "x=$x"; exit 7`}
			o.Started = func(string) {
				waitFor(t, "the first size", func() bool { return strings.Contains(out.String(), "33 77") })
				tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
				rawDuring = err == nil && tio.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) == 0
				if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 100}); err != nil {
					t.Error(err)
				}
				// The kernel sends SIGWINCH to the terminal's foreground
				// group; our test terminal has none, so we send it.
				_ = syscall.Kill(os.Getpid(), syscall.SIGWINCH)
				waitFor(t, "the resize", func() bool { return strings.Contains(out.String(), "resized") })
				_, _ = master.Write([]byte("typed\r"))
			}
			runTTY := func() (code int, err error) {
				done := make(chan struct{})
				go func() {
					defer close(done)
					code, err = Run(t.Context(), st.Store, "localhost/bb:1", &o)
				}()
				select {
				case <-done:
				case <-time.After(60 * time.Second):
					t.Fatal("no exit after 60 s")
				}
				return code, err
			}
			code, err := runTTY()
			got := out.String()
			if err != nil || code != 7 || !strings.Contains(got, "33 77\r\n") || !strings.Contains(got, "resized\r\n") || !strings.Contains(got, "x=typed\r\n") {
				t.Fatalf("code %d, err %v, output %q", code, err, got)
			}
			if !rawDuring {
				t.Error("our terminal was not raw while the process ran")
			}
			tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
			if err != nil || tio.Lflag&unix.ICANON == 0 || tio.Lflag&unix.ECHO == 0 {
				t.Errorf("our terminal not restored: %+v %v", tio, err)
			}

			// ^C typed at our (raw) terminal reaches the container's
			// terminal, which makes it SIGINT for the process.
			out = syncbuf.Buffer{}
			o.Command = []string{"sh", "-c", `trap "echo interrupted; exit 9" INT; echo ready; while :; do sleep 0.05; done`}
			o.Started = func(string) {
				waitFor(t, "ready", func() bool { return strings.Contains(out.String(), "ready") })
				_, _ = master.Write([]byte{3})
			}
			code, err = runTTY()
			if err != nil || code != 9 || !strings.Contains(out.String(), "interrupted\r\n") {
				t.Fatalf("^C: code %d, err %v, output %q", code, err, out.String())
			}
			assertNoRunState(t, st, rt)
		})
	}
}
