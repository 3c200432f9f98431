# shellcheck shell=bash
# Sourced by hack/vm.sh: booting the VM; the run and shell commands.

# vm_qemu_cmd MODE INITRD: sets VM_QEMU to the QEMU command line, without
# its console (batch runs and the shell attach it differently).
vm_qemu_cmd() {
	local mode=$1 initrd=$2 kdir kernel
	kdir=$(vm_kernel_dir) || vm_die "no kernel cached; run hack/vm.sh setup"
	kernel=$(compgen -G "$kdir/boot/vmlinuz-*" | head -n 1)
	# Under TCG, 5-level paging (la57, which -cpu max offers) makes the guest
	# markedly slower, boot and tests alike: turned off by default. The
	# kernel's crypto self-tests cost up to a second of boot: skipped.
	# oops=panic: after an oops nothing the tests see can be trusted; the VM
	# stops at once and the host reports it instead of waiting for timeouts.
	local append="console=ttyS0 quiet panic=-1 oops=panic mitigations=off cryptomgr.notests loop.max_loop=8 dmthin.mode=$mode"
	local disk=()
	if [[ ${DMTHIN_VM_TMP:-disk} == disk ]]; then
		vm_scratch_disk
		disk=(-drive "file=$VM_WORK/scratch.img,format=raw,if=virtio,cache=unsafe,discard=unmap")
		append+=" dmthin.tmp=/dev/vda"
	fi
	VM_QEMU=(
		qemu-system-x86_64
		-machine pc
		-accel "${DMTHIN_VM_ACCEL:-tcg,thread=multi}"
		-cpu "${DMTHIN_VM_CPU:-max,la57=off}"
		-smp "$VM_SMP" -m "$VM_MEM"
		-nodefaults -no-user-config -display none -no-reboot
		-kernel "$kernel" -initrd "$initrd"
		"${disk[@]}"
		-append "$append ${DMTHIN_VM_APPEND:-}"
	)
}

# vm_scratch_disk: a fresh sparse ext4 image for the guest's /tmp, made on the
# host (fast there). It holds what the tests write (sparse loop files...),
# grows on the host's disk only as far as they fill it, and is deleted with
# the work directory.
vm_scratch_disk() {
	local img=$VM_WORK/scratch.img mkfs
	mkfs=$(vm_tool_path mkfs.ext4) || vm_die "mkfs.ext4 not installed (hack/vm.sh setup)"
	rm -f "$img"
	truncate -s "${DMTHIN_VM_DISK:-20G}" "$img" || vm_die "cannot make $img"
	"$mkfs" -q -F -L dmthin-tmp -i 65536 -J size=64 \
		-E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$img" ||
		vm_die "mkfs.ext4 of the scratch disk failed"
}

# --- payload: what one run adds to the cached base initramfs ---------------

VM_PAYLOAD=
vm_payload_init() {
	vm_workdir
	VM_PAYLOAD=$VM_WORK/payload
	rm -rf "$VM_PAYLOAD"
	mkdir -p "$VM_PAYLOAD/dmthin"
	if [[ ${DMTHIN_VM_DMESG:-1} != 0 ]]; then
		: >"$VM_PAYLOAD/dmthin/dmesg-on-failure"
	fi
}

# vm_payload_libs FILE: adds the shared libraries FILE needs (if it is a
# dynamic executable) that the base archive lacks.
vm_payload_libs() {
	local lib
	vm_is_dynamic_elf "$1" || return 0
	if LC_ALL=C ldd "$1" | grep -q 'not found'; then
		vm_die "$1: ldd cannot find a library: $(ldd "$1" | grep 'not found')"
	fi
	for lib in $(LC_ALL=C ldd "$1" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
		vm_stage_add "$VM_PAYLOAD" "$lib" "$VM_WORK/base.list"
	done
}

# vm_payload_file HOST GUEST: copies a host file or directory into the VM.
vm_payload_file() {
	local host=$1 guest=$2
	[[ -e $host ]] || vm_die "--file: no such file: $host"
	[[ $guest == /* ]] || guest=/$guest
	case "$guest" in
	/ | /tmp | /tmp/* | /dev | /dev/* | /proc | /proc/* | /sys | /sys/* | /run | /run/*)
		vm_die "--file: $guest is hidden by a mount in the VM; choose another path" ;;
	esac
	mkdir -p "$VM_PAYLOAD$(dirname "$guest")"
	cp -a -- "$host" "$VM_PAYLOAD$guest" || vm_die "cannot copy $host"
	if [[ -f $host ]]; then
		vm_payload_libs "$host"
	fi
}

# vm_payload_pack: prints the path of the initramfs for this run: the cached
# base followed by the payload archive.
vm_payload_pack() {
	local out=$VM_WORK/initrd.img
	{
		cat "$VM_BASE"
		vm_cpio "$VM_PAYLOAD"
	} >"$out" || vm_die "packing the initramfs failed"
	echo "$out"
}

# vm_sq WORD: WORD quoted for a POSIX shell.
vm_sq() {
	local q="'\\''"
	printf "'%s'" "${1//\'/$q}"
}

vm_now() { date +%s.%N; }
vm_since() { awk -v a="$1" -v b="$(vm_now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- booting ----------------------------------------------------------------

# vm_boot_batch INITRD TIMEOUT LOG: boots the VM in run mode; its console is
# copied live to stdout and to LOG. Sets VM_STATUS to the status /init
# reported. Returns 0 when /init reported one, 124 on timeout (QEMU is
# killed) and 125 when the VM stopped without reporting (kernel panic...).
VM_STATUS=

# vm_boot_lock: waits until no other hack/vm.sh of this machine runs a VM,
# then holds the lock (fd 8) until this script exits. The machines this runs
# on have two cores: two emulated guests at once make both slow enough for
# timing-sensitive tests to fail.
vm_boot_lock() {
	[[ -z ${VM_BOOT_LOCKED:-} ]] || return 0
	mkdir -p "$VM_CACHE" || vm_die "cannot create cache directory $VM_CACHE"
	exec 8>"$VM_CACHE/boot.lock"
	if ! flock -n 8; then
		vm_log "another VM is running on this machine; waiting for it"
		flock 8
	fi
	VM_BOOT_LOCKED=1
}

vm_boot_batch() {
	local initrd=$1 timeout=$2 log=$3 fifo qpid tpid start deadline line
	vm_qemu_cmd run "$initrd"
	fifo=$VM_WORK/console.fifo
	rm -f "$fifo"
	mkfifo "$fifo"
	# The guest's console ends lines with \r\n; strip the \r for the log.
	# The log keeps everything; the terminal is spared coverage data.
	sed -u 's/\r$//' <"$fifo" | tee "$log" | vm_console_show &
	tpid=$!
	start=$(vm_now)
	deadline=$((SECONDS + timeout))
	"${VM_QEMU[@]}" -serial stdio </dev/null >"$fifo" 2>&1 &
	qpid=$!
	VM_PIDS+=("$qpid")
	# Poll rather than `wait -n`: bash 5.2's wait -n was seen to miss QEMU's
	# exit when the console pipeline ended at the same moment, and hang.
	while kill -0 "$qpid" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			kill -TERM "$qpid" 2>/dev/null || true
			sleep 2
			kill -KILL "$qpid" 2>/dev/null || true
			wait "$qpid" 2>/dev/null || true
			wait "$tpid" 2>/dev/null || true
			vm_log "TIMEOUT: the VM ran longer than ${timeout}s; QEMU killed"
			return 124
		fi
		sleep 0.2
	done
	wait "$qpid" 2>/dev/null || true
	wait "$tpid" 2>/dev/null || true
	VM_PIDS=()
	VM_ELAPSED=$(vm_since "$start")
	line=$(grep -E '^DMTHIN-VM-EXIT=[0-9]+$' "$log" | tail -n 1) || true
	if [[ -z $line ]]; then
		if grep -q 'Kernel panic' "$log"; then
			vm_log "the VM's kernel panicked (see the console above); no exit status"
		else
			vm_log "the VM stopped without reporting an exit status (no DMTHIN-VM-EXIT line; see the console above)"
		fi
		return 125
	fi
	VM_STATUS=${line#DMTHIN-VM-EXIT=}
	VM_BOOT=$(sed -n 's/^vm: \/init started at \([0-9.]*\)s.*/\1/p' "$log" | head -n 1)
	return 0
}

# --- commands ---------------------------------------------------------------

# vm_parse_common ARG...: parses --mem and --file (shared by run and shell).
# Sets VM_SHIFT to the number of arguments it used (0: not one of its own).
VM_FILES=()
vm_parse_common() {
	VM_SHIFT=0
	case "$1" in
	--mem) VM_MEM=${2:?--mem needs a value}; VM_SHIFT=2 ;;
	--mem=*) VM_MEM=${1#--mem=}; VM_SHIFT=1 ;;
	--file) VM_FILES+=("${2:?--file needs a value}"); VM_SHIFT=2 ;;
	--file=*) VM_FILES+=("${1#--file=}"); VM_SHIFT=1 ;;
	esac
	[[ $VM_MEM =~ ^[0-9]+$ ]] || vm_die "--mem wants megabytes, got '$VM_MEM'"
}

# vm_payload_files: stages every --file HOST[:GUEST] (GUEST defaults to
# /BASENAME).
vm_payload_files() {
	local f host guest
	for f in "${VM_FILES[@]}"; do
		if [[ $f == *:* ]]; then
			host=${f%%:*} guest=${f#*:}
		else
			host=$f guest=/$(basename "$f")
		fi
		vm_payload_file "$host" "$guest"
	done
}

vm_cmd_run() {
	local timeout=$VM_TIMEOUT envs=() e k a initrd
	while (($#)); do
		vm_parse_common "$@"
		if ((VM_SHIFT)); then
			shift "$VM_SHIFT"
			continue
		fi
		case "$1" in
		--timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
		--timeout=*) timeout=${1#--timeout=}; shift ;;
		--env) envs+=("${2:?--env needs a value}"); shift 2 ;;
		--env=*) envs+=("${1#--env=}"); shift ;;
		--) shift; break ;;
		-*) vm_die "run: unknown option $1" ;;
		*) break ;;
		esac
	done
	(($#)) || vm_die "run: no command (hack/vm.sh run [OPTIONS] -- CMD [ARG...])"
	[[ $timeout =~ ^[1-9][0-9]*$ ]] || vm_die "--timeout wants seconds, got '$timeout'"

	vm_prepare
	vm_payload_init
	vm_payload_files
	{
		echo "# written by hack/vm.sh run"
		for e in "${envs[@]}"; do
			k=${e%%=*}
			[[ $e == *=* && $k =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || vm_die "--env wants NAME=VALUE, got '$e'"
			echo "export $k=$(vm_sq "${e#*=}")"
		done
		printf 'exec'
		for a in "$@"; do
			printf ' %s' "$(vm_sq "$a")"
		done
		echo
	} >"$VM_PAYLOAD/dmthin/run.sh"
	initrd=$(vm_payload_pack)

	local rc=0
	vm_boot_lock
	vm_boot_batch "$initrd" "$timeout" "$VM_WORK/console.log" || rc=$?
	((rc == 0)) || exit "$rc"
	vm_log "$1 exited with status $VM_STATUS; VM run ${VM_ELAPSED}s, /init reached at ${VM_BOOT:-?}s"
	exit "$VM_STATUS"
}

vm_cmd_shell() {
	local initrd
	while (($#)); do
		vm_parse_common "$@"
		((VM_SHIFT)) || vm_die "shell: unknown argument $1"
		shift "$VM_SHIFT"
	done
	vm_prepare
	vm_payload_init
	vm_payload_files
	initrd=$(vm_payload_pack)
	vm_boot_lock
	vm_qemu_cmd shell "$initrd"
	[[ -t 0 ]] || vm_log "warning: standard input is not a terminal"
	"${VM_QEMU[@]}" -chardev stdio,id=con,mux=on,signal=off \
		-serial chardev:con -mon chardev=con,mode=readline
}
