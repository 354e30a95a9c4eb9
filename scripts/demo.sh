#!/usr/bin/env bash
# The main job: build everything and show host and guest kernel exchanging
# messages. Runs the parts that exist and says plainly what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --release
if [ -x scripts/demo-qemu.sh ]; then
	scripts/demo-qemu.sh
else
	echo "demo: the guest driver, image and QEMU harness are not in the tree yet;"
	echo "demo: built the workspace. Run 'make test' for the protocol tests."
fi
