package run

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// maxDBFile bounds what is read of an image's /etc/passwd or /etc/group:
// the image is untrusted and a huge file must not exhaust memory.
const maxDBFile = 4 << 20

// openInRoot opens rel inside the directory rootfd, resolving every
// component (symlinks included, absolute ones too) inside that root, as
// the container will see it: a symlink in the image can never make
// layers read a file of the host.
func openInRoot(rootfd int, rel string, flags int) (*os.File, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	rel = strings.TrimLeft(path.Clean("/"+rel), "/")
	if rel == "" {
		rel = "."
	}
	for {
		fd, err := unix.Openat2(rootfd, rel, &how)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			// A rename elsewhere in the tree raced with the lookup.
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: "/" + rel, Err: err}
		}
		return os.NewFile(uintptr(fd), "/"+rel), nil
	}
}

// readInRoot reads the small file rel inside rootfd; a missing file gives
// nil and no error.
func readInRoot(rootfd int, rel string) ([]byte, error) {
	f, err := openInRoot(rootfd, rel, unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("/%s is not a regular file", rel)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxDBFile+1))
	if err != nil {
		return nil, fmt.Errorf("read /%s: %w", rel, err)
	}
	if len(b) > maxDBFile {
		return nil, fmt.Errorf("/%s is larger than %d bytes", rel, maxDBFile)
	}
	return b, nil
}

// User is who the container's process runs as.
type User struct {
	UID, GID uint32
	// AdditionalGids are the supplementary groups: those of the image's
	// /etc/group that list the user by name (none when a group is given).
	AdditionalGids []uint32
	// Home is the user's home from the image's /etc/passwd, "/" without
	// an entry.
	Home string
}

// ResolveUser resolves spec, "USER[:GROUP]" with names or numbers as
// docker's -u takes it, through the /etc/passwd and /etc/group of the
// root filesystem rootfd. An empty spec is root. A numeric user missing
// from /etc/passwd runs with group 0 (or the one given), as in docker;
// a name missing from it fails with ErrUnknownUser.
func ResolveUser(rootfd int, spec string) (*User, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" {
		userPart = "0"
	}
	if hasGroup && groupPart == "" {
		return nil, fmt.Errorf("user %q: %w: empty group", spec, ErrUnknownUser)
	}
	passwd, err := readInRoot(rootfd, "etc/passwd")
	if err != nil {
		return nil, fmt.Errorf("read the image's passwd: %w", err)
	}
	u := &User{Home: "/"}
	var userName string
	found := false
	uidNum, numErr := parseID(userPart)
	forEachEntry(passwd, func(f []string) bool {
		if len(f) < 7 {
			return true
		}
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 != nil || err2 != nil {
			return true
		}
		if f[0] == userPart || (numErr == nil && uid == uidNum) {
			u.UID, u.GID, u.Home, userName, found = uid, gid, f[5], f[0], true
			return false
		}
		return true
	})
	if !found {
		if numErr != nil {
			return nil, fmt.Errorf("user %q: %w: no such user in the image's /etc/passwd", userPart, ErrUnknownUser)
		}
		u.UID, u.GID = uidNum, 0
	}
	if u.Home == "" {
		u.Home = "/"
	}

	groups, err := readInRoot(rootfd, "etc/group")
	if err != nil {
		return nil, fmt.Errorf("read the image's group file: %w", err)
	}
	if hasGroup {
		gidNum, gErr := parseID(groupPart)
		gfound := false
		forEachEntry(groups, func(f []string) bool {
			if len(f) < 3 {
				return true
			}
			gid, err := parseID(f[2])
			if err != nil {
				return true
			}
			if f[0] == groupPart || (gErr == nil && gid == gidNum) {
				u.GID, gfound = gid, true
				return false
			}
			return true
		})
		if !gfound {
			if gErr != nil {
				return nil, fmt.Errorf("group %q: %w: no such group in the image's /etc/group", groupPart, ErrUnknownUser)
			}
			u.GID = gidNum
		}
	}
	// Supplementary groups: every group listing the user by name, as
	// docker (libcontainer) has them: only when no group was given.
	if userName != "" && !hasGroup {
		seen := map[uint32]bool{u.GID: true}
		forEachEntry(groups, func(f []string) bool {
			if len(f) < 4 {
				return true
			}
			gid, err := parseID(f[2])
			if err != nil || seen[gid] {
				return true
			}
			for _, m := range strings.Split(f[3], ",") {
				if m == userName {
					seen[gid] = true
					u.AdditionalGids = append(u.AdditionalGids, gid)
					break
				}
			}
			return true
		})
	}
	return u, nil
}

// parseID parses a uid or gid: decimal, below 2^32-1 (which means "none"
// to the kernel).
func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, fmt.Errorf("bad id %q", s)
	}
	return uint32(n), nil
}

// forEachEntry calls fn with the colon-separated fields of each line of
// an /etc/passwd or /etc/group file, skipping comments and blank lines,
// until fn returns false.
func forEachEntry(b []byte, fn func(fields []string) bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxDBFile)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if !fn(strings.Split(line, ":")) {
			return
		}
	}
}
