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

# apt_foreign STATE ARCH SUITES TOOL ARGS...: runs TOOL (apt-get or apt-cache)
# on ARCH's packages of the main component of SUITES (one suite, or several
# separated by spaces, e.g. "trixie trixie-backports": a backport's
# dependencies come from its release), with its lists and downloads in
# STATE and an empty dpkg status (nothing counts as installed);
# `apt_foreign STATE ARCH SUITES apt-get update` fetches the lists.
apt_foreign() {
	local state=$1 arch=$2 suites=$3 tool=$4 mirror suite
	shift 4
	if [ ! -f "$state/sources.list" ]; then
		mirror=$(debian_mirror) || return 1
		mkdir -p "$state/lists/partial" "$state/archives/partial"
		for suite in $suites; do
			printf 'deb [arch=%s signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
				"$arch" "$mirror" "$suite"
		done >"$state/sources.list"
	fi
	"$tool" -q -o APT::Architecture="$arch" -o APT::Architectures::="$arch" \
		-o Dir::State::Lists="$state/lists" -o Dir::Cache="$state" \
		-o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root \
		-o Dir::Etc::SourceList="$state/sources.list" -o Dir::Etc::SourceParts=/nonexistent "$@"
}
