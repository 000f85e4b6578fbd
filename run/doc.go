// Package run runs a process in a container of a store, the way `podman
// run` does, with an OCI runtime (runc or crun): the container's root is
// the store's mount of its read-write layer, and the runtime's bundle is
// made from the image config (entrypoint and cmd, environment, working
// directory, user resolved through the image's own /etc/passwd and
// /etc/group) with podman's defaults (mounts, capabilities, masked and
// read-only paths, namespaces, no_new_privileges).
//
// Runtime state lives under the store's runroot:
//
//	RUNROOT/bundles/<id>/       config.json, the runtime's log, the
//	                            container's /etc/hostname, hosts and
//	                            resolv.conf (bind-mounted), while it runs
//	RUNROOT/runtime/<runtime>/  the runtime's own state (its --root)
//
// The process runs under podman's default seccomp profile (DefaultSeccomp)
// unless Options.Seccomp says unconfined. Without a terminal the runtime
// runs in the foreground (`runtime run`) with the caller's streams; with
// one (Options.TTY) it runs detached with a console socket and Run copies
// between the caller's streams and the terminal it receives (see
// runtimeTTY). In both, the signals in forwarded reach the process.
//
// A run records its state in the container's metadata (see State): who
// runs it (pid and start time of the `layers run` process), the runtime,
// and once it ended, the exit status. A `layers run` that was killed
// leaves a container whose state says running while its process is gone,
// the container still mounted, maybe the runtime's state and a process of
// the container: Leftovers finds those and Cleanup removes them (the CLI's
// `check` and `check --repair` call them).
//
// On hosts with a hybrid cgroup v1/v2 layout, which crun 1.8 refuses,
// crun runs in a private mount namespace without the cgroup2 mount (see
// Runtime.PrivateCgroup2).
package run
