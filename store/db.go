package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	_ "modernc.org/sqlite" // the database/sql driver "sqlite": pure Go, so static binaries work
)

// migrations are the schema, one step per version: migrations[i] takes
// the schema from version i to i+1. Steps are only ever appended; a
// released step never changes, since databases in the field went through it.
var migrations = []string{
	// 1: the first schema.
	`
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
CREATE TABLE layers (
	id       TEXT PRIMARY KEY,
	parent   TEXT REFERENCES layers(id),
	kind     TEXT NOT NULL CHECK (kind IN ('image', 'container')),
	state    TEXT NOT NULL CHECK (state IN ('incomplete', 'complete', 'removing')),
	diff_id  TEXT NOT NULL DEFAULT '',
	chain_id TEXT NOT NULL DEFAULT '',
	tar_size INTEGER NOT NULL DEFAULT 0,
	size     INTEGER NOT NULL DEFAULT 0,
	created  INTEGER NOT NULL
);
CREATE INDEX layers_parent ON layers(parent);
CREATE INDEX layers_diff_id ON layers(diff_id) WHERE diff_id != '';
CREATE INDEX layers_chain_id ON layers(chain_id) WHERE chain_id != '';
CREATE TABLE layer_blobs (
	layer_id   TEXT NOT NULL REFERENCES layers(id) ON DELETE CASCADE,
	digest     TEXT NOT NULL,
	media_type TEXT NOT NULL,
	size       INTEGER NOT NULL,
	PRIMARY KEY (layer_id, digest)
);
CREATE INDEX layer_blobs_digest ON layer_blobs(digest);
CREATE TABLE images (
	id        TEXT PRIMARY KEY,
	digest    TEXT NOT NULL DEFAULT '',
	top_layer TEXT REFERENCES layers(id),
	created   INTEGER NOT NULL
);
CREATE INDEX images_digest ON images(digest) WHERE digest != '';
CREATE INDEX images_top_layer ON images(top_layer);
CREATE TABLE image_names (
	name     TEXT PRIMARY KEY,
	image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE INDEX image_names_image ON image_names(image_id);
CREATE TABLE image_layers (
	image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
	idx      INTEGER NOT NULL,
	layer_id TEXT NOT NULL REFERENCES layers(id),
	PRIMARY KEY (image_id, idx)
);
CREATE INDEX image_layers_layer ON image_layers(layer_id);
CREATE TABLE containers (
	id       TEXT PRIMARY KEY,
	name     TEXT UNIQUE,
	image_id TEXT NOT NULL,
	layer_id TEXT NOT NULL UNIQUE REFERENCES layers(id),
	created  INTEGER NOT NULL,
	metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE mounts (
	layer_id TEXT PRIMARY KEY REFERENCES layers(id) ON DELETE CASCADE,
	count    INTEGER NOT NULL CHECK (count >= 0),
	path     TEXT NOT NULL,
	kernel   INTEGER NOT NULL
);
`,
	// 2: blobs to delete once no image references them, recorded in the
	// transaction that drops their last reference (or before a blob is
	// written), so that a crash never leaves a blob nobody will delete.
	`
CREATE TABLE blob_gc (
	digest TEXT PRIMARY KEY
);
`,
	// 3: per-image JSON metadata, for what other packages record with an
	// image (the compression a commit asked for).
	`
ALTER TABLE images ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
`,
}

// busyTimeout is how long a statement waits for another connection's
// write lock before failing with SQLITE_BUSY. Writers hold the store lock
// already, so this covers WAL checkpoints and readers racing a writer.
const busyTimeout = 30 * time.Second

// walAutocheckpoint is the length of the write-ahead log, in pages, at
// which a commit checkpoints it into the database (SQLite's default is
// 1000). Every process opening the store is its only connection, so SQLite
// rebuilds the log's index by reading every frame of the log: with 1000
// pages that was a fifth of a `layers mount` process's CPU. A checkpoint
// costs two fsyncs, and restarting the log one more; a CLI verb writes
// about 5 pages, so 128 pages checkpoints every ~25 verbs and bounds the
// rebuild to half a megabyte.
const walAutocheckpoint = 128

// openDB opens the database at path: commits that do not wait for the
// disk (synchronous NORMAL: the store makes the ones that must survive a
// power loss durable itself, see syncWAL), foreign keys on (a layer row
// cannot go while an image, a child or a container names it), a busy
// timeout. These are settings of each connection; WAL mode (readers
// never block the writer) is a setting of the database file, made once
// by migrate when it creates the schema, and not set again by every
// connection of every process.
func openDB(path string) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", fmt.Sprintf("wal_autocheckpoint(%d)", walAutocheckpoint))
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	db.SetMaxIdleConns(4)
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", path, noSpace(err))
	}
	return db, nil
}

// dbState is what Open needs from the database, read in one statement:
// the schema version, the recorded driver, and whether a killed process
// left work for recovery.
type dbState struct {
	version   int
	driver    string // "" when none is recorded yet
	leftovers bool   // layers incomplete or being removed
	blobGC    bool   // blobs waiting for collection
}

// stateQuery reads a dbState of the latest schema. On a new or older
// database it fails (a table it names is missing) or reports an older
// version, and readState migrates first.
const stateQuery = `SELECT
	(SELECT version FROM schema_version),
	COALESCE((SELECT value FROM meta WHERE key = 'driver'), ''),
	EXISTS (SELECT 1 FROM layers WHERE state != 'complete'),
	EXISTS (SELECT 1 FROM blob_gc)`

// readState reads the database's state, migrating the schema to the
// latest version first when it is not there yet. Under the store lock.
func readState(db *sql.DB) (dbState, error) {
	var st dbState
	err := db.QueryRow(stateQuery).Scan(&st.version, &st.driver, &st.leftovers, &st.blobGC)
	if err == nil && st.version == len(migrations) {
		return st, nil
	}
	if err := migrate(db); err != nil {
		return dbState{}, err
	}
	if err := db.QueryRow(stateQuery).Scan(&st.version, &st.driver, &st.leftovers, &st.blobGC); err != nil {
		return dbState{}, fmt.Errorf("database: %w", err)
	}
	return st, nil
}

// migrate brings the schema to the latest version, one transaction per
// step; a new database is switched to WAL mode first. It runs under the
// store lock, so no two processes migrate at once.
func migrate(db *sql.DB) error {
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("database schema: %w", noSpace(err))
	}
	var version int
	err := db.QueryRow(`SELECT version FROM schema_version`).Scan(&version)
	if errors.Is(err, sql.ErrNoRows) {
		// WAL mode is persistent: set once here, it holds for every
		// later connection.
		var mode string
		if err := db.QueryRow(`PRAGMA journal_mode = WAL`).Scan(&mode); err != nil {
			return fmt.Errorf("database: WAL mode: %w", noSpace(err))
		}
		if mode != "wal" {
			return fmt.Errorf("database: WAL mode: the database stays in %s mode", mode)
		}
		if _, err := db.Exec(`INSERT INTO schema_version (version) VALUES (0)`); err != nil {
			return fmt.Errorf("database schema: %w", noSpace(err))
		}
	} else if err != nil {
		return fmt.Errorf("database schema: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("%w: version %d, this program knows up to %d", ErrSchemaTooNew, version, len(migrations))
	}
	for v := version; v < len(migrations); v++ {
		err := withTx(db, func(tx *sql.Tx) error {
			if _, err := tx.Exec(migrations[v]); err != nil {
				return err
			}
			_, err := tx.Exec(`UPDATE schema_version SET version = ?`, v+1)
			return err
		})
		if err != nil {
			return fmt.Errorf("database schema: migrate to version %d: %w", v+1, noSpace(err))
		}
	}
	return nil
}

// withTx runs f in one transaction, committing when it returns nil.
func withTx(db *sql.DB, f func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		return noSpace(err)
	}
	if err := f(tx); err != nil {
		_ = tx.Rollback()
		return noSpace(err)
	}
	return noSpace(tx.Commit())
}

// tx runs f in one transaction whose statements come from the cache, and
// makes it durable (syncWAL) before it returns. A sync that fails leaves
// the transaction committed, not known to be on the disk.
func (s *Store) tx(f func(tx querier) error) error {
	if err := s.txUnsynced(f); err != nil {
		return err
	}
	return s.syncWAL()
}

// txUnsynced runs f in one transaction that commits without waiting for
// the disk. The commit is atomic and survives the process being killed
// (it is in the write-ahead log, in the page cache); only a power loss or
// a kernel crash may take it back, together with nothing committed after
// it (the log is replayed in order, and each durable commit syncs the
// whole log, this one included). So it is for what a power loss undoes
// anyway or leaves for Check or Open's recovery: mount counts (the
// kernel's mounts do not survive it either), the "incomplete" mark of a
// layer being made (its data is not synced at that point either), the
// last row of a layer whose data is gone; or for a commit that syncWAL
// makes durable right after. A flush of the disk cache costs ~1 ms on
// this machine's ext4 on a loop device, as much as the rest of `layers
// mount`.
func (s *Store) txUnsynced(f func(tx querier) error) error {
	err := withTx(s.db, func(tx *sql.Tx) error { return f(cachedTx{tx: tx, c: s.q}) })
	s.q.preparePending()
	return err
}

// syncWAL makes what was committed durable, as a synchronous(FULL)
// commit would have: the write-ahead log is synced (fdatasync: its data
// and its size), and its directory entry too unless the lock file records
// that this very log file (inode and birth time) had its entry synced
// already. SQLite syncs the directory at the first commit of every
// connection, since it cannot know: one more flush of the disk cache in
// every process that commits (~1 ms on this machine's ext4 on a loop
// device). tx and the statement cache's Exec call it after every commit
// that must survive a power loss. The log file cannot be replaced while
// this process's connection is open (SQLite deletes it only when the last
// connection closes), so the file synced is the one committed to. A
// record lost to a power loss (the lock file is not synced), raced by
// another syncWAL, or naming another file means one more directory sync,
// never one less: the record is written only after the sync of the file
// it names.
func (s *Store) syncWAL() error {
	wal := filepath.Join(s.root, "layers.db-wal")
	fd, err := unix.Open(wal, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("database: sync %s: %w", wal, err)
	}
	defer unix.Close(fd)
	id := walFileID(fd)
	if err := unix.Fdatasync(fd); err != nil {
		return fmt.Errorf("database: sync %s: %w", wal, noSpace(err))
	}
	s.walSyncs.Add(1)
	lock := int(s.lockFile.Fd())
	if id != "" {
		var rec [walIDLen]byte
		if n, _ := unix.Pread(lock, rec[:], walIDOffset); n == len(rec) && string(rec[:]) == id {
			return nil
		}
	}
	dir, err := unix.Open(s.root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("database: sync %s: %w", s.root, err)
	}
	err = unix.Fsync(dir)
	unix.Close(dir)
	if err != nil {
		return fmt.Errorf("database: sync %s: %w", s.root, noSpace(err))
	}
	s.dirSyncs.Add(1)
	if id != "" {
		// Unsynced, like the rest of the file: see above.
		_, _ = unix.Pwrite(lock, []byte(id), walIDOffset)
	}
	return nil
}

// walIDOffset and walIDLen place the ID of the write-ahead log whose
// directory entry was synced (walFileID) in the lock file, after the
// state byte and the boot ID (see lockState).
const (
	walIDOffset = 1 + bootIDLen
	walIDLen    = 16 + 16 + 8
)

// walFileID identifies the file open at fd by inode and birth time (an
// inode number alone may come back for a file made after one deleted),
// "" when the filesystem does not report a birth time.
func walFileID(fd int) string {
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_INO|unix.STATX_BTIME, &st); err != nil ||
		st.Mask&unix.STATX_INO == 0 || st.Mask&unix.STATX_BTIME == 0 {
		return ""
	}
	return fmt.Sprintf("%016x%016x%08x", st.Ino, uint64(st.Btime.Sec), st.Btime.Nsec)
}

// stmtCache keeps a prepared statement per query text: SQLite's parser is
// a large share of a small operation's cost (a third of a container's
// create-mount-unmount-remove), and the store runs the same few dozen
// queries over and over. database/sql prepares each statement once per
// connection it runs on.
//
// A statement is prepared on a connection that is free. Inside a
// transaction the only connection a CLI process has is the
// transaction's: preparing there would open a second one (its own
// pragmas, its own parse of the schema) and parse the statement twice. So
// a query first seen in a transaction runs unprepared, once; the second
// time, it is prepared after that transaction ends, on its freed
// connection, for the process that runs it again and again.
type stmtCache struct {
	db      *sql.DB
	durable func() error // makes a commit durable: Exec calls it after one
	mu      sync.Mutex
	m       map[string]*sql.Stmt
	txSeen  map[string]bool // queries run in a transaction without a statement
	pending []string        // queries to prepare once the transaction ends
}

func newStmtCache(db *sql.DB, durable func() error) *stmtCache {
	return &stmtCache{db: db, durable: durable, m: make(map[string]*sql.Stmt), txSeen: make(map[string]bool)}
}

// stmt returns the prepared statement of q, nil when it cannot be
// prepared (the caller runs q unprepared and gets the error from there).
func (c *stmtCache) stmt(q string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.m[q]; ok {
		return st
	}
	st, err := c.db.Prepare(q)
	if err != nil {
		return nil
	}
	c.m[q] = st
	return st
}

// txStmt returns the prepared statement of q for a transaction, nil when
// there is none yet (the caller runs q unprepared in the transaction);
// see stmtCache.
func (c *stmtCache) txStmt(q string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.m[q]; ok {
		return st
	}
	if c.txSeen[q] {
		c.pending = append(c.pending, q)
		delete(c.txSeen, q)
	} else {
		c.txSeen[q] = true
	}
	return nil
}

// preparePending prepares the statements txStmt asked for, outside any
// transaction.
func (c *stmtCache) preparePending() {
	c.mu.Lock()
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, q := range pending {
		c.stmt(q)
	}
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.m {
		st.Close()
	}
	clear(c.m)
}

func (c *stmtCache) QueryRow(q string, args ...any) *sql.Row {
	if st := c.stmt(q); st != nil {
		return st.QueryRow(args...)
	}
	return c.db.QueryRow(q, args...)
}

func (c *stmtCache) Query(q string, args ...any) (*sql.Rows, error) {
	if st := c.stmt(q); st != nil {
		return st.Query(args...)
	}
	return c.db.Query(q, args...)
}

// Exec runs q as a transaction of its own and makes it durable.
func (c *stmtCache) Exec(q string, args ...any) (sql.Result, error) {
	res, err := c.execUnsynced(q, args...)
	if err != nil {
		return nil, err
	}
	return res, c.durable()
}

// execUnsynced runs q as a transaction of its own that does not wait for
// the disk (see txUnsynced).
func (c *stmtCache) execUnsynced(q string, args ...any) (sql.Result, error) {
	if st := c.stmt(q); st != nil {
		return st.Exec(args...)
	}
	return c.db.Exec(q, args...)
}

// cachedTx runs a transaction's statements from the cache.
type cachedTx struct {
	tx *sql.Tx
	c  *stmtCache
}

func (t cachedTx) QueryRow(q string, args ...any) *sql.Row {
	if st := t.c.txStmt(q); st != nil {
		return t.tx.Stmt(st).QueryRow(args...)
	}
	return t.tx.QueryRow(q, args...)
}

func (t cachedTx) Query(q string, args ...any) (*sql.Rows, error) {
	if st := t.c.txStmt(q); st != nil {
		return t.tx.Stmt(st).Query(args...)
	}
	return t.tx.Query(q, args...)
}

func (t cachedTx) Exec(q string, args ...any) (sql.Result, error) {
	if st := t.c.txStmt(q); st != nil {
		return t.tx.Stmt(st).Exec(args...)
	}
	return t.tx.Exec(q, args...)
}

func (s *Store) meta(key string) (string, error) {
	var v string
	err := s.db.QueryRow(`SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("database: read %s: %w", key, err)
	}
	return v, nil
}

func (s *Store) setMeta(key, value string) error {
	_, err := s.q.Exec(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
	if err != nil {
		return fmt.Errorf("database: record %s: %w", key, noSpace(err))
	}
	return nil
}

// newID returns a fresh random 64-hex ID.
func newID() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

// isHex reports whether s is non-empty lower-case hex.
func isHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// isID reports whether s is a full 64-hex ID.
func isID(s string) bool { return len(s) == 64 && isHex(s) }

// nanos and fromNanos store times as Unix nanoseconds.
func nanos(t time.Time) int64 { return t.UnixNano() }

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }
