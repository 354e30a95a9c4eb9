#!/usr/bin/env bash
# The Debian packages' test (a stage of scripts/test.sh): builds them with
# scripts/packages.sh, unpacks them into a scratch root with dpkg-deb -x (the
# system's dpkg database is never touched), checks control fields and files,
# runs the installed binaries' --help, builds the guest driver with
# `dkms build` from the unpacked /usr/src tree against each supported kernel
# (scripts/lib/kernels.sh) with every DKMS tree, temporary file and signing
# key inside the scratch directory (a private mount namespace hides
# /etc/dkms and /var/lib/dkms), checks the modules' vermagic and virtio
# alias, runs the installed daemon on the example policy and the example
# many-VM config, and checks the systemd units with systemd-analyze verify,
# after proving that check rejects broken copies of the unit. Owns only this
# test; every failure stops it with a message. Removes its scratch dir.
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
# shellcheck source=scripts/lib/kernels.sh
. scripts/lib/kernels.sh

fail() {
	echo "packages test: FAIL: $*" >&2
	exit 1
}
ok() { echo "packages test: ok: $*"; }

for tool in dpkg-deb dkms systemd-analyze unshare modinfo; do
	command -v "$tool" >/dev/null || fail "$tool not found (run scripts/setup.sh)"
done
[ "$(id -u)" = 0 ] || fail "must run as root (dkms build runs in a private mount namespace)"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/kt-pkgtest.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
debs=$scratch/debs
sysroot=$scratch/root
mkdir -p "$debs" "$sysroot"

version=$(awk '/^\[/ { s = ($0 == "[workspace.package]") } s && /^version *=/ { gsub(/.*= *"|".*/, ""); print; exit }' Cargo.toml)
[ -n "$version" ] || fail "no workspace version in Cargo.toml"
arch=$(dpkg --print-architecture)

# 1. Build.
KT_PACKAGES_DIR=$debs scripts/packages.sh

# 2. Each package: present, control fields, unpacked into the scratch root.
declare -A want_arch=([kt-vhost-device]=$arch [kt-vmm]=$arch [kt]=$arch [kerntransport-dkms]=all)
for pkg in kt-vhost-device kt-vmm kt kerntransport-dkms; do
	a=${want_arch[$pkg]}
	deb=$debs/${pkg}_${version}_$a.deb
	[ -f "$deb" ] || fail "$deb was not built"
	for field in Package:$pkg Version:$version Architecture:$a; do
		got=$(dpkg-deb --field "$deb" "${field%%:*}")
		[ "$got" = "${field#*:}" ] || fail "$pkg: ${field%%:*} is '$got', want '${field#*:}'"
	done
	dpkg-deb --field "$deb" Maintainer Description >/dev/null
	dpkg-deb -x "$deb" "$sysroot"
	ok "$pkg $version $a: control fields, unpacked"
done
[ "$(dpkg-deb --field "$debs/kerntransport-dkms_${version}_all.deb" Depends)" = dkms ] ||
	fail "kerntransport-dkms does not depend on dkms"
dpkg-deb --field "$debs/kt-vhost-device_${version}_$arch.deb" Depends | grep -q 'libc6' ||
	fail "kt-vhost-device has no shared-library Depends"

# Maintainer scripts: present, executable, valid shell, version filled in.
for s in kt-vhost-device:postinst kt-vhost-device:postrm kerntransport-dkms:postinst kerntransport-dkms:prerm; do
	pkg=${s%%:*}
	a=${want_arch[$pkg]}
	ctl=$scratch/control-$pkg
	rm -rf "$ctl"
	dpkg-deb -e "$debs/${pkg}_${version}_$a.deb" "$ctl"
	[ -x "$ctl/${s#*:}" ] || fail "$pkg has no executable ${s#*:}"
	sh -n "$ctl/${s#*:}" || fail "$pkg ${s#*:} is not valid sh"
	! grep -q '@VERSION@' "$ctl/${s#*:}" || fail "$pkg ${s#*:} still has @VERSION@"
done
# shellcheck disable=SC2016 # literal $NAME and $VERSION
if ! grep -q 'common.postinst "$NAME" "$VERSION"' "$scratch/control-kerntransport-dkms/postinst" ||
	! grep -qx "VERSION=$version" "$scratch/control-kerntransport-dkms/postinst"; then
	fail "kerntransport-dkms postinst does not run dkms's common.postinst for $version"
fi
ok "maintainer scripts"

# 3. Files, and the installed binaries run.
for f in usr/bin/kt-vhost-device usr/bin/kt-vmm usr/bin/kt \
	usr/share/man/man1/kt-vhost-device.1.gz usr/share/man/man1/kt-vmm.1.gz usr/share/man/man1/kt.1.gz \
	lib/systemd/system/kt-vhost-device@.service \
	usr/share/doc/kt-vhost-device/examples/vm0.toml usr/share/doc/kt-vhost-device/examples/vm0.conf \
	usr/share/doc/kt-vhost-device/copyright usr/src/kerntransport-$version/dkms.conf; do
	[ -e "$sysroot/$f" ] || fail "/$f missing from the packages"
done
for m in kt-vhost-device kt-vmm kt; do
	zcat "$sysroot/usr/share/man/man1/$m.1.gz" | grep -q '^\.SH' || fail "$m.1.gz is not a man page"
done
help=$("$sysroot/usr/bin/kt-vhost-device" --help) || fail "installed kt-vhost-device --help failed"
grep -q -- '--socket-path' <<<"$help" || fail "kt-vhost-device --help does not mention --socket-path"
"$sysroot/usr/bin/kt-vmm" --help >/dev/null || fail "installed kt-vmm --help failed"
"$sysroot/usr/bin/kt" --help >/dev/null || fail "installed kt --help failed"
ok "files, man pages, installed binaries' --help"

# The example policy is one the daemon accepts: start the installed daemon
# on it until its control socket answers.
run=$scratch/run
mkdir -p "$run"
"$sysroot/usr/bin/kt-vhost-device" run --socket-path "$run/vhost.sock" \
	--policy "$sysroot/usr/share/doc/kt-vhost-device/examples/vm0.toml" \
	--control "$run/control.sock" --log-level warn &
daemon=$!
for _ in $(seq 100); do
	[ -S "$run/control.sock" ] && break
	kill -0 "$daemon" 2>/dev/null || fail "kt-vhost-device exited on the example policy"
	sleep 0.1
done
stats=$("$sysroot/usr/bin/kt-vhost-device" stats --control "$run/control.sock" --json) ||
	{ kill "$daemon"; fail "kt-vhost-device stats failed"; }
kill "$daemon"
wait "$daemon" || true
grep -q '"guest_id"' <<<"$stats" || fail "stats answer has no guest_id: $stats"
ok "installed daemon runs on the example policy"

# The many-VM example, its sockets moved into the scratch run directory and
# a copy of the example policy for each VM.
ex=$sysroot/usr/share/doc/kt-vhost-device/examples
sed "s|/run/kerntransport/vms/|$run/|" "$ex/vms.toml" >"$scratch/vms.toml"
cp "$ex/vm0.toml" "$scratch/web.toml"
cp "$ex/vm0.toml" "$scratch/db.toml"
"$sysroot/usr/bin/kt-vhost-device" run --config "$scratch/vms.toml" \
	--control "$run/vms-control.sock" --log-level warn &
daemon=$!
for _ in $(seq 100); do
	[ -S "$run/vms-control.sock" ] && [ -S "$run/db.sock" ] && break
	kill -0 "$daemon" 2>/dev/null || fail "kt-vhost-device exited on the example vms.toml"
	sleep 0.1
done
vms=$("$sysroot/usr/bin/kt-vhost-device" stats --control "$run/vms-control.sock" --json) ||
	{ kill "$daemon"; fail "kt-vhost-device stats failed on the example vms.toml"; }
reloaded=$("$sysroot/usr/bin/kt-vhost-device" reload --control "$run/vms-control.sock") ||
	{ kill "$daemon"; fail "kt-vhost-device reload failed on the example vms.toml"; }
kill "$daemon"
wait "$daemon" || true
for vm in web db; do
	grep -q "\"vm\": \"$vm\"" <<<"$vms" || fail "stats on the example vms.toml lacks vm $vm: $vms"
done
[ "$reloaded" = "vm web: policy unchanged (1 service(s)); vm db: policy unchanged (1 service(s))" ] ||
	fail "reload on the example vms.toml said: $reloaded"
ok "installed daemon serves the example vms.toml (2 VMs), and reloads it"

# 4. The systemd unit. The check must reject what systemd would only warn
# about, so any output fails it; prove that first on broken copies.
# The scratch root gets the host's own units (sysinit.target and the like).
mkdir -p "$sysroot/etc/systemd/system"
cp -a /lib/systemd/system/. "$sysroot/lib/systemd/system/"
cp "$root/packaging/kt-vhost-device/kt-vhost-device@.service" "$scratch/unit.orig"
verify() {
	local out
	out=$(MANPATH=$sysroot/usr/share/man systemd-analyze verify --root="$sysroot" "$1" 2>&1) &&
		[ -z "$out" ] && return 0
	printf '%s\n' "$out"
	return 1
}
bad=$sysroot/etc/systemd/system/kt-broken@.service
sed 's/^ProtectSystem=/ProtectSytem=/' "$scratch/unit.orig" >"$bad"
if verify kt-broken@vm0.service >/dev/null; then fail "unit check accepts a misspelt key"; fi
sed 's|^ExecStart=/usr/bin/kt-vhost-device|ExecStart=/usr/bin/kt-vhost-devic|' "$scratch/unit.orig" >"$bad"
if verify kt-broken@vm0.service >/dev/null; then fail "unit check accepts a missing binary"; fi
rm "$bad"
verify kt-vhost-device@vm0.service || fail "systemd-analyze verify kt-vhost-device@vm0.service"
verify kt-vhost-device.service || fail "systemd-analyze verify kt-vhost-device.service"
for u in kt-vhost-device@.service kt-vhost-device.service; do
	cmp -s "$root/packaging/kt-vhost-device/$u" "$sysroot/lib/systemd/system/$u" ||
		fail "the packaged $u differs from packaging/kt-vhost-device/$u"
	grep -q '^User=kerntransport$' "$sysroot/lib/systemd/system/$u" ||
		fail "$u does not run as user kerntransport"
done
ok "systemd-analyze verify kt-vhost-device@vm0.service and kt-vhost-device.service (and rejects broken copies)"

# 5. dkms build of the unpacked source against each supported kernel, all of
# DKMS's state in the scratch dir: --dkmstree/--sourcetree/--installtree,
# and a private mount namespace whose /etc/dkms (framework.conf: temporary
# dir and signing key) and /var/lib/dkms are scratch directories.
kernels=$(kt_supported_kernels) || fail "no supported kernels"
dk=$scratch/dkms
mkdir -p "$dk/etc/framework.conf.d" "$dk/tree" "$dk/install" "$dk/tmp" "$dk/varlib"
cat >"$dk/etc/framework.conf" <<EOF
tmp_location="$dk/tmp"
mok_signing_key="$dk/mok.key"
mok_certificate="$dk/mok.pub"
EOF
dkms_scratch() {
	# shellcheck disable=SC2016 # the inner script expands its own arguments
	unshare --mount --propagation private -- bash -euc '
		mount --bind "$1" /etc/dkms
		mount --bind "$2" /var/lib/dkms
		shift 2
		exec nice dkms "$@"' dkms "$dk/etc" "$dk/varlib" "$@" \
		--dkmstree "$dk/tree" --sourcetree "$sysroot/usr/src" --installtree "$dk/install"
}
dkms_scratch add -m kerntransport -v "$version" >"$dk/add.log" 2>&1 ||
	{ cat "$dk/add.log"; fail "dkms add kerntransport/$version"; }
for rel in $kernels; do
	hdr=$(kt_headers_dir "$rel")
	[ -d "$hdr" ] || fail "headers for $rel missing at $hdr"
	dkms_scratch build -m kerntransport -v "$version" -k "$rel" --kernelsourcedir "$hdr" \
		>"$dk/build-$rel.log" 2>&1 || {
		cat "$dk/build-$rel.log"
		find "$dk/tree" -name make.log -exec cat {} +
		fail "dkms build kerntransport/$version for $rel"
	}
	for mod in kerntransport kt_kecho; do
		ko=$(find "$dk/tree/kerntransport/$version/$rel" -name "$mod.ko*" -path '*/module/*' | head -n1)
		[ -n "$ko" ] || fail "dkms build for $rel made no $mod.ko"
		vermagic=$(modinfo -F vermagic "$ko")
		[ "${vermagic%% *}" = "$rel" ] || fail "$ko: vermagic '$vermagic', want $rel"
	done
	ko=$(find "$dk/tree/kerntransport/$version/$rel" -name 'kerntransport.ko*' -path '*/module/*' | head -n1)
	modinfo -F alias "$ko" | grep -qx 'virtio:d0000003Cv\*' ||
		fail "$ko has no alias virtio:d0000003Cv* ($(modinfo -F alias "$ko" | tr '\n' ' '))"
	ok "dkms build for $rel: $(basename "$ko"), kt_kecho, alias virtio:d0000003Cv*"
done
[ -z "$(ls -A "$dk/varlib")" ] || fail "dkms wrote into /var/lib/dkms: $(ls -A "$dk/varlib")"

built=$(cd "$debs" && printf '%s ' *.deb)
echo "packages test: PASS (${built% })"
