#!/usr/bin/env bash
# The fresh-machine check: builds a minimal Debian bookworm root with
# debootstrap, gives it the apt sources of Debian's stock image (the deb822
# debian.sources, comment lines included, not debootstrap's one-line
# default), puts a clean clone of this repository's HEAD in it, and runs the
# README's two commands (`make demo`, `make test`) inside a chroot with
# /dev (including /dev/kvm), /proc and /sys, printing each command's result
# and time. The Rust toolchain, the one prerequisite the README names, is the
# host's, mounted read-only; crates come from crates.io as on any machine.
# Owns the scratch root and its mounts; never touches the host's packages.
#
# Usage: scripts/fresh-machine.sh [--keep] [--no-base-cache] [--only demo|test] [DIR]
#   DIR      where the root goes (default /var/tmp/kt-fresh-machine; it is
#            deleted first, and afterwards unless --keep)
#   --keep   keep the root (and its cache) after the run
#   --only   run just one of the two commands
#   --no-base-cache  debootstrap even if a base root from the last week is
#            cached in $KT_CACHE
# Each command's full output goes to DIR/root/<command>.log; its last lines
# (KT_FRESH_TAIL, default 25) are printed with its result and time; a
# failed command's log and the logs its tests left in the root's /tmp are
# copied to DIR.logs/<command>/ before the root is deleted.
# Needs root. Takes about as long as a cold `make demo` plus `make test`
# (their caches start empty inside the root) plus a few minutes of
# debootstrap.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=scripts/lib/apt-sources.sh
. "$here/lib/apt-sources.sh"

keep=0
only=
base_cache=1
dir=/var/tmp/kt-fresh-machine
while [ $# -gt 0 ]; do
	case "$1" in
	--keep) keep=1 ;;
	--no-base-cache) base_cache=0 ;;
	--only)
		only=${2:-}
		case "$only" in demo | test) ;; *) echo "fresh-machine: --only takes demo or test" >&2; exit 2 ;; esac
		shift
		;;
	-h | --help)
		sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	-*) echo "fresh-machine: unknown option $1 (see --help)" >&2; exit 2 ;;
	*) dir=$1 ;;
	esac
	shift
done

say() { printf 'fresh-machine: %s\n' "$*"; }
die() { say "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mounts)"
command -v debootstrap >/dev/null || die "debootstrap missing (run scripts/setup.sh)"
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
[ -x "$cargo_bin/rustup" ] && [ -d "$rustup_home" ] ||
	die "no Rust toolchain at $cargo_bin and $rustup_home (the README's one prerequisite)"

mapfile -t files < <(apt_source_files)
mirror=$(apt_bookworm_uri "${files[@]}") || die "no active apt entry for bookworm on this host"
security=$(apt_entries "${files[@]}" | awk '$1 == "deb" && $3 == "bookworm-security" { print $2; exit }')
security=${security:-${mirror%/debian}/debian-security}

mounted=()
cleanup() {
	local i
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
		umount -l "${mounted[i]}" 2>/dev/null || true
	done
	if [ "$keep" = 0 ] && [ -d "$dir" ]; then
		rm -rf --one-file-system "$dir"
	fi
}
trap cleanup EXIT
bind() {
	local src=$1 dst=$dir$2
	shift 2
	if [ -d "$src" ]; then
		mkdir -p "$dst"
	else
		mkdir -p "$(dirname "$dst")"
		: >"$dst"
	fi
	mount --bind "$src" "$dst"
	mounted+=("$dst")
	if [ "${1:-}" = ro ]; then mount -o remount,bind,ro "$dst"; fi
}

# A run that was killed (SIGKILL, a session ending) never ran its cleanup:
# its mounts are still there, the host's toolchain bound read-only among
# them. Take them down, deepest first, before removing the old root.
stale_mounts() {
	awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r -u
}
if [ -d "$dir" ]; then
	while read -r m; do
		[ -n "$m" ] || continue
		say "unmounting $m, left by an earlier run that did not clean up"
		umount -l "$m" || die "cannot unmount $m (left by an earlier run)"
	done < <(stale_mounts)
	[ -z "$(stale_mounts)" ] || die "mounts under $dir remain: $(stale_mounts | tr '\n' ' ')"
	rm -rf --one-file-system "$dir"
fi
mkdir -p "$dir"
t0=$(date +%s)
# Beyond debootstrap's minimal base, only what the README assumes to get and
# drive the repo: make, git, and ca-certificates for crates.io. No compiler:
# set-up installs build-essential before anything is built.
# debootstrap's result is cached (a tarball under $KT_CACHE keyed by the
# mirror and the package list, rebuilt after a week) so repeated checks do
# not spend minutes on it; --no-base-cache always debootstraps.
include=make,git,ca-certificates
base=${KT_CACHE:-$HOME/.cache/kerntransport}/fresh-base-$(echo "$mirror $include" | sha256sum | cut -c1-16).tar
if [ "$base_cache" = 1 ] && [ -f "$base" ] && [ -n "$(find "$base" -mtime -7)" ]; then
	say "unpacking the cached bookworm base $base"
	tar -xf "$base" -C "$dir"
else
	say "debootstrap bookworm from $mirror into $dir"
	debootstrap --variant=minbase --include="$include" \
		bookworm "$dir" "$mirror" >"$dir.debootstrap.log" 2>&1 ||
		{ tail -n 20 "$dir.debootstrap.log" >&2; die "debootstrap failed (log $dir.debootstrap.log)"; }
	rm -f "$dir.debootstrap.log"
	if [ "$base_cache" = 1 ]; then
		mkdir -p "$(dirname "$base")"
		tar -cf "$base.tmp" -C "$dir" . && mv "$base.tmp" "$base"
	fi
fi
say "root ready in $(($(date +%s) - t0)) s"

# The machine's network trust, as any machine of this site has it: local CA
# certificates (a TLS-inspecting egress proxy signs with one) and the
# variables that point tools such as pip at the bundle.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
	mkdir -p "$dir/usr/local/share/ca-certificates"
	cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
	chroot "$dir" update-ca-certificates >/dev/null
fi
[ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$dir/etc/pip.conf"

# The stock image's sources: deb822, a commented snapshot URL above each
# real URIs line, no one-line sources.list.
rm -f "$dir/etc/apt/sources.list"
cat >"$dir/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cp /etc/resolv.conf "$dir/etc/resolv.conf"
cp /etc/hosts "$dir/etc/hosts"

# The root is a mount point of its own, as on a booted machine (and under
# systemd-nspawn): `unshare --propagation private` (the packages test's dkms
# run) remounts / and fails in a plain chroot directory.
mount --bind "$dir" "$dir"
mount --make-private "$dir"
mounted+=("$dir")
bind /proc /proc
bind /sys /sys
mkdir -p "$dir/dev"
mount --rbind /dev "$dir/dev"
mount --make-rslave "$dir/dev"
mounted+=("$dir/dev")
bind "$rustup_home" /opt/rust/rustup ro
# rustup and its proxies only: tools installed on the host with `cargo
# install` (cargo-fuzz, ...) must not leak in and hide an install step.
bind "$cargo_bin/rustup" /opt/rust/cargo-bin/rustup ro
for p in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt; do
	ln -s rustup "$dir/opt/rust/cargo-bin/$p"
done

say "cloning $(git -C "$repo" rev-parse --short HEAD) into /root/kerntransport"
git clone -q "$repo" "$dir/root/kerntransport"

env_vars=(HOME=/root PATH=/opt/rust/cargo-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	RUSTUP_HOME=/opt/rust/rustup CARGO_HOME=/root/.cargo TERM=dumb LANG=C.UTF-8)
for v in SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE REQUESTS_CA_BUNDLE PIP_CERT GIT_SSL_CAINFO; do
	[ -z "${!v:-}" ] || env_vars+=("$v=${!v}")
done
results=()
status=0
run_one() {
	local cmd=$1 t rc=0 log=$dir/root/$1.log
	say "running 'make $cmd' (log: $log)"
	t=$(date +%s)
	set +e
	chroot "$dir" /usr/bin/env -i "${env_vars[@]}" \
		bash -c "cd /root/kerntransport && make $cmd" >"$log" 2>&1
	rc=$?
	set -e
	# The command's own closing lines say what passed, failed or skipped.
	tail -n "${KT_FRESH_TAIL:-25}" "$log" | sed 's/^/    /'
	t=$(($(date +%s) - t))
	results+=("make $cmd: $([ "$rc" = 0 ] && echo PASS || echo "FAIL (exit $rc)") in $((t / 60)) min $((t % 60)) s")
	[ "$rc" = 0 ] || { status=1; save_logs "$cmd"; }
}
# The root goes away at the end (unless --keep): a failed command's log and
# the test logs it left in the root's /tmp are copied out first.
save_logs() {
	local out=$dir.logs/$1
	rm -rf "$out"
	mkdir -p "$out"
	cp "$dir/root/$1.log" "$out/"
	find "$dir/tmp" -maxdepth 3 -name '*.log' \
		-exec cp --backup=numbered -t "$out/" {} + 2>/dev/null || true
	say "make $1 failed: its logs are in $out"
}
for cmd in demo test; do
	[ -z "$only" ] || [ "$only" = "$cmd" ] || continue
	run_one "$cmd"
done

echo
for r in "${results[@]}"; do say "$r"; done
say "total $(($(date +%s) - t0)) s"
exit "$status"
