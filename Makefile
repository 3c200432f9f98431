# Developer and CI entry points. The device-mapper tests run in a QEMU VM
# (hack/vm.sh) when this host's kernel has no device-mapper; see hack/README.md.
SHELL := /bin/bash
GO ?= go
VM := hack/vm.sh

.PHONY: test setup test-unit test-vm shell demo bench

# Everything: host unit tests (device-mapper tests skip there, with a reason),
# then every package again with DMTHIN_REQUIRE_DM=1 in the VM or natively,
# where nothing may skip for lack of a device-mapper. Both stages run even if
# the first fails; the VM's "vm: N passed, N failed, N skipped" line closes.
test:
	$(VM) setup
	@rc=0; \
	$(MAKE) --no-print-directory test-unit || { rc=1; echo "make test: host unit tests FAILED" >&2; }; \
	$(VM) test || rc=1; \
	exit $$rc

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

# Builds examples/layers and runs it in the VM.
demo:
	@if [[ ! -d examples/layers ]]; then \
		echo "make demo: examples/layers does not exist yet" >&2; exit 1; fi
	mkdir -p out
	CGO_ENABLED=0 $(GO) build -o out/layers ./examples/layers
	$(VM) run --file out/layers:/layers -- /layers

bench:
	$(VM) test -run '^$$' -bench . ./...
