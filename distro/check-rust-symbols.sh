#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Checks that every Rust symbol a module imports is exported by the kernel it
# was built for. Rust symbol names carry a hash of the exact compiler build
# (`_RNvNtNtCs2lKf6AS60Zg_4core...`): a module compiled by another rustc,
# even of the same version number, imports names the kernel does not have,
# and insmod would fail with "Unknown symbol". The hash does not depend on
# the target: Debian's amd64 and arm64 7.3.4 kernels export the same names,
# and its amd64 rustc cross-builds them for arm64. On a mismatch this says
# which rustc the kernel needs and removes the module.
#
#   check-rust-symbols.sh <module .ko> <kernel build dir>
set -euo pipefail

[ $# = 2 ] || { echo "usage: $0 <module.ko> <kernel build dir>" >&2; exit 2; }
module=$1
kdir=$2
symvers=$kdir/Module.symvers
[ -f "$module" ] || { echo "error: $module does not exist" >&2; exit 1; }
[ -f "$symvers" ] || { echo "error: $symvers does not exist" >&2; exit 1; }

missing=$(comm -23 <(nm -u "$module" | awk '$2 ~ /^_R/ { print $2 }' | sort -u) \
	<(awk '$2 ~ /^_R/ { print $2 }' "$symvers" | sort -u))
if [ -z "$missing" ]; then
	exit 0
fi
needed=$(sed -n 's/^CONFIG_RUSTC_VERSION_TEXT="\(.*\)"$/\1/p' "$kdir/.config" 2>/dev/null)
# rustc records itself in the objects' .comment section.
built_with=$(readelf -p .comment "$module" 2>/dev/null | sed -n 's/.*rustc version /rustc /p' | head -1)
count=$(printf '%s\n' "$missing" | wc -l)
{
	echo "error: $(basename "$module") imports $count Rust symbol(s) the kernel in $kdir does not export, e.g."
	printf '%s\n' "$missing" | head -3 | sed 's/^/         /'
	echo "       Rust symbol names carry a hash of the exact compiler build: this kernel was built"
	echo "       with '${needed:-an unknown rustc}', the module with '${built_with:-an unknown rustc}'."
	echo "       Build the module with the kernel's own rustc (for a Debian kernel: the rustc package"
	echo "       of the Debian release the kernel comes from, of any architecture: a cross build for"
	echo "       an arm64 kernel gets the same names), then run make again."
	echo "       $(basename "$module") was removed so that it is not loaded by mistake."
} >&2
rm -f "$module"
exit 1
