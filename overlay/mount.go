package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/graphdriver"
)

// mountMethod is how the driver hands layers to the kernel, chosen once by
// New's probe mount, best first.
type mountMethod int

const (
	// methodFsconfigFd: fsopen + one fsconfig(FSCONFIG_SET_FD,
	// "lowerdir+") per lower, with O_PATH directory fds (recent kernels;
	// 6.18 here).
	// No string limit anywhere; the kernel's 500 lowers is the only cap.
	methodFsconfigFd mountMethod = iota
	// methodFsconfigPath: the same with path strings (kernels from 6.8
	// that take no fds), each under 256 bytes: relative to HOME/l, lowers
	// by their bare short names.
	methodFsconfigPath
	// methodMount: classic mount(2) with one options string of at most a
	// page, lowers by their bare HOME/l short names relative to the
	// mounting thread's working directory (500 fit).
	methodMount
)

func (m mountMethod) String() string {
	switch m {
	case methodFsconfigFd:
		return "fsconfig lowerdir+ (fds)"
	case methodFsconfigPath:
		return "fsconfig lowerdir+ (paths)"
	case methodMount:
		return "mount(2)"
	}
	return fmt.Sprintf("mountMethod(%d)", int(m))
}

// mountOptions returns the overlay options of every mount, in order.
//
// index=off: with the index, an upper dir records which lowers it was
// first mounted on and refuses any other stack (ESTALE), and the kernel
// refuses (EBUSY) a lower that is the upper dir of a live mount; the
// driver rebuilds stacks (flattened bottoms) and must mount any of them.
// Without it, copying up one name of a hard-linked lower file breaks the
// link, as in every peer's overlay.
//
// redirect_dir=nofollow and metacopy=off unless asked for: with them an
// upper dir is no longer a self-contained changeset, and nofollow also
// stops the kernel from following redirect xattrs that nobody should have
// written (a layer tar never carries them, diff.Apply drops them). Renaming
// a lower directory then fails with EXDEV and tools (mv) copy instead.
//
// userxattr keeps overlay's own xattrs under user.overlay.* (user
// namespaces), and xino=on is asked for where lowers and upper sit on
// different filesystems, so that inode numbers stay unique and stable.
func (c config) mountOptions(userXattr, xino bool) [][2]string {
	redirect, metacopy := "nofollow", "off"
	if c.redirectDir {
		redirect = "on"
	}
	if c.metacopy {
		metacopy = "on"
	}
	opts := [][2]string{{"index", "off"}, {"metacopy", metacopy}, {"redirect_dir", redirect}}
	if userXattr {
		opts = append(opts, [2]string{"userxattr", ""})
	}
	if xino {
		opts = append(opts, [2]string{"xino", "on"})
	}
	for _, o := range c.mountOpts {
		k, v, _ := strings.Cut(o, "=")
		opts = append(opts, [2]string{k, v})
	}
	return opts
}

func optionsString(opts [][2]string) string {
	parts := make([]string, len(opts))
	for i, o := range opts {
		parts[i] = o[0]
		if o[1] != "" {
			parts[i] += "=" + o[1]
		}
	}
	return strings.Join(parts, ",")
}

// overlayMount describes one overlay mount: lowers top-most first. Without
// upper it is a read-only mount of the lowers alone.
type overlayMount struct {
	lowers      []string // directories, for the fd method
	lowerLinks  []string // the same as HOME/l short links, for the others
	upper, work string
	target      string
	options     [][2]string // from config.mountOptions
	// linkDir is HOME/l: mount(2) runs with it as working directory and
	// names lowers by their bare short names, so that 500 fit one page.
	linkDir string
}

// mount mounts m with method.
func mount(method mountMethod, m overlayMount) error {
	spans, err := spansFilesystems(m)
	if err != nil {
		return err
	}
	if spans {
		m.options = append(m.options[:len(m.options):len(m.options)], [2]string{"xino", "on"})
	}
	if method == methodMount {
		return mountClassic(m)
	}
	return mountFsconfig(method, m)
}

// spansFilesystems reports whether the dirs of m are on more than one
// filesystem (a lower bind-mounted in from elsewhere, btrfs subvolumes),
// where overlay needs xino=on for unique, stable inode numbers.
func spansFilesystems(m overlayMount) (bool, error) {
	var dev uint64
	for i, dir := range append([]string{m.upper}, m.lowers...) {
		if dir == "" {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			return false, fmt.Errorf("overlay on %s: %w", m.target, &os.PathError{Op: "stat", Path: dir, Err: err})
		}
		if i > 0 && dev != 0 && st.Dev != dev {
			return true, nil
		}
		dev = st.Dev
	}
	return false, nil
}

// errFsconfigUnsupported marks, in error messages, an fsconfig failure
// that means the kernel lacks the method (New's probe then settles on the
// next one).
var errFsconfigUnsupported = errors.New("not supported by this kernel")

// mountFsconfig mounts m with the new mount API. With path strings, each
// capped at 255 bytes, every path is given relative to HOME/l, the working
// directory of the mounting thread (see inDir): lowers by bare short name,
// upper and work as ../<id>/..., so the home's length does not count.
func mountFsconfig(method mountMethod, m overlayMount) error {
	if method != methodFsconfigPath {
		return mountFsconfigIn(method, m)
	}
	target, err := filepath.Abs(m.target)
	if err != nil {
		return err
	}
	m.target = target
	return inDir(m.linkDir, func() error { return mountFsconfigIn(method, m) })
}

func mountFsconfigIn(method mountMethod, m overlayMount) (err error) {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENODEV) {
			err = fmt.Errorf("%w: %w", errFsconfigUnsupported, err)
		}
		return fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)
	fail := func(what string, err error) error {
		if log := fsLog(fsfd); log != "" {
			return fmt.Errorf("overlay on %s: %s: %w (kernel: %s)", m.target, what, err, log)
		}
		return fmt.Errorf("overlay on %s: %s: %w", m.target, what, err)
	}
	if err := unix.FsconfigSetString(fsfd, "source", "overlay"); err != nil {
		return fail("fsconfig source", err)
	}
	for _, o := range m.options {
		var err error
		if o[1] == "" {
			err = unix.FsconfigSetFlag(fsfd, o[0])
		} else {
			err = unix.FsconfigSetString(fsfd, o[0], o[1])
		}
		if err != nil {
			return fail("fsconfig "+optionsString([][2]string{o}), err)
		}
	}
	setDir := func(key, dir, link string) error {
		if method == methodFsconfigPath {
			p := dir
			if link != "" {
				p = link
			}
			if r, err := filepath.Rel(m.linkDir, p); err == nil {
				p = r
			}
			if err := unix.FsconfigSetString(fsfd, key, p); err != nil {
				if len(p) > 255 {
					return fail(fmt.Sprintf("fsconfig %s %s (%d bytes; the kernel takes 255)", key, p, len(p)), err)
				}
				return fail(fmt.Sprintf("fsconfig %s %s", key, p), err)
			}
			return nil
		}
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("overlay on %s: open %s: %w", m.target, dir, err)
		}
		// The kernel takes its own reference: close at once, so deep
		// chains cost one fd at a time.
		err = unix.FsconfigSetFd(fsfd, key, fd)
		unix.Close(fd)
		if err != nil {
			return fail(fmt.Sprintf("fsconfig %s fd of %s", key, dir), err)
		}
		return nil
	}
	for i, l := range m.lowers {
		if err := setDir("lowerdir+", l, m.lowerLinks[i]); err != nil {
			if i == 0 && errors.Is(err, unix.EINVAL) {
				err = fmt.Errorf("%w: %w", errFsconfigUnsupported, err)
			}
			if i == 500 {
				err = fmt.Errorf("%w (the chain has %d lower layers; the kernel takes 500)", err, len(m.lowers))
			}
			return err
		}
	}
	if m.upper != "" {
		if err := setDir("upperdir", m.upper, ""); err != nil {
			return err
		}
		if err := setDir("workdir", m.work, ""); err != nil {
			return err
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fail("fsconfig create", err)
	}
	var attrs int
	if m.upper == "" {
		attrs = unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return fail("fsmount", err)
	}
	err = unix.MoveMount(mfd, "", unix.AT_FDCWD, m.target, unix.MOVE_MOUNT_F_EMPTY_PATH)
	// Close the fsmount fd right away, whatever happened: while it is
	// open, the mount is busy and umount fails with EBUSY.
	unix.Close(mfd)
	if err != nil {
		return fail("move_mount to "+m.target, err)
	}
	return nil
}

// fsLog drains the messages the kernel queued on an fs context fd (one
// per read, "e overlay: ..."), for error messages.
func fsLog(fsfd int) string {
	var msgs []string
	buf := make([]byte, 4096)
	for range 16 {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	return strings.Join(msgs, "; ")
}

// mountClassic mounts m with mount(2), whose options must fit one page.
// The lowers go by their bare short names, resolved against HOME/l as the
// working directory of the mounting thread (the kernel resolves relative
// lowerdir paths at mount time), so 500 lowers of 7 bytes each fit; upper
// and work go relative to HOME/l too.
func mountClassic(m overlayMount) error {
	rel := func(p string) (string, error) {
		r, err := filepath.Rel(m.linkDir, p)
		if err != nil {
			return "", err
		}
		if strings.ContainsAny(r, ",:") {
			return "", fmt.Errorf("overlay on %s: path %s holds ',' or ':', which mount(2) options cannot carry", m.target, p)
		}
		return r, nil
	}
	lowers := make([]string, len(m.lowerLinks))
	for i, l := range m.lowerLinks {
		r, err := rel(l)
		if err != nil {
			return err
		}
		lowers[i] = r
	}
	data := "lowerdir=" + strings.Join(lowers, ":")
	var flags uintptr = unix.MS_RDONLY
	if m.upper != "" {
		upper, err := rel(m.upper)
		if err != nil {
			return err
		}
		work, err := rel(m.work)
		if err != nil {
			return err
		}
		data += ",upperdir=" + upper + ",workdir=" + work
		flags = 0
	}
	if len(m.options) > 0 {
		data += "," + optionsString(m.options)
	}
	if len(data) >= unix.Getpagesize() {
		return fmt.Errorf("overlay on %s: %d lower layers need %d bytes of mount(2) options, the kernel takes less than %d (kernels from 6.8 on have no such limit)",
			m.target, len(m.lowers), len(data), unix.Getpagesize())
	}
	target, err := filepath.Abs(m.target)
	if err != nil {
		return err
	}
	return inDir(m.linkDir, func() error {
		return graphdriver.Mount("overlay", target, "overlay", flags, data)
	})
}

// inDir runs fn with dir as working directory of the thread that runs it,
// leaving the process's working directory alone: fn runs on a fresh
// locked OS thread that unshares its filesystem context (CLONE_FS) and is
// never unlocked, so the Go runtime ends the thread with the goroutine.
func inDir(dir string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare working directory: %w", err)
			return
		}
		if err := unix.Chdir(dir); err != nil {
			errc <- fmt.Errorf("chdir %s: %w", dir, err)
			return
		}
		err := fn()
		// Let go of dir's filesystem now, not whenever the runtime ends
		// the thread: an unmount of it must not find it busy.
		_ = unix.Chdir("/")
		errc <- err
	}()
	return <-errc
}

// bindReadOnly mounts dir read-only on target: a one-layer image, since a
// read-only overlay needs two lowers.
func bindReadOnly(dir, target string) error {
	if err := graphdriver.Mount(dir, target, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	if err := graphdriver.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		_ = graphdriver.Unmount(target)
		return err
	}
	return nil
}

// probe mounts a tiny overlay under HOME/tmp with each method, best first,
// with the options every mount will have, and returns the first method
// that works. It fails, wrapping ErrNotSupported, when none does: the
// home's filesystem cannot be an upper dir, or the kernel refuses overlay
// or one of the options.
func (d *Driver) probe() (method mountMethod, err error) {
	te, err := d.tmp.New("probe")
	if err != nil {
		return 0, err
	}
	defer te.Remove()
	p := func(s string) string { return filepath.Join(te.Path(), s) }
	for _, s := range []string{"", "l1", "l2", "upper", "work", "merged"} {
		if err := os.Mkdir(p(s), 0o700); err != nil {
			return 0, err
		}
	}
	if err := os.WriteFile(p("l2/f"), []byte("probe"), 0o600); err != nil {
		return 0, err
	}
	m := overlayMount{
		lowers:     []string{p("l1"), p("l2")},
		lowerLinks: []string{p("l1"), p("l2")},
		upper:      p("upper"), work: p("work"), target: p("merged"),
		options: d.mountOptions(), linkDir: d.links,
	}
	var errs []error
	for _, method = range []mountMethod{methodFsconfigFd, methodFsconfigPath, methodMount} {
		err := mount(method, m)
		if err == nil {
			b, rerr := os.ReadFile(p("merged/f"))
			if uerr := graphdriver.Unmount(p("merged")); uerr != nil {
				return 0, fmt.Errorf("overlay: probe: %w", uerr)
			}
			if rerr == nil && string(b) == "probe" {
				return method, nil
			}
			err = fmt.Errorf("the probe mount on %s does not show its lower (%q, %v)", d.home, b, rerr)
		}
		errs = append(errs, fmt.Errorf("%s: %w", method, err))
	}
	return 0, fmt.Errorf("overlay: cannot mount overlay with upper dir on %s (options %s): %w: %w",
		d.home, optionsString(d.mountOptions()), graphdriver.ErrNotSupported, errors.Join(errs...))
}
