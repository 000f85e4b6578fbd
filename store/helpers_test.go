package store_test

import "github.com/moby/sys/mountinfo"

func isMountpoint(p string) (bool, error) { return mountinfo.Mounted(p) }
