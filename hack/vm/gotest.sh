# shellcheck shell=bash
# Sourced by hack/vm.sh: the test command.
#
# With a working device-mapper on the host, `go test` runs natively. Without
# one, every package that has tests is compiled to a test binary, all of them
# go into one initramfs, and one VM boot runs them in turn, each in a
# directory that mirrors its package directory (with its testdata/).

# vm_host_dm_usable: true when this host's device-mapper answers.
vm_host_dm_usable() {
	[[ -c /dev/mapper/control ]] || return 1
	(: <>/dev/mapper/control) 2>/dev/null || return 1
	grep -qw device-mapper /proc/devices
}

# vm_count LOG: counts go test's --- PASS/FAIL/SKIP lines (subtests too) and
# benchmark result lines into VM_PASSED, VM_FAILED, VM_SKIPPED, VM_BENCHES.
vm_count() {
	VM_PASSED=$(grep -cE '^ *--- PASS: ' "$1") || true
	VM_FAILED=$(grep -cE '^ *--- FAIL: ' "$1") || true
	VM_SKIPPED=$(grep -cE '^ *--- SKIP: ' "$1") || true
	VM_BENCHES=$(grep -cE '^Benchmark[^[:space:]]*[[:space:]]+[0-9]+[[:space:]]' "$1") || true
}

# vm_summary LOG STATUS: prints the closing count line and exits: non-zero
# when STATUS is, or when no test (nor benchmark) ran at all.
vm_summary() {
	local log=$1 status=$2
	vm_count "$log"
	if ((VM_BENCHES)); then
		echo "vm: $VM_BENCHES benchmark results"
	fi
	if ((status == 0 && VM_PASSED + VM_FAILED + VM_BENCHES == 0)); then
		echo "vm: no test ran (every test was skipped or filtered out)"
		status=1
	fi
	echo "vm: $VM_PASSED passed, $VM_FAILED failed, $VM_SKIPPED skipped"
	exit "$status"
}

# VM_TEST_TAGS: the build tag of the tests that need a device-mapper to
# run at all (runnable examples whose output comes from the kernel): only
# kernel test binaries have them; go vet -tags dmthin_kernel checks them on
# any host.
VM_TEST_TAGS=dmthin_kernel

vm_cmd_test() {
	local race='' cover='' run='' skip='' bench='' benchtime='' timeout='' short='' pkgs=()
	while (($#)); do
		case "$1" in
		-race | --race) race=1; shift ;;
		-cover | --cover) cover=1; shift ;;
		-short | --short) short=1; shift ;;
		-v | --v) shift ;; # always verbose: the counts come from -v output
		-run | --run) run=${2?-run needs a value}; shift 2 ;;
		-run=* | --run=*) run=${1#*=}; shift ;;
		-skip | --skip) skip=${2?-skip needs a value}; shift 2 ;;
		-skip=* | --skip=*) skip=${1#*=}; shift ;;
		-bench | --bench) bench=${2?-bench needs a value}; shift 2 ;;
		-bench=* | --bench=*) bench=${1#*=}; shift ;;
		-benchtime | --benchtime) benchtime=${2?-benchtime needs a value}; shift 2 ;;
		-benchtime=* | --benchtime=*) benchtime=${1#*=}; shift ;;
		-timeout | --timeout) timeout=${2?-timeout needs a value}; shift 2 ;;
		-timeout=* | --timeout=*) timeout=${1#*=}; shift ;;
		--) shift; pkgs+=("$@"); break ;;
		-*) vm_die "test: unknown flag $1" ;;
		*) pkgs+=("$1"); shift ;;
		esac
	done
	((${#pkgs[@]})) || pkgs=(./...)
	command -v go >/dev/null || vm_die "go is not in PATH"
	vm_workdir
	if [[ -z ${DMTHIN_VM_ALWAYS:-} ]] && vm_host_dm_usable; then
		vm_test_native
	else
		vm_test_vm
	fi
}

# vm_cover_flags: sets VM_COVER_FLAGS to go test's coverage flags (none
# without -cover). Every binary instruments every package of the module, in
# the same mode, so their data merge.
VM_COVER_FLAGS=()
vm_cover_flags() {
	VM_COVER_FLAGS=()
	[[ -n $cover ]] || return 0
	local pkgs
	pkgs=$(vm_cover_pkgs) || vm_die "go list of the module's packages failed"
	VM_COVER_FLAGS=(-cover "-coverpkg=$pkgs")
	# -race needs atomic counters; set is the cheapest otherwise.
	if [[ -n $race ]]; then
		VM_COVER_FLAGS+=(-covermode=atomic)
	else
		VM_COVER_FLAGS+=(-covermode=set)
	fi
}

# vm_go_quiet CMD...: runs CMD without -coverpkg's "no packages being tested
# depend on matches" warnings (one per package a test binary does not link).
vm_go_quiet() {
	"$@" 2> >(grep -v '^warning: no packages being tested depend on matches for pattern' >&2)
}

# vm_test_cover_report DIR...: the coverage table of the run (see
# hack/vm/cover.sh); out/ of the module gets the merged profile.
vm_test_cover_report() {
	local out
	out=$(go list -m -f '{{.Dir}}')/out
	vm_cover_report "$out" "$@"
}

# vm_test_native: the host has a device-mapper: plain go test.
vm_test_native() {
	local args=(-v -count=1 -tags "$VM_TEST_TAGS") rc=0 cdir=$VM_WORK/cover/native
	[[ -z $race ]] || args+=(-race)
	vm_cover_flags
	args+=("${VM_COVER_FLAGS[@]}")
	[[ -z $short ]] || args+=(-short)
	[[ -z $run ]] || args+=(-run "$run")
	[[ -z $skip ]] || args+=(-skip "$skip")
	[[ -z $bench ]] || args+=(-bench "$bench")
	[[ -z $benchtime ]] || args+=(-benchtime "$benchtime")
	[[ -z $timeout ]] || args+=(-timeout "$timeout")
	vm_log "this host's device-mapper works: running the tests natively"
	if [[ -z $cover ]]; then
		DMTHIN_REQUIRE_DM=1 go test "${args[@]}" "${pkgs[@]}" 2>&1 | tee "$VM_WORK/test.log" || rc=$?
		vm_summary "$VM_WORK/test.log" "$rc"
	fi
	# One directory for all packages: the files are named by content hash
	# and process, so packages and their child processes cannot clash.
	mkdir -p "$cdir"
	DMTHIN_REQUIRE_DM=1 GOCOVERDIR=$cdir go test "${args[@]}" "${pkgs[@]}" -args "-test.gocoverdir=$cdir" 2>&1 |
		grep -v '^warning: no packages being tested depend on matches for pattern' |
		tee "$VM_WORK/test.log" | vm_console_show || rc=$?
	vm_test_cover_report "$cdir" || rc=1
	vm_summary "$VM_WORK/test.log" "$rc"
}

# vm_test_vm: build the test binaries, run them all in one VM boot.
vm_test_vm() {
	local modroot list pkg dir has rel gdir bin start status=0 rc=0 n=0
	local -a built=() buildfail=()
	if [[ -n $race ]] && ! command -v "${CC:-gcc}" >/dev/null; then
		vm_apt_install gcc libc6-dev
	fi
	vm_prepare
	vm_payload_init
	vm_cover_flags
	modroot=$(go list -m -f '{{.Dir}}') || vm_die "go list -m failed (not in a Go module?)"
	list=$(go list -e -f '{{.ImportPath}}{{"\t"}}{{.Dir}}{{"\t"}}{{if or .TestGoFiles .XTestGoFiles}}yes{{else}}no{{end}}' "${pkgs[@]}") ||
		vm_die "go list ${pkgs[*]} failed"
	: >"$VM_PAYLOAD/dmthin/test.manifest"
	start=$(vm_now)
	while IFS=$'\t' read -r pkg dir has; do
		[[ -n $pkg ]] || continue
		if [[ $has != yes ]]; then
			printf '?   \t%s\t[no test files]\n' "$pkg"
			continue
		fi
		rel=${dir#"$modroot"}
		rel=${rel#/}
		gdir=/dmthin/src${rel:+/$rel}
		bin=$(basename "$dir").test
		mkdir -p "$VM_PAYLOAD$gdir"
		if [[ -n $race ]]; then
			CGO_ENABLED=1 vm_go_quiet go test -race -tags "$VM_TEST_TAGS" "${VM_COVER_FLAGS[@]}" -c -o "$VM_PAYLOAD$gdir/$bin" "$pkg" || rc=$?
		else
			CGO_ENABLED=0 vm_go_quiet go test -tags "$VM_TEST_TAGS" "${VM_COVER_FLAGS[@]}" -c -o "$VM_PAYLOAD$gdir/$bin" "$pkg" || rc=$?
		fi
		if ((rc != 0)) || [[ ! -f $VM_PAYLOAD$gdir/$bin ]]; then
			printf 'FAIL\t%s [build failed]\n' "$pkg"
			buildfail+=("$pkg")
			rc=0
			continue
		fi
		if [[ -d $dir/testdata ]]; then
			cp -a "$dir/testdata" "$VM_PAYLOAD$gdir/"
		fi
		[[ -z $race ]] || vm_payload_libs "$VM_PAYLOAD$gdir/$bin"
		printf '%s %s %s\n' "$pkg" "$gdir" "$bin" >>"$VM_PAYLOAD/dmthin/test.manifest"
		built+=("$pkg")
	done <<<"$list"
	vm_log "built ${#built[@]} test binaries in $(vm_since "$start")s"

	if ((${#built[@]} == 0)); then
		((${#buildfail[@]})) || echo "vm: no package matching ${pkgs[*]} has tests: no test ran"
		echo "vm: 0 passed, 0 failed, 0 skipped"
		exit 1
	fi

	{
		echo -test.paniconexit0
		echo -test.v=true
		echo -test.count=1
		echo "-test.timeout=${timeout:-10m}"
		[[ -z $short ]] || echo -test.short=true
		[[ -z $run ]] || echo "-test.run=$run"
		[[ -z $skip ]] || echo "-test.skip=$skip"
		[[ -z $bench ]] || echo "-test.bench=$bench"
		[[ -z $benchtime ]] || echo "-test.benchtime=$benchtime"
	} >"$VM_PAYLOAD/dmthin/test.flags"
	echo "exec sh /usr/libexec/dmthin/run-tests /dmthin/test.manifest /dmthin/test.flags${cover:+ /tmp/dmthin-cover}" \
		>"$VM_PAYLOAD/dmthin/run.sh"
	cp "$VM_PAYLOAD/dmthin/test.manifest" "$VM_WORK/manifest.all"
	VM_PKG_FAILED=("${buildfail[@]/%/ [build failed]}")
	vm_test_boots "${built[@]}" || status=$?
	((${#VM_PKG_FAILED[@]} == 0)) || status=1
	n=$(grep -cE "^FAIL"$'\t' "$VM_WORK/console.log") || true
	if ((n + ${#VM_PKG_FAILED[@]})); then
		echo "vm: FAILED packages:"
		grep -E "^FAIL"$'\t' "$VM_WORK/console.log" | sed 's/^/vm:   /' || true
		for pkg in "${VM_PKG_FAILED[@]}"; do
			printf 'vm:   FAIL\t%s\n' "$pkg"
		done
	fi
	if [[ -n $cover ]]; then
		local -a cdirs=()
		local k i
		k=$(vm_cover_extract "$VM_WORK/console.log" "$VM_WORK/cover") || status=1
		for ((i = 1; i <= k; i++)); do
			cdirs+=("$VM_WORK/cover/$i")
		done
		vm_test_cover_report "${cdirs[@]}" || status=1
	fi
	vm_summary "$VM_WORK/console.log" "$status"
}

# vm_test_boots PKG...: boots the VM to run the packages' test binaries (all
# in $VM_PAYLOAD, listed in $VM_WORK/manifest.all). If the guest kernel dies
# (an oops, with oops=panic), the package that was running fails and the VM
# boots again for the packages that had not run, so one kernel crash does not
# hide the other packages' results. All console output goes to
# $VM_WORK/console.log; packages failed here are added to VM_PKG_FAILED.
# Returns non-zero when a package failed or the VM did not finish.
vm_test_boots() {
	vm_boot_lock
	local todo=("$@") deadline=$((SECONDS + VM_TIMEOUT)) boot=0 status=0 rc
	local initrd base_initrd log running pkg left=()
	local all=$VM_WORK/console.log
	: >"$all"
	base_initrd=$(vm_payload_pack)
	while ((${#todo[@]})); do
		boot=$((boot + 1))
		initrd=$base_initrd
		if ((boot > 1)); then
			# A later archive's manifest replaces the first one.
			rm -rf "$VM_WORK/again"
			mkdir -p "$VM_WORK/again/dmthin"
			for pkg in "${todo[@]}"; do
				awk -v p="$pkg" '$1 == p' "$VM_WORK/manifest.all"
			done >"$VM_WORK/again/dmthin/test.manifest"
			initrd=$VM_WORK/initrd.$boot.img
			{ cat "$base_initrd" && vm_cpio "$VM_WORK/again"; } >"$initrd" ||
				vm_die "packing the initramfs failed"
			vm_log "booting the VM again for the ${#todo[@]} packages left"
		else
			vm_log "booting the VM for ${#todo[@]} packages ($(du -h "$initrd" | cut -f1) initramfs)"
		fi
		if ((deadline - SECONDS <= 0)); then
			rc=124
		else
			log=$VM_WORK/console.$boot.log
			rc=0
			vm_boot_batch "$initrd" "$((deadline - SECONDS))" "$log" || rc=$?
			cat "$log" >>"$all"
		fi
		if ((rc == 0)); then
			vm_log "VM run ${VM_ELAPSED}s, /init reached at ${VM_BOOT:-?}s"
			((VM_STATUS == 0)) || status=1
			return "$status"
		fi
		status=1
		# Which package was running, and which never started?
		running='' left=()
		for pkg in "${todo[@]}"; do
			if grep -qE "^(ok  |FAIL)"$'\t'"$pkg"$'\t' "$log" 2>/dev/null; then
				continue
			elif grep -qxF "=== PKG $pkg" "$log" 2>/dev/null; then
				running=$pkg
			else
				left+=("$pkg")
			fi
		done
		if ((rc == 124)); then
			for pkg in ${running:+"$running"} "${left[@]}"; do
				printf 'FAIL\t%s [the VM timed out]\n' "$pkg"
				VM_PKG_FAILED+=("$pkg [the VM timed out]")
			done
			return 1
		fi
		if [[ -z $running ]]; then
			# It died before any package started: booting again would too.
			for pkg in "${left[@]}"; do
				printf 'FAIL\t%s [the VM died before it ran]\n' "$pkg"
				VM_PKG_FAILED+=("$pkg [the VM died before it ran]")
			done
			return 1
		fi
		printf 'FAIL\t%s [the VM kernel died during its tests]\n' "$running"
		VM_PKG_FAILED+=("$running [the VM kernel died during its tests]")
		todo=("${left[@]}")
	done
	return "$status"
}
