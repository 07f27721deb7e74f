# SPDX-License-Identifier: GPL-2.0
#
# virtio-balloon-rs: build the module, the test kernel, and run the tests.
#
#   make            build virtio_balloon_rs.ko against $(KDIR)
#   make setup      install what is missing and build the test kernel (cached)
#   make test       setup + module + every test (host tests and VM tests)
#   make demo       boot the test guest with the module and drive the balloon
#   make bench      ours against the C driver: inflate/deflate timings, host memory
#                   returned per GiB ballooned (root: hugetlbfs), target/bench/balloon.svg
#   make clippy     the kernel's CLIPPY=1 build of the module, plus cargo clippy
#   make debug-kernel   build the debug test kernel (clang-19, KASAN, lockdep, kmemleak...)
#   make test-debug     the VM suite (and the debug-only tests) on the debug kernel
#   make test-arm64 [PAGE_SIZE=4k|16k|64k]   the VM suites on arm64 guests (all three
#                       page sizes unless PAGE_SIZE says), cross-built kernels (cached)
#   make bench-arm64 [PAGE_SIZE=...]   make bench on each arm64 kernel

SHELL := /bin/bash
VBRS_CACHE ?= $(HOME)/.cache/virtio-balloon-rs
export VBRS_CACHE
TOP := $(CURDIR)
VENDOR := $(TOP)/build/vendor

# Written by qemu-test/setup.sh: KSRC, RUST_LIB_SRC, LIBCLANG_PATH, BINDGEN_DIR.
-include $(VBRS_CACHE)/tools.mk
# The test and debug kernels of this tree's config fragments: the cache
# directories setup.sh builds them in (qemu-test/kernel-key.sh hashes the
# kernel package, the compilers and the fragments).
KDIR_TEST := $(shell bash $(TOP)/qemu-test/kernel-key.sh test)
KDIR_DEBUG := $(shell bash $(TOP)/qemu-test/kernel-key.sh debug 2>/dev/null)

KDIR ?= $(KDIR_TEST)
# A module for a clang-built kernel must be built with the same LLVM
# toolchain: LLVM=-<major> from the kernel's CONFIG_CLANG_VERSION.
KDIR_CLANG_MAJOR := $(shell sed -n 's/^CONFIG_CLANG_VERSION=\([1-9][0-9]*\)[0-9][0-9][0-9][0-9]$$/\1/p' $(KDIR)/.config 2>/dev/null)
ifneq ($(BINDGEN_DIR),)
export PATH := $(BINDGEN_DIR):$(PATH)
endif
ifneq ($(LIBCLANG_PATH),)
export LIBCLANG_PATH
endif

# A build tree keeps no ARCH: an arm64 one is recognised by its .config
# (`make ARCH=arm64 KDIR=...` says the same).
KDIR_ARCH := $(if $(shell grep -s '^CONFIG_ARM64=y' $(KDIR)/.config),arm64)
KMAKE = $(MAKE) -C $(KDIR) M=$(TOP) VBRS_VENDOR=$(VENDOR) $(if $(KDIR_CLANG_MAJOR),LLVM=-$(KDIR_CLANG_MAJOR)) \
	$(if $(KDIR_ARCH),ARCH=$(KDIR_ARCH))
# Kbuild keeps one set of objects in the tree: the kernel they were built for
# is recorded here, and a build for another kernel starts from `make clean`.
KDIR_STAMP := $(TOP)/build/module-kdir
DEBUG_MODULE := $(TOP)/build/debug/virtio_balloon_rs.ko

.PHONY: all module setup kernel test host-test vm-test demo bench clippy fmt clean \
	print-kdir print-bzimage print-module print-c-module check-kdir tree-for-kdir \
	debug-kernel debug-module test-debug vm-test-debug print-debug-kdir check-debug-kdir

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

# Cleans the tree's Kbuild objects if they were built for another KDIR.
tree-for-kdir: check-kdir
	@if [ -f $(KDIR_STAMP) ] && [ "$$(cat $(KDIR_STAMP))" != "$(KDIR)" ]; then \
		echo "[make] objects were built for $$(cat $(KDIR_STAMP)): make clean first"; \
		$(MAKE) -s clean KDIR="$$(cat $(KDIR_STAMP))"; \
	fi
	@mkdir -p $(dir $(KDIR_STAMP)) && echo "$(KDIR)" >$(KDIR_STAMP)

module: tree-for-kdir $(VENDOR)/.stamp
	$(KMAKE) modules

setup kernel:
	bash qemu-test/setup.sh

# What `make setup` installs (packages, the backports suites, bindgen, the
# kernel source), without building a kernel; tools-arm64 adds arm64's.
.PHONY: tools tools-arm64
tools:
	bash qemu-test/setup.sh tools
tools-arm64:
	bash qemu-test/setup.sh tools arm64

host-test:
	cargo test -p balloon-logic

vm-test:
	VBRS_MODULE=$(TOP)/virtio_balloon_rs.ko cargo test -p qemu-test -- --test-threads=1

test: setup
	$(MAKE) module
	cargo test --workspace -- --test-threads=1

debug-kernel:
	bash qemu-test/setup.sh debug

check-debug-kdir:
	@if [ -z "$(KDIR_DEBUG)" ] || [ ! -f "$(KDIR_DEBUG)/Module.symvers" ]; then \
		echo "error: no debug kernel build: run 'make debug-kernel'" >&2; \
		exit 1; \
	fi

print-debug-kdir: check-debug-kdir
	@echo $(KDIR_DEBUG)

# The module for the debug kernel, copied out of the tree so that the next
# `make test` rebuilds the tree's objects for the test kernel.
debug-module: check-debug-kdir
	$(MAKE) module KDIR=$(KDIR_DEBUG)
	@mkdir -p $(dir $(DEBUG_MODULE))
	cp virtio_balloon_rs.ko $(DEBUG_MODULE)

# The VM tests on the debug kernel, including the ones only it can run
# (#[ignore]d in `make test`). VBRS_STRESS=full for the full stress counts.
# Every VM suite but the stock kernel's and libvirt's, which boot their own
# kernel or need libvirtd (make test-stock, make test-libvirt).
DEBUG_SUITES = --lib --bins $(foreach t,$(filter-out libvirt stock,\
	$(basename $(notdir $(wildcard qemu-test/tests/*.rs)))),--test $(t))

vm-test-debug: check-debug-kdir
	VBRS_KDIR=$(KDIR_DEBUG) VBRS_MODULE=$(DEBUG_MODULE) \
		cargo test -p qemu-test $(or $(TEST_ARGS),$(DEBUG_SUITES)) -- --test-threads=1 --include-ignored

test-debug: debug-kernel
	$(MAKE) debug-module
	$(MAKE) vm-test-debug

demo: setup
	$(MAKE) module
	cargo run -q -p qemu-test --release --bin demo

bench: setup
	$(MAKE) module
	cargo run -q -p qemu-test --release --bin bench -- $(BENCH_ARGS)

clippy: tree-for-kdir $(VENDOR)/.stamp
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
	rm -f src/kernel/bindings_generated.rs libbitflags.rmeta liblog.rmeta libballoon_logic.rmeta $(KDIR_STAMP)

print-kdir:
	@echo $(KDIR)

print-bzimage:
	@echo $(KDIR_TEST)/arch/x86/boot/bzImage

print-module:
	@echo $(TOP)/virtio_balloon_rs.ko

print-c-module:
	@echo $(KDIR_TEST)/drivers/virtio/virtio_balloon.ko

# --- Distribution kernels, DKMS, the stock Debian kernel, libvirt -------------
#
# A distribution's headers package has no Rust metadata (Debian's
# linux-headers-* have no rust/): for such a KDIR the build first prepares it
# once from the matching linux-source with the headers' .config
# (distro/prepare-kdir.sh, into $(DISTRO_KDIR_CACHE)/kdir-<release>) and
# builds against that. After every `make`, distro/check-rust-symbols.sh checks
# that each Rust symbol the module imports is in the kernel's Module.symvers
# and names the rustc the kernel needs if not.
DISTRO_KDIR_CACHE ?= $(TOP)/build
ifneq ($(and $(wildcard $(KDIR)/Module.symvers),$(wildcard $(KDIR)/.config)),)
ifeq ($(wildcard $(KDIR)/rust/libkernel.rmeta),)
DISTRO_HEADERS := $(KDIR)
DISTRO_RELEASE := $(shell cat $(KDIR)/include/config/kernel.release 2>/dev/null)
DISTRO_CC := $(shell sed -n 's/^CONFIG_CC_VERSION_TEXT="\([^ ]*\) .*/\1/p' $(KDIR)/.config)
override KDIR := $(DISTRO_KDIR_CACHE)/kdir-$(DISTRO_RELEASE)
# modpost would stop at the first missing symbol with a terse message: let it
# warn, and let the symbol check explain.
KMAKE += CC=$(DISTRO_CC) HOSTCC=$(DISTRO_CC) KBUILD_MODPOST_WARN=1
endif
endif

.PHONY: distro-kdir check-rust-symbols vendor stock-kernel test-stock test-stock-dkms \
	vm-test-stock test-stock-quick bench-stock test-libvirt print-stock-vmlinuz print-stock-module check-stock

check-kdir: $(if $(DISTRO_HEADERS),distro-kdir)

distro-kdir:
	bash distro/prepare-kdir.sh "$(DISTRO_HEADERS)" "$(KDIR)"

all: check-rust-symbols

check-rust-symbols: module
	bash distro/check-rust-symbols.sh $(TOP)/virtio_balloon_rs.ko $(KDIR)

vendor: $(VENDOR)/.stamp

# The stock Debian kernel (qemu-test/stock/stock-kernel.sh writes stock.mk).
-include $(VBRS_CACHE)/stock.mk

stock-kernel: setup
	bash qemu-test/stock/stock-kernel.sh build

check-stock:
	@if [ -z "$(STOCK_VMLINUZ)" ] || [ ! -f "$(STOCK_VMLINUZ)" ] || [ ! -f "$(STOCK_MODULE)" ]; then \
		echo "error: no stock kernel or module: run 'make stock-kernel'" >&2; \
		exit 1; \
	fi

print-stock-vmlinuz: check-stock
	@echo $(STOCK_VMLINUZ)

print-stock-module: check-stock
	@echo $(STOCK_MODULE)

# The VM tests that apply to Debian's kernel and this module built for it:
# tests/stock.rs (Debian's kernel loads the module; a real S3 suspend), and
# the generic VM tests pointed at Debian's vmlinuz and the module built for
# it; hint_savings measures ours against Debian's own virtio_balloon.ko
# (VBRS_C_MODULE). Left out by selection: the C driver's test (Debian's
# virtio_balloon stays out of its guest), page_poison (needs CONFIG_PAGE_POISONING, off in
# Debian) and the two pm_test suspend tests (need CONFIG_PM_DEBUG, off in
# Debian; tests/stock.rs suspends for real instead).
STOCK_SKIP := page_poison_follows_the_guest_and_gates_reporting suspend_and_resume_keep_the_target \
	suspend_resume_cycles_while_inflating_keep_the_target
STOCK_ENV = VBRS_BZIMAGE=$(STOCK_VMLINUZ) VBRS_MODULE=$(STOCK_MODULE) VBRS_KDIR=$(STOCK_KDIR) \
	VBRS_C_MODULE=$(STOCK_C_MODULE)
test-stock: stock-kernel
	$(MAKE) vm-test-stock

# Both groups run; the target fails if either failed.
vm-test-stock: check-stock
	@rc=0; \
	$(STOCK_ENV) cargo test -p qemu-test --test stock -- --ignored --test-threads=1 $(TEST_ARGS) || rc=1; \
	$(STOCK_ENV) cargo test --no-fail-fast -p qemu-test --test rs_driver --test rs_features --test stress \
		--test buffer_format --test host_memory --test hint_savings -- \
		--test-threads=1 $(addprefix --skip ,$(STOCK_SKIP)) $(TEST_ARGS) || rc=1; \
	exit $$rc

# The fastest proof for CI: Debian's kernel loads the module built for it,
# follows an exact target, unloads, and goes through a real S3 suspend.
test-stock-quick: stock-kernel
	$(STOCK_ENV) cargo test -p qemu-test --test stock -- --ignored --test-threads=1 $(TEST_ARGS)

# `make bench` on the stock kernel: Debian's own virtio_balloon.ko against ours
# (the speed part unless BENCH_ARGS says otherwise, e.g. "--part all").
bench-stock: stock-kernel
	$(STOCK_ENV) cargo run -q -p qemu-test --release --bin bench -- $(or $(BENCH_ARGS),--part speed)

# `dkms install -k <kver>` of this tree in the stock root, checked.
test-stock-dkms: stock-kernel
	bash qemu-test/stock/stock-kernel.sh dkms

# The module under Debian's libvirt (bookworm-backports), with the test
# kernel: qemu-test/tests/libvirt.rs. libvirtd is started for the run and
# stopped after it (only if this target started it).
test-libvirt: setup
	$(MAKE) module
	bash qemu-test/libvirt/libvirtd.sh start
	@rc=0; VBRS_MODULE=$(TOP)/virtio_balloon_rs.ko \
		cargo test -p qemu-test --test libvirt -- --ignored --test-threads=1 $(TEST_ARGS) || rc=1; \
	bash qemu-test/libvirt/libvirtd.sh stop || rc=1; \
	exit $$rc

# --- arm64 guests ----------------------------------------------------------
#
# Cross-built arm64 test kernels (clang-19), one per page size, cached like
# the x86_64 one and keyed by architecture and page size
# (qemu-test/kernel-key.sh test arm64 <size>); the module and Debian's C
# driver of each, and every VM suite on them under qemu-system-aarch64. The
# harness reads the architecture from the kernel's .config. PAGE_SIZE picks
# one size (4k, 16k or 64k); without it the targets take all three.
ARM64_PAGE_SIZES := 4k 16k 64k
ARM64_SIZES = $(or $(PAGE_SIZE),$(ARM64_PAGE_SIZES))
arm64_kdir = $(shell bash $(TOP)/qemu-test/kernel-key.sh test arm64 $(1))
arm64_module = $(TOP)/build/arm64-$(1)/virtio_balloon_rs.ko
# The VM suites of arm64: all but libvirt's (its domain XML is x86_64's q35)
# and the stock Debian amd64 kernel's.
ARM64_SUITES = $(foreach t,$(filter-out libvirt stock,\
	$(basename $(notdir $(wildcard qemu-test/tests/*.rs)))),--test $(t))

.PHONY: arm64-kernel arm64-module test-arm64 vm-test-arm64 bench-arm64 check-page-size \
	print-arm64-image print-arm64-module print-arm64-c-module print-arm64-kdir

check-page-size:
	@case "$(PAGE_SIZE)" in 4k|16k|64k) ;; \
	*) echo "error: PAGE_SIZE=4k, 16k or 64k, not '$(PAGE_SIZE)'" >&2; exit 1 ;; esac

arm64-kernel:
	@for size in $(ARM64_SIZES); do bash qemu-test/setup.sh normal arm64 $$size || exit 1; done

# The module for one arm64 kernel ($$size in a shell loop), copied out of
# the tree: Kbuild keeps one set of objects, so the next build for another
# kernel cleans the tree, and its clean removes every *.ko below it, these
# copies too. Each target below therefore builds a size's module right
# before it uses it.
ARM64_MODULE_FOR_SIZE = kdir=$$(bash qemu-test/kernel-key.sh test arm64 $$size) && \
	$(MAKE) module KDIR=$$kdir && mkdir -p build/arm64-$$size && \
	cp virtio_balloon_rs.ko build/arm64-$$size/

arm64-module: $(VENDOR)/.stamp
	@for size in $(ARM64_SIZES); do $(ARM64_MODULE_FOR_SIZE) || exit 1; done

# The VM tests on each size's kernel with the module built for it, one size
# after the other; every size runs and the target fails if any failed.
# TEST_ARGS replaces the suite selection (e.g. TEST_ARGS="--test rs_driver").
ARM64_TESTS = VBRS_KDIR=$$kdir VBRS_MODULE=$(TOP)/build/arm64-$$size/virtio_balloon_rs.ko \
	cargo test --no-fail-fast -p qemu-test $(or $(TEST_ARGS),$(ARM64_SUITES)) \
	-- --test-threads=1

test-arm64: arm64-kernel $(VENDOR)/.stamp
	@rc=0; for size in $(ARM64_SIZES); do \
		echo "[make] VM tests on the arm64 $$size kernel"; \
		{ $(ARM64_MODULE_FOR_SIZE) && $(ARM64_TESTS); } || rc=1; \
	done; exit $$rc

# The same on modules already built (make arm64-module, for one size).
vm-test-arm64:
	@rc=0; for size in $(ARM64_SIZES); do \
		echo "[make] VM tests on the arm64 $$size kernel"; \
		kdir=$$(bash qemu-test/kernel-key.sh test arm64 $$size); \
		$(ARM64_TESTS) || rc=1; \
	done; exit $$rc

# `make bench` on each arm64 kernel: ours against the same kernel's C
# driver (speed, and host memory returned per backing), one run per size.
bench-arm64: arm64-kernel $(VENDOR)/.stamp
	@rc=0; for size in $(ARM64_SIZES); do \
		echo "[make] bench on the arm64 $$size kernel"; \
		{ $(ARM64_MODULE_FOR_SIZE) && \
		VBRS_KDIR=$$kdir VBRS_MODULE=$(TOP)/build/arm64-$$size/virtio_balloon_rs.ko \
			cargo run -q -p qemu-test --release --bin bench -- $(BENCH_ARGS); } || rc=1; \
	done; exit $$rc

# The arm64 debug kernel (KASAN generic, lockdep, kmemleak, fail_page_alloc:
# qemu-test/kconfig/debug.config on the arm64 fragments), 64 KiB pages
# unless PAGE_SIZE says, and the stress suite on it (TEST_ARGS replaces
# the selection) with the tests only a debug kernel runs.
ARM64_DEBUG_SIZE = $(or $(PAGE_SIZE),64k)
.PHONY: arm64-debug-kernel test-arm64-debug print-arm64-debug-kdir
arm64-debug-kernel:
	bash qemu-test/setup.sh debug arm64 $(ARM64_DEBUG_SIZE)

# Left out on the debug kernel: hot unplug and hot plug, whose native PCIe path
# (pciehp, no ACPI on virt) makes lockdep report the kernel's own
# pci_rescan_remove_lock / ctrl->reset_lock order (pciehp_probe against
# pciehp_ist; no frame of this module) and turns lockdep off for the rest
# of the run. Both run on the non-debug arm64 kernels.
ARM64_DEBUG_SKIP = hot_unplug_while_inflating_gives_every_page_back \
	hot_plugged_balloons_bind_follow_targets_and_unplug_cleanly

test-arm64-debug: arm64-debug-kernel $(VENDOR)/.stamp
	@size=$(ARM64_DEBUG_SIZE); kdir=$$(bash qemu-test/kernel-key.sh debug arm64 $$size); \
	$(MAKE) module KDIR=$$kdir && mkdir -p build/arm64-debug-$$size && \
	cp virtio_balloon_rs.ko build/arm64-debug-$$size/ && \
	VBRS_KDIR=$$kdir VBRS_MODULE=$(TOP)/build/arm64-debug-$$size/virtio_balloon_rs.ko \
		cargo test --no-fail-fast -p qemu-test $(or $(TEST_ARGS),--test stress) \
		-- --test-threads=1 --include-ignored $(addprefix --skip ,$(ARM64_DEBUG_SKIP))

print-arm64-debug-kdir:
	@bash qemu-test/kernel-key.sh debug arm64 $(ARM64_DEBUG_SIZE)

print-arm64-kdir: check-page-size
	@echo $(call arm64_kdir,$(PAGE_SIZE))

print-arm64-image: check-page-size
	@echo $(call arm64_kdir,$(PAGE_SIZE))/arch/arm64/boot/Image

print-arm64-module: check-page-size
	@echo $(call arm64_module,$(PAGE_SIZE))

print-arm64-c-module: check-page-size
	@echo $(call arm64_kdir,$(PAGE_SIZE))/drivers/virtio/virtio_balloon.ko

# --- Debian's arm64 kernels (stock, cross-built for) ---------------------------
#
# A distribution KDIR of another architecture than this machine's (Debian's
# arm64 headers on amd64): kbuild needs CROSS_COMPILE, the prefix of the
# kernel's own compiler (aarch64-linux-gnu-gcc-14), and a host compiler whose
# programs run here, its native sibling (gcc-14); this HOSTCC= comes after the
# distribution one above, and the later one wins.
ifneq ($(DISTRO_HEADERS),)
ifeq ($(KDIR_ARCH),arm64)
ifneq ($(shell uname -m),aarch64)
KMAKE += CROSS_COMPILE=$(shell echo '$(DISTRO_CC)' | sed -n 's/^\(.*-\)gcc.*/\1/p') \
	HOSTCC=$(shell echo '$(DISTRO_CC)' | sed 's/^.*-gcc/gcc/')
endif
endif
endif

# Debian's arm64 kernel of FLAVOUR (arm64-16k, or arm64 or cloud-arm64; Debian
# has no 64 KiB one) under qemu-system-aarch64 (TCG), with this module built
# for it by Debian's own rustc in the amd64 trixie root, cross
# (qemu-test/stock/stock-kernel.sh writes stock-<flavour>.mk).
FLAVOUR ?= arm64-16k
-include $(VBRS_CACHE)/stock-$(FLAVOUR).mk
STOCK_ARM64_ENV = VBRS_ARCH=arm64 VBRS_BZIMAGE=$(STOCK_ARM64_VMLINUZ) VBRS_MODULE=$(STOCK_ARM64_MODULE) \
	VBRS_KDIR=$(STOCK_ARM64_KDIR)
# As on amd64 (STOCK_SKIP), and the S3 test: QEMU's arm64 virt has no suspend to RAM (no ACPI S3, and
# QEMU 10.0's PSCI has no SYSTEM_SUSPEND: Debian's arm64 kernel offers only
# s2idle in /sys/power/mem_sleep).
STOCK_ARM64_SKIP = $(STOCK_SKIP) suspend_to_ram_and_wakeup_keep_the_target

.PHONY: stock-kernel-arm64 check-flavour check-stock-arm64 test-stock-arm64 vm-test-stock-arm64 \
	print-stock-arm64-image print-stock-arm64-module print-stock-arm64-c-module

check-flavour:
	@case "$(FLAVOUR)" in arm64 | *-arm64 | arm64-*) ;; \
	*) echo "error: FLAVOUR=arm64-16k, arm64 or cloud-arm64, not '$(FLAVOUR)'" >&2; exit 1 ;; esac

stock-kernel-arm64: check-flavour
	VBRS_STOCK_FLAVOUR=$(FLAVOUR) bash qemu-test/stock/stock-kernel.sh build

check-stock-arm64: check-flavour
	@if [ -z "$(STOCK_ARM64_VMLINUZ)" ] || [ ! -f "$(STOCK_ARM64_VMLINUZ)" ] || [ ! -f "$(STOCK_ARM64_MODULE)" ]; then \
		echo "error: no stock arm64 $(FLAVOUR) kernel or module: run 'make stock-kernel-arm64 FLAVOUR=$(FLAVOUR)'" >&2; \
		exit 1; \
	fi

print-stock-arm64-image: check-stock-arm64
	@echo $(STOCK_ARM64_VMLINUZ)

print-stock-arm64-module: check-stock-arm64
	@echo $(STOCK_ARM64_MODULE)

print-stock-arm64-c-module: check-stock-arm64
	@echo $(STOCK_ARM64_C_MODULE)

test-stock-arm64: stock-kernel-arm64
	$(MAKE) vm-test-stock-arm64

# tests/stock.rs (but its S3 test, see STOCK_ARM64_SKIP) and the core
# suite; both groups run, the target fails if either failed.
# TEST_ARGS replaces the second group's suites (e.g. the whole of
# vm-test-stock's: TEST_ARGS="--test rs_driver --test rs_features --test stress").
vm-test-stock-arm64: check-stock-arm64
	@rc=0; \
	$(STOCK_ARM64_ENV) cargo test -p qemu-test --test stock -- --ignored --test-threads=1 \
		$(addprefix --skip ,$(STOCK_ARM64_SKIP)) || rc=1; \
	$(STOCK_ARM64_ENV) cargo test --no-fail-fast -p qemu-test $(or $(TEST_ARGS),--test rs_driver) -- \
		--test-threads=1 $(addprefix --skip ,$(STOCK_ARM64_SKIP)) || rc=1; \
	exit $$rc

# --- Fault tests: a balloon host that misbehaves on purpose -------------------
#
# The balloon is a vhost-user device (QEMU's vhost-user-test-device-pci with
# virtio-id 5) served by qemu-test/fault-device (balloon-fault-device), which
# behaves as QEMU's balloon or breaks the rules on command. Its QEMU is
# trixie-backports' (>= 10.2), unpacked into the cache with its own libc
# (qemu-test/fault-qemu.sh), never installed into the machine.
.PHONY: fault-qemu print-fault-qemu fault-device print-fault-device test-faults

fault-qemu:
	@bash qemu-test/fault-qemu.sh >/dev/null

print-fault-qemu:
	@bash qemu-test/fault-qemu.sh

# A target directory of its own: the VM tests ask for the backend from
# inside `cargo test`, which holds the workspace's build directory lock.
FAULT_DEVICE_TARGET := $(TOP)/build/fault-device
FAULT_DEVICE := $(FAULT_DEVICE_TARGET)/release/balloon-fault-device

fault-device:
	@cargo build -q --release -p fault-device --target-dir $(FAULT_DEVICE_TARGET)

print-fault-device: fault-device
	@echo $(FAULT_DEVICE)

# The fault VM tests (qemu-test/tests/faults_vm.rs) on the x86_64 test
# kernel, or on the kernel KDIR= names (e.g. KDIR=$$(make -s
# print-debug-kdir), with the module built for it by `make module KDIR=...`).
test-faults: $(if $(filter $(KDIR_TEST),$(KDIR)),setup) fault-qemu fault-device
	$(MAKE) module
	VBRS_KDIR=$(KDIR) VBRS_MODULE=$(TOP)/virtio_balloon_rs.ko \
		VBRS_FAULT_QEMU=$$(bash qemu-test/fault-qemu.sh) VBRS_FAULT_DEVICE=$(FAULT_DEVICE) \
		cargo test --no-fail-fast -p qemu-test --test faults_vm -- --test-threads=1 --include-ignored $(TEST_ARGS)

# --- Everything --------------------------------------------------------------
#
# Every suite on every kernel, one after the other; each runs even if an
# earlier one failed, and the target fails if any did (about 2 hours cold on
# 2 cores; .ci/run runs the part that fits its 90 minutes, see "What CI runs
# and what make test-all runs" in docs/testing.md).
TEST_ALL_TARGETS = test test-arm64 test-debug test-arm64-debug test-stock test-stock-arm64 test-libvirt
.PHONY: test-all
test-all:
	@failed=""; for t in $(TEST_ALL_TARGETS); do \
		echo "[make] === $$t ==="; \
		$(MAKE) $$t TEST_ARGS= || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "[make] test-all: failed:$$failed" >&2; exit 1; fi; \
	echo "[make] test-all: every target passed"

