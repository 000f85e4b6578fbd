package store

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/moby/sys/mountinfo"

	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/internal/loopfs"
	_ "github.com/layers-storage/layers/overlay" // TestOpenTrustsMountCounts mounts
)

// synchronousOfIdleConns returns the synchronous setting of every idle
// connection of s's pool (2 is FULL, 1 NORMAL): holding them all at once,
// each Conn is a different one.
func synchronousOfIdleConns(t *testing.T, s *Store) []int {
	t.Helper()
	ctx := context.Background()
	n := s.db.Stats().Idle
	var conns []*sql.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var modes []int
	for range max(n, 1) {
		c, err := s.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		var mode int
		if err := c.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&mode); err != nil {
			t.Fatal(err)
		}
		modes = append(modes, mode)
	}
	return modes
}

// Commits wait for the disk only where the store asks: every connection
// runs synchronous(NORMAL), so SQLite itself syncs no commit (nor, in
// every process, the directory); tx and the statement cache's Exec sync
// the write-ahead log after their commit (syncWAL), txUnsynced and
// execUnsynced do not. Unsynced commits land and are seen by the next
// Open; a failed transaction rolls back and syncs nothing.
func TestCommitDurability(t *testing.T) {
	root := t.TempDir()
	s, err := Open(Options{Root: root, Driver: "vfs"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	base, err := s.CreateLayer("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateImage(ImageOptions{Config: []byte(`{}`), TopLayer: base.ID, Names: []string{"img"}}); err != nil {
		t.Fatal(err)
	}
	c, err := s.CreateContainer("img", &ContainerOptions{Name: "c"})
	if err != nil {
		t.Fatal(err)
	}
	put := func(tx querier, v string) error {
		_, err := tx.Exec(`INSERT INTO meta (key, value) VALUES ('t', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, v)
		return err
	}
	// syncs runs commit and returns how many times it synced the log.
	syncs := func(what string, commit func() error) int64 {
		t.Helper()
		before := s.walSyncs.Load()
		if err := commit(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return s.walSyncs.Load() - before
	}
	if n := syncs("mount", func() error { _, err := s.Mount("c"); return err }); n != 0 {
		t.Errorf("Mount synced the log %d times, want 0 (a mount count is unsynced)", n)
	}
	for _, c := range []struct {
		what   string
		commit func() error
		want   int64
	}{
		{"tx", func() error { return s.tx(func(tx querier) error { return put(tx, "1") }) }, 1},
		{"txUnsynced", func() error { return s.txUnsynced(func(tx querier) error { return put(tx, "2") }) }, 0},
		{"Exec", func() error { _, err := s.q.Exec(`UPDATE meta SET value = '3' WHERE key = 't'`); return err }, 1},
		{"execUnsynced", func() error { _, err := s.q.execUnsynced(`UPDATE meta SET value = '4' WHERE key = 't'`); return err }, 0},
		{"setMeta", func() error { return s.setMeta("t", "5") }, 1},
		{"CreateContainer", func() error { _, err := s.CreateContainer("img", &ContainerOptions{Name: "d"}); return err }, 1},
		// The removing mark is durable; the row's delete after the data
		// is gone is not (a lost one leaves what recovery drops again).
		{"RemoveContainer", func() error { return s.RemoveContainer("d", false) }, 1},
	} {
		if n := syncs(c.what, c.commit); n != c.want {
			t.Errorf("%s synced the log %d times, want %d", c.what, n, c.want)
		}
	}
	for _, mode := range synchronousOfIdleConns(t, s) {
		if mode != 1 {
			t.Fatalf("a connection runs synchronous %d, want 1 (NORMAL): SQLite would sync commits itself", mode)
		}
	}
	boom := errors.New("boom")
	before := s.walSyncs.Load()
	err = s.tx(func(tx querier) error {
		if _, err := tx.Exec(`UPDATE mounts SET count = 7`); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("tx returned %v, want its function's error", err)
	}
	if n := s.walSyncs.Load() - before; n != 0 {
		t.Errorf("a failed transaction synced the log %d times, want 0", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if n, _, err := s2.Mounted("c"); err != nil || n != 1 {
		t.Fatalf("after reopening: mounted %d times (%v), want 1 (the failed transaction rolled back)", n, err)
	}
	got, err := s2.Container("c")
	if err != nil || got.ID != c.ID {
		t.Fatalf("container after reopening: %v %v", got, err)
	}
	r, err := s2.Check(context.Background(), CheckOptions{})
	if err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", r, err)
	}
	if err := s2.Unmount("c", false); err != nil {
		t.Fatal(err)
	}
}

// Open reconciles the mount counts with the kernel only when the lock file
// says that an operation did not end (a process killed with the lock held)
// or that the counts were reconciled on another boot; after operations that
// all ended it trusts them and reads no mountinfo. A mount made behind the
// store's back then stays until Check reports it and Repair undoes it.
func TestOpenTrustsMountCounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: overlay mounts")
	}
	root := filepath.Join(loopfs.New(t, "tmpfs", 0), "root")
	s, err := Open(Options{Root: root, Driver: "overlay"})
	if errors.Is(err, graphdriver.ErrNotSupported) {
		t.Skipf("overlay: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	base, err := s.CreateLayer("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateImage(ImageOptions{Config: []byte(`{}`), TopLayer: base.ID, Names: []string{"img"}}); err != nil {
		t.Fatal(err)
	}
	counted, err := s.CreateContainer("img", nil)
	if err != nil {
		t.Fatal(err)
	}
	countedPath, err := s.Mount(counted.ID)
	if err != nil {
		t.Fatal(err)
	}
	leak, err := s.CreateContainer("img", nil)
	if err != nil {
		t.Fatal(err)
	}
	// leakNow mounts leak's layer without the store counting it.
	leakNow := func() string {
		t.Helper()
		p, err := s.Driver().Get(leak.Layer, graphdriver.MountOpts{})
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := mountinfo.Mounted(p); !ok {
			t.Fatalf("driver Get did not mount %s", p)
		}
		return p
	}
	reopen := func() {
		t.Helper()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if s, err = Open(Options{Root: root}); err != nil {
			t.Fatal(err)
		}
	}
	writeLock := func(b []byte) {
		t.Helper()
		if _, err := s.lockFile.WriteAt(b, 0); err != nil {
			t.Fatal(err)
		}
	}
	mounted := func(p string) bool {
		ok, err := mountinfo.Mounted(p)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	boot := bootID()
	if boot == "" {
		t.Skip("no boot ID in /proc/sys/kernel/random/boot_id")
	}

	// Operations that all ended: the leak survives Open, Check reports
	// it, Repair undoes it, and the counted mount stays.
	leakPath := leakNow()
	reopen()
	if !mounted(leakPath) {
		t.Fatal("Open reconciled the mounts after operations that all ended")
	}
	r, err := s.Check(context.Background(), CheckOptions{})
	if err != nil || len(r.Problems) != 1 || r.Problems[0].Kind != ProblemLeakedMount {
		t.Fatalf("check: %v %v, want the leaked mount", r, err)
	}
	if _, err := s.Repair(context.Background(), RepairOptions{}); err != nil {
		t.Fatal(err)
	}
	if mounted(leakPath) || !mounted(countedPath) {
		t.Fatalf("after repair: leak mounted %v, counted mount mounted %v", mounted(leakPath), mounted(countedPath))
	}

	// A process killed with the lock held leaves the file busy: Open
	// reconciles, and trusts the counts again afterwards.
	leakNow()
	writeLock([]byte{lockBusy})
	reopen()
	if mounted(leakPath) {
		t.Fatal("Open after a killed operation left the uncounted mount")
	}
	if n, _, err := s.Mounted(counted.ID); err != nil || n != 1 || !mounted(countedPath) {
		t.Fatalf("counted mount after the reconciliation: %d %v", n, err)
	}
	leakNow()
	reopen()
	if !mounted(leakPath) {
		t.Fatal("the reconciliation was not recorded: Open reconciled again")
	}

	// Counts reconciled on another boot: Open reconciles.
	writeLock([]byte(string(lockIdle) + "00000000-0000-0000-0000-000000000000"))
	reopen()
	if mounted(leakPath) {
		t.Fatal("Open after another boot left the uncounted mount")
	}
	r, err = s.Check(context.Background(), CheckOptions{})
	if err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", r, err)
	}
	if err := s.Unmount(counted.ID, false); err != nil {
		t.Fatal(err)
	}
	if mounted(countedPath) {
		t.Fatal("still mounted at count zero")
	}
}

// Durable commits sync the write-ahead log themselves (syncWAL): the log's
// directory entry is synced once per log file, recorded in the lock file,
// not once per process as SQLite's synchronous commit does; a new log file
// (the last connection's Close deletes it) is synced again.
func TestSyncWALOncePerLogFile(t *testing.T) {
	root := t.TempDir()
	open := func() *Store {
		t.Helper()
		s, err := Open(Options{Root: root, Driver: "vfs"})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	defer func() { s.Close() }()
	wal := filepath.Join(root, "layers.db-wal")
	f, err := os.Open(wal)
	if err != nil {
		t.Fatal(err)
	}
	id := walFileID(int(f.Fd()))
	f.Close()
	if id == "" {
		t.Skip("the filesystem of the temporary directory reports no birth time: every commit syncs the directory")
	}
	base, err := s.CreateLayer("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateImage(ImageOptions{Config: []byte(`{}`), TopLayer: base.ID, Names: []string{"img"}}); err != nil {
		t.Fatal(err)
	}
	create := func(wantDirSyncs int64) {
		t.Helper()
		before := s.dirSyncs.Load()
		if _, err := s.CreateContainer("img", nil); err != nil {
			t.Fatal(err)
		}
		if got := s.dirSyncs.Load() - before; got != wantDirSyncs {
			t.Fatalf("create synced the directory %d times, want %d", got, wantDirSyncs)
		}
		rec := make([]byte, walIDLen)
		if _, err := s.lockFile.ReadAt(rec, walIDOffset); err != nil || string(rec) != id {
			t.Fatalf("lock file records log %q (%v), want %q", rec, err, id)
		}
	}
	// Open recorded the driver, the first durable commit to this log.
	if n := s.dirSyncs.Load(); n != 1 {
		t.Fatalf("the first Open synced the directory %d times, want 1", n)
	}
	create(0)
	create(0)
	// Another process, as the CLI runs them: the first leaves the
	// database to its exit (here: its connection stays open until it is
	// closed below), and the record in the lock file holds for the next.
	if err := s.CloseForExit(); err != nil {
		t.Fatal(err)
	}
	first := s
	s = open()
	create(0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	first.q.close()
	if err := first.db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(wal); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the last connection's Close left the log: %v", err)
	}
	s = open()
	f, err = os.Open(wal)
	if err != nil {
		t.Fatal(err)
	}
	newID := walFileID(int(f.Fd()))
	f.Close()
	if newID == id {
		t.Fatal("a new log file has the ID of the deleted one")
	}
	id = newID
	create(1)
	create(0)
	cs, err := s.Containers()
	if err != nil || len(cs) != 5 {
		t.Fatalf("containers: %d %v, want 5", len(cs), err)
	}
}
