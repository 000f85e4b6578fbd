package overlay

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layers-storage/layers/graphdriver"
)

// config is what the storage options chose.
type config struct {
	// userXattr: overlay keeps its xattrs under user.overlay.* (mount
	// option userxattr), for user namespaces and hosts where trusted.*
	// is not allowed. nil: detected by New.
	userXattr *bool
	// metacopy: copy-up of a metadata change (chmod, chown) copies no
	// data; the upper file points at the lower one.
	metacopy bool
	// redirectDir: renaming a lower directory records a redirect
	// instead of failing with EXDEV.
	redirectDir bool
	// mountOpts are extra options for every mount, as given.
	mountOpts []string
}

// Storage options overlay takes, with or without the "overlay." prefix.
const (
	optUserXattr   = "userxattr"
	optMetacopy    = "metacopy"
	optRedirectDir = "redirect_dir"
	optMountOpt    = "mountopt"
)

// parseOptions reads the storage options of New. Keys go with or without
// the "overlay." prefix (`--storage-opt overlay.metacopy=true`).
func parseOptions(options map[string]string) (config, error) {
	var c config
	keys := make([]string, 0, len(options))
	for k := range options {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	explicitRedirect := false
	for _, key := range keys {
		val := options[key]
		switch strings.TrimPrefix(key, Name+".") {
		case optUserXattr, optMetacopy, optRedirectDir:
			b, err := strconv.ParseBool(val)
			if err != nil {
				return c, graphdriver.InvalidOption(Name, key, val, errors.New("want true or false"))
			}
			switch strings.TrimPrefix(key, Name+".") {
			case optUserXattr:
				c.userXattr = &b
			case optMetacopy:
				c.metacopy = b
			default:
				c.redirectDir, explicitRedirect = b, true
			}
		case optMountOpt:
			for _, o := range strings.Split(val, ",") {
				if o = strings.TrimSpace(o); o == "" {
					continue
				}
				name, _, _ := strings.Cut(o, "=")
				if ours[name] {
					return c, graphdriver.InvalidOption(Name, key, val, fmt.Errorf("%s is set by the driver (use its own storage option where there is one)", name))
				}
				c.mountOpts = append(c.mountOpts, o)
			}
		default:
			return c, graphdriver.UnknownOption(Name, key)
		}
	}
	if c.metacopy {
		if explicitRedirect && !c.redirectDir {
			return c, graphdriver.InvalidOption(Name, Name+"."+optRedirectDir, "false", errors.New("metacopy=true needs redirect_dir=true (the kernel follows metacopy files through redirects)"))
		}
		c.redirectDir = true
	}
	return c, nil
}

// ours are the mount options the driver sets itself; mountopt may not
// override them, since native diff and apply depend on them.
var ours = map[string]bool{
	"lowerdir": true, "lowerdir+": true, "upperdir": true, "workdir": true, "datadir+": true,
	"index": true, "metacopy": true, "redirect_dir": true, "userxattr": true, "xino": true,
}

// needUserXattr reports whether overlay must keep its xattrs under user.*:
// in a user namespace other than the initial one, or where the home's
// filesystem refuses trusted.* xattrs (no CAP_SYS_ADMIN). dir is a
// scratch directory on the home's filesystem.
func needUserXattr(dir string) (bool, error) {
	if b, err := os.ReadFile("/proc/self/uid_map"); err == nil {
		if f := strings.Fields(string(b)); len(f) != 3 || f[0] != "0" || f[1] != "0" || f[2] != "4294967295" {
			return true, nil
		}
	}
	err := unix.Setxattr(dir, "trusted.overlay.layers-probe", []byte("y"), 0)
	switch {
	case err == nil:
		_ = unix.Removexattr(dir, "trusted.overlay.layers-probe")
		return false, nil
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EOPNOTSUPP):
		return true, nil
	}
	return false, fmt.Errorf("probe trusted xattrs on %s: %w", dir, err)
}
