// Package overlay is the overlayfs graph driver: every layer keeps only
// its own changes, and Get mounts the layer's directory over its parents'
// as one overlay filesystem. Creating a layer costs a few directories
// whatever its parent holds, and the kernel does copy-up, whiteouts and
// opaque directories.
//
// Layout under the driver's home (HOME, e.g. ROOT/overlay):
//
//	HOME/<id>/diff        the layer's own content: a lower dir of every
//	                      layer above it, and the upper dir of a
//	                      read-write layer
//	HOME/<id>/work        overlay's work dir (read-write layers only)
//	HOME/<id>/merged      the mount point Get returns
//	HOME/<id>/lower       the parent chain: one layer ID a line, the
//	                      parent first and the bottom-most layer last
//	                      (overlay's lowerdir order); absent without parent
//	HOME/<id>/kind        "image" (Create) or "read-write" (CreateReadWrite)
//	HOME/<id>/link        the layer's short name (6 base-36 characters)
//	HOME/<id>/mounts      the mount count of merged (graphdriver.MountCount)
//	HOME/<id>/commit-of   in an image layer made by CommitReadWrite, until
//	                      the commit is resolved: how to undo it
//	HOME/l/<short>        symlink to ../<id>/diff, so that mount options
//	                      naming many lowers stay short (see below)
//	HOME/empty            an empty directory: the lower of read-write
//	                      layers without parent, since overlay needs one
//	HOME/tmp/<name>       a layer being built or removed, New's probe
//	HOME/tmp/<name>.lock  its lock file (flock)
//	HOME/mount-probe.json what New probed (mount method, userxattr), for
//	                      the next process on the same kernel,
//	                      filesystem and options
//
// Image layers (Create) are filled by ApplyDiff straight into their diff
// dir, without mounting anything, and are mounted read-only: their own
// diff dir over their parents' as lowers only, or, for a layer without
// parent, as a read-only bind mount of its diff dir (a read-only overlay
// needs two lowers). Read-write layers (CreateReadWrite) mount with their
// diff dir as upper dir. Deletions are stored the way overlayfs stores
// them, as 0/0 character devices and the opaque xattr, through the overlay
// whiteout format of package diff.
//
// A new layer's diff dir takes its parent's root mode, owner and xattrs,
// since overlay shows the root attributes of the upper dir only.
//
// A layer is built under HOME/tmp and renamed into place only when whole
// (renameat2 RENAME_NOREPLACE, so two racing Creates of one ID cannot both
// win), and Remove unmounts it and renames it out before deleting it, so a
// killed process never leaves a half layer that looks whole. Entries of
// HOME/tmp are guarded by flocked lock files (package internal/staging),
// and New removes those whose lock nobody holds. A short link left by a
// killed Create or Remove points nowhere and is harmless.
//
// Mounting uses the new mount API where the kernel has it: fsopen, one
// fsconfig(FSCONFIG_SET_FD, "lowerdir+") per lower layer with an O_PATH
// directory fd (path strings of the short links on kernels from 6.8 that
// take no fds), fsmount and move_mount, so chains up to the kernel's 500
// lowers mount whatever the length of HOME. Older kernels get classic
// mount(2) with the bare short names, resolved against HOME/l as working
// directory of the mounting thread, so 500 lowers fit its one page of
// options too. New picks the method with a probe mount, which also refuses
// homes that cannot be an upper dir (overlay on overlay), and records it. Mount options
// are index=off,metacopy=off,redirect_dir=nofollow unless storage options
// say otherwise; see config.mountOptions.
//
// Mount counts are kept per layer in a file and reconciled with the
// kernel's mountinfo (graphdriver.MountCount), so every process using the
// home shares them: two Gets mount once, the last Put unmounts, whichever
// process makes them, and a count whose mount vanished reads zero.
package overlay

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/staging"
	"github.com/layers-storage/layers/internal/xattr"
)

// Name is the driver's registered name.
const Name = "overlay"

// Priority places overlay first when choosing a default driver: it works
// on every modern host and costs nothing per layer.
const Priority = 100

func init() {
	graphdriver.Register(graphdriver.Registration{Name: Name, Priority: Priority, New: New})
}

// Driver is the overlay driver. It is safe for concurrent use, and by
// several processes on one home as far as mounting goes; creating and
// removing layers from several processes is serialised by the store.
type Driver struct {
	home   string
	tmp    *staging.Dir // HOME/tmp
	links  string       // HOME/l
	empty  string       // HOME/empty
	fsType string       // backing filesystem, for Status
	method mountMethod
	config config
	// userXattr: overlay's xattrs are user.overlay.* (option or probe).
	userXattr bool

	locks idLocks

	mu   sync.Mutex
	held map[string]int // references this instance took with Get, for Cleanup
}

var (
	_ graphdriver.Driver  = (*Driver)(nil)
	_ graphdriver.Applier = (*Driver)(nil)
)

// New creates the overlay driver rooted at home, making home if needed,
// and removes whatever a killed process left under HOME/tmp. It fails
// with an error wrapping graphdriver.ErrNotSupported when the kernel has
// no overlayfs or home's filesystem cannot carry it.
//
// Storage options, each with or without the "overlay." prefix:
// userxattr=true|false (default: detected; true in a user namespace or
// where trusted.* xattrs are refused), metacopy=true|false and
// redirect_dir=true|false (default false; metacopy needs redirect_dir),
// and mountopt=OPT[,OPT...] for extra mount options such as volatile.
func New(home string, options map[string]string) (graphdriver.Driver, error) {
	cfg, err := parseOptions(options)
	if err != nil {
		return nil, err
	}
	if !kernelHasOverlay() {
		return nil, fmt.Errorf("overlay: the kernel has no overlay filesystem (not in /proc/filesystems): %w", graphdriver.ErrNotSupported)
	}
	home = filepath.Clean(home)
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	d := &Driver{
		home:   home,
		links:  filepath.Join(home, "l"),
		empty:  filepath.Join(home, "empty"),
		config: cfg,
		held:   make(map[string]int),
	}
	var st unix.Statfs_t
	if err := unix.Statfs(home, &st); err != nil {
		return nil, fmt.Errorf("overlay: statfs %s: %w", home, err)
	}
	d.fsType = graphdriver.FilesystemName(st.Type)
	if st.Type == unix.OVERLAYFS_SUPER_MAGIC {
		return nil, fmt.Errorf("overlay: root %s is on overlayfs, which cannot be an upper dir; use --driver vfs: %w", home, graphdriver.ErrNotSupported)
	}
	for _, p := range []string{d.links, d.empty} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return nil, fmt.Errorf("overlay: %w", err)
		}
	}
	tmp, err := staging.Open(home, staging.Options{Cleaner: unmountProbe})
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	d.tmp = tmp
	if err := d.settle(&st); err != nil {
		return nil, err
	}
	return d, nil
}

// settle decides how layers are mounted: from the record of an earlier
// probe of this home (same kernel, filesystem and options), or by probing
// (d_type, trusted xattrs, a probe mount with each method), recording the
// result for the next process. Every CLI process opens the driver, and
// the probe mount is most of what that costs.
func (d *Driver) settle(st *unix.Statfs_t) error {
	rec := probeRecord{FSType: int64(st.Type), Options: d.config.String()}
	if rec.Kernel = kernelRelease(); rec.Kernel == "" {
		return d.probeAll(nil)
	}
	var fi unix.Stat_t
	if err := unix.Stat(d.home, &fi); err == nil {
		rec.Dev, rec.Ino = fi.Dev, fi.Ino
	}
	if old, ok := readProbeRecord(d.probeFile()); ok && old.matches(rec) {
		d.method, d.userXattr = old.Method, old.UserXattr
		return nil
	}
	return d.probeAll(&rec)
}

// probeAll probes the home and the kernel and, when rec is not nil, records
// the result in it and on disk.
func (d *Driver) probeAll(rec *probeRecord) error {
	ok, err := supportsDType(d.tmp.Path())
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	if !ok {
		return fmt.Errorf("overlay: the %s filesystem of %s does not report file types in directory entries (d_type), which overlay needs; use --driver vfs: %w",
			d.fsType, d.home, graphdriver.ErrNotSupported)
	}
	if d.config.userXattr != nil {
		d.userXattr = *d.config.userXattr
	} else if d.userXattr, err = needUserXattr(d.tmp.Path()); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	if d.method, err = d.probe(); err != nil {
		return err
	}
	if rec != nil {
		rec.Method, rec.UserXattr = d.method, d.userXattr
		// A record that cannot be written costs the next process a
		// probe, nothing more.
		_ = writeProbeRecord(d.probeFile(), d.tmp, *rec)
	}
	return nil
}

// mountOptions are the options of every mount of this driver.
func (d *Driver) mountOptions() [][2]string {
	// Every layer lives under HOME, one filesystem, so xino is never
	// needed for the layers themselves.
	return d.config.mountOptions(d.userXattr, false)
}

// unmountProbe is the cleaner of stale HOME/tmp entries: a probe killed
// while mounted leaves its mount behind, which goes before the entry is
// deleted (not mounted is not an error).
func unmountProbe(path string) error {
	return graphdriver.UnmountDetach(filepath.Join(path, "merged"))
}

// kernelHasOverlay reads /proc/filesystems; when it cannot be read, the
// probe mount decides.
func kernelHasOverlay() bool {
	have, err := graphdriver.KernelFilesystems()
	return err != nil || have["overlay"]
}

// supportsDType reports whether the filesystem of dir fills d_type in
// directory entries (xfs made with ftype=0 does not).
func supportsDType(dir string) (bool, error) {
	f, err := os.CreateTemp(dir, "dtype-")
	if err != nil {
		return false, err
	}
	name := filepath.Base(f.Name())
	f.Close()
	defer os.Remove(f.Name())
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 8192)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return false, fmt.Errorf("getdents %s: %w", dir, err)
		}
		if n <= 0 {
			return false, fmt.Errorf("d_type probe: %s vanished from %s", name, dir)
		}
		for off := 0; off < n; {
			// struct linux_dirent64: ino(8) off(8) reclen(2) type(1) name
			reclen := int(buf[off+16]) | int(buf[off+17])<<8
			typ := buf[off+18]
			nameBytes := buf[off+19 : off+reclen]
			if i := strings.IndexByte(string(nameBytes), 0); i >= 0 {
				nameBytes = nameBytes[:i]
			}
			if string(nameBytes) == name {
				return typ != unix.DT_UNKNOWN, nil
			}
			off += reclen
		}
	}
}

// String returns "overlay".
func (d *Driver) String() string { return Name }

// reserved are the names under HOME that are not layers.
var reserved = map[string]bool{"l": true, "tmp": true, "empty": true, probeFileName: true}

// validID refuses IDs that are not one plain path element or that name
// one of the driver's own entries of HOME.
func validID(id string) error {
	if err := graphdriver.ValidateID(id); err != nil {
		return err
	}
	if reserved[id] {
		return fmt.Errorf("invalid layer ID %q: reserved by the overlay driver", id)
	}
	return nil
}

func (d *Driver) dir(id string) string { return filepath.Join(d.home, id) }

// Create makes an image layer id on parent, to be filled by ApplyDiff and
// mounted read-only. Overlay takes no per-layer options.
func (d *Driver) Create(id, parent string, opts *graphdriver.CreateOpts) error {
	if err := d.create(id, parent, opts, false); err != nil {
		return fmt.Errorf("create layer %s: %w", id, err)
	}
	return nil
}

// CreateReadWrite makes a read-write (container) layer id on parent.
func (d *Driver) CreateReadWrite(id, parent string, opts *graphdriver.CreateOpts) error {
	if err := d.create(id, parent, opts, true); err != nil {
		return fmt.Errorf("create read-write layer %s: %w", id, err)
	}
	return nil
}

func (d *Driver) create(id, parent string, opts *graphdriver.CreateOpts, rw bool) error {
	if err := validID(id); err != nil {
		return err
	}
	if opts != nil {
		keys := make([]string, 0, len(opts.StorageOpt))
		for key := range opts.StorageOpt {
			keys = append(keys, key)
		}
		sort.Strings(keys)
		if len(keys) > 0 {
			return graphdriver.UnknownOption(Name, keys[0])
		}
	}
	if d.Exists(id) {
		return graphdriver.ErrLayerExists
	}
	var lowers []string
	rootFrom := "" // the directory whose root attributes the new diff dir takes
	if parent != "" {
		if err := validID(parent); err != nil {
			return fmt.Errorf("parent: %w", err)
		}
		if !d.Exists(parent) {
			return fmt.Errorf("parent %s: %w", parent, graphdriver.ErrLayerNotExist)
		}
		pl, err := d.readLowers(parent)
		if err != nil {
			return fmt.Errorf("parent %s: %w", parent, err)
		}
		lowers = append([]string{parent}, pl...)
		rootFrom = filepath.Join(d.dir(parent), "diff")
	}
	kind := kindImage
	if rw {
		kind = kindReadWrite
	}
	return d.build(id, lowers, rootFrom, kind, nil)
}

// build makes layer id of kind under HOME/tmp and publishes it: its parent
// chain lowers, an empty diff dir with the root attributes of rootFrom
// ("" for none), the dirs its kind mounts with, and extra files (name to
// content) beside them.
func (d *Driver) build(id string, lowers []string, rootFrom, kind string, extra map[string]string) (err error) {
	te, err := d.tmp.New("new-" + id)
	if err != nil {
		return err
	}
	tmp := te.Path()
	var link string // HOME/l/<short>, once made
	defer func() {
		if err != nil {
			if link != "" {
				_ = os.Remove(link)
			}
			_ = te.Remove()
		}
	}()
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	subs := []string{"merged"}
	if kind == kindReadWrite {
		subs = append(subs, "work")
	}
	for _, sub := range subs {
		if err := os.Mkdir(filepath.Join(tmp, sub), 0o700); err != nil {
			return err
		}
	}
	if err := makeRoot(filepath.Join(tmp, "diff"), rootFrom); err != nil {
		return err
	}
	if len(lowers) > 0 {
		if err := writeFile(filepath.Join(tmp, "lower"), strings.Join(lowers, "\n")+"\n"); err != nil {
			return err
		}
	}
	extra = maps.Clone(extra)
	if extra == nil {
		extra = map[string]string{}
	}
	extra["kind"] = kind + "\n"
	for name, content := range extra {
		if err := writeFile(filepath.Join(tmp, name), content); err != nil {
			return err
		}
	}
	link, err = d.linkAndPublish(te, id)
	return err
}

// linkAndPublish gives the layer built in te its short link and publishes
// it as layer id. It returns the link's path as soon as the link exists,
// so that the caller's cleanup removes it when something fails.
func (d *Driver) linkAndPublish(te *staging.Entry, id string) (link string, err error) {
	short, err := d.makeLink(id)
	if err != nil {
		return "", err
	}
	link = filepath.Join(d.links, short)
	if err := writeFile(filepath.Join(te.Path(), "link"), short); err != nil {
		return link, err
	}
	if err := te.Publish(d.dir(id)); err != nil {
		if errors.Is(err, staging.ErrExists) {
			return link, graphdriver.ErrLayerExists
		}
		return link, err
	}
	return link, nil
}

// makeRoot makes the diff dir at p: mode 0755 owned by root for a layer
// without parent, else with the mode, owner and xattrs (overlay's own
// excepted) of the parent's diff dir from, because the root of an overlay
// mount shows the attributes of its upper dir only.
func makeRoot(p, from string) error {
	if err := os.Mkdir(p, 0o755); err != nil {
		return err
	}
	mode, uid, gid := uint32(0o755), 0, 0
	if from != "" {
		var st unix.Stat_t
		if err := unix.Lstat(from, &st); err != nil {
			return fmt.Errorf("parent root: %w", &os.PathError{Op: "lstat", Path: from, Err: err})
		}
		mode, uid, gid = st.Mode&0o7777, int(st.Uid), int(st.Gid)
		if err := copyXattrs(from, p); err != nil {
			return err
		}
	}
	if os.Geteuid() == 0 {
		if err := os.Lchown(p, uid, gid); err != nil {
			return err
		}
	}
	// After the chown, which clears setuid and setgid bits; Mkdir's mode
	// passes through the umask, this does not.
	if err := unix.Chmod(p, mode); err != nil {
		return &os.PathError{Op: "chmod", Path: p, Err: err}
	}
	return nil
}

// copyXattrs copies the xattrs of directory from to directory to, but
// overlay's own (trusted.overlay.*, user.overlay.*), which describe from's
// place in its stack and not its content.
func copyXattrs(from, to string) error {
	attrs, err := xattr.All(from)
	if err != nil {
		return err
	}
	for name, val := range attrs {
		if xattr.IsOverlayInternal(name) {
			continue
		}
		if err := xattr.Set(to, name, val); err != nil {
			return fmt.Errorf("copy xattr of parent root: %w", err)
		}
	}
	return nil
}

// Layer kinds, as HOME/<id>/kind holds them.
const (
	kindImage     = "image"      // made by Create
	kindReadWrite = "read-write" // made by CreateReadWrite
)

func writeFile(p, content string) error {
	return os.WriteFile(p, []byte(content), 0o600)
}

// shortAlphabet spells short link names (base 36).
const shortAlphabet = "0123456789abcdefghijklmnopqrstuvwxyz"

// shortLen is the length of a short name: 36^6 (two billion) names make
// collisions, which are retried anyway, rare.
const shortLen = 6

// makeLink makes HOME/l/<short> pointing to ../<id>/diff under a fresh
// random short name and returns the name.
func (d *Driver) makeLink(id string) (string, error) {
	target := filepath.Join("..", id, "diff")
	for range 100 {
		var b [shortLen]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		for i := range b {
			b[i] = shortAlphabet[int(b[i])%len(shortAlphabet)]
		}
		short := string(b[:])
		err := os.Symlink(target, filepath.Join(d.links, short))
		if err == nil {
			return short, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("make short link: %w", err)
		}
	}
	return "", fmt.Errorf("make short link: no free name under %s after 100 tries", d.links)
}

// readLowers returns layer id's parent chain, parent first.
func (d *Driver) readLowers(id string) ([]string, error) {
	f, err := os.Open(filepath.Join(d.dir(id), "lower"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // no parent
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lowers []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		if l == "" {
			continue
		}
		if err := validID(l); err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
		lowers = append(lowers, l)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return lowers, nil
}

// readLink returns layer id's short name.
func (d *Driver) readLink(id string) (string, error) {
	b, err := os.ReadFile(filepath.Join(d.dir(id), "link"))
	if err != nil {
		return "", err
	}
	short := strings.TrimSpace(string(b))
	if len(short) == 0 || strings.ContainsAny(short, "/\x00") {
		return "", fmt.Errorf("%s: bad short name %q", filepath.Join(d.dir(id), "link"), short)
	}
	return short, nil
}

// Remove deletes layer id, unmounting it first. Removing a layer that does
// not exist succeeds, so that removal is idempotent. Every reference to its
// mount goes, whoever took it. A mount that stays busy is detached
// (MNT_DETACH), so that Remove does not fail on a reader; the error of a
// failed detach is returned and nothing is deleted.
func (d *Driver) Remove(id string) error {
	if err := validID(id); err != nil {
		return fmt.Errorf("remove layer: %w", err)
	}
	unlock := d.locks.lock(id)
	defer unlock()
	if err := d.remove(id); err != nil {
		return fmt.Errorf("remove layer %s: %w", id, err)
	}
	return nil
}

// remove is Remove with id locked.
func (d *Driver) remove(id string) error {
	if err := unmountAll(d.merged(id)); err != nil {
		// Never delete through a live mount: that would write whiteouts
		// into the upper dir of whoever still uses it.
		return err
	}
	d.setHeld(id, 0)
	short, _ := d.readLink(id) // a layer without link still goes
	// Renamed out under HOME/tmp first, then deleted: the layer stops
	// existing at once, and a crash leaves only HOME/tmp debris.
	if err := d.tmp.RemoveTree("rm-"+id, d.dir(id)); err != nil {
		return err
	}
	// Its short link goes last: one left by a crash points nowhere and
	// is harmless.
	if short != "" {
		link := filepath.Join(d.links, short)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join("..", id, "diff") {
			if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// unmountAll unmounts merged until nothing is mounted there: a layer may
// be mounted more than once (stacked mounts). A mount that stays busy is
// detached as a last resort, with a warning on slog's default logger.
func unmountAll(merged string) error {
	for range 16 {
		mounted, err := graphdriver.IsMountpoint(merged)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !mounted {
			return nil
		}
		if err := graphdriver.Unmount(merged); err != nil {
			if derr := graphdriver.UnmountDetach(merged); derr != nil {
				return errors.Join(err, derr)
			}
			slog.Warn("overlay: mount still busy, detached (MNT_DETACH): the kernel finishes the unmount when its last user goes", "mountpoint", merged, "cause", err)
		}
	}
	return fmt.Errorf("%s is still mounted after 16 unmounts", merged)
}

func (d *Driver) merged(id string) string { return filepath.Join(d.dir(id), "merged") }

// mountCount is layer id's mount count, shared by every process.
func (d *Driver) mountCount(id string) graphdriver.MountCount {
	return graphdriver.NewMountCount(filepath.Join(d.dir(id), "mounts"), d.merged(id))
}

// Get mounts layer id on HOME/<id>/merged, on its first reference, and
// returns that path: read-write for a read-write layer, read-only for an
// image layer. Overlay takes no mount options per Get.
func (d *Driver) Get(id string, opts graphdriver.MountOpts) (string, error) {
	if err := validID(id); err != nil {
		return "", fmt.Errorf("get layer: %w", err)
	}
	if len(opts.Options) > 0 {
		return "", fmt.Errorf("get layer %s: overlay takes no mount options per Get (got %q; use --storage-opt overlay.mountopt)", id, opts.Options)
	}
	unlock := d.locks.lock(id)
	defer unlock()
	if !d.Exists(id) {
		return "", fmt.Errorf("get layer %s: %w", id, graphdriver.ErrLayerNotExist)
	}
	if _, err := d.mountCount(id).Acquire(func() error { return d.mount(id) }); err != nil {
		return "", fmt.Errorf("get layer %s: %w", id, err)
	}
	d.mu.Lock()
	d.held[id]++
	d.mu.Unlock()
	return d.merged(id), nil
}

// kind returns layer id's kind, kindImage or kindReadWrite.
func (d *Driver) kind(id string) (string, error) {
	b, err := os.ReadFile(filepath.Join(d.dir(id), "kind"))
	if err != nil {
		return "", err
	}
	switch k := strings.TrimSpace(string(b)); k {
	case kindImage, kindReadWrite:
		return k, nil
	default:
		return "", fmt.Errorf("%s: unknown layer kind %q", filepath.Join(d.dir(id), "kind"), k)
	}
}

// mount mounts layer id on its merged dir.
func (d *Driver) mount(id string) error {
	lowers, err := d.readLowers(id)
	if err != nil {
		return err
	}
	kind, err := d.kind(id)
	if err != nil {
		return err
	}
	diffDir := filepath.Join(d.dir(id), "diff")
	m := overlayMount{target: d.merged(id), options: d.mountOptions(), linkDir: d.links}
	chain := lowers
	if kind == kindReadWrite {
		m.upper, m.work = diffDir, filepath.Join(d.dir(id), "work")
		if len(lowers) == 0 {
			m.lowers, m.lowerLinks = []string{d.empty}, []string{d.empty}
		}
	} else {
		if len(lowers) == 0 {
			return bindReadOnly(diffDir, m.target)
		}
		chain = append([]string{id}, lowers...)
	}
	if len(chain) > 0 {
		if m.lowers, m.lowerLinks, err = d.lowerStack(chain); err != nil {
			return err
		}
	}
	if err := mount(d.method, m); err != nil {
		for _, l := range lowers {
			if !d.Exists(l) {
				return fmt.Errorf("lower layer %s: %w (%w)", l, graphdriver.ErrLayerNotExist, err)
			}
		}
		return err
	}
	return nil
}

// setHeld records how many references this instance holds on id.
func (d *Driver) setHeld(id string, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n <= 0 {
		delete(d.held, id)
	} else {
		d.held[id] = n
	}
}

// Put releases a reference taken by Get, by this process or another, and
// unmounts the layer when it was the last. A Put when nothing holds a
// reference (a layer never mounted, already removed or unknown) is a no-op
// returning nil, as the conformance suite requires. When the unmount
// fails, the reference is kept, so that the count still says the layer is
// mounted.
func (d *Driver) Put(id string) error {
	if validID(id) != nil {
		return nil
	}
	unlock := d.locks.lock(id)
	defer unlock()
	if !d.Exists(id) {
		return nil
	}
	if _, err := d.mountCount(id).Release(func() error { return graphdriver.Unmount(d.merged(id)) }); err != nil {
		return fmt.Errorf("put layer %s: %w", id, err)
	}
	d.mu.Lock()
	if d.held[id] > 0 {
		d.held[id]--
		if d.held[id] == 0 {
			delete(d.held, id)
		}
	}
	d.mu.Unlock()
	return nil
}

// Exists reports whether layer id is present.
func (d *Driver) Exists(id string) bool {
	if validID(id) != nil {
		return false
	}
	fi, err := os.Stat(filepath.Join(d.dir(id), "diff"))
	return err == nil && fi.IsDir()
}

// Status reports the backing filesystem, how layers are mounted and with
// which options.
func (d *Driver) Status() []graphdriver.Status {
	return []graphdriver.Status{
		{Key: "Backing Filesystem", Value: d.fsType},
		{Key: "Supports d_type", Value: "true"},
		{Key: "Mount API", Value: d.method.String()},
		{Key: "Mount Options", Value: optionsString(d.mountOptions())},
		{Key: "Using userxattr", Value: strconv.FormatBool(d.userXattr)},
		{Key: "Native Overlay Diff", Value: "true"},
		{Key: "Deep Chains", Value: fmt.Sprintf("lowers past the kernel's %d are flattened into cached trees (%d cached)", maxLowers, d.flattenedCount())},
	}
}

// Cleanup releases the references this instance took with Get and still
// holds, unmounting layers whose count drops to zero and detaching those
// that stay busy. References of other processes stay, and so do their
// mounts. The driver is not used afterwards.
func (d *Driver) Cleanup() error {
	d.mu.Lock()
	held := make(map[string]int, len(d.held))
	ids := make([]string, 0, len(d.held))
	for id, n := range d.held {
		held[id] = n
		ids = append(ids, id)
	}
	d.mu.Unlock()
	sort.Strings(ids)
	var errs []error
	for _, id := range ids {
		unlock := d.locks.lock(id)
		count := d.mountCount(id)
		for range held[id] {
			_, err := count.Release(func() error {
				merged := d.merged(id)
				if err := graphdriver.Unmount(merged); err != nil {
					// Busy: Cleanup cannot wait for its users.
					if derr := graphdriver.UnmountDetach(merged); derr != nil {
						return errors.Join(err, derr)
					}
					slog.Warn("overlay: mount still busy, detached (MNT_DETACH): the kernel finishes the unmount when its last user goes", "mountpoint", merged, "cause", err)
				}
				return nil
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("overlay cleanup: layer %s: %w", id, err))
				break
			}
		}
		d.setHeld(id, 0)
		unlock()
	}
	return errors.Join(errs...)
}

// idLocks serialises Get, Put and Remove of one layer ID, leaving other
// IDs free.
type idLocks struct {
	mu sync.Mutex
	m  map[string]*idLock
}

type idLock struct {
	sync.Mutex
	users int
}

// lock locks id and returns the unlock function.
func (l *idLocks) lock(id string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*idLock)
	}
	il := l.m[id]
	if il == nil {
		il = &idLock{}
		l.m[id] = il
	}
	il.users++
	l.mu.Unlock()
	il.Lock()
	return func() {
		il.Unlock()
		l.mu.Lock()
		il.users--
		if il.users == 0 {
			delete(l.m, id)
		}
		l.mu.Unlock()
	}
}
