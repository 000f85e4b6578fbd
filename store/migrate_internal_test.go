package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	_ "github.com/layers-storage/layers/vfs" // the driver of TestOpenDatabaseWithoutDriver
)

// A database of an older schema is brought up to date step by step, and
// one of a newer schema is refused rather than misread.
func TestMigrations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "layers.db")
	db, err := openDB(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// A version-1 database, as the first release wrote it.
	if _, err := db.Exec(`CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(migrations[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO meta (key, value) VALUES ('driver', 'vfs')`); err != nil {
		t.Fatal(err)
	}
	if err := migrate(db); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := db.QueryRow(`SELECT version FROM schema_version`).Scan(&v); err != nil || v != len(migrations) {
		t.Fatalf("version %d %v, want %d", v, err, len(migrations))
	}
	if _, err := db.Exec(`INSERT INTO blob_gc (digest) VALUES ('sha256:x')`); err != nil {
		t.Fatalf("version 2 table: %v", err)
	}
	var driver string
	if err := db.QueryRow(`SELECT value FROM meta WHERE key = 'driver'`).Scan(&driver); err != nil || driver != "vfs" {
		t.Fatalf("data lost in migration: %q %v", driver, err)
	}
	// Migrating again changes nothing.
	if err := migrate(db); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE schema_version SET version = ?`, len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	if err := migrate(db); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("newer schema: %v, want ErrSchemaTooNew", err)
	}
}

// A database that records no driver (left by a failed first Open of an
// older version, or by a process killed before recording one) holds
// nothing: a failed Open removes it like one it made, a good one takes the
// root.
func TestOpenDatabaseWithoutDriver(t *testing.T) {
	root := t.TempDir()
	dbPath := filepath.Join(root, "layers.db")
	db, err := openDB(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrate(db); err != nil {
		t.Fatal(err)
	}
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("a new database's journal mode: %q %v, want wal", mode, err)
	}
	db.Close()
	if _, err := Open(Options{Root: root, Driver: "vfs", DriverOptions: map[string]string{"bogus": "1"}}); err == nil {
		t.Fatal("Open with a bad option succeeded")
	}
	if _, err := os.Lstat(dbPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("database without a driver left behind: %v", err)
	}
	s, err := Open(Options{Root: root, Driver: "vfs"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := s.meta("driver"); got != "vfs" || err != nil {
		t.Fatalf("recorded driver %q %v", got, err)
	}
	if err := s.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal mode after Open: %q %v, want wal", mode, err)
	}
}
