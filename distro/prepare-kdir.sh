#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Prepares a kernel build directory with Rust metadata for a distribution
# kernel whose headers package has none (Debian's linux-headers-* ship no
# rust/ directory): from the matching kernel source (Debian's linux-source-X.Y)
# and the headers' own .config, run `olddefconfig prepare rust/
# modules_prepare` with the kernel's compiler and KERNELRELEASE, check that the
# configuration did not change, and copy the headers' Module.symvers in.
#
#   prepare-kdir.sh <headers dir> <output dir>
#
# The source is $LINUX_SOURCE if set, else /usr/src/linux-source-X.Y (an
# unpacked tree) or /usr/src/linux-source-X.Y.tar.xz (unpacked once beside the
# output directory). Done once: a stamp records what the output was made from.
set -euo pipefail

say() { printf '[prepare-kdir] %s\n' "$*"; }
die() { printf '[prepare-kdir] ERROR: %s\n' "$*" >&2; exit 1; }

[ $# = 2 ] || die "usage: $0 <headers dir> <output dir>"
headers=$(cd "$1" && pwd)
out=$2
jobs=${JOBS:-$(nproc)}
config=$headers/.config

[ -f "$config" ] || die "$headers has no .config"
[ -f "$headers/Module.symvers" ] || die "$headers has no Module.symvers"
grep -qx 'CONFIG_RUST=y' "$config" || die "the kernel of $headers is built without CONFIG_RUST=y: it cannot load Rust modules"
release=$(cat "$headers/include/config/kernel.release" 2>/dev/null) ||
	die "$headers has no include/config/kernel.release"
version=${release%%[!0-9.]*}          # 7.3.4
series=$(echo "$version" | cut -d. -f1,2) # 7.3
kconfig() { sed -n "s/^CONFIG_$1=\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" "$config"; }
cc=$(kconfig CC_VERSION_TEXT | awk '{print $1}')
command -v "$cc" >/dev/null || die "the kernel was built with '$(kconfig CC_VERSION_TEXT)': install $cc"
# A kernel of another architecture than this machine's (Debian's arm64 one on
# amd64): kbuild needs ARCH and CROSS_COMPILE, the prefix of the kernel's own
# compiler (aarch64-linux-gnu-gcc-14 -> aarch64-linux-gnu-, so that the
# binutils match too), and a host compiler whose programs run here: the
# cross compiler's native sibling (gcc-14).
kargs=()
hostcc=$cc
if grep -qx 'CONFIG_ARM64=y' "$config"; then
	kargs=(ARCH=arm64)
	if [ "$(uname -m)" != aarch64 ]; then
		case $cc in
		*-gcc*) ;;
		*) die "an arm64 kernel built with '$cc' cannot be cross-built for here: its .config names no aarch64-linux-gnu- compiler" ;;
		esac
		kargs+=(CROSS_COMPILE="${cc%gcc*}")
		hostcc=gcc${cc##*-gcc}
		command -v "${cc%gcc*}ld" >/dev/null || die "no ${cc%gcc*}ld: install binutils-${cc%-gcc*}"
		command -v "$hostcc" >/dev/null || die "no $hostcc for kbuild's host programs: install $hostcc"
	fi
	# The 32-bit vDSO of a gcc-built kernel needs a 32-bit ARM compiler:
	# without CROSS_COMPILE_COMPAT, COMPAT_VDSO drops out of the config
	# (Debian builds with arm-linux-gnueabihf-, its .kernelvariables says).
	if grep -qx 'CONFIG_COMPAT_VDSO=y' "$config" && ! grep -qx 'CONFIG_CC_IS_CLANG=y' "$config"; then
		compat=$(sed -n 's/^override CROSS_COMPILE_COMPAT = //p' "$headers/.kernelvariables" 2>/dev/null)
		compat=${compat:-arm-linux-gnueabihf-}
		command -v "${compat}gcc" >/dev/null ||
			die "the kernel has a 32-bit vDSO (CONFIG_COMPAT_VDSO): install ${compat}gcc (Debian: gcc-${compat%-})"
		kargs+=(CROSS_COMPILE_COMPAT="$compat")
	fi
fi
kernel_rustc=$(kconfig RUSTC_VERSION_TEXT)
rustc_now=$(rustc --version 2>/dev/null) || die "no rustc: install the compiler the kernel was built with ($kernel_rustc)"
if [ "$rustc_now" != "$kernel_rustc" ]; then
	say "warning: the kernel was built with '$kernel_rustc', rustc here is '$rustc_now';"
	say "         the symbol check after the build tells whether the module can load"
fi

# --- the kernel source -----------------------------------------------------
out_parent=$(mkdir -p "$out" && cd "$out/.." && pwd)
out=$out_parent/$(basename "$out")
ksrc=${LINUX_SOURCE:-}
if [ -z "$ksrc" ]; then
	if [ -f "/usr/src/linux-source-$series/Makefile" ]; then
		ksrc=/usr/src/linux-source-$series
	elif [ -f "$out_parent/linux-source-$series/Makefile" ]; then
		ksrc=$out_parent/linux-source-$series
	elif [ -f "/usr/src/linux-source-$series.tar.xz" ]; then
		say "unpacking /usr/src/linux-source-$series.tar.xz into $out_parent"
		rm -rf "$out_parent/linux-source-$series.partial"
		mkdir -p "$out_parent/linux-source-$series.partial"
		tar -C "$out_parent/linux-source-$series.partial" -xf "/usr/src/linux-source-$series.tar.xz"
		mv "$out_parent/linux-source-$series.partial/linux-source-$series" "$out_parent/linux-source-$series"
		rmdir "$out_parent/linux-source-$series.partial"
		ksrc=$out_parent/linux-source-$series
	else
		die "no kernel source for $release: install linux-source-$series (Debian), or set LINUX_SOURCE=<unpacked tree>"
	fi
fi
src_version=$(make -s -C "$ksrc" kernelversion)
[ "$src_version" = "$version" ] ||
	die "the source in $ksrc is $src_version, the kernel is $release: install the linux-source package of the same version"

# --- prepare once ------------------------------------------------------------
stamp=$( { echo "$ksrc $src_version $release"; echo "$rustc_now"; "$cc" --version | head -1;
	cat "$config" "$headers/Module.symvers" "$0"; } | sha256sum | cut -c1-16)
if [ -f "$out/.vbrs-prepared" ] && [ "$(cat "$out/.vbrs-prepared")" = "$stamp" ]; then
	exit 0
fi
say "preparing Rust metadata for $release in $out (once; a few minutes)"
rm -f "$out/.vbrs-prepared"
cp "$config" "$out/.config"
kmake() { make -C "$ksrc" O="$out" "${kargs[@]}" CC="$cc" HOSTCC="$hostcc" KERNELRELEASE="$release" "$@"; }
kmake -s olddefconfig
# Options that need a tool the kernel's build machine had (pahole for BTF,
# for one) silently drop out here and change struct layouts: insist on the
# headers' configuration. OPENSSL_SUPPORTS_ML_DSA follows the local openssl.
changed=$(diff <(grep -v OPENSSL_SUPPORTS_ML_DSA "$config" | grep '^CONFIG_' | sort) \
	<(grep -v OPENSSL_SUPPORTS_ML_DSA "$out/.config" | grep '^CONFIG_' | sort) || true)
if [ -n "$changed" ]; then
	printf '%s\n' "$changed" >&2
	die "the configuration changed under olddefconfig (above: < headers, > here); a tool the kernel was built with is missing (pahole from dwarves for DEBUG_INFO_BTF, the right $cc, bindgen, libclang)"
fi
kmake -j"$jobs" prepare
kmake -j"$jobs" rust/
kmake -j"$jobs" modules_prepare
cp "$headers/Module.symvers" "$out/Module.symvers"
[ -f "$out/rust/libkernel.rmeta" ] || die "no rust/libkernel.rmeta in $out after the build"
echo "$stamp" >"$out/.vbrs-prepared"
say "ready: $out"
