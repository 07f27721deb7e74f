#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The QEMU of the fault tests: Debian trixie-backports' qemu-system-x86
# (QEMU >= 10.2 has the user-creatable vhost-user-test-device-pci, which
# gives a vhost-user backend any virtio device id, here the balloon's 5).
# It needs trixie's libc, so it is never installed into the machine: the
# package and its whole dependency closure are fetched through a private apt
# state (apt_foreign, trixie + trixie-backports, amd64, an empty dpkg
# status), unpacked with `dpkg -x` into one root, and run through that
# root's own dynamic loader by a wrapper script.
#
#   fault-qemu.sh          prints the wrapper's path, building the root if missing
#
# Cached in $VBRS_CACHE/fault-qemu-<version>/ (the version is the key:
# VBRS_FAULT_QEMU_VERSION picks another one); a root is complete only once
# its wrapper exists, so an interrupted run starts over.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${VBRS_CACHE:-$HOME/.cache/virtio-balloon-rs}
version=${VBRS_FAULT_QEMU_VERSION:-1:11.1.3+ds-2~bpo13+1}
key=$(printf '%s' "$version" | tr ':~' '_+')
dir=$cache/fault-qemu-$key
wrapper=$dir/qemu-system-x86_64

say() { printf '[fault-qemu] %s\n' "$*" >&2; }
die() { printf '[fault-qemu] ERROR: %s\n' "$*" >&2; exit 1; }

if [ -x "$wrapper" ]; then
	echo "$wrapper"
	exit 0
fi

. "$here/apt-mirror.sh"
start=$(date +%s)
say "fetching qemu-system-x86 $version and its dependencies (trixie + trixie-backports)"
rm -rf "$dir"
mkdir -p "$dir"
state=$dir/apt
apt_foreign "$state" amd64 "trixie trixie-backports" apt-get update >/dev/null ||
	die "apt-get update of trixie and trixie-backports failed (is a Debian mirror in the machine's apt sources?)"
# Every package of the closure: with an empty dpkg status nothing counts as
# installed, so apt downloads the whole closure, trixie's libc included.
apt_foreign "$state" amd64 "trixie trixie-backports" apt-get install -y --download-only -t trixie-backports \
	--no-install-recommends "qemu-system-x86=$version" >"$dir/apt-install.log" 2>&1 ||
	die "apt-get install --download-only qemu-system-x86=$version failed: see $dir/apt-install.log"
root=$dir/root
mkdir -p "$root"
n=0
for deb in "$state"/archives/*.deb; do
	dpkg -x "$deb" "$root"
	n=$((n + 1))
done
[ "$n" -gt 0 ] || die "no package was downloaded"
say "unpacked $n packages into $root"

# Absolute symlinks would lead out of the root, to the machine's own files:
# point them inside it. The firmware: QEMU's compiled-in paths are
# /usr/share/qemu and /usr/share/seabios (the machine's bookworm SeaBIOS):
# the wrapper puts the root's two first with -L.
find "$root" -type l -lname '/*' | while read -r link; do
	target=$(readlink "$link")
	if [ -e "$root$target" ] || [ -L "$root$target" ]; then
		ln -sfn "$root$target" "$link"
	fi
done

loader=$(find "$root" -name 'ld-linux-x86-64.so.2' \( -type f -o -type l \) | head -n 1)
[ -n "$loader" ] || die "no ld-linux-x86-64.so.2 in the root (libc6 missing from the closure?)"
[ -x "$root/usr/bin/qemu-system-x86_64" ] || die "no usr/bin/qemu-system-x86_64 in the root"
libdirs=$(find "$root" \( -name '*.so' -o -name '*.so.[0-9]*' \) \( -type f -o -type l \) -printf '%h\n' |
	sort -u | grep -v '/qemu$' | paste -sd: -)
cat >"$wrapper.tmp" <<EOF
#!/bin/sh
# qemu-system-x86_64 $version from trixie-backports, run with its own libc
# (written by qemu-test/fault-qemu.sh).
QEMU_MODULE_DIR=$root/usr/lib/x86_64-linux-gnu/qemu
export QEMU_MODULE_DIR
exec $loader --library-path $libdirs \\
	$root/usr/bin/qemu-system-x86_64 -L $root/usr/share/qemu -L $root/usr/share/seabios "\$@"
EOF
chmod +x "$wrapper.tmp"
"$wrapper.tmp" --version >"$dir/version.txt" || die "the unpacked QEMU does not start: $wrapper.tmp --version"
"$wrapper.tmp" -device vhost-user-test-device-pci,help >"$dir/device-help.txt" 2>&1 ||
	die "this QEMU has no vhost-user-test-device-pci: $(cat "$dir/device-help.txt")"
rm -rf "$state/archives" "$state/lists"
mv "$wrapper.tmp" "$wrapper"
say "$(head -n 1 "$dir/version.txt") ready in $(($(date +%s) - start)) s: $wrapper"
echo "$wrapper"
