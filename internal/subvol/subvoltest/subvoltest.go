// Package subvoltest helps tests look at btrfs subvolumes with btrfs-progs,
// independently of the ioctls package subvol makes them with.
package subvoltest

import (
	"os/exec"
	"sort"
	"strings"
	"testing"
)

// Listed returns the paths `btrfs subvolume list` shows under mnt,
// sorted, or skips t when btrfs-progs is not installed.
func Listed(t testing.TB, mnt string) []string {
	t.Helper()
	if _, err := exec.LookPath("btrfs"); err != nil {
		t.Skip("btrfs-progs not installed: cannot cross-check the subvolume list")
	}
	out, err := exec.Command("btrfs", "subvolume", "list", mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("btrfs subvolume list: %v: %s", err, out)
	}
	var paths []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if i := strings.Index(line, " path "); i >= 0 {
			paths = append(paths, line[i+len(" path "):])
		}
	}
	sort.Strings(paths)
	return paths
}
