package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	// that take no fds), each under 256 bytes: lowers by their HOME/l
	// short link.
	methodFsconfigPath
	// methodMount: classic mount(2) with one options string of at most a
	// page, lowers by their absolute HOME/l short link (about 120 layers
	// under a short home).
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

// mountOptions returns the overlay options of a mount, in order.
//
// index=on where the home's filesystem takes it (it needs file handles):
// without the index, copying up one name of a file with several hard
// links breaks the link, so a write through that name no longer shows
// under the others, and a tar hardlink to a lower file links only the
// copied-up name; the conformance suite checks both (FSBasic,
// FSHardlink*). The kernel refuses index=on (EBUSY) when a lower dir is
// the upper dir of a live mount, which happens while a parent layer is
// mounted, since every layer has an upper dir for now: such a mount falls
// back to index=off, and its hard links break on copy-up as in every
// index=off overlay. With the index, a layer's upper dir records which
// lower it was first mounted on: a copied home does not mount (ESTALE).
//
// redirect_dir=on, not nofollow: without redirects, renaming a directory
// of a lower layer fails with EXDEV (tools like mv then copy), and the
// conformance suite's Rename and FSBasic cases rename one with rename(2).
// Redirects are written by the kernel only: the naive ApplyDiff writes
// through the mount, and overlayfs refuses trusted.overlay.* xattrs set
// through it, so no layer carries an untrusted redirect. With redirects
// (and the index) an upper dir is not a self-contained diff; the driver
// uses the naive differ, which compares mounted trees.
func mountOptions(index bool) [][2]string {
	idx := "off"
	if index {
		idx = "on"
	}
	return [][2]string{{"index", idx}, {"metacopy", "off"}, {"redirect_dir", "on"}}
}

func mountOptionsString(index bool) string {
	opts := mountOptions(index)
	parts := make([]string, len(opts))
	for i, o := range opts {
		parts[i] = o[0] + "=" + o[1]
	}
	return strings.Join(parts, ",")
}

// overlayMount describes one overlay mount: lowers top-most first.
type overlayMount struct {
	lowers      []string // directories, for the fd method
	lowerLinks  []string // the same as HOME/l short links, for the others
	upper, work string
	target      string
	index       bool // index=on
}

// mount mounts m with method.
func mount(method mountMethod, m overlayMount) error {
	if method == methodMount {
		return mountClassic(m)
	}
	return mountFsconfig(method, m)
}

// errFsconfigUnsupported marks, in error messages, an fsconfig failure
// that means the kernel lacks the method (New's probe then settles on the
// next one).
var errFsconfigUnsupported = errors.New("not supported by this kernel")

func mountFsconfig(method mountMethod, m overlayMount) (err error) {
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
	for _, o := range mountOptions(m.index) {
		if err := unix.FsconfigSetString(fsfd, o[0], o[1]); err != nil {
			return fail(fmt.Sprintf("fsconfig %s=%s", o[0], o[1]), err)
		}
	}
	setDir := func(key, dir, link string) error {
		if method == methodFsconfigPath {
			p := dir
			if link != "" {
				p = link
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
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
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

func mountClassic(m overlayMount) error {
	check := func(p string) error {
		if strings.ContainsAny(p, ",:") {
			return fmt.Errorf("overlay on %s: path %s holds ',' or ':', which mount(2) options cannot carry", m.target, p)
		}
		return nil
	}
	for _, p := range append([]string{m.upper, m.work}, m.lowerLinks...) {
		if err := check(p); err != nil {
			return err
		}
	}
	data := "lowerdir=" + strings.Join(m.lowerLinks, ":")
	if m.upper != "" {
		data += ",upperdir=" + m.upper + ",workdir=" + m.work
	}
	data += "," + mountOptionsString(m.index)
	if len(data) >= unix.Getpagesize() {
		return fmt.Errorf("overlay on %s: %d lower layers need %d bytes of mount(2) options, the kernel takes less than %d (kernels from 6.8 on have no such limit)",
			m.target, len(m.lowers), len(data), unix.Getpagesize())
	}
	return graphdriver.Mount("overlay", m.target, "overlay", 0, data)
}

// probe mounts a tiny overlay under HOME/tmp with each method, best first,
// and returns the first that works, and whether index=on works too (it
// needs file handles on the home's filesystem). It fails, wrapping
// ErrNotSupported, when no method works: the home's filesystem cannot be
// an upper dir, or the kernel refuses overlay.
func (d *Driver) probe() (method mountMethod, index bool, err error) {
	te, err := d.tmp.New("probe")
	if err != nil {
		return 0, false, err
	}
	defer te.Remove()
	p := func(s string) string { return filepath.Join(te.Path(), s) }
	for _, s := range []string{"", "l1", "l2", "upper", "work", "merged", "upper2", "work2"} {
		if err := os.Mkdir(p(s), 0o700); err != nil {
			return 0, false, err
		}
	}
	if err := os.WriteFile(p("l2/f"), []byte("probe"), 0o600); err != nil {
		return 0, false, err
	}
	m := overlayMount{
		lowers:     []string{p("l1"), p("l2")},
		lowerLinks: []string{p("l1"), p("l2")},
		upper:      p("upper"), work: p("work"), target: p("merged"),
	}
	// try mounts m, checks the lower shows and unmounts.
	try := func(method mountMethod, m overlayMount) error {
		if err := mount(method, m); err != nil {
			return err
		}
		b, rerr := os.ReadFile(p("merged/f"))
		if uerr := graphdriver.Unmount(p("merged")); uerr != nil {
			return fmt.Errorf("overlay: probe: %w", uerr)
		}
		if rerr != nil || string(b) != "probe" {
			return fmt.Errorf("overlay: probe mount on %s does not show its lower (%q, %v)", d.home, b, rerr)
		}
		return nil
	}
	var errs []error
	found := false
	for _, method = range []mountMethod{methodFsconfigFd, methodFsconfigPath, methodMount} {
		if method == methodFsconfigPath && len(p("upper")) > 255 {
			continue
		}
		err := try(method, m)
		if err == nil {
			found = true
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", method, err))
	}
	if !found {
		return 0, false, fmt.Errorf("overlay: cannot mount overlay with upper dir on %s: %w: %w", d.home, graphdriver.ErrNotSupported, errors.Join(errs...))
	}
	m.upper, m.work, m.index = p("upper2"), p("work2"), true
	return method, try(method, m) == nil, nil
}
