#!/usr/bin/env bash
# Boots the KVM runner VM (stock QEMU, TCG, -cpu max: AMD SVM for the
# runner's kvm-amd) and runs COMMAND inside it with a working /dev/kvm.
# Guest files are at /guest/vmlinuz and /guest/initrd.cpio.gz inside.
# Exits 0 on "KT-RUNNER: PASS", 1 otherwise (FAIL, timeout, no marker).
#
# Usage: run.sh [--with-qemu] [--timeout SECONDS] [--log FILE] -- COMMAND
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
timeout=600
log=
build_args=()
while [ $# -gt 0 ]; do
	case "$1" in
	--with-qemu) build_args+=(--with-qemu); shift ;;
	--timeout) timeout=$2; shift 2 ;;
	--log) log=$2; shift 2 ;;
	--) shift; break ;;
	-h | --help) sed -n '2,9p' "$0"; exit 0 ;;
	*) echo "run.sh: unknown option $1" >&2; exit 1 ;;
	esac
done
[ $# -gt 0 ] || { echo "run.sh: no command given (see --help)" >&2; exit 1; }
dir=$("$here/build-runner.sh" "${build_args[@]}" | tail -n1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/cmd"
printf '%s\n' "$*" >"$tmp/cmd/kt-cmd"
# A second (gzip) archive: the kernel unpacks concatenated archives in order.
(cd "$tmp/cmd" && echo kt-cmd | cpio -o -H newc --owner 0:0 --quiet) | gzip >"$tmp/cmd.cpio"
cat "$dir/runner-initrd.cpio.gz" "$tmp/cmd.cpio" >"$tmp/initrd"
log=${log:-$tmp/serial.log}
set +e
timeout --foreground -k 5 "$timeout" qemu-system-x86_64 -accel tcg -cpu max -m 2G -smp 2 \
	-nographic -no-reboot -nic none \
	-kernel "$dir/vmlinuz" -initrd "$tmp/initrd" \
	-append "console=ttyS0 panic=-1 quiet" </dev/null 2>&1 | tee "$log"
qrc=${PIPESTATUS[0]}
set -e
if grep -q '^KT-RUNNER: PASS' "$log"; then
	exit 0
fi
if [ "$qrc" = 124 ]; then
	echo "run.sh: runner VM timed out after ${timeout}s" >&2
elif ! grep -q '^KT-RUNNER: FAIL' "$log"; then
	# No verdict from the runner's init: QEMU itself ended early (a
	# crash shows as 128+N for signal N; under TCG QEMU has died of
	# SIGSEGV on this kind of host) or the runner kernel stopped.
	echo "run.sh: the runner VM gave no verdict; QEMU exited with status $qrc" >&2
fi
echo "run.sh: command failed inside the runner VM" >&2
exit 1
