// Package drivertest is the conformance suite every graph driver passes.
// A driver runs it from its own _test.go with one call:
//
//	func TestSuite(t *testing.T) {
//		drivertest.Run(t, func(t testing.TB) graphdriver.Driver { ... })
//	}
package drivertest

import (
	"testing"

	"github.com/layers-storage/layers/graphdriver"
)

// Factory returns a new, empty driver with a home of its own. It fails t if
// the driver cannot be created. Run calls it once per case and calls the
// driver's Cleanup when the case ends.
type Factory func(t testing.TB) graphdriver.Driver

// Run runs every conformance case against drivers made by newDriver.
func Run(t *testing.T, newDriver Factory) {
	t.Skip("drivertest: suite not written yet")
}
