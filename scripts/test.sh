#!/usr/bin/env bash
# The whole test suite, in order: lint, Rust unit and integration tests, the
# guest driver's build and style checks, the end-to-end tests that boot
# guests, and the driver's tests and the fault-heavy end-to-end tests again
# under a debug kernel (KASAN, KFENCE, lockdep). Each stage says what it
# runs; the first failure stops the run.
# A test that cannot run on this machine is never silent: it records itself
# in $KT_SKIP_LOG (kt_tests::skip), and the closing lines list every SKIP
# and its reason. The last line reads "N passed, N failed, N skipped":
# stages passed and failed, tests skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
stages=0
stage_start=$SECONDS
stage_done() {
	[ "$stages" = 0 ] ||
		printf '==== stage %d took %d s (%d s in all) ====\n' "$stages" \
			$((SECONDS - stage_start)) "$SECONDS"
	stage_start=$SECONDS
}
stage() {
	stage_done
	stages=$((stages + 1))
	printf '\n==== %s ====\n' "$*"
}
KT_SKIP_LOG=$(mktemp /tmp/kt-skips.XXXXXX)
export KT_SKIP_LOG
# The background build below, if one is running: stopped with the run.
prebuild_pid=
prebuild_stop() {
	[ -n "$prebuild_pid" ] || return 0
	kill -- -"$prebuild_pid" 2>/dev/null || true
	wait "$prebuild_pid" 2>/dev/null || true
}
summary() {
	local rc=$1 passed=$stages failed=0 skipped
	prebuild_stop
	stage_done
	if [ "$rc" != 0 ]; then
		passed=$((stages - 1))
		failed=1
	fi
	skipped=$(grep -c '^SKIP: ' "$KT_SKIP_LOG" || true)
	echo
	[ "$skipped" = 0 ] || cat "$KT_SKIP_LOG"
	rm -f "$KT_SKIP_LOG"
	[ "$rc" != 0 ] || [ -z "${prebuild_log:-}" ] || rm -f "$prebuild_log"
	echo "$passed passed, $failed failed, $skipped skipped"
}
# Every stage must pass (set -e stops at the first failure), so reaching the
# end means all of them did.
trap 'summary $?' EXIT

# A cold cache spends most of a first run building QEMU and the debug kernel
# (4 and 5 to 15 minutes on 2 cores). Build them from the start, in the
# background at nice 19, on the CPU the stages before them leave idle. The
# stages that need them run the same scripts, which wait for the build's
# lock and then hit the cache; if a background build failed, they build
# again in the foreground and its error shows there. KT_PREBUILD=0 turns
# this off.
if [ "${KT_PREBUILD:-1}" != 0 ]; then
	prebuild_log=$(mktemp /tmp/kt-prebuild.XXXXXX)
	echo "test: building QEMU and the debug kernel in the background (nice 19; log $prebuild_log)"
	setsid nice -n 19 bash -c 'images/build-qemu.sh && images/debug-kernel/build.sh' \
		>"$prebuild_log" 2>&1 </dev/null &
	prebuild_pid=$!
fi

stage "scripts: apt sources parsing, one answer for the supported kernels"
scripts/tests/apt-sources.sh
scripts/tests/kernels.sh

stage "lint: cargo fmt, cargo clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

stage "Rust tests (unit, integration, C layout check)"
cargo test --workspace

stage "fuzz: proto decode + backend tx_chain, ${KT_FUZZ_SECS:-60} s each (nightly, cargo-fuzz)"; scripts/fuzz.sh

stage "guest driver: build against each supported kernel, sparse, checkpatch, kernel-doc, coccicheck"
guest-driver/check.sh

stage "packages: build, install in a scratch root, dkms build, systemd-analyze verify"
scripts/tests/packages.sh

stage "end-to-end tests"
scripts/e2e.sh

stage "kt-vmm end to end (KVM runner VM: stock kernel + project image, backend restart)"
images/runner/test-e2e.sh

stage "guest driver and end-to-end tests under a debug kernel (KASAN, KFENCE, lockdep), 2 and 4 vCPUs"
# images/debug-kernel/build.sh (cached; a cold build takes 5 to 15 minutes),
# then run.sh's scenarios on it with -smp 2 and -smp 4 (2 to 3 minutes),
# then the soak, reset, device and k.echo reload e2e tests on it.
QEMU_KT=$(images/build-qemu.sh | tail -n1) guest-driver/tests/run.sh --debug-kernel
scripts/e2e.sh --debug-kernel
