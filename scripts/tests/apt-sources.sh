#!/usr/bin/env bash
# Tests for scripts/lib/apt-sources.sh and setup.sh's backports step: feeds
# them the sample apt roots in scripts/tests/apt-sources/ (the stock Debian
# image's deb822 file with comment lines, a classic sources.list, a mirror,
# both formats at once, a disabled stanza, and no usable entry) and checks
# which archive host set-up picks and what it writes. Prints one line per
# case; exits non-zero on the first wrong answer.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
scripts=$(dirname "$here")
# shellcheck source=scripts/lib/apt-sources.sh
. "$scripts/lib/apt-sources.sh"
samples=$here/apt-sources
work=$(mktemp -d /tmp/kt-apt-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0

fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

# expect_uri CASE URI: the bookworm archive host read from the sample.
expect_uri() {
	local files got
	mapfile -t files < <(apt_source_files "$samples/$1")
	got=$(apt_bookworm_uri "${files[@]}" || true)
	[ "$got" = "$2" ] || fail "$1: bookworm URI '$got', expected '$2'"
}

# expect_setup CASE RC WANT: setup.sh --backports-only on a copy of the
# sample; RC is its exit status; WANT is the URI it must write into
# kerntransport-backports.sources, "-" for no file written.
expect_setup() {
	local case=$1 rc=$2 want=$3 root=$work/$1 out got=0 written
	cp -a "$samples/$case" "$root"
	out=$(KT_APT_ROOT=$root "$scripts/setup.sh" --backports-only 2>&1) || got=$?
	[ "$got" = "$rc" ] || fail "$case: setup exit $got, expected $rc ($out)"
	written=$root/etc/apt/sources.list.d/kerntransport-backports.sources
	if [ "$want" = - ]; then
		[ ! -e "$written" ] || fail "$case: setup wrote $written"
	else
		[ -f "$written" ] || { fail "$case: setup wrote no backports entry ($out)"; return; }
		grep -qx "URIs: $want" "$written" || fail "$case: wrote $(grep URIs "$written"), expected $want"
		grep -qx "Suites: bookworm-backports" "$written" || fail "$case: no bookworm-backports suite"
		# Reading the result back finds the new suite: a second run adds nothing.
		out=$(KT_APT_ROOT=$root "$scripts/setup.sh" --backports-only 2>&1) ||
			fail "$case: second run failed: $out"
		[ "$out" = "setup: bookworm-backports already in apt's sources" ] ||
			fail "$case: second run said '$out'"
	fi
	if [ "$rc" != 0 ]; then
		[ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || fail "$case: error is not one line: $out"
		case "$out" in
		*"no active apt entry for bookworm"*) ;;
		*) fail "$case: unclear error: $out" ;;
		esac
	fi
	echo "ok: $case"
}

expect_uri stock http://deb.debian.org/debian
expect_uri classic http://ftp.de.debian.org/debian
expect_uri mirror https://mirror.example.org/debian-mirror
expect_uri both http://cdn.example.com/debian
expect_uri disabled http://enabled.example.com/debian
expect_uri none ""

# Entries of the deb822 stanza with a continuation line are all seen.
mapfile -t files < <(apt_source_files "$samples/mirror")
apt_has_suite bookworm-updates "${files[@]}" || fail "mirror: continuation line suite missed"
apt_has_suite cloud-sdk-bookworm "${files[@]}" || fail "mirror: .list entry missed"
# A commented-out one-line entry is not an entry.
mapfile -t files < <(apt_source_files "$samples/classic")
[ "$(apt_entries "${files[@]}" | grep -c snapshot || true)" = 0 ] || fail "classic: comment read as entry"

expect_setup stock 0 http://deb.debian.org/debian
expect_setup classic 0 http://ftp.de.debian.org/debian
expect_setup mirror 0 https://mirror.example.org/debian-mirror
expect_setup both 0 - # already has bookworm-backports
expect_setup disabled 0 http://enabled.example.com/debian
expect_setup none 1 -

if [ "$failures" -gt 0 ]; then
	echo "apt-sources: $failures failures"
	exit 1
fi
echo "apt-sources: all cases passed"
