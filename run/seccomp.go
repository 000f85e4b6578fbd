package run

import (
	"runtime"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// SeccompUnconfined is the Options.Seccomp value that runs the process
// without a seccomp filter (`--security-opt seccomp=unconfined`).
const SeccompUnconfined = "unconfined"

// seccompAllow lists the system calls the default profile allows to every
// process, whatever its capabilities: the set podman and docker allow
// (containers/common and moby share it). Names a runtime's libseccomp does
// not know (other architectures' calls, newer calls) are skipped by runc
// and crun, so one list serves every architecture. Left out, and so
// failing with EPERM: namespaces and mounts (unshare, setns, mount, the
// new mount API), keyrings (add_key, keyctl, request_key), kernel
// modules, kexec, bpf, perf, clock and time changes, reboot, swap,
// userfaultfd, ptrace (allowed below on kernels that make it safe) and
// personality changes other than the harmless ones.
const seccompAllow = `
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown
chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close
close_range connect copy_file_range creat dup dup2 dup3 epoll_create
epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat
faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod
fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs
fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64
futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64
getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom
getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list
getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday
getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents
io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit io_uring_enter
io_uring_register io_uring_setup ipc kill landlock_add_rule
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link
linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat
lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret mincore
mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64
mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd
msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat
_newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64
preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64
pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom
recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat
renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
sched_getparam sched_get_priority_max sched_get_priority_min
sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield
seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile
sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32
setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid
setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address
setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack
signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat
stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range syncfs
sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times
tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime
utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write
writev
process_vm_readv process_vm_writev ptrace
`

// seccompArchCalls are the calls allowed on one architecture only (by
// GOARCH): the machine's own calls that the common list leaves out.
var seccompArchCalls = map[string]string{
	"amd64":   "arch_prctl modify_ldt",
	"386":     "modify_ldt",
	"arm64":   "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
	"arm":     "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
	"ppc64le": "sync_file_range2 swapcontext",
	"s390x":   "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr",
	"riscv64": "riscv_flush_icache",
}

// seccompCapCalls are the calls allowed only to a process that has the
// capability which makes them meaningful (docker's "includes caps").
var seccompCapCalls = map[string]string{
	"CAP_DAC_READ_SEARCH": "open_by_handle_at",
	"CAP_SYS_ADMIN": "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount " +
		"mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname " +
		"setns syslog umount umount2 unshare",
	"CAP_SYS_BOOT":       "reboot",
	"CAP_SYS_CHROOT":     "chroot",
	"CAP_SYS_MODULE":     "delete_module init_module finit_module",
	"CAP_SYS_PACCT":      "acct",
	"CAP_SYS_PTRACE":     "kcmp pidfd_getfd process_madvise",
	"CAP_SYS_RAWIO":      "iopl ioperm",
	"CAP_SYS_TIME":       "settimeofday stime clock_settime clock_settime64",
	"CAP_SYS_TTY_CONFIG": "vhangup",
	"CAP_SYS_NICE":       "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
	"CAP_SYSLOG":         "syslog",
	"CAP_BPF":            "bpf",
	"CAP_PERFMON":        "perf_event_open",
}

// seccompArch is the seccomp name of an architecture (GOARCH and OCI
// image names, which agree).
var seccompArch = map[string]specs.Arch{
	"amd64":   specs.ArchX86_64,
	"386":     specs.ArchX86,
	"arm64":   specs.ArchAARCH64,
	"arm":     specs.ArchARM,
	"ppc64le": specs.ArchPPC64LE,
	"s390x":   specs.ArchS390X,
	"riscv64": specs.ArchRISCV64,
}

// DefaultSeccomp returns the default seccomp profile for a process with
// capabilities caps in an image of architecture imageArch (GOARCH names;
// "" for the machine's), podman's and docker's: every call not allowed
// fails with EPERM; clone may not make namespaces (without CAP_SYS_ADMIN),
// and clone3, whose flags a filter cannot read, fails with ENOSYS so that
// libc falls back to clone; socket may not open AF_VSOCK; personality
// only takes the values programs use to query or to ask for Linux
// behaviour.
//
// One difference from podman: the filter covers the machine's
// architecture and the image's, not every compatibility mode of the
// machine (podman lists x86 and x32 beside x86_64). runc compiles the
// filter for each architecture listed, and the two compatibility modes
// cost it ~40 ms a run here, a third of `layers run`; a 32-bit program in
// a 64-bit image is killed (the filter's bad-architecture action) and
// needs --security-opt seccomp=unconfined, while a 32-bit image (386 on
// amd64) gets its architecture listed.
func DefaultSeccomp(caps []string, imageArch string) *specs.LinuxSeccomp {
	eperm, enosys := uint(unix.EPERM), uint(unix.ENOSYS)
	arches := []specs.Arch{seccompArch[runtime.GOARCH]}
	if a, ok := seccompArch[imageArch]; ok && a != arches[0] {
		arches = append(arches, a)
	}
	if arches[0] == "" {
		arches = nil // a machine we have no name for: its native filter only
	}
	names := strings.Fields(seccompAllow)
	names = append(names, strings.Fields(seccompArchCalls[runtime.GOARCH])...)
	if imageArch != runtime.GOARCH {
		names = append(names, strings.Fields(seccompArchCalls[imageArch])...)
	}
	sysAdmin := slices.Contains(caps, "CAP_SYS_ADMIN")
	for _, c := range caps {
		names = append(names, strings.Fields(seccompCapCalls[c])...)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	s := &specs.LinuxSeccomp{
		DefaultAction:   specs.ActErrno,
		DefaultErrnoRet: &eperm,
		Architectures:   arches,
		Syscalls:        []specs.LinuxSyscall{{Names: names, Action: specs.ActAllow}},
	}
	for _, p := range []uint64{0, 0x0008, 0x20000, 0x20008, 0xffffffff} {
		// PER_LINUX, PER_LINUX32, UNAME26 combinations, and the query.
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: []string{"personality"}, Action: specs.ActAllow,
			Args: []specs.LinuxSeccompArg{{Index: 0, Value: p, Op: specs.OpEqualTo}}})
	}
	s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: []string{"socket"}, Action: specs.ActAllow,
		Args: []specs.LinuxSeccompArg{{Index: 0, Value: unix.AF_VSOCK, Op: specs.OpNotEqual}}})
	if !sysAdmin {
		nsFlags := uint64(unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
			unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP)
		flagsArg := uint(0)
		if runtime.GOARCH == "s390x" {
			flagsArg = 1 // clone's arguments come in another order there
		}
		s.Syscalls = append(s.Syscalls,
			specs.LinuxSyscall{Names: []string{"clone"}, Action: specs.ActAllow,
				Args: []specs.LinuxSeccompArg{{Index: flagsArg, Value: nsFlags, ValueTwo: 0, Op: specs.OpMaskedEqual}}},
			specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys})
	}
	return s
}
