package graphdriver

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// fakeDriver is the least a Driver can be; only its name matters here.
type fakeDriver struct{ name, home string }

func (f *fakeDriver) String() string                                   { return f.name }
func (f *fakeDriver) Create(id, parent string, opts *CreateOpts) error { return nil }
func (f *fakeDriver) CreateReadWrite(id, parent string, opts *CreateOpts) error {
	return nil
}
func (f *fakeDriver) Remove(id string) error                        { return nil }
func (f *fakeDriver) Get(id string, opts MountOpts) (string, error) { return f.home, nil }
func (f *fakeDriver) Put(id string) error                           { return nil }
func (f *fakeDriver) Exists(id string) bool                         { return false }
func (f *fakeDriver) Status() []Status                              { return nil }
func (f *fakeDriver) Cleanup() error                                { return nil }

// The registry is global and other tests of this package may register
// drivers too, so the fakes have names of their own and priorities far
// above any real driver's, and their behaviour depends on the home they are
// given: only the homes used here make them do anything but succeed.
const (
	homeNone   = "/registry-test/none"   // every fake says ErrNotSupported
	homeBroken = "/registry-test/broken" // the second fake fails for real
)

var registerFakes = sync.OnceFunc(func() {
	Register(Registration{Name: "registrytest-top", Priority: 1 << 30, New: func(home string, _ map[string]string) (Driver, error) {
		return nil, fmt.Errorf("kernel lacks it: %w", ErrNotSupported)
	}})
	Register(Registration{Name: "registrytest-mid", Priority: 1<<30 - 1, New: func(home string, opts map[string]string) (Driver, error) {
		switch {
		case home == homeNone:
			return nil, fmt.Errorf("wrong filesystem: %w", ErrNotSupported)
		case home == homeBroken:
			return nil, errors.New("root is corrupt")
		case opts["bad"] != "":
			return nil, UnknownOption("registrytest-mid", "bad")
		}
		return &fakeDriver{name: "registrytest-mid", home: home}, nil
	}})
	Register(Registration{Name: "registrytest-low", Priority: 1<<30 - 2, New: func(home string, _ map[string]string) (Driver, error) {
		if home == homeNone {
			return nil, fmt.Errorf("no: %w", ErrNotSupported)
		}
		return &fakeDriver{name: "registrytest-low", home: home}, nil
	}})
})

func TestNamesPriorityOrder(t *testing.T) {
	registerFakes()
	names := Names()
	i := slices.Index(names, "registrytest-top")
	if i < 0 || len(names) < i+3 || names[i+1] != "registrytest-mid" || names[i+2] != "registrytest-low" {
		t.Fatalf("Names() = %q: want registrytest-top, -mid, -low in that order", names)
	}
}

var registerTies = sync.OnceFunc(func() {
	Register(Registration{Name: "registrytest-tie-b", Priority: -1 << 30, New: func(string, map[string]string) (Driver, error) { return nil, ErrNotSupported }})
	Register(Registration{Name: "registrytest-tie-a", Priority: -1 << 30, New: func(string, map[string]string) (Driver, error) { return nil, ErrNotSupported }})
})

func TestNamesTieBrokenByName(t *testing.T) {
	registerTies()
	names := Names()
	a, b := slices.Index(names, "registrytest-tie-a"), slices.Index(names, "registrytest-tie-b")
	if a < 0 || b != a+1 {
		t.Fatalf("Names() = %q: equal priorities must sort by name", names)
	}
}

func TestNewUnknownDriver(t *testing.T) {
	registerFakes()
	_, err := New("registrytest-nope", "/x", nil)
	if !errors.Is(err, ErrUnknownDriver) {
		t.Fatalf("err = %v, want ErrUnknownDriver", err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, `unknown driver "registrytest-nope" (known: `) || !strings.Contains(msg, "registrytest-mid") {
		t.Fatalf("message %q: want the name and the known drivers", msg)
	}
}

func TestNewWrapsDriverError(t *testing.T) {
	registerFakes()
	_, err := New("registrytest-mid", homeBroken, nil)
	if err == nil || err.Error() != "driver registrytest-mid: root is corrupt" {
		t.Fatalf("err = %v", err)
	}
	_, err = New("registrytest-top", "/x", nil)
	if !errors.Is(err, ErrNotSupported) {
		t.Fatalf("err = %v, want ErrNotSupported kept", err)
	}
	d, err := New("registrytest-low", "/x", nil)
	if err != nil || d.String() != "registrytest-low" {
		t.Fatalf("New = %v, %v", d, err)
	}
}

func TestDefaultSkipsNotSupported(t *testing.T) {
	registerFakes()
	d, err := Default("/somewhere", nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.String() != "registrytest-mid" {
		t.Fatalf("Default picked %s, want registrytest-mid (top says not supported)", d)
	}
}

func TestDefaultReturnsOtherErrors(t *testing.T) {
	registerFakes()
	// The mid driver's real failure must surface, not fall through to low.
	_, err := Default(homeBroken, nil)
	if err == nil || errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "root is corrupt") {
		t.Fatalf("err = %v, want the mid driver's own error", err)
	}
	_, err = Default("/somewhere", map[string]string{"bad": "1"})
	if !errors.Is(err, ErrUnknownOption) {
		t.Fatalf("err = %v, want ErrUnknownOption", err)
	}
}

func TestDefaultNoneSupported(t *testing.T) {
	registerFakes()
	d, err := Default(homeNone, nil)
	if err == nil {
		// Another test's driver, registered below ours, took it: all of
		// ours were skipped, which is what this test is about.
		if strings.HasPrefix(d.String(), "registrytest-") {
			t.Fatalf("Default picked %s, which said not supported", d)
		}
		return
	}
	if !errors.Is(err, ErrNotSupported) {
		t.Fatalf("err = %v, want ErrNotSupported", err)
	}
	for _, why := range []string{"kernel lacks it", "wrong filesystem", "no"} {
		if !strings.Contains(err.Error(), why) {
			t.Errorf("error %q does not give reason %q", err, why)
		}
	}
}

func TestRegisterMisuse(t *testing.T) {
	registerFakes()
	for name, r := range map[string]Registration{
		"duplicate": {Name: "registrytest-mid", New: func(string, map[string]string) (Driver, error) { return nil, nil }},
		"empty":     {Name: "", New: func(string, map[string]string) (Driver, error) { return nil, nil }},
		"nil New":   {Name: "registrytest-nilnew"},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("Register did not panic")
				}
			}()
			Register(r)
		})
	}
}

// Options named for another driver go to that driver only: Default can
// then fall through to it with the same options.
func TestNewPassesOnlyOwnOrGenericOptions(t *testing.T) {
	registerFakes()
	d, err := New("registrytest-mid", "/registry-test/ok", map[string]string{"registrytest-low.bad": "x"})
	if err != nil || d.String() != "registrytest-mid" {
		t.Fatalf("New with another driver's option = %v, %v; want registrytest-mid", d, err)
	}
	if _, err := New("registrytest-mid", "/registry-test/ok", map[string]string{"bad": "x"}); !errors.Is(err, ErrUnknownOption) {
		t.Fatalf("New with a bad generic option: %v, want ErrUnknownOption", err)
	}
	if _, err := New("registrytest-mid", "/registry-test/ok", map[string]string{"nosuchdriver.bad": "x"}); err != nil {
		// Not another driver's: passed on, and this fake ignores it.
		t.Fatalf("New with an unregistered prefix: %v", err)
	}
}
