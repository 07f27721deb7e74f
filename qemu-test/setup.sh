#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Idempotent set-up of everything the build and the VM tests need:
# apt packages (with the two backports suites), the Rust library source,
# bindgen, the Debian kernel source and a Rust-enabled test kernel.
# Every slow artifact is cached outside the clone, under $VBRS_CACHE,
# keyed by what built it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cache=${VBRS_CACHE:-$HOME/.cache/virtio-balloon-rs}
kver_pkg=${VBRS_KERNEL_PKG:-linux-source-7.3}
jobs=${JOBS:-$(nproc)}
# `setup.sh` builds the test kernel; `setup.sh debug` the debug kernel;
# `setup.sh normal|debug arm64 4k|16k|64k` those of arm64 at a page size;
# `setup.sh tools [arm64]` everything but a kernel.
mode=${1:-normal}
arch=${2:-x86_64}
page=${3:-4k}
case "$mode-$arch" in
normal-x86_64 | debug-x86_64 | normal-arm64 | debug-arm64 | tools-x86_64 | tools-arm64) ;;
*) echo "usage: $0 [normal|debug|tools] [x86_64|arm64 [4k|16k|64k]]" >&2; exit 2 ;;
esac
case "$page" in 4k | 16k | 64k) ;; *) echo "$0: page size $page: expected 4k, 16k or 64k" >&2; exit 2 ;; esac
mkdir -p "$cache"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# --- 1. apt packages ----------------------------------------------------------
apt_sources=/etc/apt/sources.list.d/virtio-balloon-rs-backports.sources
packages_base="build-essential flex bison libelf-dev cpio kmod rsync busybox-static bc libssl-dev xz-utils"
packages_bpo="clang-19 libclang-19-dev lld-19 llvm-19 qemu-system-x86"
if [ "$arch" = arm64 ]; then
	# The guest helpers are static arm64 binaries (gcc's cross compiler and
	# libc); QEMU of the same version as the x86 one.
	packages_base="$packages_base gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
	packages_bpo="$packages_bpo qemu-system-arm"
fi

need_apt=0
for p in $packages_base $packages_bpo; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt=1
done
if [ ! -f "$apt_sources" ]; then
	# Read the mirror from the machine's own apt configuration; never hard-code a host.
	. "$here/apt-mirror.sh"
	mirror=$(debian_mirror) || die "cannot find the Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
	say "adding bookworm-backports and trixie-backports from $mirror"
	as_root tee "$apt_sources" >/dev/null <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	need_apt=1
	as_root rm -f "$cache/.apt-updated"
fi
if [ "$need_apt" = 1 ]; then
	say "installing apt packages"
	as_root apt-get update -q
	touch "$cache/.apt-updated"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $packages_base
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports $packages_bpo
fi
export LIBCLANG_PATH=/usr/lib/llvm-19/lib

# --- 2. Rust library source matching rustc ------------------------------------
rustc_ver=$(rustc --version | awk '{print $2}')
rust_lib_src=""
sysroot=$(rustc --print sysroot)
if [ -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
	rust_lib_src="$sysroot/lib/rustlib/src/rust/library"
elif timeout 180 rustup component add rust-src >/dev/null 2>&1 && [ -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
	rust_lib_src="$sysroot/lib/rustlib/src/rust/library"
else
	dst="$cache/rust-src-$rustc_ver"
	if [ ! -d "$dst/library/core" ]; then
		say "fetching Debian's rust-src for rustc $rustc_ver"
		[ -f "$cache/.apt-updated" ] || { as_root apt-get update -q; touch "$cache/.apt-updated"; }
		ver=$(apt-cache madison rust-src | awk -F'|' '{gsub(/ /, "", $2); print $2}' |
			grep -E "^${rustc_ver}\+|^${rustc_ver}-|^${rustc_ver}~" | head -1 || true)
		[ -n "$ver" ] || die "no Debian rust-src package matches rustc $rustc_ver (apt-cache madison rust-src)"
		tmp=$(mktemp -d)
		(cd "$tmp" && apt-get download -q "rust-src=$ver")
		dpkg -x "$tmp"/rust-src_*.deb "$tmp/x"
		lib=$(find "$tmp/x/usr/src" -maxdepth 3 -type d -name library | head -1)
		[ -n "$lib" ] || die "Debian rust-src $ver has no library directory"
		rm -rf "$dst"; mkdir -p "$dst"
		mv "$lib" "$dst/library"
		rm -rf "$tmp"
	fi
	rust_lib_src="$dst/library"
fi
export RUST_LIB_SRC="$rust_lib_src"

# --- 3. bindgen -----------------------------------------------------------------
bindgen_dir="$cache/bindgen-0.73.2"
if [ ! -x "$bindgen_dir/bin/bindgen" ]; then
	say "installing bindgen-cli 0.73.2 (cargo install --locked)"
	cargo install --locked --root "$bindgen_dir" bindgen-cli@0.73.2
fi
export PATH="$bindgen_dir/bin:$PATH"

# --- 4. kernel source -----------------------------------------------------------
src_root="$cache/src"
if [ ! -f "$src_root/.done-$kver_pkg" ]; then
	say "fetching Debian $kver_pkg"
	[ -f "$cache/.apt-updated" ] || { as_root apt-get update -q; touch "$cache/.apt-updated"; }
	tmp=$(mktemp -d)
	(cd "$tmp" && apt-get download -q -t trixie-backports "$kver_pkg")
	dpkg -x "$tmp"/"$kver_pkg"_*.deb "$tmp/x"
	tarball=$(find "$tmp/x/usr/src" -name 'linux-source-*.tar.*' | head -1)
	[ -n "$tarball" ] || die "$kver_pkg has no source tarball"
	rm -rf "$src_root"; mkdir -p "$src_root"
	say "unpacking $(basename "$tarball")"
	tar -C "$src_root" -xf "$tarball"
	rm -rf "$tmp"
	touch "$src_root/.done-$kver_pkg"
fi
ksrc=$(find "$src_root" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -1)
[ -n "$ksrc" ] || die "no kernel tree under $src_root"

# --- 4b. arm64's static busybox ------------------------------------------------
# Debian's busybox-static for arm64, unpacked into the cache: apt is asked
# through a state of its own (arm64 lists of bookworm main only), so the
# machine's apt never gains a foreign architecture.
if [ "$arch" = arm64 ]; then
	bb_dir="$cache/busybox-arm64"
	if [ ! -x "$bb_dir/bin/busybox" ]; then
		say "fetching Debian's busybox-static for arm64"
		. "$here/apt-mirror.sh"
		apt_state="$cache/apt-arm64"
		apt_foreign "$apt_state" arm64 bookworm apt-get update ||
			die "cannot read bookworm's arm64 lists (is the mirror in the machine's apt sources?)"
		tmp=$(mktemp -d)
		(cd "$tmp" && apt_foreign "$apt_state" arm64 bookworm apt-get download busybox-static:arm64)
		rm -rf "$bb_dir.partial"
		dpkg -x "$tmp"/busybox-static_*_arm64.deb "$bb_dir.partial"
		rm -rf "$tmp"
		[ -x "$bb_dir.partial/bin/busybox" ] || die "busybox-static:arm64 has no /bin/busybox"
		rm -rf "$bb_dir"; mv "$bb_dir.partial" "$bb_dir"
	fi
fi

# --- 5. the test kernels ---------------------------------------------------------
# Reads a config fragment (NAME=y|m|n|value per line, # comments) into
# scripts/config arguments, in the array `args`.
fragment_args() {
	local line name val
	args=()
	while read -r line; do
		line=${line%%#*}; line=$(echo "$line" | xargs)
		[ -n "$line" ] || continue
		name=${line%%=*}; val=${line#*=}
		case "$val" in
		y) args+=(--enable "$name") ;;
		m) args+=(--module "$name") ;;
		n) args+=(--disable "$name") ;;
		*) args+=(--set-val "$name" "$val") ;;
		esac
	done <"$1"
}

# Says which lines of a fragment did not land in a .config; fails if any.
verify_fragment() {
	local config=$1 fragment=$2 line name val bad=0
	while read -r line; do
		line=${line%%#*}; line=$(echo "$line" | xargs)
		[ -n "$line" ] || continue
		name=${line%%=*}; val=${line#*=}
		if [ "$val" = n ]; then
			grep -q "^CONFIG_$name=" "$config" && { say "option $name should be off ($fragment)"; bad=1; }
		else
			grep -qx "CONFIG_$name=$val" "$config" || { say "option $name=$val did not land ($fragment)"; bad=1; }
		fi
	done <"$fragment"
	return "$bad"
}

# build_kernel WHAT DIR "MAKE ARGS" IMAGE FRAGMENT...: tinyconfig, then
# each fragment in order (applied twice: some options only appear once their
# dependencies are set), verified line by line, then IMAGE and modules.
build_kernel() {
	local what=$1 dir=$2 margs=$3 image=$4 f
	shift 4
	# shellcheck disable=SC2086 # margs is a word list, e.g. LLVM=-19
	kmake() { make -C "$ksrc" O="$dir" RUST_LIB_SRC="$RUST_LIB_SRC" $margs "$@"; }
	mkdir -p "$dir"
	if [ ! -f "$dir/.config-verified" ]; then
		say "configuring the $what in $dir"
		kmake -s tinyconfig
		for _ in 1 2; do
			for f in "$@"; do
				fragment_args "$f"
				"$ksrc/scripts/config" --file "$dir/.config" "${args[@]}"
			done
			kmake -s olddefconfig
		done
		kmake -s rustavailable || die "the kernel does not accept this Rust toolchain (make rustavailable)"
		local bad=0
		for f in "$@"; do verify_fragment "$dir/.config" "$f" || bad=1; done
		[ "$bad" = 0 ] || die "a kernel config fragment did not apply (see above)"
		touch "$dir/.config-verified"
	fi
	local stale=0
	[ -f "$dir/.built" ] || stale=1
	for f in "$@"; do [ "$f" -nt "$dir/.built" ] && stale=1; done
	if [ "$stale" = 1 ]; then
		say "building the $what with -j$jobs"
		kmake -j"$jobs" "$image" modules
		touch "$dir/.built"
	fi
}

# The cache directory and the fragments come from kernel-key.sh, which the
# Makefile also asks: a changed fragment gets a new directory (a cold
# build), an unchanged one finds its build (warm). Builds for other keys are
# left alone: other work trees or branches of this repository may be using
# them (remove unused ones by hand, `rm -rf $VBRS_CACHE/k*-<key>`).
kind=test
[ "$mode" = debug ] && kind=debug
key_args=("$kind" "$arch" "$page")
kdir=$(bash "$here/kernel-key.sh" "${key_args[@]}")
mapfile -t fragments < <(bash "$here/kernel-key.sh" --fragments "${key_args[@]}")
llvm=$(bash "$here/kernel-key.sh" --llvm "${key_args[@]}")
margs=""
[ -n "$llvm" ] && margs="LLVM=$llvm"
if [ -n "$llvm" ]; then
	command -v "clang$llvm" >/dev/null || die "clang$llvm is missing (bookworm-backports)"
fi
case "$arch" in
x86_64) image=bzImage; image_path=arch/x86/boot/bzImage ;;
arm64) image=Image; image_path=arch/arm64/boot/Image; margs="$margs ARCH=arm64" ;;
esac
case "$kind-$arch" in
test-x86_64) what="test kernel (about 5 minutes on 2 cores)" ;;
debug-x86_64) what="debug kernel (clang-19, KASAN; about 10 minutes on 2 cores)" ;;
test-arm64) what="arm64 $page test kernel (clang-19)" ;;
debug-arm64) what="arm64 $page debug kernel (clang-19, KASAN)" ;;
esac
if [ "$mode" != tools ]; then
	build_kernel "$what" "$kdir" "$margs" "$image" "${fragments[@]}"
fi

# Record where the tools are, for the Makefile (the kernel build trees it
# finds with kernel-key.sh). Not env.mk: that file, with one KDIR_TEST for the
# whole cache, is what earlier versions of this script wrote and read.
cat >"$cache/tools.mk" <<ENV
KSRC := $ksrc
RUST_LIB_SRC := $RUST_LIB_SRC
LIBCLANG_PATH := $LIBCLANG_PATH
BINDGEN_DIR := $bindgen_dir/bin
ENV
if [ "$mode" = tools ]; then
	say "ready: the tools and the kernel source $ksrc"
else
	say "ready: $kdir/$image_path"
fi
