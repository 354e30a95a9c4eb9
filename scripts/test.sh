#!/usr/bin/env bash
# The whole test suite, in order: lint, Rust unit and integration tests, the
# guest driver's build and style checks, then the end-to-end tests that boot
# guests. Each stage says what it runs; the first failure stops the run.
set -euo pipefail
cd "$(dirname "$0")/.."
stages=0
stage() {
	stages=$((stages + 1))
	printf '\n==== %s ====\n' "$*"
}
# Every stage must pass (set -e stops at the first failure), so reaching the
# end means all of them did.
trap 'rc=$?; [ "$rc" = 0 ] || echo "stages: $((stages - 1)) passed, 1 failed"' EXIT

stage "lint: cargo fmt, cargo clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

stage "Rust tests (unit, integration, C layout check)"
cargo test --workspace

if [ -x guest-driver/check.sh ]; then
	stage "guest driver: build against each supported kernel, checkpatch, sparse"
	guest-driver/check.sh
else
	echo "guest driver: not in the tree yet"
fi

if [ -x scripts/e2e.sh ]; then
	stage "end-to-end tests"
	scripts/e2e.sh
else
	echo "end-to-end tests: not in the tree yet"
fi

if [ -x images/runner/test-e2e.sh ]; then
	stage "kt-vmm end to end (KVM runner VM: stock kernel + project image, backend restart)"
	images/runner/test-e2e.sh
else
	echo "kt-vmm end to end: not in the tree yet"
fi

echo "stages: $stages passed, 0 failed"
