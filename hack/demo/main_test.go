package main

import (
	"errors"
	"os"
	"testing"

	"github.com/layers-storage/layers/fixtures"
)

// TestDemo runs the demo end to end, so `make demo` keeps working.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the busybox layer has files owned by other users")
	}
	if _, err := fixtures.BusyboxLayer(); errors.Is(err, fixtures.ErrNoBusybox) {
		t.Skip(err)
	}
	if err := run(); err != nil {
		t.Fatal(err)
	}
}
