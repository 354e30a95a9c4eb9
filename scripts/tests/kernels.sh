#!/usr/bin/env bash
# Tests that every script agrees on "which kernels do we support": the answer
# of scripts/lib/kernels.sh must be what set-up installed headers for, what
# guest-driver/check.sh builds against, what guest-driver/tests/run.sh and
# images/build-image.sh boot, and what images/runner/build-runner.sh puts in
# the runner VM; and no tracked script or source pins a kernel version or
# ABI number. Exits non-zero on any disagreement.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/lib/kernels.sh
. "$repo/scripts/lib/kernels.sh"
failures=0
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

mapfile -t want < <(kt_supported_kernels)
[ "${#want[@]}" = 2 ] || { echo "FAIL: kt_supported_kernels printed ${#want[@]} kernels"; exit 1; }
echo "kernels: ${want[*]}"
case "${want[0]}" in 6.12.*-cloud-amd64) ;; *) fail "first kernel ${want[0]} is not a 6.12 cloud kernel" ;; esac
case "${want[1]}" in 6.1.*-cloud-amd64) ;; *) fail "second kernel ${want[1]} is not a 6.1 cloud kernel" ;; esac

# Set-up installed what the others use.
for k in "${want[@]}"; do
	[ -f "$(kt_headers_dir "$k")/Makefile" ] || fail "headers for $k not installed"
done
[ -r "/boot/vmlinuz-${want[0]}" ] || fail "/boot/vmlinuz-${want[0]} not installed"

# Every consumer, asked which kernel it would use.
got=$("$repo/guest-driver/check.sh" --print-kernels | paste -sd' ')
[ "$got" = "${want[*]}" ] || fail "guest-driver/check.sh builds against '$got'"
for s in guest-driver/tests/run.sh images/build-image.sh images/runner/build-runner.sh; do
	got=$("$repo/$s" --print-kernel)
	[ "$got" = "${want[0]}" ] || fail "$s uses '$got', expected '${want[0]}'"
done

# Nothing pins a version: 6.1.0-<abi> or 6.12.<n>+deb<n> in tracked code.
# Prose (*.md) and recorded benchmark results (docs/bench/: the environment a
# run measured) may name the kernel they saw; code and scripts may not.
pinned=$(git -C "$repo" grep -nE '6\.1\.0-[0-9]+|6\.12\.[0-9]+\+deb[0-9]+' -- \
	':!*.md' ':!docs/bench/' ':!scripts/tests/kernels.sh' || true)
[ -z "$pinned" ] || fail "pinned kernel versions:
$pinned"

if [ "$failures" -gt 0 ]; then
	echo "kernels: $failures failures"
	exit 1
fi
echo "kernels: all scripts agree"
