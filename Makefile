# Developer and CI entry points. The device-mapper tests run in a QEMU VM
# (hack/vm.sh) when this host's kernel has no device-mapper; see hack/README.md.
SHELL := /bin/bash
GO ?= go
VM := hack/vm.sh
.DEFAULT_GOAL := test

# staticcheck, pinned; installed from the Go module proxy into out/bin.
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(CURDIR)/out/bin/staticcheck-$(STATICCHECK_VERSION)

$(STATICCHECK):
	mkdir -p out/bin
	GOBIN=$(CURDIR)/out/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv out/bin/staticcheck $@

.PHONY: test setup tools test-unit test-hack test-moby test-containerd test-vm test-race cover shell demo demo-containerd bench bench-apply

# Everything: host unit tests (device-mapper tests skip there, with a reason),
# then every package again with DMTHIN_REQUIRE_DM=1 in the VM or natively,
# where nothing may skip for lack of a device-mapper. Both stages run even if
# the first fails; the VM's "vm: N passed, N failed, N skipped" line closes
# each. Each stage's output is also kept in out/test-logs/<stage>.log, and
# the last lines name the stages that failed and their failed tests, so the
# tail of a CI log says what broke.
# The VM stage also measures coverage (as make cover, in the same boot: the
# cost was within run-to-run noise) and prints the table; no threshold
# applies unless COVER_MIN is set in the environment (CI does not set it).
test:
	$(VM) setup
	@mkdir -p out/test-logs; rc=0; failed=(); \
	stage() { local name=$$1; shift; \
		if ! (set -o pipefail; "$$@" 2>&1 | tee "out/test-logs/$$name.log"); then rc=1; failed+=("$$name"); fi; }; \
	stage host-unit $(MAKE) --no-print-directory test-unit; \
	stage vm $(VM) test -cover; \
	stage moby $(MAKE) --no-print-directory test-moby; \
	stage containerd $(MAKE) --no-print-directory test-containerd; \
	stage race $(MAKE) --no-print-directory test-race; \
	if ((rc)); then \
		echo "make test: FAILED stages: $${failed[*]} (logs in out/test-logs/)"; \
		for f in "$${failed[@]}"; do \
			echo "== $$f: what failed"; \
			grep -E -- '^ *--- FAIL: |^FAIL|^panic: |^make.*Error|^vm: ([0-9]+ passed|no test ran|FAILED|  FAIL)|FAILED|^# |\.go:[0-9]+:[0-9]+: |timed out' "out/test-logs/$$f.log" | tail -40; \
		done; \
	else echo "make test: every stage passed"; fi; \
	exit $$rc

# The moby/ module in the VM: moby's graphdriver conformance suite
# (graphtest), every test and every benchmark once.
test-moby:
	cd moby && ../$(VM) test -timeout 40m -bench . -benchtime 1x ./...

# The containerd/ module in the VM: containerd's snapshotter conformance
# suite (directly and through the gRPC proxy), crash, bad-input and
# served-binary tests.
test-containerd:
	cd containerd && ../$(VM) test -timeout 30m ./...

# The concurrency tests again with the race detector (in the VM, or natively).
test-race:
	$(VM) test -race -run 'Concurren' ./thinpool/ ./graphdriver/

# Host packages, the guest kernel, the cached base initramfs, and the
# pinned staticcheck.
setup: $(STATICCHECK)
	$(VM) setup

# Every Go module of the repository: the library and the moby/ adapter.
MODULES := $(sort $(patsubst %/go.mod,%,$(shell find . -name go.mod -not -path './out/*')))

tools: $(STATICCHECK)

# Host checks of every module: go.mod tidy, go vet, staticcheck, unit tests.
# go vet also checks the files behind the kernel-test build tag (see
# CONTRIBUTING.md, "Examples").
test-unit: $(STATICCHECK)
	@set -e; for m in $(MODULES); do \
		echo "== module $$m"; \
		(cd $$m && $(GO) mod tidy -diff && $(GO) vet ./... && $(GO) vet -tags dmthin_kernel ./... && \
			$(STATICCHECK) ./... && $(STATICCHECK) -tags dmthin_kernel ./... && $(GO) test -count=1 ./...); \
	done
	$(MAKE) --no-print-directory test-hack

# Host tests of the harness itself (no VM).
test-hack:
	bash hack/vm/cover_test.sh

# Statement coverage of the kernel run: every package's tests in the VM (or
# natively), each binary instrumenting every package of the module; prints
# a per-package table and writes out/cover.out (go tool cover -html=out/cover.out).
# COVER_MIN=85 COVER_PKGS="devmapper thinpool graphdriver" fails when a named
# package (default: every package) is below the percentage.
cover:
	$(VM) test -cover

test-vm:
	$(VM) test

shell:
	$(VM) shell

# Builds examples/layers and runs it: natively where this host's
# device-mapper works, else in the VM.
demo:
	mkdir -p out
	CGO_ENABLED=0 $(GO) build -o out/layers ./examples/layers
	@if bash -c 'source hack/vm/gotest.sh && vm_host_dm_usable'; then \
		echo "make demo: running natively on this host's device-mapper"; ./out/layers; \
	else $(VM) run --file out/layers:/layers -- /layers; fi

# The containerd snapshotter driven through its gRPC socket by containerd's
# own client: an image chain, a container, a view, the pool's usage.
demo-containerd:
	mkdir -p out
	cd containerd && CGO_ENABLED=0 $(GO) build -o ../out/snapshotter-demo ./examples/demo
	@if bash -c 'source hack/vm/gotest.sh && vm_host_dm_usable'; then \
		./out/snapshotter-demo; \
	else $(VM) run --file out/snapshotter-demo:/snapshotter-demo -- /snapshotter-demo; fi

# Side-by-side benchmarks (ratios measured in one run): dmbench,
# poolbench, examples/bench-driver and hack/bench-archive (applying Go's
# own src/ as a layer: ApplyDiff vs GNU tar -xf, go-archive and
# containerd) in one VM boot, then the Go benchmarks of every package.
BENCHES := hack/dmbench hack/poolbench examples/bench-driver
bench: out/bench-archive out/gosrc.tar
	for p in $(BENCHES); do CGO_ENABLED=0 $(GO) build -o out/$$(basename $$p) ./$$p || exit 1; done
	cd containerd && CGO_ENABLED=0 $(GO) build -o ../out/bench-snapshotters ./bench
	$(VM) run --timeout 3600 $(foreach p,$(BENCHES),--file out/$(notdir $(p)):/bench/$(notdir $(p))) \
		--file out/bench-snapshotters:/bench/bench-snapshotters \
		$(BENCH_ARCHIVE_FILES) --file hack/bench.sh:/bench/run.sh -- /bin/sh /bench/run.sh
	$(VM) test -run '^$$' -bench . ./...

# Only the layer-apply comparison, in one VM boot.
bench-apply: out/bench-archive out/gosrc.tar
	$(VM) run --timeout 3600 $(BENCH_ARCHIVE_FILES) -- /bench/bench-archive -tar /bench/gosrc.tar -reps $${REPS:-5}

# hack/bench-archive is a module of its own (containerd stays out of
# dmthin's go.mod); GNU tar is the host's, copied into the VM.
BENCH_ARCHIVE_FILES = --file out/bench-archive:/bench/bench-archive --file out/gosrc.tar:/bench/gosrc.tar \
	--file $$(command -v tar):/usr/bin/tar
.PHONY: out/bench-archive
out/bench-archive:
	mkdir -p out
	cd hack/bench-archive && CGO_ENABLED=0 $(GO) build -o ../../out/bench-archive .
out/gosrc.tar:
	mkdir -p out
	tar -C "$$($(GO) env GOROOT)" -cf $@ src
