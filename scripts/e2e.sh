#!/usr/bin/env bash
# End-to-end tests: builds (or takes from $KT_CACHE) the patched QEMU and the
# guest image, builds the workspace's release binaries, then runs kt-tests'
# ignored end-to-end tests one at a time with KT_QEMU, KT_KERNEL,
# KT_INITRAMFS and KT_VHOST_DEVICE set. Called by scripts/test.sh; fails
# when any part is missing (never falls back to a subset).
#   scripts/e2e.sh [TEST]   TEST (e.g. e2e_soak): only that test file, and
#                           no driver conformance run (scripts/soak.sh)
set -euo pipefail
only=${1:-}
case "$only" in
"" | e2e_[a-z]*) ;;
*) echo "usage: scripts/e2e.sh [e2e_TEST] (a file of tests/tests/)" >&2; exit 2 ;;
esac
if [ -n "$only" ] && [ ! -f "tests/tests/$only.rs" ]; then
	echo "e2e: no test file tests/tests/$only.rs" >&2
	exit 2
fi
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/artifacts.sh
. scripts/lib/artifacts.sh
export KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
step() { printf -- '-- e2e: %s\n' "$*"; }
t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0)) s"; }

step "patched QEMU (images/build-qemu.sh)"
KT_QEMU=$(images/build-qemu.sh | tail -n1)
[ -x "$KT_QEMU" ] || { echo "e2e: build-qemu.sh gave no binary ($KT_QEMU)" >&2; exit 1; }
export KT_QEMU
echo "KT_QEMU=$KT_QEMU ($(elapsed))"

if [ -z "$only" ]; then
	step "guest driver conformance tests against a scripted fake device (guest-driver/tests/run.sh)"
	QEMU_KT=$KT_QEMU guest-driver/tests/run.sh
	echo "driver conformance done ($(elapsed))"
fi

step "workspace release binaries"
cargo build --workspace --release

step "guest image (images/build-image.sh)"
image=$(images/build-image.sh | tail -n1)
kt_split_image "$image" || {
	echo "e2e: build-image.sh printed '$image', expected KERNEL=... INITRAMFS=..." >&2
	exit 1
}
export KT_KERNEL KT_INITRAMFS
echo "KT_KERNEL=$KT_KERNEL"
echo "KT_INITRAMFS=$KT_INITRAMFS ($(elapsed))"

# The backend the tests run: the release build just made (honouring
# CARGO_TARGET_DIR), or KT_VHOST_DEVICE. Every e2e test needs it.
backend=${KT_VHOST_DEVICE:-$(kt_target_dir)/release/kt-vhost-device}
[ -x "$backend" ] || { echo "e2e: backend $backend not found after the release build" >&2; exit 1; }
export KT_VHOST_DEVICE=$backend
echo "KT_VHOST_DEVICE=$KT_VHOST_DEVICE"

if [ -n "$only" ]; then
	step "cargo test -p kt-tests --test $only"
	cargo test -p kt-tests --release --test "$only" -- --include-ignored --test-threads=1 --nocapture
else
	step "cargo test -p kt-tests (end-to-end, one at a time)"
	cargo test -p kt-tests --release --tests -- --include-ignored --test-threads=1
fi
echo "e2e: done in $(elapsed)"
