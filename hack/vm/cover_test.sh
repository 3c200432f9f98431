#!/usr/bin/env bash
# hack/vm/cover_test.sh: host test of the coverage path of `hack/vm.sh test
# -cover` (hack/vm/run-tests in cover mode, hack/vm/cover.sh). It needs no
# VM: a two-package scratch module is built the way the harness builds test
# binaries, run-tests runs them here, and its output stands in for the
# console log the host reads back from the VM. Run by `make test-unit`.
#
# The scratch module: a.A(x) has 3 statements; a's own test covers 2 of
# them, b's test the third (so 100% only if the binaries' data merge).
# b has 3 statements: B (run by b's test), Unused (never run) and C, which
# only a child process (b's test binary run again) runs (so 2/3 only if the
# child's GOCOVERDIR data comes back too).
set -euo pipefail

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=cover.sh
source "$HACK/cover.sh"

fails=0
fail() {
	echo "FAIL: $*" >&2
	fails=$((fails + 1))
}
# expect_line FILE REGEX WHAT
expect_line() {
	grep -qE "$2" "$1" || fail "$3: no line matching /$2/ in:
$(cat "$1")"
}

work=$(mktemp -d "${TMPDIR:-/tmp}/dmthin-cover-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
mod=$work/mod
mkdir -p "$mod/a" "$mod/b"
cat >"$mod/go.mod" <<'EOF'
module example.com/covertest

go 1.21
EOF
cat >"$mod/a/a.go" <<'EOF'
package a

func A(x int) int {
	if x > 0 {
		return 1
	}
	return 0
}
EOF
cat >"$mod/a/a_test.go" <<'EOF'
package a

import "testing"

func TestA(t *testing.T) {
	if A(1) != 1 {
		t.Fatal("A(1) != 1")
	}
}
EOF
cat >"$mod/b/b.go" <<'EOF'
package b

import "example.com/covertest/a"

func B() int { return a.A(-1) }

func Unused() int { return 2 }

func C() int { return 3 }
EOF
cat >"$mod/b/b_test.go" <<'EOF'
package b

import (
	"os"
	"os/exec"
	"testing"
)

func TestMain(m *testing.M) {
	if os.Getenv("COVERTEST_CHILD") != "" {
		os.Exit(C() - 3)
	}
	os.Exit(m.Run())
}

func TestB(t *testing.T) {
	if B() != 0 {
		t.Fatal("B() != 0")
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "COVERTEST_CHILD=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
EOF

cd "$mod"
# Built as hack/vm/gotest.sh builds them.
pkgs=$(vm_cover_pkgs)
[[ $pkgs == example.com/covertest/a,example.com/covertest/b ]] || fail "vm_cover_pkgs: got '$pkgs'"
: >"$work/manifest"
for p in a b; do
	CGO_ENABLED=0 go test -cover "-coverpkg=$pkgs" -covermode=set -c -o "$mod/$p/$p.test" "./$p" 2>/dev/null
	echo "example.com/covertest/$p $mod/$p $p.test" >>"$work/manifest"
done
printf '%s\n' -test.v=true -test.count=1 >"$work/flags"

# The guest side, on this host.
sh "$HACK/run-tests" "$work/manifest" "$work/flags" "$work/guestcover" >"$work/console.log" 2>&1 ||
	fail "run-tests failed: $(cat "$work/console.log")"
expect_line "$work/console.log" '^=== COVER-BEGIN example.com/covertest/a$' "run-tests prints a's block"
expect_line "$work/console.log" '^=== COVER-END example.com/covertest/b [0-9a-f]{64}$' "run-tests ends b's block with a checksum"

# What the terminal shows: no base64, one line per block.
vm_console_show <"$work/console.log" >"$work/shown"
expect_line "$work/shown" '^vm: coverage data of example.com/covertest/b received$' "vm_console_show"
if grep -qE '^(=== COVER|[A-Za-z0-9+/]{76}$)' "$work/shown"; then
	fail "vm_console_show let coverage data through"
fi
expect_line "$work/shown" '^--- PASS: TestB' "vm_console_show keeps test output"
expect_line "$work/shown" '^coverage: [0-9.]+% of statements in the module \(this binary\)$' "vm_console_show shortens go test's coverage line"

# The host side: extract, merge, table.
n=$(vm_cover_extract "$work/console.log" "$work/host") || fail "vm_cover_extract of a clean log failed"
[[ $n == 2 ]] || fail "vm_cover_extract: $n blocks, want 2"
vm_cover_report "$work/out" "$work/host/1" "$work/host/2" >"$work/report" || fail "vm_cover_report failed: $(cat "$work/report")"
expect_line "$work/out/cover.txt" '^a +3 +3 +100\.0%$' "a covered by both binaries together"
expect_line "$work/out/cover.txt" '^b +2 +3 +66\.7%$' "b with its child process's coverage"
expect_line "$work/out/cover.txt" '^total +5 +6 +83\.3%$' "total"
expect_line "$work/out/cover.out" '^mode: set$' "text profile"
go tool cover -func="$work/out/cover.out" >"$work/func" || fail "go tool cover cannot read the merged profile"
expect_line "$work/func" 'b\.go:9:.*C.*100\.0%' "C, run only by the child, covered"
expect_line "$work/func" 'b\.go:7:.*Unused.*0\.0%' "Unused not covered"

# Thresholds.
COVER_MIN=60 COVER_PKGS="a b" vm_cover_report "$work/out" "$work/host/1" "$work/host/2" >"$work/report" ||
	fail "COVER_MIN=60 should pass: $(cat "$work/report")"
if COVER_MIN=70 COVER_PKGS="./a b/" vm_cover_report "$work/out" "$work/host/1" "$work/host/2" >"$work/report"; then
	fail "COVER_MIN=70 should fail for b"
fi
expect_line "$work/report" '^vm: cover: FAIL b: 66\.7% of statements covered, below COVER_MIN=70%$' "b below 70"
expect_line "$work/report" '^vm: cover: ok   a: 100\.0% >= 70%$' "a above 70"
if COVER_MIN=10 COVER_PKGS="nope" vm_cover_report "$work/out" "$work/host/1" >"$work/report"; then
	fail "a package that is not measured should fail the threshold"
fi
expect_line "$work/report" '^vm: cover: FAIL nope: not measured' "unknown package"
if COVER_MIN=70 vm_cover_report "$work/out" "$work/host/1" "$work/host/2" >"$work/report"; then
	fail "COVER_MIN without COVER_PKGS checks every package, b is below"
fi
# Without b's data a drops to 2/3: the table really comes from the inputs.
vm_cover_report "$work/out" "$work/host/1" >"$work/report" || fail "report of a alone failed"
expect_line "$work/out/cover.txt" '^a +2 +3 +66\.7%$' "a alone"

# A damaged block (a flipped character) and one cut short are left out, and
# say so; the good block still comes through.
awk 'a && !done { $0 = (substr($0, 1, 10) == "AAAAAAAAAA" ? "BBBBBBBBBB" : "AAAAAAAAAA") substr($0, 11); done = 1 }
	/^=== COVER-BEGIN .*\/a$/ { a = 1 } { print }' \
	"$work/console.log" >"$work/damaged.log"
if n=$(vm_cover_extract "$work/damaged.log" "$work/dmg" 2>"$work/err"); then
	fail "vm_cover_extract accepted a damaged block"
fi
[[ $n == 1 ]] || fail "damaged log: $n good blocks, want 1"
expect_line "$work/err" 'coverage data of example.com/covertest/a is damaged' "damaged block reported"
sed '/^=== COVER-END .*\/b /,$d' "$work/console.log" >"$work/cut.log"
if n=$(vm_cover_extract "$work/cut.log" "$work/cut" 2>"$work/err"); then
	fail "vm_cover_extract accepted a block cut short"
fi
[[ $n == 1 ]] || fail "cut log: $n good blocks, want 1"
expect_line "$work/err" 'coverage data of example.com/covertest/b is cut short' "cut block reported"

if ((fails)); then
	echo "hack/vm/cover_test.sh: $fails FAILED" >&2
	exit 1
fi
echo "ok  	hack/vm/cover_test.sh"
