#!/usr/bin/env bash
# Scale benchmark (issue 11): one kt-vhost-device serving 1, 8 and 64 VMs,
# each a simulated guest speaking real vhost-user with 16 busy channels.
# Builds the release binaries and runs kt-vhost-device-scale, which prints
# one table: aggregate messages/s, the slowest VM's rate / the mean, and
# the daemon's memory per VM (idle and busy, next to the guest data it held
# and the bound the windows and the VM's --vm-buffer budget put on it).
# Arguments go to kt-vhost-device-scale (--help); e.g.
# scripts/bench-scale.sh --max-msg-size 16384, or --vm-buffer 0 for no
# VM-wide budget (every channel its full --channel-buffer window).
# Not part of `make test`: it is a benchmark, not a test (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p kt-vhost-device -p kt-sim
exec target/release/kt-vhost-device-scale "$@"
