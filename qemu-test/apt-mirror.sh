# SPDX-License-Identifier: GPL-2.0
#
# Sourced by the set-up scripts: `debian_mirror` prints the Debian mirror the
# machine's own apt sources use, so no host name is ever written into the
# repository. It fails (status 1, nothing printed) when there is none.

debian_mirror() {
	local mirror="" f
	for f in /etc/apt/sources.list.d/debian.sources; do
		[ -f "$f" ] || continue
		mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
	done
	if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
		mirror=$(awk '/^deb / && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list)
	fi
	[ -n "$mirror" ] || return 1
	printf '%s\n' "$mirror"
}
