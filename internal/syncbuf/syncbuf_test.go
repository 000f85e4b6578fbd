package syncbuf

import (
	"strings"
	"sync"
	"testing"
)

// Writers and a reader side by side (run under -race): every byte lands.
func TestConcurrentWriteRead(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				if _, err := b.Write([]byte("ab")); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for b.Len() < 800 {
		_ = b.String()
	}
	wg.Wait()
	if got := b.String(); got != strings.Repeat("ab", 400) {
		t.Fatalf("got %d bytes %q..., want 800 of ab", len(got), got[:min(len(got), 20)])
	}
}
