package run

import (
	"encoding/json"
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestSpecJSON: the config.json marshalSpec writes says what specs.Spec's
// own encoding says, for specs with every option makeSpec knows.
func TestSpecJSON(t *testing.T) {
	vols := []Volume{{Source: "/srv", Destination: "/data", ReadOnly: true}, {Source: "/tmp", Destination: "/t"}}
	etc := []specs.Mount{{Destination: "/etc/hosts", Type: "bind", Source: "/run/x/hosts", Options: []string{"bind"}}}
	for i, tc := range []struct {
		o    Options
		user User
	}{
		{Options{}, User{}},
		{Options{TTY: true, ReadOnly: true, Network: NetworkHost, Volumes: vols, Seccomp: SeccompUnconfined}, User{UID: 1000, GID: 1000, AdditionalGids: []uint32{5, 2000}}},
		{Options{Network: NetworkNone, Volumes: vols}, User{UID: 0, GID: 10}},
	} {
		in := &specInput{id: "abc", rootfs: "/r", args: []string{"sh", "-c", "x \"y\" \u00e9\x01"}, env: []string{"A=1", "B=<&>"},
			cwd: "/w", user: &tc.user, hostname: "h", etc: etc, arch: "386", opts: &tc.o}
		s, err := makeSpec(in)
		if err != nil {
			t.Fatal(err)
		}
		if tc.o.TTY {
			s.Process.ConsoleSize = &specs.Box{Height: 24, Width: 80}
		}
		ours, err := marshalSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var a, b specs.Spec
		if err := json.Unmarshal(ours, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(theirs, &b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("case %d: marshalSpec lost something:\n ours   %s\n theirs %s", i, ours, theirs)
		}
		if (a.Linux.Seccomp == nil) != (tc.o.Seccomp == SeccompUnconfined) {
			t.Errorf("case %d: seccomp %v with option %q", i, a.Linux.Seccomp != nil, tc.o.Seccomp)
		}
	}
}
