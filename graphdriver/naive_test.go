package graphdriver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/layers-storage/layers/graphdriver"
	"github.com/layers-storage/layers/vfs"
)

// countingDriver counts the references Get takes and Put gives back.
type countingDriver struct {
	graphdriver.Driver
	mu   sync.Mutex
	refs int
}

func (d *countingDriver) Get(id string, o graphdriver.MountOpts) (string, error) {
	p, err := d.Driver.Get(id, o)
	if err == nil {
		d.mu.Lock()
		d.refs++
		d.mu.Unlock()
	}
	return p, err
}

func (d *countingDriver) Put(id string) error {
	d.mu.Lock()
	d.refs--
	d.mu.Unlock()
	return d.Driver.Put(id)
}

func (d *countingDriver) held() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.refs
}

// Closing a naive diff stream early puts its mounts back before Close
// returns, so that removing the layer right after is safe.
func TestNaiveDiffCloseReleasesMounts(t *testing.T) {
	inner, err := vfs.New(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &countingDriver{Driver: inner}
	if err := d.Create("p", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := d.CreateReadWrite("c", "p", nil); err != nil {
		t.Fatal(err)
	}
	root, err := d.Get("c", graphdriver.MountOpts{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		if err := os.WriteFile(filepath.Join(root, fmt.Sprintf("f%04d", i)), make([]byte, 512), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Put("c"); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		rc, err := graphdriver.Diff(context.Background(), d, "c", "p")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rc.Read(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		rc.Close()
		if n := d.held(); n != 0 {
			t.Fatalf("%d references still held after Close", n)
		}
	}
}
