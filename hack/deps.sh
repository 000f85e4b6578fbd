#!/usr/bin/env bash
# Installs everything `make test`, `make demo` and the benchmarks need on a
# fresh Debian bookworm machine (as root). Idempotent: it asks apt only for
# what is missing, so a second run costs a fraction of a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, each for a reason:
#   btrfs-progs xfsprogs e2fsprogs  mkfs for the loop filesystems tests make
#   util-linux mount                losetup, mount, findmnt
#   attr                            getfattr/setfattr for debugging xattr cases
#   busybox-static                  the runnable fixture image
#   tar gzip zstd pigz              GNU tar and friends: the benchmark baseline
#   docker-registry                 Debian's distribution registry: image/'s pull and push tests
#   podman skopeo umoci             peers: image/'s save/load interoperability tests
#   runc crun                       the OCI runtimes `layers run` drives (run/ tests both)
packages=(btrfs-progs xfsprogs e2fsprogs util-linux mount attr busybox-static tar gzip zstd pigz docker-registry podman skopeo umoci runc crun)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if ((${#missing[@]})); then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing ${missing[*]}; run this script as root to install them" >&2
		exit 1
	fi
	echo "deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go modules of the project, and the linters `make lint` runs, pinned.
go mod download
STATICCHECK_VERSION=v0.8.2
if [ ! -x "$(go env GOPATH)/bin/staticcheck" ] || ! "$(go env GOPATH)/bin/staticcheck" -version 2>/dev/null | grep -q "${STATICCHECK_VERSION#v}"; then
	echo "deps: installing staticcheck ${STATICCHECK_VERSION}"
	go install "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
fi
