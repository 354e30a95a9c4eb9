#!/usr/bin/env bash
# The main job: build everything, then show a guest program and the guest
# kernel service k.echo exchanging messages with the host, first under the
# project's patched QEMU, then under kt-vmm (inside the KVM runner VM on
# machines without a fast KVM).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --release
scripts/demo-qemu.sh
scripts/demo-vmm.sh
