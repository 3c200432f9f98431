#!/usr/bin/env bash
# hack/vm.sh: run this project's tests on a kernel with the device-mapper.
#
# The host kernel may lack the device-mapper; this boots a Debian cloud
# kernel under QEMU (software emulation) with a busybox initramfs that holds
# the test binaries and the real filesystem and thin-provisioning tools.
# See hack/README.md.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

VM_HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ -n ${DMTHIN_VM_CACHE:-} ]]; then
	VM_CACHE=$DMTHIN_VM_CACHE
elif [[ $EUID -eq 0 ]]; then
	VM_CACHE=/var/cache/dmthin-vm
else
	VM_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/dmthin-vm
fi
VM_MEM=${DMTHIN_VM_MEM:-4096}
VM_SMP=${DMTHIN_VM_SMP:-2}
VM_TIMEOUT=${DMTHIN_VM_TIMEOUT:-1800}

usage() {
	cat <<'EOF'
usage: hack/vm.sh COMMAND [ARGS]

  setup [--refresh]
        Install the host packages that are missing, cache the guest kernel
        (--refresh: fetch the one Debian names now) and the base initramfs.
  run [--timeout SECS] [--mem MB] [--file HOST[:GUEST]]... [--env K=V]... -- CMD [ARG...]
        Boot the VM with the files in it, run CMD, power off. Exits with
        CMD's status (124: timeout, 125: the VM did not finish).
  shell [--mem MB] [--file HOST[:GUEST]]...
        Boot the VM to an interactive shell (exit or Ctrl-D powers off,
        Ctrl-A x kills QEMU).
  test [-race] [-cover] [-run REGEX] [-skip REGEX] [-bench REGEX] [-benchtime T] [-timeout D] [-short] [PKG...]
        Run the packages' tests (default ./...) with DMTHIN_REQUIRE_DM=1:
        natively if this host's device-mapper works, else all in one VM boot.
        -cover: statement coverage of every package of the module, merged
        into out/cover.out, and a per-package table (COVER_MIN=PCT fails
        when a package of COVER_PKGS, default all, is below PCT).
  build-initrd
        (Re)build the cached base initramfs.

Environment: DMTHIN_VM_CACHE (cache dir, default /var/cache/dmthin-vm),
DMTHIN_VM_MEM (MB, 4096), DMTHIN_VM_SMP (2), DMTHIN_VM_TIMEOUT (s, 1800),
DMTHIN_VM_ALWAYS=1 (use the VM even if the host has a device-mapper),
DMTHIN_VM_APPEND (extra kernel arguments), DMTHIN_VM_ACCEL (QEMU -accel,
default tcg,thread=multi), DMTHIN_VM_CPU (QEMU -cpu, default max,la57=off),
DMTHIN_VM_TMP (guest /tmp: disk, a fresh ext4 scratch image, or tmpfs),
DMTHIN_VM_DISK (scratch image size, 20G), DMTHIN_VM_KEEP=1 (keep the work
directory), DMTHIN_VM_REBUILD=1 (rebuild the base initramfs).
EOF
}

vm_log() { echo "vm: $*" >&2; }
vm_die() {
	echo "vm: error: $*" >&2
	exit 125
}

vm_lock() {
	mkdir -p "$VM_CACHE" || vm_die "cannot create cache directory $VM_CACHE"
	exec 9>"$VM_CACHE/lock"
	flock 9
}
vm_unlock() {
	flock -u 9
	exec 9>&-
}

# Per-run scratch directory and the processes to stop when the script ends.
VM_WORK=
VM_PIDS=()
vm_cleanup() {
	local pid
	for pid in "${VM_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	if [[ -n $VM_WORK && -d $VM_WORK ]]; then
		if [[ -n ${DMTHIN_VM_KEEP:-} ]]; then
			vm_log "kept work directory $VM_WORK"
		else
			rm -rf "$VM_WORK"
		fi
	fi
}
trap vm_cleanup EXIT
trap 'vm_log "interrupted"; exit 130' INT TERM

vm_workdir() {
	[[ -n $VM_WORK ]] || VM_WORK=$(mktemp -d "${TMPDIR:-/tmp}/dmthin-vm.XXXXXX")
}

# shellcheck source=vm/setup.sh
source "$VM_HACK/vm/setup.sh"
# shellcheck source=vm/initrd.sh
source "$VM_HACK/vm/initrd.sh"
# shellcheck source=vm/qemu.sh
source "$VM_HACK/vm/qemu.sh"
# shellcheck source=vm/gotest.sh
source "$VM_HACK/vm/gotest.sh"
# shellcheck source=vm/cover.sh
source "$VM_HACK/vm/cover.sh"

main() {
	local cmd=${1:-}
	[[ $# -eq 0 ]] || shift
	case "$cmd" in
	setup) vm_setup "$@" ;;
	run) vm_cmd_run "$@" ;;
	shell) vm_cmd_shell "$@" ;;
	test) vm_cmd_test "$@" ;;
	build-initrd) DMTHIN_VM_REBUILD=1 vm_setup ;;
	-h | --help | help) usage ;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

main "$@"
