package graphdriver

import "testing"

func TestValidateID(t *testing.T) {
	for id, ok := range map[string]bool{
		"a1b2": true, "sha-like.id_1": true,
		"": false, ".": false, "..": false, "a/b": false, "/x": false, "a\x00b": false,
	} {
		if err := ValidateID(id); (err == nil) != ok {
			t.Errorf("ValidateID(%q) = %v, want ok=%v", id, err, ok)
		}
	}
}

func TestBackingFilesystem(t *testing.T) {
	if got := BackingFilesystem("/proc"); got != "0x9fa0" {
		t.Errorf("BackingFilesystem(/proc) = %q, want the procfs magic in hex", got)
	}
	if got := BackingFilesystem("/nonexistent-path"); got != "unknown" {
		t.Errorf("BackingFilesystem(missing) = %q, want unknown", got)
	}
	if got := BackingFilesystem("/dev/shm"); got != "tmpfs" {
		t.Errorf("BackingFilesystem(/dev/shm) = %q, want tmpfs", got)
	}
}

func TestKernelFilesystems(t *testing.T) {
	have, err := KernelFilesystems()
	if err != nil {
		t.Skipf("no /proc/filesystems: %v", err)
	}
	// /proc/filesystems itself is served by proc, so the kernel has it.
	if !have["proc"] || have["nodev"] || have[""] {
		t.Errorf("KernelFilesystems() = %v: want proc, and no \"nodev\" column", have)
	}
}
