package overlay

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/internal/staging"
)

// probeFileName is HOME/<probeFileName>: what New's probe found, so that
// the next process on the same kernel, filesystem and options skips it.
const probeFileName = "mount-probe.json"

// probeRecord is what New probed, and under which conditions it holds.
type probeRecord struct {
	Kernel  string // uname release
	FSType  int64  // statfs f_type of HOME
	Dev     uint64 // HOME's device and inode: a home copied or
	Ino     uint64 // moved elsewhere probes again
	Options string // the storage options, as config.String gives them

	Method    mountMethod
	UserXattr bool
}

func (r probeRecord) matches(now probeRecord) bool {
	return r.Kernel == now.Kernel && r.FSType == now.FSType && r.Dev == now.Dev && r.Ino == now.Ino && r.Options == now.Options &&
		r.Method >= methodFsconfigFd && r.Method <= methodMount
}

func (d *Driver) probeFile() string { return filepath.Join(d.home, probeFileName) }

func readProbeRecord(path string) (probeRecord, bool) {
	var r probeRecord
	b, err := os.ReadFile(path)
	if err != nil {
		return r, false
	}
	if json.NewDecoder(bytes.NewReader(b)).Decode(&r) != nil {
		return r, false
	}
	return r, true
}

// writeProbeRecord writes r to path whole or not at all: built under
// HOME/tmp, renamed over the old record.
func writeProbeRecord(path string, tmp *staging.Dir, r probeRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	e, err := tmp.New("probe-record")
	if err != nil {
		return err
	}
	defer e.Remove()
	if err := os.WriteFile(e.Path(), append(b, '\n'), 0o600); err != nil {
		return err
	}
	if err := os.Rename(e.Path(), path); err != nil {
		return err
	}
	return e.Release()
}

// kernelRelease returns the running kernel's release ("6.18.0-..."), or ""
// when uname fails.
func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// String is the options as a stable string, for the probe record.
func (c config) String() string {
	var parts []string
	if c.userXattr != nil {
		parts = append(parts, "userxattr="+strconv.FormatBool(*c.userXattr))
	}
	parts = append(parts, "metacopy="+strconv.FormatBool(c.metacopy), "redirect_dir="+strconv.FormatBool(c.redirectDir))
	if len(c.mountOpts) > 0 {
		parts = append(parts, "mountopt="+strings.Join(c.mountOpts, ","))
	}
	return strings.Join(parts, " ")
}
