# shellcheck shell=bash
# Sourced by hack/vm.sh (and hack/vm/cover_test.sh): statement coverage of a
# kernel run.
#
# `hack/vm.sh test -cover` builds every test binary with -cover and
# -coverpkg=<every package of the module>, so a package's statements count
# as covered whichever package's tests ran them. In the guest each binary
# writes Go's binary coverage data (covmeta.* and covcounters.* files) into
# its own directory: through -test.gocoverdir for the test binary itself and
# through GOCOVERDIR for the children it starts (test binaries that re-run
# themselves as a helper process). The console is the only way out of the
# VM, so hack/vm/run-tests prints each package's directory as a gzip'd tar
# in base64 between two marker lines:
#
#   === COVER-BEGIN <import path>
#   <base64 lines>
#   === COVER-END <import path> <sha256 of the tar.gz>
#
# The host cuts the blocks out of the console log, checks and unpacks them,
# merges them with `go tool covdata textfmt` into one text profile (for
# `go tool cover -html`) and prints a per-package table from it.

# vm_cover_pkgs: the module's packages, comma-separated (for -coverpkg).
vm_cover_pkgs() {
	go list -f '{{.ImportPath}}' "$(go list -m -f '{{.Dir}}')/..." | paste -sd, -
}

# vm_cover_extract LOG DIR: unpacks every coverage block of the console log
# LOG into DIR/1, DIR/2, ... and prints how many it unpacked. A block whose
# checksum does not match, or that never ends (the VM died while printing
# it), is reported on stderr and left out; the status is then 1.
vm_cover_extract() {
	local log=$1 dir=$2 n=0 bad=0 blk pkg sum got
	mkdir -p "$dir/blocks"
	# One file per block: the base64 body, and a header line with the
	# package and the checksum (empty when the END line never came).
	awk -v out="$dir/blocks" '
		/^=== COVER-BEGIN / {
			if (f != "") { print pkg > (f ".head"); close(f ".head"); close(f) }
			n++; f = out "/" n; pkg = $3; printf "" > f; next
		}
		/^=== COVER-END / && f != "" {
			print $3, $4 > (f ".head"); close(f ".head"); close(f); f = ""; next
		}
		f != "" && /^[A-Za-z0-9+\/=]+$/ { print > f }
		END { if (f != "") { print pkg > (f ".head"); close(f ".head") } }
	' "$log"
	for blk in "$dir"/blocks/*.head; do
		[[ -e $blk ]] || break
		read -r pkg sum <"$blk" || true
		blk=${blk%.head}
		if [[ -z $sum ]]; then
			echo "vm: cover: the coverage data of $pkg is cut short (the VM stopped while printing it); left out" >&2
			bad=1
			continue
		fi
		got=$(base64 -d <"$blk" 2>/dev/null | sha256sum | cut -d' ' -f1)
		if [[ $got != "$sum" ]]; then
			echo "vm: cover: the coverage data of $pkg is damaged (sha256 $got, want $sum); left out" >&2
			bad=1
			continue
		fi
		n=$((n + 1))
		mkdir -p "$dir/$n"
		if ! base64 -d <"$blk" | tar -xzf - -C "$dir/$n"; then
			echo "vm: cover: cannot unpack the coverage data of $pkg; left out" >&2
			rm -rf "${dir:?}/$n"
			n=$((n - 1))
			bad=1
		fi
	done
	rm -rf "$dir/blocks"
	echo "$n"
	return "$bad"
}

# vm_cover_merge PROFILE DIR...: merges the coverage data directories into
# the text profile PROFILE.
vm_cover_merge() {
	local profile=$1 dirs
	shift
	dirs=$(printf '%s,' "$@")
	go tool covdata textfmt -i="${dirs%,}" -o "$profile"
}

# vm_cover_table PROFILE MODULE: prints the statement coverage of each
# package in the text profile PROFILE (names relative to the import path
# MODULE), then the total. A block listed more than once (by two binaries)
# counts once, covered if any run covered it.
vm_cover_table() {
	awk -v mod="$2/" '
		NR == 1 && /^mode:/ { next }
		{
			key = $1 " " $2
			if (!(key in stmts)) { stmts[key] = $2; hit[key] = 0 }
			if ($3 > 0) hit[key] = 1
		}
		END {
			for (key in stmts) {
				split(key, kf, " ")
				file = kf[1]; sub(/:[^:]*$/, "", file)
				pkg = file; sub(/\/[^\/]*$/, "", pkg)
				if (index(pkg, mod) == 1) pkg = substr(pkg, length(mod) + 1)
				else if (pkg == substr(mod, 1, length(mod) - 1)) pkg = "."
				total[pkg] += stmts[key]; all += stmts[key]
				if (hit[key]) { cov[pkg] += stmts[key]; allcov += stmts[key] }
			}
			for (pkg in total)
				printf "%-28s %6d %6d %6.1f%%\n", pkg, cov[pkg], total[pkg], 100 * cov[pkg] / total[pkg] | "sort"
			close("sort")
			if (all > 0) printf "%-28s %6d %6d %6.1f%%\n", "total", allcov, all, 100 * allcov / all
		}
	' "$1"
}

# vm_cover_check TABLE MIN PKG...: fails, naming them, when a package PKG
# (as named in TABLE, e.g. devmapper) is below MIN percent or not in TABLE.
# With no PKG, every package of the table is checked.
vm_cover_check() {
	local table=$1 min=$2 pkg line pct fail=0
	shift 2
	[[ $min =~ ^[0-9]+([.][0-9]+)?$ ]] || {
		echo "vm: cover: COVER_MIN wants a percentage, got '$min'" >&2
		return 2
	}
	if (($# == 0)); then
		# shellcheck disable=SC2046 # one package name a line, no spaces
		set -- $(awk 'NR > 1 && $1 != "total" { print $1 }' "$table")
	fi
	for pkg in "$@"; do
		pkg=${pkg#./}
		pkg=${pkg%/}
		line=$(awk -v p="$pkg" '$1 == p' "$table")
		if [[ -z $line ]]; then
			echo "vm: cover: FAIL $pkg: not measured (no test binary links it, or no such package)"
			fail=1
			continue
		fi
		pct=$(awk '{ sub(/%$/, "", $4); print $4 }' <<<"$line")
		if awk -v a="$pct" -v b="$min" 'BEGIN { exit !(a + 0 < b + 0) }'; then
			echo "vm: cover: FAIL $pkg: $pct% of statements covered, below COVER_MIN=$min%"
			fail=1
		else
			echo "vm: cover: ok   $pkg: $pct% >= $min%"
		fi
	done
	return "$fail"
}

# vm_cover_report OUTDIR DIR...: merges the coverage data directories into
# OUTDIR/cover.out, prints the per-package table (also kept in
# OUTDIR/cover.txt) and, when COVER_MIN is set, checks the packages named
# in COVER_PKGS (default: all) against it. Returns non-zero when the data
# cannot be merged or a package is below COVER_MIN.
vm_cover_report() {
	local out=$1 module missing p rc=0
	shift
	mkdir -p "$out"
	module=$(go list -m) || return 1
	if (($# == 0)); then
		echo "vm: cover: no coverage data came back from the run"
		return 1
	fi
	vm_cover_merge "$out/cover.out" "$@" || {
		echo "vm: cover: go tool covdata could not merge the coverage data"
		return 1
	}
	{
		printf '%-28s %6s %6s %7s\n' package cov stmts '%'
		vm_cover_table "$out/cover.out" "$module"
	} >"$out/cover.txt"
	# Packages that no test binary links have no statements in the profile.
	missing=()
	for p in $(go list -f '{{.ImportPath}}' "$(go list -m -f '{{.Dir}}')/..."); do
		p=${p#"$module"/}
		awk -v p="$p" '$1 == p { f = 1 } END { exit !f }' "$out/cover.txt" || missing+=("$p")
	done
	echo "vm: statement coverage of the kernel run (every test binary counts for every package):"
	sed 's/^/vm:   /' "$out/cover.txt"
	if ((${#missing[@]})); then
		echo "vm:   not linked into this run's test binaries, not measured: ${missing[*]}"
	fi
	echo "vm: profile: $out/cover.out (go tool cover -html=$out/cover.out)"
	if [[ -n ${COVER_MIN:-} ]]; then
		# shellcheck disable=SC2086 # a list of package names
		vm_cover_check "$out/cover.txt" "$COVER_MIN" ${COVER_PKGS:-} || rc=1
	fi
	return "$rc"
}

# vm_console_show: copies the console to stdout without the coverage data
# blocks (one line each instead) and with go test's coverage line shortened.
vm_console_show() {
	awk '
		/^=== COVER-BEGIN / { skip = 1; next }
		skip && /^=== COVER-END / { skip = 0; print "vm: coverage data of " $3 " received"; fflush(); next }
		# go test names every -coverpkg package on this line; the table
		# at the end is the readable form.
		!skip && /coverage: [0-9.]+% of statements in / { sub(/ of statements in .*/, " of statements in the module (this binary)") }
		!skip { print; fflush() }
	'
}
