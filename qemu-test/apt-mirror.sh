# SPDX-License-Identifier: GPL-2.0
#
# Sourced by the set-up scripts: `debian_mirror` prints the Debian mirror the
# machine's own apt sources use, so no host name is ever written into the
# repository. It fails (status 1, nothing printed) when there is none.
# `apt_foreign` asks apt about another architecture's packages through a
# state of its own, so the machine's apt never gains a foreign architecture.

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

# apt_foreign STATE ARCH SUITE TOOL ARGS...: runs TOOL (apt-get or apt-cache)
# on ARCH's packages of SUITE main only, with its lists and downloads in
# STATE; `apt_foreign STATE ARCH SUITE apt-get update` fetches the lists.
apt_foreign() {
	local state=$1 arch=$2 suite=$3 tool=$4 mirror
	shift 4
	if [ ! -f "$state/sources.list" ]; then
		mirror=$(debian_mirror) || return 1
		mkdir -p "$state/lists/partial" "$state/archives/partial"
		printf 'deb [arch=%s signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
			"$arch" "$mirror" "$suite" >"$state/sources.list"
	fi
	"$tool" -q -o APT::Architecture="$arch" -o APT::Architectures::="$arch" \
		-o Dir::State::Lists="$state/lists" -o Dir::Cache="$state" \
		-o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root \
		-o Dir::Etc::SourceList="$state/sources.list" -o Dir::Etc::SourceParts=/nonexistent "$@"
}
