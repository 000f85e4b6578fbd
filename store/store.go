package store

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/graphdriver"
)

// Sentinel errors, wrapped with context, for callers to branch on with
// errors.Is.
var (
	// ErrLayerUnknown means no complete layer matches the ID or prefix.
	ErrLayerUnknown = errors.New("layer not known")
	// ErrImageUnknown means no image matches the ID, prefix, name or digest.
	ErrImageUnknown = errors.New("image not known")
	// ErrContainerUnknown means no container matches the ID, prefix or name.
	ErrContainerUnknown = errors.New("container not known")
	// ErrAmbiguous means an ID prefix matches several objects.
	ErrAmbiguous = errors.New("ambiguous ID prefix")
	// ErrInUse means the object is used by another one (a layer by its
	// children, an image or a container; an image by a container; a
	// mounted layer) and was not removed.
	ErrInUse = errors.New("in use")
	// ErrNameInUse means a container name is taken.
	ErrNameInUse = errors.New("name already in use")
	// ErrInvalidName means a malformed image reference or container name.
	ErrInvalidName = errors.New("invalid name")
	// ErrDriverMismatch means Options.Driver names another driver than
	// the one recorded in the root.
	ErrDriverMismatch = errors.New("driver does not match the root")
	// ErrInvalidOption means a store option with a bad value.
	ErrInvalidOption = errors.New("invalid storage option")
	// ErrDigestMismatch means applied content does not match the digest
	// the caller expected.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrNoSpace means the filesystem of the root is full; nothing of the
	// failed operation was kept.
	ErrNoSpace = errors.New("no space left on the store's filesystem")
	// ErrClosed means the Store was used after Close.
	ErrClosed = errors.New("store is closed")
	// ErrSchemaTooNew means the database was written by a newer version
	// of this package, whose schema this one does not know.
	ErrSchemaTooNew = errors.New("database schema is newer than this program")
)

// Options say where a store lives and how its driver is made.
type Options struct {
	// Root holds the database, the blobs and the driver's home. Required.
	Root string
	// RunRoot holds runtime state that does not survive a reboot; it
	// defaults to ROOT/run. Nothing that the store's consistency depends
	// on lives there.
	RunRoot string
	// Driver is the graph driver's registered name. Empty means the
	// driver recorded in the root, else the best that works on the host
	// (graphdriver.Names order). A name other than the recorded one fails
	// with ErrDriverMismatch.
	Driver string
	// DriverOptions are storage options ("--storage-opt KEY=VALUE"). The
	// store takes "sync" (true or false: sync each layer's filesystem
	// before marking the layer complete) and passes every other key to
	// the driver, which refuses those it does not know.
	DriverOptions map[string]string
}

// ParseStorageOptions turns KEY=VALUE strings, as --storage-opt gives
// them, into Options.DriverOptions.
func ParseStorageOptions(kvs []string) (map[string]string, error) {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%w %q: want KEY=VALUE", ErrInvalidOption, kv)
		}
		m[k] = v
	}
	return m, nil
}

// LayerKind says what a layer is for.
type LayerKind string

const (
	// KindImage is a read-only layer of images (ApplyDiff, CreateLayer).
	KindImage LayerKind = "image"
	// KindContainer is a read-write layer (a container's, or CreateLayer
	// with ReadWrite).
	KindContainer LayerKind = "container"
)

// Layer is a complete layer as the store records it.
type Layer struct {
	// ID is 64 hex characters.
	ID string `json:"id"`
	// Parent is the parent layer's ID, "" for a bottom layer.
	Parent string `json:"parent"`
	// DiffID is the sha256 of the layer's uncompressed tar, for layers
	// made by ApplyDiff; "" for layers made empty or read-write.
	DiffID digest.Digest `json:"diff_id"`
	// ChainID identifies the layer with all its parents (image-spec); ""
	// when the layer or one of its parents has no DiffID.
	ChainID digest.Digest `json:"chain_id"`
	// Blobs are the compressed forms the layer is known by in
	// registries, for pushing it without recompressing.
	Blobs []Blob `json:"blobs,omitempty"`
	// TarSize is the length of the uncompressed tar applied.
	TarSize int64 `json:"tar_size"`
	// Size is the bytes of file content the layer added.
	Size int64 `json:"size"`
	// Created is when the layer was created.
	Created time.Time `json:"created"`
	// Kind is image or container.
	Kind LayerKind `json:"kind"`
}

// Blob is a compressed form of a layer as registries store it.
type Blob struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"media_type"`
	Size      int64         `json:"size"`
}

// Image is an image: a config (whose digest is its ID), an optional
// manifest, its layers and its names.
type Image struct {
	// ID is the hex of the config's sha256 digest.
	ID string `json:"id"`
	// Digest is the manifest's digest, "" when no manifest was stored.
	Digest digest.Digest `json:"digest"`
	// Names are normalised references ("docker.io/library/busybox:latest").
	Names []string `json:"names"`
	// TopLayer is the ID of the image's top layer, "" for an image
	// without layers.
	TopLayer string `json:"top_layer"`
	// Layers are the image's layer IDs, bottom first.
	Layers []string `json:"layers"`
	// Size is the sum of the layers' sizes.
	Size int64 `json:"size"`
	// Created is when the image was stored.
	Created time.Time `json:"created"`
	// Metadata is what other packages record with the image (JSON; "{}"
	// when nothing is), see SetImageMetadata.
	Metadata json.RawMessage `json:"metadata"`
}

// Container is a read-write layer on an image, with a name.
type Container struct {
	// ID is 64 hex characters.
	ID string `json:"id"`
	// Name is unique among containers; "" when none was given.
	Name string `json:"name"`
	// Image is the image's ID. It may name an image removed since, with
	// RemoveImage's force.
	Image string `json:"image"`
	// Layer is the ID of the container's read-write layer.
	Layer string `json:"layer"`
	// Created is when the container was created.
	Created time.Time `json:"created"`
	// Mounted says whether the container's layer is mounted now
	// (reconciled with the kernel's mountinfo).
	Mounted bool `json:"mounted"`
	// Metadata is JSON kept for other packages (run state, exit status);
	// see SetContainerMetadata.
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// Store is an open root. It is safe for concurrent use by goroutines; see
// the package documentation for several processes.
type Store struct {
	root, runRoot string
	home          string // ROOT/<driver>
	blobs         string // ROOT/blobs/sha256
	tmp           string // ROOT/tmp
	sync          bool
	driver        graphdriver.Driver
	db            *sql.DB
	q             *stmtCache // statements on db
	lockFile      *os.File
	crashAt       string // test hook, see crashPoint

	// mountsTrusted tells Open's recovery that the mount counts need no
	// reconciling with the kernel (see lockState); set only while it
	// runs.
	mountsTrusted bool
	// walSyncs and dirSyncs count syncWAL's syncs of the write-ahead log
	// and of the root directory, for tests.
	walSyncs, dirSyncs atomic.Int64

	// mu serialises mutations inside the process; the flock on lockFile
	// serialises them between processes (flock does not exclude
	// goroutines sharing one open file).
	mu     sync.Mutex
	closed atomic.Bool // read without mu: readers never wait for a writer
}

// Open opens (making it if needed) the store at opts.Root, picks and
// starts its driver, migrates the database schema, and removes what a
// killed process left behind (incomplete layers, layers being removed).
func Open(opts Options) (*Store, error) {
	if opts.Root == "" {
		return nil, errors.New("open store: Options.Root is empty")
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", opts.Root, err)
	}
	s := &Store{
		root:    root,
		runRoot: opts.RunRoot,
		blobs:   filepath.Join(root, "blobs", "sha256"),
		tmp:     filepath.Join(root, "tmp"),
		crashAt: os.Getenv(crashEnv),
	}
	if s.runRoot == "" {
		s.runRoot = filepath.Join(root, "run")
	}
	driverOpts := make(map[string]string, len(opts.DriverOptions))
	for k, v := range opts.DriverOptions {
		if k == "sync" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("open store %s: %w sync=%q: want true or false", root, ErrInvalidOption, v)
			}
			s.sync = b
			continue
		}
		driverOpts[k] = v
	}
	// The root holds the lock file, so it is made first; the rest is
	// made under the lock, where a failed first Open can take it back
	// without pulling it from under another process's Open.
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("open store %s: %w", root, noSpace(err))
	}
	s.lockFile, err = os.OpenFile(filepath.Join(root, "store.lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store %s: lock file: %w", root, err)
	}
	if err := s.open(opts.Driver, driverOpts); err != nil {
		s.closeAll()
		return nil, fmt.Errorf("open store %s: %w", root, err)
	}
	return s, nil
}

// open does Open's work under the store lock. A first Open that fails (no
// driver was ever recorded in the root, so nothing can be stored in it)
// takes back what it made: the database, the directories, the driver's
// home. The root and its lock file stay: another process may be waiting
// on that very file for its own Open, and neither holds anything stored.
func (s *Store) open(want string, driverOpts map[string]string) (err error) {
	unlock, idle, err := s.lockState()
	if err != nil {
		return err
	}
	defer unlock()
	dbPath := filepath.Join(s.root, "layers.db")
	_, statErr := os.Lstat(dbPath)
	first := errors.Is(statErr, os.ErrNotExist) // no root was ever made here
	var dirs, homes []string                    // what this Open made, parents first
	defer func() {
		if err != nil && first {
			err = joinErrors(err, s.undoFirstOpen(dbPath, dirs, homes))
		}
	}()
	for _, d := range []string{s.runRoot, s.blobs, s.tmp} {
		made, err := mkdirAll(d)
		dirs = append(dirs, made...)
		if err != nil {
			return noSpace(err)
		}
	}
	if s.db, err = openDB(dbPath); err != nil {
		return err
	}
	s.q = newStmtCache(s.db, s.syncWAL)
	st, err := readState(s.db)
	if err != nil {
		return err
	}
	// A root whose database exists but records no driver was never
	// opened successfully (every Open records it before returning):
	// nothing is stored in it, and it goes like a new one.
	recorded := st.driver
	first = first || recorded == ""
	// newHome notes the home of driver name when it does not exist yet.
	newHome := func(name string) {
		home := filepath.Join(s.root, name)
		if _, err := os.Lstat(home); errors.Is(err, os.ErrNotExist) {
			homes = append(homes, home)
		}
	}
	switch {
	case recorded != "" && want != "" && want != recorded:
		return fmt.Errorf("%w: the root was made with driver %s, not %s (use --driver %s, or another root)",
			ErrDriverMismatch, recorded, want, recorded)
	case recorded != "":
		s.driver, err = graphdriver.New(recorded, filepath.Join(s.root, recorded), driverOpts)
	case want != "":
		newHome(want)
		s.driver, err = graphdriver.New(want, filepath.Join(s.root, want), driverOpts)
	default:
		for _, name := range graphdriver.Names() {
			newHome(name)
		}
		s.driver, err = s.defaultDriver(driverOpts)
	}
	if err != nil {
		return err
	}
	s.home = filepath.Join(s.root, s.driver.String())
	if recorded == "" {
		if err := s.setMeta("driver", s.driver.String()); err != nil {
			return err
		}
		first = false // from here on, the root is the driver's
	}
	// The mount counts are reconciled with the kernel's mountinfo only
	// when something may have made them lie: reading mountinfo costs
	// the kernel ~25 µs per overlay mount on this machine (0.5 ms with
	// 20 containers mounted, 2.5 ms with 100), paid by every process.
	boot := bootID()
	s.mountsTrusted = idle == boot && boot != ""
	err = s.recover(st)
	if err == nil && !s.mountsTrusted && boot != "" {
		// Reconciled on this boot: recorded for the next Open once the
		// lock is released (unlock marks the state idle).
		_, err = s.lockFile.WriteAt([]byte(string(lockBusy)+boot), 0)
		if err != nil {
			err = fmt.Errorf("lock file: %w", noSpace(err))
		}
	}
	s.mountsTrusted = false
	return err
}

// undoFirstOpen removes what a failed first Open made: the database (its
// connections closed first), the driver homes in homes with what the
// driver put there, and the directories in dirs when empty. Under the
// store lock.
func (s *Store) undoFirstOpen(dbPath string, dirs, homes []string) error {
	var errs []error
	if s.q != nil {
		s.q.close()
		s.q = nil
	}
	if s.db != nil {
		errs = append(errs, s.db.Close())
		s.db = nil
	}
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		if err := os.Remove(dbPath + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, h := range homes {
		errs = append(errs, os.RemoveAll(h))
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := joinErrors(errs...); err != nil {
		return fmt.Errorf("clean up after the failed first open: %w", err)
	}
	return nil
}

// missingDirs returns the directories of path, parents first, that do not
// exist yet (path included).
func missingDirs(path string) ([]string, error) {
	var missing []string
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		_, err := os.Lstat(p)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, p)
		if p == filepath.Dir(p) {
			break
		}
	}
	slices.Reverse(missing)
	return missing, nil
}

// mkdirAll is os.MkdirAll(path, 0o700) that returns the directories it
// made, parents first.
func mkdirAll(path string) ([]string, error) {
	missing, err := missingDirs(path)
	if err != nil || len(missing) == 0 {
		return nil, err
	}
	return missing, os.MkdirAll(path, 0o700)
}

// defaultDriver makes the highest-priority driver that works, each in its
// own home ROOT/<name>; graphdriver.Default cannot be used since it gives
// every candidate the same home. Homes made for drivers that turned out
// unsupported are removed again.
func (s *Store) defaultDriver(options map[string]string) (graphdriver.Driver, error) {
	var reasons []string
	for _, name := range graphdriver.Names() {
		home := filepath.Join(s.root, name)
		_, statErr := os.Lstat(home)
		d, err := graphdriver.New(name, home, options)
		if err == nil {
			return d, nil
		}
		if errors.Is(statErr, os.ErrNotExist) {
			_ = os.RemoveAll(home)
		}
		if !errors.Is(err, graphdriver.ErrNotSupported) {
			return nil, err
		}
		reasons = append(reasons, err.Error())
	}
	if len(reasons) == 0 {
		return nil, fmt.Errorf("no driver registered (import github.com/layers-storage/layers/store/all): %w", graphdriver.ErrNotSupported)
	}
	return nil, fmt.Errorf("no usable driver: %w (%s)", graphdriver.ErrNotSupported, strings.Join(reasons, "; "))
}

// Close releases the database and the lock file. It does not unmount
// anything: mounts made by Mount are counted in the database and outlive
// the process (a shell's `layers mount` must stay mounted after it
// exits, for the next process's `umount` to undo). So the driver's
// Cleanup is not called: it releases every reference the driver instance
// took with Get, which would undo this process's Mounts (and for drivers
// that count per process, unmount them). Transient mounts (the naive
// differ's) are put back by the operations that make them.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	return s.closeAll()
}

// CloseForExit is Close for a process that exits right after it (the
// CLI): it releases the store lock but leaves the database connection to
// the process's exit instead of closing it. SQLite's last connection to
// close a database checkpoints the write-ahead log into the database file
// and deletes it: two fsyncs, and the next writer re-creates the log with
// two more (its header, its directory). Every commit is synced to the log
// already, so nothing is less durable: the next process reads the log as
// it would after a process was killed, which every Open handles anyway,
// and SQLite checkpoints the log as it grows (walAutocheckpoint). The
// Store must not be used afterwards, and a process that lives on must
// call Close instead: the connection's memory and descriptors stay until
// exit.
func (s *Store) CloseForExit() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	if s.lockFile != nil {
		return s.lockFile.Close()
	}
	return nil
}

func (s *Store) closeAll() error {
	var errs []error
	if s.q != nil {
		s.q.close()
	}
	if s.db != nil {
		errs = append(errs, s.db.Close())
	}
	if s.lockFile != nil {
		errs = append(errs, s.lockFile.Close())
	}
	return joinErrors(errs...)
}

// Root returns the store's root directory.
func (s *Store) Root() string { return s.root }

// RunRoot returns the store's runtime directory.
func (s *Store) RunRoot() string { return s.runRoot }

// DriverName returns the name of the store's graph driver.
func (s *Store) DriverName() string { return s.driver.String() }

// DriverStatus returns the driver's status lines, for `info`.
func (s *Store) DriverStatus() []graphdriver.Status { return s.driver.Status() }

// Driver returns the store's graph driver, for packages that work on
// layers directly (benchmarks). Mutating layers through it bypasses the
// store's records and locks.
func (s *Store) Driver() graphdriver.Driver { return s.driver }

// Sync reports whether layers are synced before being marked complete.
func (s *Store) Sync() bool { return s.sync }

// lock takes the store lock: the in-process mutex, then the flock.
func (s *Store) lock() (func(), error) {
	unlock, _, err := s.lockState()
	return unlock, err
}

// The lock file's first byte says whether a locked operation is under way
// (lockBusy) or none is (lockIdle); after it, the boot ID of the kernel
// whose mounts the counts were last reconciled with. Every locked
// operation marks the file busy while it runs, so a process killed with
// the lock held (between a driver's Get and recording the count, say)
// leaves it busy, and the next Open reconciles the counts with mountinfo;
// so does a new boot, whose kernel has none of the mounts counted. Both are
// plain writes to the page cache, which a killed process leaves behind: a
// few microseconds for each operation, where reading mountinfo at every
// Open costs ~25 µs per mount. A file that is empty (a new root) or says
// anything else reads as not reconciled.
const (
	lockBusy = '1'
	lockIdle = '0'
)

// lockState takes the store lock, marks the lock file busy until unlock,
// and returns the boot ID the file recorded if it said idle ("" when it
// said busy or nothing).
func (s *Store) lockState() (unlock func(), idleBoot string, err error) {
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return nil, "", ErrClosed
	}
	fd := int(s.lockFile.Fd())
	for {
		err := unix.Flock(fd, unix.LOCK_EX)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			s.mu.Unlock()
			return nil, "", fmt.Errorf("lock %s: %w", s.lockFile.Name(), err)
		}
	}
	var buf [1 + bootIDLen]byte
	if n, _ := unix.Pread(fd, buf[:], 0); n == len(buf) && buf[0] == lockIdle {
		idleBoot = string(buf[1:])
	}
	if _, err := unix.Pwrite(fd, []byte{lockBusy}, 0); err != nil {
		// The file cannot say busy (a full disk, for the first byte
		// of an empty file): emptied instead, it says nothing, which
		// reads as busy too.
		if terr := unix.Ftruncate(fd, 0); terr != nil {
			_ = unix.Flock(fd, unix.LOCK_UN)
			s.mu.Unlock()
			return nil, "", fmt.Errorf("lock %s: mark busy: %w", s.lockFile.Name(), noSpace(joinErrors(err, terr)))
		}
	}
	return func() {
		// Idle again. A write that fails leaves the file busy (or
		// empty), which costs the next Open a reconciliation only.
		_, _ = unix.Pwrite(fd, []byte{lockIdle}, 0)
		_ = unix.Flock(fd, unix.LOCK_UN)
		s.mu.Unlock()
	}, idleBoot, nil
}

// bootIDLen is the length of a boot ID, a UUID in text.
const bootIDLen = 36

// bootID returns the running kernel's boot ID, "" when it cannot be read.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if id := strings.TrimSpace(string(b)); err == nil && len(id) == bootIDLen {
		return id
	}
	return ""
}

// checkOpen returns ErrClosed after Close, for readers that take no lock.
func (s *Store) checkOpen() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

// noSpace marks an ENOSPC or EDQUOT error with ErrNoSpace, so that a full
// disk reads as such whatever operation hit it.
func noSpace(err error) error {
	if err == nil || errors.Is(err, ErrNoSpace) {
		return err
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || strings.Contains(err.Error(), "database or disk is full") {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

// joinErrors is errors.Join on one line: errors of this package end up
// as the one "layers: what failed: why" line of the CLI, and errors.Join
// separates its errors with newlines. nil errors are dropped; nil when
// none is left.
func joinErrors(errs ...error) error {
	var kept []error
	for _, err := range errs {
		if err != nil {
			kept = append(kept, err)
		}
	}
	switch len(kept) {
	case 0:
		return nil
	case 1:
		return kept[0]
	}
	return lineErrors(kept)
}

// lineErrors are several errors, joined with "; ".
type lineErrors []error

func (e lineErrors) Error() string {
	parts := make([]string, len(e))
	for i, err := range e {
		parts[i] = err.Error()
	}
	return strings.Join(parts, "; ")
}

// Unwrap gives errors.Is and errors.As every error.
func (e lineErrors) Unwrap() []error { return e }
