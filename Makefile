# Developer and CI entry points. The device-mapper tests run in a QEMU VM
# (hack/vm.sh) when this host's kernel has no device-mapper; see hack/README.md.
SHELL := /bin/bash
GO ?= go
VM := hack/vm.sh

.PHONY: test setup test-unit test-vm test-race shell demo bench bench-apply

# Everything: host unit tests (device-mapper tests skip there, with a reason),
# then every package again with DMTHIN_REQUIRE_DM=1 in the VM or natively,
# where nothing may skip for lack of a device-mapper. Both stages run even if
# the first fails; the VM's "vm: N passed, N failed, N skipped" line closes.
test:
	$(VM) setup
	@rc=0; \
	$(MAKE) --no-print-directory test-unit || { rc=1; echo "make test: host unit tests FAILED" >&2; }; \
	$(VM) test || rc=1; \
	$(MAKE) --no-print-directory test-race || rc=1; \
	exit $$rc

# The concurrency tests again with the race detector (in the VM, or natively).
test-race:
	$(VM) test -race -run 'Concurren' ./thinpool/ ./graphdriver/

# Host packages, the guest kernel and the cached base initramfs.
setup:
	$(VM) setup

test-unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./...

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

# Side-by-side benchmarks (ratios measured in one run): dmbench,
# poolbench, examples/bench-driver and hack/bench-archive (applying Go's
# own src/ as a layer: ApplyDiff vs GNU tar -xf, go-archive and
# containerd) in one VM boot, then the Go benchmarks of every package.
BENCHES := hack/dmbench hack/poolbench examples/bench-driver
bench: out/bench-archive out/gosrc.tar
	for p in $(BENCHES); do CGO_ENABLED=0 $(GO) build -o out/$$(basename $$p) ./$$p || exit 1; done
	$(VM) run --timeout 3600 $(foreach p,$(BENCHES),--file out/$(notdir $(p)):/bench/$(notdir $(p))) \
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
