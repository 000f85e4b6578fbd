package run

import (
	"runtime"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestDefaultSeccomp checks the profile's shape: EPERM by default, the
// machine's architecture plus a different image architecture, calls
// granted by capabilities only with them, namespaces kept out of clone.
func TestDefaultSeccomp(t *testing.T) {
	native, ok := seccompArch[runtime.GOARCH]
	if !ok {
		t.Skipf("no seccomp architecture name for %s", runtime.GOARCH)
	}
	s := DefaultSeccomp(DefaultCapabilities, "")
	if s.DefaultAction != specs.ActErrno || s.DefaultErrnoRet == nil || *s.DefaultErrnoRet != 1 {
		t.Fatalf("default action %s %v", s.DefaultAction, s.DefaultErrnoRet)
	}
	if !slices.Equal(s.Architectures, []specs.Arch{native}) {
		t.Fatalf("architectures %v", s.Architectures)
	}
	allowed := s.Syscalls[0].Names
	for _, n := range []string{"read", "execve", "chroot", "setuid"} {
		if !slices.Contains(allowed, n) {
			t.Errorf("%s not allowed", n)
		}
	}
	for _, n := range []string{"unshare", "mount", "keyctl", "setns", "reboot", "bpf", "clone", "kexec_load"} {
		if slices.Contains(allowed, n) {
			t.Errorf("%s allowed without condition", n)
		}
	}
	var cloneArgs, clone3 bool
	for _, sc := range s.Syscalls[1:] {
		switch {
		case slices.Equal(sc.Names, []string{"clone"}):
			cloneArgs = len(sc.Args) == 1 && sc.Args[0].Op == specs.OpMaskedEqual && sc.Args[0].Value&0x10000000 != 0 // CLONE_NEWUSER
		case slices.Equal(sc.Names, []string{"clone3"}):
			clone3 = sc.Action == specs.ActErrno && sc.ErrnoRet != nil && *sc.ErrnoRet == 38 // ENOSYS
		}
	}
	if !cloneArgs || !clone3 {
		t.Errorf("clone filtered %v, clone3 ENOSYS %v", cloneArgs, clone3)
	}
	// CAP_SYS_ADMIN brings the namespace and mount calls (and plain clone).
	admin := DefaultSeccomp(append([]string{"CAP_SYS_ADMIN"}, DefaultCapabilities...), "")
	if !slices.Contains(admin.Syscalls[0].Names, "unshare") || !slices.Contains(admin.Syscalls[0].Names, "clone") {
		t.Error("CAP_SYS_ADMIN does not allow unshare and clone")
	}
	if runtime.GOARCH == "amd64" {
		s = DefaultSeccomp(DefaultCapabilities, "386")
		if !slices.Equal(s.Architectures, []specs.Arch{specs.ArchX86_64, specs.ArchX86}) {
			t.Errorf("386 image: architectures %v", s.Architectures)
		}
	}
}
