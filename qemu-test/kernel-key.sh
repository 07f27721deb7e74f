#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Prints the cache directory of a test kernel build: $VBRS_CACHE/kbuild-<key>
# (`kernel-key.sh test`) or $VBRS_CACHE/kdebug-<key> (`kernel-key.sh debug`).
# The key hashes everything that built the kernel: the kernel package, the
# compilers' versions and the config fragments of this tree. setup.sh builds
# there and the Makefile (hence the VM tests) reads from there, so each work
# tree uses the kernel of its own fragments, and several kernels (one per
# fragment) can sit in one cache side by side.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VBRS_CACHE:-$HOME/.cache/virtio-balloon-rs}
kver_pkg=${VBRS_KERNEL_PKG:-linux-source-7.3}
fragment="$here/kernel.config"
case "${1:-test}" in
test)
	key=$( { echo "$kver_pkg"; rustc --version; gcc --version | head -1; cat "$fragment"; } | sha256sum | cut -c1-16)
	echo "$cache/kbuild-$key"
	;;
debug)
	key=$( { echo "$kver_pkg"; rustc --version; clang-19 --version | head -1; cat "$fragment" "$here/kernel.debug.config"; } | sha256sum | cut -c1-16)
	echo "$cache/kdebug-$key"
	;;
*) echo "usage: $0 [test|debug]" >&2; exit 2 ;;
esac
