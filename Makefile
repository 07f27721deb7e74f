# SPDX-License-Identifier: GPL-2.0
#
# virtio-balloon-rs: build the module, the test kernel, and run the tests.
#
#   make            build virtio_balloon_rs.ko against $(KDIR)
#   make setup      install what is missing and build the test kernel (cached)
#   make test       setup + module + every test (host tests and VM tests)
#   make demo       boot the test guest with the module and drive the balloon
#   make bench      inflate/deflate timings, ours against the C driver
#   make clippy     the kernel's CLIPPY=1 build of the module, plus cargo clippy

SHELL := /bin/bash
VBRS_CACHE ?= $(HOME)/.cache/virtio-balloon-rs
export VBRS_CACHE
TOP := $(CURDIR)
VENDOR := $(TOP)/build/vendor

# Written by qemu-test/setup.sh: KSRC, KDIR_TEST, RUST_LIB_SRC, LIBCLANG_PATH, BINDGEN_DIR.
-include $(VBRS_CACHE)/env.mk

KDIR ?= $(KDIR_TEST)
ifneq ($(BINDGEN_DIR),)
export PATH := $(BINDGEN_DIR):$(PATH)
endif
ifneq ($(LIBCLANG_PATH),)
export LIBCLANG_PATH
endif

KMAKE = $(MAKE) -C $(KDIR) M=$(TOP) VBRS_VENDOR=$(VENDOR)

.PHONY: all module setup kernel test host-test vm-test demo bench clippy fmt clean \
	print-kdir print-bzimage print-module print-c-module check-kdir

all: module

check-kdir:
	@if [ -z "$(KDIR)" ] || [ ! -f "$(KDIR)/Module.symvers" ]; then \
		echo "error: no kernel build tree at KDIR='$(KDIR)'."; \
		echo "       Run 'make setup' to build the project's test kernel, or pass"; \
		echo "       KDIR=/path/to/a/CONFIG_RUST=y/build/tree."; \
		exit 1; \
	fi

$(VENDOR)/.stamp: Cargo.lock Cargo.toml
	@echo "[make] vendoring crate sources for the kernel build (cargo vendor)"
	cargo vendor --locked -q $(VENDOR) >/dev/null
	@touch $@

module: check-kdir $(VENDOR)/.stamp
	$(KMAKE) modules

setup kernel:
	bash qemu-test/setup.sh

host-test:
	cargo test -p balloon-logic

vm-test:
	VBRS_MODULE=$(TOP)/virtio_balloon_rs.ko cargo test -p qemu-test -- --test-threads=1

test: setup
	$(MAKE) module
	cargo test --workspace -- --test-threads=1

demo: setup
	$(MAKE) module
	cargo run -q -p qemu-test --release --bin demo

bench: setup
	$(MAKE) module
	cargo run -q -p qemu-test --release --bin bench -- $(BENCH_ARGS)

clippy: check-kdir $(VENDOR)/.stamp
	cargo clippy --workspace --all-targets -- -D warnings
	@mkdir -p build
	@touch src/kernel/virtio_balloon_main.rs src/lib.rs
	@set -o pipefail; $(KMAKE) CLIPPY=1 modules 2>&1 | tee build/kernel-clippy.log
	@if grep -q "warning" build/kernel-clippy.log; then \
		echo "error: the kernel CLIPPY=1 build of the module has warnings (build/kernel-clippy.log)"; \
		exit 1; \
	fi

fmt:
	cargo fmt --all

clean:
	-[ -z "$(KDIR)" ] || [ ! -d "$(KDIR)" ] || $(KMAKE) clean
	rm -f src/kernel/bindings_generated.rs libbitflags.rmeta liblog.rmeta libballoon_logic.rmeta

print-kdir:
	@echo $(KDIR)

print-bzimage:
	@echo $(KDIR_TEST)/arch/x86/boot/bzImage

print-module:
	@echo $(TOP)/virtio_balloon_rs.ko

print-c-module:
	@echo $(KDIR_TEST)/drivers/virtio/virtio_balloon.ko
