package store

import (
	"context"
	"database/sql"
	"errors"
	"testing"
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

// The commits that skip the disk flush (mount counts, the incomplete mark
// of a container's layer) land, are seen by the next Open, and leave every
// connection synchronous(FULL) for the commits that need the disk, also
// when the transaction fails.
func TestUnsyncedCommits(t *testing.T) {
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
	if _, err := s.Mount("c"); err != nil {
		t.Fatal(err)
	}
	for _, mode := range synchronousOfIdleConns(t, s) {
		if mode != 2 {
			t.Fatalf("a connection is left at synchronous %d after Mount, want 2 (FULL)", mode)
		}
	}
	boom := errors.New("boom")
	err = s.txUnsynced(func(tx querier) error {
		if _, err := tx.Exec(`UPDATE mounts SET count = 7`); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("txUnsynced returned %v, want its function's error", err)
	}
	for _, mode := range synchronousOfIdleConns(t, s) {
		if mode != 2 {
			t.Fatalf("a connection is left at synchronous %d after a failed transaction, want 2 (FULL)", mode)
		}
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
