package run

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// consoleTimeout bounds the wait for the runtime's console after it
// started the container (it sends it before it returns, so this only
// guards against a runtime that never does).
const consoleTimeout = 10 * time.Second

// drainTimeout bounds the copy of the terminal's last output once the
// process exited (a process of the container that kept the terminal open
// would otherwise hold `layers run` forever).
const drainTimeout = 2 * time.Second

// runtimeTTY runs the container with a terminal of its own, as runc's
// docs/terminals.md describes for a caller that handles the terminal
// itself: `runtime run --detach --console-socket SOCK --pid-file F`. The
// runtime creates the pseudo-terminal inside the container, sends its
// master over SOCK (SCM_RIGHTS) and exits once the process runs. We copy
// our standard input to the master and the master to our standard output,
// put our own terminal (when standard input is one) in raw mode so that
// keys such as ^C reach the container's terminal, pass window size
// changes on (SIGWINCH, TIOCSWINSZ on the master), forward signals to the
// process, and wait for it: `layers run` is made a child subreaper
// (PR_SET_CHILD_SUBREAPER) so that the process, orphaned when the runtime
// exits, becomes its child. That is a property of the whole calling
// process; a library caller of Run with TTY takes it on.
func (r *runner) runtimeTTY() (int, bool, error) {
	o := r.o
	ln, sockDir, err := consoleListener(r.bundle)
	if err != nil {
		return 0, false, err
	}
	defer func() {
		ln.Close()
		if sockDir != "" {
			os.RemoveAll(sockDir)
		}
	}()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return 0, false, fmt.Errorf("become a subreaper for the container's process: %w", err)
	}
	type console struct {
		f   *os.File
		err error
	}
	consolec := make(chan console, 1)
	go func() {
		f, err := recvConsole(ln)
		consolec <- console{f, err}
	}()

	// Signals that come while the runtime starts are kept for the process.
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, append([]os.Signal{syscall.SIGWINCH}, forwarded...)...)
	defer signal.Stop(sigc)

	logPath := filepath.Join(r.bundle, "runtime.log")
	pidFile := filepath.Join(r.bundle, "pid")
	cmd := r.rt.command(r.st.RunRoot(), logPath, "run", "--detach", "--console-socket", ln.Addr().String(),
		"--pid-file", pidFile, "--bundle", r.bundle, r.c.ID)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := r.rt.startAndWait(cmd, nil); err != nil {
		msg := runtimeError(logPath)
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		// started: the runtime may have left state, which finish deletes.
		return 0, true, fmt.Errorf("%w: %s: %w: %s", ErrRuntime, r.rt.Name, err, msg)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, true, fmt.Errorf("%w: %s: the process's pid: %w", ErrRuntime, r.rt.Name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, true, fmt.Errorf("%w: %s: bad pid file %q", ErrRuntime, r.rt.Name, b)
	}
	type exit struct {
		code int
		err  error
	}
	waitc := make(chan exit, 1)
	go func() {
		code, err := waitPid(pid)
		waitc <- exit{code, err}
	}()

	var master *os.File
	select {
	case c := <-consolec:
		if c.err != nil {
			_ = unix.Kill(pid, unix.SIGKILL)
			<-waitc
			return 0, true, c.err
		}
		master = c.f
	case <-time.After(consoleTimeout):
		_ = unix.Kill(pid, unix.SIGKILL)
		<-waitc
		return 0, true, fmt.Errorf("%w: %s sent no terminal in %v", ErrRuntime, r.rt.Name, consoleTimeout)
	}
	defer master.Close()

	// Our terminal, if we have one: its size is the container's, and it
	// is raw while the container's terminal does the line editing.
	term := terminalOf(o.Stdin, o.Stdout)
	resize := func() {
		if term < 0 {
			return
		}
		if ws, err := unix.IoctlGetWinsize(term, unix.TIOCGWINSZ); err == nil {
			_ = unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, ws)
		}
	}
	resize()
	if isTerminal(o.Stdin) {
		restore, err := makeRaw(int(o.Stdin.(*os.File).Fd()))
		if err != nil {
			_ = unix.Kill(pid, unix.SIGKILL)
			<-waitc
			return 0, true, err
		}
		defer restore()
	}

	stdout := o.Stdout
	if stdout == nil {
		stdout = io.Discard
	}
	outDone := make(chan struct{})
	go func() {
		// Ends with EIO once every holder of the container's side closed it.
		_, _ = io.Copy(stdout, master)
		close(outDone)
	}()
	if o.Stdin != nil {
		var eof func()
		if !isTerminal(o.Stdin) {
			// The end of a pipe or file: the container's terminal reads
			// end-of-file from its EOF character (^D) when it edits
			// lines, as a user's ^D at a terminal.
			eof = func() {
				if t, err := unix.IoctlGetTermios(int(master.Fd()), unix.TCGETS); err == nil && t.Lflag&unix.ICANON != 0 {
					_, _ = master.Write([]byte{t.Cc[unix.VEOF]})
				}
			}
		}
		stop, err := copyInput(master, o.Stdin, eof)
		if err != nil {
			_ = unix.Kill(pid, unix.SIGKILL)
			<-waitc
			return 0, true, err
		}
		// Deferred after restore: runs first, so that our terminal is
		// read no more when it is back in its own mode.
		defer stop()
	}
	if o.Started != nil {
		go o.Started(r.c.ID)
	}
	for {
		select {
		case s := <-sigc:
			if s == syscall.SIGWINCH {
				resize()
				continue
			}
			// The process is our child until we reap it: its pid cannot
			// have been reused. This is the kill(2) `runtime kill` makes.
			_ = unix.Kill(pid, s.(syscall.Signal))
		case e := <-waitc:
			select {
			case <-outDone:
			case <-time.After(drainTimeout):
			}
			if e.err != nil {
				return 0, true, fmt.Errorf("%w: %s: wait for the process (pid %d): %w (runtime said %q)", ErrRuntime, r.rt.Name, pid, e.err, out.String())
			}
			return e.code, true, nil
		}
	}
}

// waitPid waits for pid, the container's process, and returns its shell
// status. The process becomes our child once its parent exits: the
// runtime, or with crun an intermediate process of its own that may
// outlive the runtime's exit by a moment, during which wait4 gives
// ECHILD.
func waitPid(pid int) (int, error) {
	deadline := time.Now().Add(consoleTimeout)
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD) && time.Now().Before(deadline):
			if _, serr := os.Stat(fmt.Sprintf("/proc/%d", pid)); serr == nil {
				time.Sleep(2 * time.Millisecond)
				continue
			}
			return 0, fmt.Errorf("%w: it is gone and was never our child", err)
		case err != nil:
			return 0, err
		}
		return exitStatus(syscall.WaitStatus(ws)), nil
	}
}

// consoleListener listens on a socket for the runtime's console: in the
// bundle directory, or in a new directory under the system's temporary
// directory (returned, to be removed) when the bundle's path is too long
// for a socket address (108 bytes).
func consoleListener(bundle string) (*net.UnixListener, string, error) {
	p, dir := filepath.Join(bundle, "console.sock"), ""
	if len(p) >= 100 {
		d, err := os.MkdirTemp("", "layers-console-")
		if err != nil {
			return nil, "", fmt.Errorf("console socket: %w", err)
		}
		p, dir = filepath.Join(d, "sock"), d
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		if dir != "" {
			os.RemoveAll(dir)
		}
		return nil, "", fmt.Errorf("console socket: %w", err)
	}
	return ln, dir, nil
}

// recvConsole accepts the runtime's connection on ln and returns the
// terminal master it sends: one message whose data is the terminal's
// name and whose SCM_RIGHTS control message carries the fd.
func recvConsole(ln *net.UnixListener) (*os.File, error) {
	conn, err := ln.AcceptUnix()
	if err != nil {
		return nil, fmt.Errorf("console socket: accept: %w", err)
	}
	defer conn.Close()
	name := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(name, oob)
	if err != nil {
		return nil, fmt.Errorf("console socket: receive the terminal: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	var fds []int
	for i := range msgs {
		if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, got...)
		}
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("console socket: want one terminal fd, got %d", len(fds))
	}
	unix.CloseOnExec(fds[0])
	// Non-blocking, so that the runtime poller serves it and a Close ends
	// a read in progress.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("console: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), string(name[:n])), nil
}

// terminalOf returns the fd of the first of streams that is a terminal,
// -1 when none is.
func terminalOf(streams ...any) int {
	for _, s := range streams {
		if isTerminal(s) {
			return int(s.(*os.File).Fd())
		}
	}
	return -1
}

// makeRaw puts terminal fd in raw mode (cfmakeraw's settings) and returns
// what restores it.
func makeRaw(fd int) (func(), error) {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("terminal: %w", err)
	}
	old := *t
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return nil, fmt.Errorf("terminal: raw mode: %w", err)
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, &old) }, nil
}

// copyInput copies src to dst in a goroutine until src ends (then eof,
// when not nil, is called) or the returned stop is called. A file (a
// terminal, a pipe) is polled together with stop's pipe, so that once
// the process exited no read is left waiting on it: such a read would
// take the next input meant for whoever reads the file after Run (the
// caller's shell, the next Run on the same terminal). Other readers are
// copied with io.Copy, and stop only abandons them.
func copyInput(dst io.Writer, src io.Reader, eof func()) (stop func(), err error) {
	f, ok := src.(*os.File)
	if !ok {
		go func() {
			if _, err := io.Copy(dst, src); err == nil && eof != nil {
				eof()
			}
		}()
		return func() {}, nil
	}
	cr, cw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("standard input: %w", err)
	}
	fd := int(f.Fd())
	go func() {
		defer cr.Close()
		buf := make([]byte, 32*1024)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(cr.Fd()), Events: unix.POLLIN}}
		for {
			fds[0].Revents, fds[1].Revents = 0, 0
			if _, err := unix.Poll(fds, -1); err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			if fds[1].Revents != 0 || fds[0].Revents&unix.POLLNVAL != 0 {
				return // stopped, or the file was closed
			}
			if fds[0].Revents == 0 {
				continue
			}
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			if n <= 0 {
				if n == 0 && err == nil && eof != nil {
					eof()
				}
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	return func() { cw.Close() }, nil
}
