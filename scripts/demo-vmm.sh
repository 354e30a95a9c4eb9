#!/usr/bin/env bash
# The README's main job on kt-vmm: a guest program and the guest kernel's
# service k.echo exchanging messages with the host, the guest running under
# kt-vmm (not QEMU) with kt-vhost-device as its device. Builds (cached) the
# guest image, kt-vmm, kt-vhost-device and kt; on a host with a real, fast
# /dev/kvm it runs images/runner/in-runner-demo.sh directly, elsewhere (the
# build machines' /dev/kvm cannot boot Linux) inside the KVM runner VM
# (QEMU TCG with nested KVM: about a minute more). Exit 0 only if every step
# worked; every process it started is gone when it returns.
set -euo pipefail
cd "$(dirname "$0")/.."
export KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
t0=$(date +%s)
work=$(mktemp -d /tmp/kt-demo-vmm.XXXXXX)
trap 'rm -rf "$work"' EXIT
die() {
	echo "demo-vmm: $*" >&2
	exit 1
}

printf '== building (cached after the first run; log: %s)\n' "$work/build.log"
{
	image=$(images/build-image.sh | tail -n1)
	cargo build --release -p kt-vmm -p kt-vhost-device -p kt
	echo "IMAGE=$image"
} >"$work/build.log" 2>&1 || {
	tail -n 30 "$work/build.log" >&2
	trap - EXIT
	die "build failed (log kept: $work/build.log)"
}
image=$(sed -n 's/^IMAGE=//p' "$work/build.log")
kernel=${image#KERNEL=}
kernel=${kernel%% INITRAMFS=*}
initramfs=${image##* INITRAMFS=}
target=${CARGO_TARGET_DIR:-$PWD/target}
for f in "$kernel" "$initramfs" "$target/release/kt-vmm" "$target/release/kt-vhost-device" \
	"$target/release/kt"; do
	[ -e "$f" ] || die "missing build output $f"
done
echo "kernel:    $kernel"
echo "initramfs: $initramfs"

if [ -w /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] && [ "${KT_FORCE_RUNNER:-0}" != 1 ]; then
	echo "KVM:       /dev/kvm on this host"
	PATH=$target/release:$PATH KT_IMAGE_DIR=$(dirname "$kernel") \
		sh images/runner/in-runner-demo.sh || die "failed after $(($(date +%s) - t0)) s"
else
	echo "KVM:       this host's /dev/kvm cannot boot Linux (emulating kvm_pvm or none):"
	echo "           running the demo inside the KVM runner VM (QEMU TCG, nested KVM)"
	export KT_IMAGE_KERNEL=$kernel KT_IMAGE_INITRD=$initramfs
	export KT_RUNNER_BINS="$target/release/kt-vhost-device $target/release/kt"
	# Show the demo's own lines; the whole serial log is kept on failure.
	set +e
	images/runner/run.sh --timeout "${KT_RUNNER_TIMEOUT:-600}" --log "$work/runner.log" \
		-- kt-demo-vmm | tr -d '\r' | grep --line-buffered -E '^(== |  (guest|host)  ?\||demo:|$)'
	rc=${PIPESTATUS[0]}
	set -e
	if [ "$rc" != 0 ]; then
		cp "$work/runner.log" "/tmp/kt-demo-vmm-runner.log"
		die "failed after $(($(date +%s) - t0)) s (runner serial log: /tmp/kt-demo-vmm-runner.log)"
	fi
fi
echo "demo-vmm: done in $(($(date +%s) - t0)) s"
