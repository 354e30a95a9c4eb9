#!/usr/bin/env bash
# Channel fairness benchmark (issue 11), simulated guest: one
# kt-vhost-device and one kt-sim guest with 1,000 channels open; 999 quiet
# channels do 64 B round trips through a host echo while one channel floods
# (host -> guest, then guest -> host). Builds the release binaries and runs
# kt-vhost-device-fairness, which prints the quiet channels' p50/p99 round
# trip idle and under each flood, the p99 over the idle p99 (target: 2x)
# and the flood's rate. Arguments go to kt-vhost-device-fairness (--help);
# e.g. scripts/bench-fairness.sh --window 4096 --round-trips 5000.
# Not part of `make test`: it is a benchmark, not a test (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p kt-vhost-device -p kt-sim
exec target/release/kt-vhost-device-fairness "$@"
