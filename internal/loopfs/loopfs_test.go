package loopfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestNewEachType(t *testing.T) {
	for _, typ := range []string{"ext4", "xfs", "btrfs", "tmpfs"} {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			dir := New(t, typ, 0)
			var sfs unix.Statfs_t
			if err := unix.Statfs(dir, &sfs); err != nil {
				t.Fatal(err)
			}
			want := map[string]int64{
				"ext4": unix.EXT4_SUPER_MAGIC, "xfs": unix.XFS_SUPER_MAGIC,
				"btrfs": unix.BTRFS_SUPER_MAGIC, "tmpfs": unix.TMPFS_MAGIC,
			}[typ]
			if sfs.Type != want {
				t.Fatalf("statfs type %#x, want %#x", sfs.Type, want)
			}
			if got := int64(sfs.Blocks) * sfs.Bsize; got < minSize[typ]/2 {
				t.Errorf("size %d, want about %d", got, minSize[typ])
			}
			f := filepath.Join(dir, "f")
			if err := os.WriteFile(f, []byte("hello"), 0o644); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(f); err != nil || string(b) != "hello" {
				t.Fatalf("read back %q, %v", b, err)
			}
		})
	}
}

func TestMakeCloseRemovesEverything(t *testing.T) {
	if r := Unavailable("xfs"); r != "" {
		t.Skip(r)
	}
	base := t.TempDir()
	fs, err := Make(base, "xfs", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(fs.Device, "/dev/loop") {
		t.Errorf("Device = %q", fs.Device)
	}
	if err := fs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fs.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ents, err := os.ReadDir(base)
	if err != nil || len(ents) != 0 {
		t.Fatalf("left in %s: %v %v", base, ents, err)
	}
	// The loop device no longer carries our image.
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), base) {
		t.Fatalf("still mounted: %s", base)
	}
	if b, err := os.ReadFile("/sys/block/" + strings.TrimPrefix(fs.Device, "/dev/") + "/loop/backing_file"); err == nil && strings.Contains(string(b), base) {
		t.Fatalf("%s still attached to %s", fs.Device, b)
	}
}

func TestUnknownType(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	_, err := Make(t.TempDir(), "nope", 0)
	if err == nil || !strings.Contains(err.Error(), `unknown filesystem type "nope"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestManyInParallel(t *testing.T) {
	// Two loop devices grabbed at once must not collide.
	for range 4 {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			New(t, "ext4", 0)
		})
	}
}
