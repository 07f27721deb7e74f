#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Prepares the stock Debian kernel the VM suite also runs on, and builds this
# module for it the way a Debian user would:
#   - a trixie root (debootstrap --variant=minbase) with Debian's own rustc,
#     rust-src, bindgen, gcc-14, pahole and dkms, plus the kernel's
#     linux-headers-<kver> and linux-source-X.Y from trixie-backports;
#   - Debian's unmodified vmlinuz (linux-binary-<kver>), copied out;
#   - in the root: `make KDIR=/usr/src/linux-headers-<kver>`, which prepares
#     the Rust metadata the headers lack, builds the module and checks its Rust
#     symbols against the kernel's Module.symvers (distro/).
# Everything lives in $VBRS_CACHE/stock-<key>, the key hashing the Debian
# package versions and this script; $VBRS_CACHE/stock.mk says where.
#
# Debian's arm64 kernels (VBRS_STOCK_KVER=...-arm64, ...-arm64-16k,
# ...-cloud-arm64, or VBRS_STOCK_FLAVOUR=arm64-16k) are cross-built for: the
# root stays amd64, with Debian's aarch64-linux-gnu-gcc-14 added; the arm64
# linux-headers, linux-binary and linux-modules packages are only unpacked
# (their programs cannot run here; the .config, Module.symvers, kernel.release
# and the Image are all that is needed). $VBRS_CACHE/stock-<flavour>.mk says
# where those are.
#
#   stock-kernel.sh [build|dkms|shell]
#     build  (default) the above; the module is rebuilt from the tree each time
#     dkms   `dkms install -k <kver>` of this tree in the root, then checks it
#            (amd64 only)
#     shell  a shell in the root, with /proc and /dev mounted
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cache=${VBRS_CACHE:-$HOME/.cache/virtio-balloon-rs}
# The kernel ABI of the default; a flavour alone picks that ABI's kernel.
stock_abi=7.3.4+deb13
kver=${VBRS_STOCK_KVER:-$stock_abi-${VBRS_STOCK_FLAVOUR:-cloud-amd64}}
jobs=${JOBS:-$(nproc)}
mode=${1:-build}
release_suite=trixie
packages="rustc rust-src bindgen gcc-14 make flex bison bc libelf-dev libssl-dev python3
	libclang-19-dev clang-19 dwarves kmod dkms openssl xz-utils rsync"
bpo_packages="linux-headers-$kver linux-source-${kver%%.[0-9]+*}"

say() { printf '[stock] %s\n' "$*"; }
die() { printf '[stock] ERROR: %s\n' "$*" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then
	# debootstrap and chroot need root.
	exec sudo VBRS_CACHE="$cache" VBRS_STOCK_KVER="$kver" JOBS="$jobs" bash "$0" "$@"
fi
case $kver in
*-amd64) arch=amd64 ;;
*-arm64 | *-arm64-*) arch=arm64 ;;
*) die "VBRS_STOCK_KVER=$kver: expected a Debian amd64 or arm64 kernel (...-cloud-amd64, ...-arm64-16k, ...-cloud-arm64)" ;;
esac
flavour=${kver#*+deb[0-9]*-} # arm64-16k: names stock-<flavour>.mk
series=${kver%%.[0-9]+*}
# arm64: Debian's cross compiler of the same gcc-14 the kernel was built
# with (its .config says aarch64-linux-gnu-gcc-14) and its libc (without
# one CC_CAN_LINK drops out of the config), and the 32-bit ARM compiler of
# the compat vDSO (without one COMPAT_VDSO drops out), into the amd64 root;
# of the kernel packages only the source is installed there.
cross_packages="gcc-14-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf"
arm64_debs="linux-headers-$kver linux-binary-$kver linux-modules-$kver"
# debootstrap from bookworm-backports, the one proven here to make a trixie
# root (`make stock-kernel` runs `make setup` first, which adds that suite);
# bookworm's own is the fallback. A fresh machine has neither.
if ! command -v debootstrap >/dev/null; then
	say "installing debootstrap"
	env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports debootstrap ||
		env DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
	command -v debootstrap >/dev/null || die "debootstrap did not install (apt-get install debootstrap)"
fi

. "$top/qemu-test/apt-mirror.sh"
mirror=$(debian_mirror) || die "cannot find the Debian mirror in the machine's apt sources"

# The arm64 packages come through an apt state of their own (arm64 lists of
# trixie-backports main only, as setup.sh does for busybox), so neither the
# machine's apt nor the root gains a foreign architecture.
apt_state=$cache/apt-arm64-$release_suite-backports
apt_arm64() {
	apt_foreign "$apt_state" arm64 "$release_suite-backports" "$@"
}
apt_arm64_update() {
	rm -f "$apt_state/sources.list"
	apt_arm64 apt-get update >/dev/null
}

# The host side of an arm64 guest (QEMU for aarch64, the cross gcc and libc
# of the static guest helpers, Debian's arm64 busybox-static): what
# `setup.sh tools arm64` installs, without building an arm64 test kernel.
if [ "$arch" = arm64 ]; then
	VBRS_CACHE="$cache" bash "$top/qemu-test/setup.sh" tools arm64
fi

# The key: the kernel packages' versions as the machine's apt sees them
# (setup.sh adds trixie-backports), the package lists and the part of this
# script that makes the root (sections 0 and 1, or 0 and 1a for arm64); the module is
# rebuilt every time.
pkg_version() {
	apt-cache show "$1" 2>/dev/null | awk '/^Version:/ { print $2; exit }'
}
if [ "$arch" = amd64 ]; then
	image_version=$(pkg_version "linux-binary-$kver")
	[ -n "$image_version" ] || die "apt knows no linux-binary-$kver: run 'make setup' (it adds trixie-backports) or apt-get update"
	key=$( { echo "$kver $image_version $release_suite"; echo $packages $bpo_packages;
		sed -n -e '/^# --- 0\. bootstrapping a root/,/^# --- end of bootstrapping/p' \
			-e '/^# --- 1\. the root/,/^# --- end of the root/p' "$0"; } |
		sha256sum | cut -c1-16)
else
	[ -f "$apt_state/sources.list" ] || apt_arm64_update
	image_version=$(apt_arm64 apt-cache show "linux-binary-$kver:arm64" 2>/dev/null | awk '/^Version:/ { print $2; exit }' || true)
	if [ -z "$image_version" ]; then
		apt_arm64_update
		image_version=$(apt_arm64 apt-cache show "linux-binary-$kver:arm64" 2>/dev/null | awk '/^Version:/ { print $2; exit }' || true)
	fi
	[ -n "$image_version" ] || die "$release_suite-backports has no linux-binary-$kver for arm64"
	# The source is architecture-independent and must be the same upload.
	source_version=$(pkg_version "linux-source-$series")
	[ "$source_version" = "$image_version" ] ||
		die "linux-source-$series is '${source_version:-unknown to apt}', linux-binary-$kver is $image_version: run 'make setup' or apt-get update"
	key=$( { echo "$kver $image_version $release_suite arm64"; echo $packages $cross_packages linux-source-$series $arm64_debs;
		sed -n -e '/^# --- 0\. bootstrapping a root/,/^# --- end of bootstrapping/p' \
			-e '/^# --- 1a\. the arm64 root/,/^# --- end of the arm64 root/p' "$0"; } |
		sha256sum | cut -c1-16)
fi
dir=$cache/stock-$key
root=$dir/root
mkdir -p "$dir"

mounted=()
unmount_all() {
	local m
	for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
	mounted=()
}
trap unmount_all EXIT
mount_root() {
	local m
	for m in proc dev sys; do
		mountpoint -q "$root/$m" && continue
		case $m in
		proc) mount -t proc proc "$root/proc" ;;
		sys) mount -t sysfs sysfs "$root/sys" ;;
		dev) mount --bind /dev "$root/dev" ;;
		esac
		mounted+=("$root/$m")
	done
	cp /etc/resolv.conf "$root/etc/resolv.conf"
}
in_root() {
	chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
		DEBIAN_FRONTEND=noninteractive JOBS="$jobs" "$@"
}

# --- 0. bootstrapping a root ------------------------------------------------------
# A minimal trixie root with $packages, its release's backports in its apt
# sources, no daemon starting inside it, /proc, /dev and /sys mounted and
# its package lists fresh. Hashed into both roots' keys.
bootstrap_root() {
	say "debootstrap --variant=minbase $release_suite into $root (about a minute)"
	rm -rf "$root"
	debootstrap --variant=minbase --include="$(echo $packages | tr ' ' ,)" \
		"$release_suite" "$root" "$mirror"
	cat >"$root/etc/apt/sources.list.d/backports.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $release_suite-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	# No daemons start inside the root.
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod +x "$root/usr/sbin/policy-rc.d"
	mount_root
	in_root apt-get update -q
}
# --- end of bootstrapping

# --- 1a. the arm64 root ----------------------------------------------------------
if [ "$arch" = arm64 ] && [ ! -f "$dir/.root-done" ]; then
	bootstrap_root
	in_root apt-get install -y -q --no-install-recommends $cross_packages
	in_root apt-get install -y -q --no-install-recommends -t "$release_suite-backports" "linux-source-$series"
	apt_arm64_update
	rm -rf "$dir/debs" && mkdir -p "$dir/debs"
	(cd "$dir/debs" && apt_arm64 apt-get download $(printf '%s:arm64 ' $arm64_debs))
	for deb in $arm64_debs; do
		version=$(dpkg-deb -f "$dir"/debs/"$deb"_*_arm64.deb Version)
		[ "$version" = "$image_version" ] || die "$deb is $version, not $image_version"
	done
	# The headers where the amd64 flow has them, only unpacked: of them the
	# build reads .config, Module.symvers and include/config/kernel.release.
	dpkg -x "$dir"/debs/linux-headers-"$kver"_*_arm64.deb "$root"
	rm -rf "$dir/image"
	dpkg -x "$dir"/debs/linux-binary-"$kver"_*_arm64.deb "$dir/image"
	[ -f "$dir/image/usr/lib/modules/$kver/vmlinuz" ] || die "linux-binary-$kver has no vmlinuz"
	{ in_root dpkg-query -W rustc bindgen gcc-14 $cross_packages dwarves "linux-source-$series"
	  for deb in "$dir"/debs/*.deb; do dpkg-deb -f "$deb" Package Version Architecture | paste -sd' '; done
	} >"$dir/versions.txt"
	touch "$dir/.root-done"
fi
# --- end of the arm64 root

# --- 1. the root ---------------------------------------------------------------
if [ ! -f "$dir/.root-done" ]; then
	bootstrap_root
	in_root apt-get install -y -q --no-install-recommends -t "$release_suite-backports" $bpo_packages
	mkdir -p "$dir/debs"
	in_root sh -c "cd /tmp && apt-get download -q -t $release_suite-backports linux-binary-$kver"
	mv "$root"/tmp/linux-binary-"$kver"_*.deb "$dir/debs/"
	rm -rf "$dir/image"
	dpkg -x "$dir"/debs/linux-binary-"$kver"_*.deb "$dir/image"
	[ -f "$dir/image/usr/lib/modules/$kver/vmlinuz" ] || die "linux-binary-$kver has no vmlinuz"
	in_root dpkg-query -W rustc bindgen gcc-14 dwarves dkms "linux-headers-$kver" "linux-source-${kver%%.[0-9]+*}" \
		>"$dir/versions.txt"
	touch "$dir/.root-done"
fi
# --- end of the root
mount_root
vmlinuz=$dir/image/usr/lib/modules/$kver/vmlinuz
headers=/usr/src/linux-headers-$kver

# Debian's own C driver, for `make bench-stock` (ours against it).
c_module=$dir/virtio_balloon.ko
if [ ! -f "$c_module" ]; then
	say "fetching Debian's virtio_balloon.ko (linux-modules-$kver) for the benchmark"
	rm -rf "$dir/modules"
	if [ "$arch" = amd64 ]; then
		in_root sh -c "cd /tmp && apt-get download -q -t $release_suite-backports linux-modules-$kver"
		dpkg -x "$root"/tmp/linux-modules-"$kver"_*.deb "$dir/modules"
		rm -f "$root"/tmp/linux-modules-"$kver"_*.deb
	else
		dpkg -x "$dir"/debs/linux-modules-"$kver"_*_arm64.deb "$dir/modules"
	fi
	packed=$(find "$dir/modules" -name 'virtio_balloon.ko*' | head -1)
	[ -n "$packed" ] || die "linux-modules-$kver has no virtio_balloon.ko"
	case $packed in
	*.xz) xz -dc "$packed" >"$c_module.partial" ;;
	*.zst) zstd -qdc "$packed" >"$c_module.partial" ;;
	*) cp "$packed" "$c_module.partial" ;;
	esac
	mv "$c_module.partial" "$c_module"
	rm -rf "$dir/modules"
fi

# The tree as it is now (tracked and new files), with the vendored crates,
# copied to /build/src in the root; /build/src/build (the prepared kernel
# directory) is kept between runs.
copy_tree() {
	local dst=$1
	make -s -C "$top" "$top/build/vendor/.stamp"
	mkdir -p "$dst"
	find "$dst" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
	(cd "$top" && git ls-files -co --exclude-standard) | rsync -a --files-from=- "$top/" "$dst/"
	mkdir -p "$dst/build/vendor"
	rsync -a --delete "$top/build/vendor/" "$dst/build/vendor/"
}

case $mode in
build)
	copy_tree "$root/build/src"
	say "building the module for $kver in the root (make KDIR=$headers)"
	start=$(date +%s)
	in_root make -C /build/src KDIR="$headers" JOBS="$jobs"
	say "module built in $(($(date +%s) - start)) s"
	cp "$root/build/src/virtio_balloon_rs.ko" "$dir/virtio_balloon_rs.ko"
	# The arm64 kernels' names have a prefix of their own: the Makefile
	# includes stock.mk as well.
	if [ "$arch" = amd64 ]; then
		mk=$cache/stock.mk prefix=STOCK
	else
		mk=$cache/stock-$flavour.mk prefix=STOCK_ARM64
	fi
	cat >"$mk" <<ENV
${prefix}_DIR := $dir
${prefix}_ROOT := $root
${prefix}_KVER := $kver
${prefix}_VMLINUZ := $vmlinuz
${prefix}_MODULE := $dir/virtio_balloon_rs.ko
${prefix}_C_MODULE := $c_module
${prefix}_KDIR := $root/build/src/build/kdir-$kver
ENV
	cat "$dir/versions.txt"
	say "ready: $vmlinuz"
	say "       $dir/virtio_balloon_rs.ko"
	;;
dkms)
	# The arm64 headers are only unpacked: their scripts are arm64 programs
	# and dkms would run them.
	[ "$arch" = amd64 ] || die "dkms: only for the amd64 kernel (the arm64 headers' programs cannot run here)"
	# As a user would: the tree in /usr/src/<name>-<version>, `dkms add`,
	# `dkms install -k <kver>`; then the installed module must be there,
	# for this kernel, with every Rust symbol the kernel exports.
	name=$(sed -n 's/^PACKAGE_NAME="\(.*\)"$/\1/p' "$top/dkms.conf")
	version=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"$/\1/p' "$top/dkms.conf")
	[ -n "$name" ] && [ -n "$version" ] || die "dkms.conf has no PACKAGE_NAME or PACKAGE_VERSION"
	in_root sh -c "dkms remove -m $name -v $version --all >/dev/null 2>&1 || true"
	rm -rf "$root/usr/src/$name-$version"
	copy_tree "$root/usr/src/$name-$version"
	start=$(date +%s)
	in_root dkms add -m "$name" -v "$version"
	in_root dkms install -m "$name" -v "$version" -k "$kver"
	say "dkms install took $(($(date +%s) - start)) s"
	in_root dkms status -m "$name" -v "$version" -k "$kver" | tee "$dir/dkms-status.txt"
	grep -q ': installed' "$dir/dkms-status.txt" || die "dkms status does not say installed"
	installed=$(cd "$root" && find "lib/modules/$kver/updates" -name 'virtio_balloon_rs.ko*' 2>/dev/null | head -1)
	[ -n "$installed" ] || die "no virtio_balloon_rs.ko under /lib/modules/$kver/updates after dkms install"
	installed=/$installed
	say "installed: $installed"
	vermagic=$(in_root modinfo -F vermagic "$installed")
	case "$vermagic" in
	"$kver "*) ;;
	*) die "the installed module's vermagic is '$vermagic', not for $kver" ;;
	esac
	rm -f "$dir/dkms.ko"
	case $installed in
	*.xz) xz -dc "$root$installed" >"$dir/dkms.ko" ;;
	*.zst) zstd -qdc "$root$installed" >"$dir/dkms.ko" ;;
	*.gz) gzip -dc "$root$installed" >"$dir/dkms.ko" ;;
	*) cp "$root$installed" "$dir/dkms.ko" ;;
	esac
	bash "$top/distro/check-rust-symbols.sh" "$dir/dkms.ko" "$root$headers"
	say "dkms: $name $version installed for $kver and its Rust symbols match the kernel"
	;;
shell)
	in_root bash
	;;
*)
	die "usage: $0 [build|dkms|shell]"
	;;
esac
