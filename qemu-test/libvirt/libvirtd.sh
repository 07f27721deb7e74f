#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Starts or stops Debian's libvirt for `make test-libvirt` (there is no
# systemd here): `virtlogd -d`, then `libvirtd -d`. Installs the packages
# from bookworm-backports when missing. `stop` ends only the daemons `start`
# started (by the process ids it recorded); libvirtd may need SIGKILL after
# SIGTERM.
#
#   libvirtd.sh start|stop
set -euo pipefail

state=${VBRS_CACHE:-$HOME/.cache/virtio-balloon-rs}/libvirt-started
packages="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
say() { printf '[libvirt] %s\n' "$*"; }
die() { printf '[libvirt] ERROR: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
reachable() { virsh -c qemu:///system version >/dev/null 2>&1; }

# Waits up to 10 s for a process to exit.
gone() {
	local i
	for i in $(seq 100); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

case ${1:-} in
start)
	missing=0
	for p in $packages; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing=1
	done
	if [ "$missing" = 1 ]; then
		say "installing $packages from bookworm-backports"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			-t bookworm-backports $packages
	fi
	if reachable; then
		say "libvirtd already answers"
		exit 0
	fi
	mkdir -p "$(dirname "$state")"
	: >"$state"
	for daemon in virtlogd libvirtd; do
		pidfile=/run/$daemon.pid
		if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
			continue
		fi
		as_root "$daemon" -d
		for _ in $(seq 100); do [ -s "$pidfile" ] && break; sleep 0.1; done
		[ -s "$pidfile" ] || die "$daemon -d wrote no $pidfile"
		echo "$daemon $(cat "$pidfile")" >>"$state"
		say "started $daemon (pid $(cat "$pidfile"))"
	done
	for _ in $(seq 300); do reachable && break; sleep 0.1; done
	reachable || die "libvirtd started but virsh -c qemu:///system does not answer"
	virsh -c qemu:///system version
	;;
stop)
	[ -f "$state" ] || exit 0
	# libvirtd first, then virtlogd: the reverse of start.
	tac "$state" | while read -r daemon pid; do
		kill -0 "$pid" 2>/dev/null || continue
		as_root kill -TERM "$pid" || true
		if ! gone "$pid"; then
			say "$daemon ($pid) ignored SIGTERM: SIGKILL"
			as_root kill -KILL "$pid" || true
			gone "$pid" || die "$daemon ($pid) does not exit"
		fi
		say "stopped $daemon ($pid)"
	done
	rm -f "$state"
	;;
*)
	die "usage: $0 start|stop"
	;;
esac
