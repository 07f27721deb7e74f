#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Names the cache directory of a test kernel build, and the config fragments
# that build it:
#
#   kernel-key.sh KIND [ARCH [PAGE_SIZE]]              the build directory
#   kernel-key.sh --fragments KIND [ARCH [PAGE_SIZE]]  the fragments, in order
#   kernel-key.sh --llvm KIND [ARCH [PAGE_SIZE]]       the LLVM= value ("" for gcc)
#
# KIND is test or debug; ARCH x86_64 (default) or arm64; PAGE_SIZE (arm64
# only) 4k, 16k or 64k (default 4k). The directory is
# $VBRS_CACHE/kbuild-<key> for the x86_64 test kernel (as before arm64
# came), else $VBRS_CACHE/k<kind>-<arch>[-<page size>]-<key>; the key hashes
# everything that built the kernel: the kernel package, the compilers'
# versions and the fragments. setup.sh builds there and the Makefile (hence
# the VM tests) reads from there, so each work tree uses the kernels of its
# own fragments, and several kernels can sit in one cache side by side.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VBRS_CACHE:-$HOME/.cache/virtio-balloon-rs}
kver_pkg=${VBRS_KERNEL_PKG:-linux-source-7.3}

what=dir
case "${1:-}" in
--fragments) what=fragments; shift ;;
--llvm) what=llvm; shift ;;
esac
kind=${1:-test}
arch=${2:-x86_64}
page=${3:-4k}
usage() { echo "usage: $0 [--fragments|--llvm] test|debug [x86_64|arm64 [4k|16k|64k]]" >&2; exit 2; }
case "$kind" in test | debug) ;; *) usage ;; esac
k=$here/kconfig
case "$arch" in
x86_64)
	fragments=("$k/common.config" "$k/x86_64.config")
	[ "$kind" = debug ] && fragments+=("$k/debug.config" "$k/x86_64-debug.config")
	# The x86_64 test kernel is built with gcc; KASAN with Rust needs clang.
	llvm=""
	[ "$kind" = debug ] && llvm=-19
	;;
arm64)
	case "$page" in 4k | 16k | 64k) ;; *) usage ;; esac
	fragments=("$k/common.config" "$k/arm64.config" "$k/arm64-$page.config")
	[ "$kind" = debug ] && fragments+=("$k/debug.config")
	# Rust on arm64 is built with clang (cross: no aarch64 gcc needed).
	llvm=-19
	;;
*) usage ;;
esac

case "$what" in
fragments) printf '%s\n' "${fragments[@]}"; exit 0 ;;
llvm) echo "$llvm"; exit 0 ;;
esac

if [ -n "$llvm" ]; then
	compiler=$(clang$llvm --version 2>/dev/null | head -1 || true)
else
	compiler=$(gcc --version | head -1)
fi
key=$( { echo "$kver_pkg"; rustc --version; echo "$compiler"; cat "${fragments[@]}"; } | sha256sum | cut -c1-16)
case "$kind-$arch" in
test-x86_64) echo "$cache/kbuild-$key" ;;
debug-x86_64) echo "$cache/kdebug-$key" ;;
*) echo "$cache/k$kind-$arch-$page-$key" ;;
esac
