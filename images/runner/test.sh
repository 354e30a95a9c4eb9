#!/usr/bin/env bash
# The kt-vmm end-to-end boot test: Debian's stock 6.12 cloud kernel, 2 vCPUs,
# two vhost-user devices (see in-runner-boot-test.sh). On a host whose
# /dev/kvm is real and fast it runs kt-vmm directly; elsewhere (these build
# machines: emulating kvm_pvm) inside the KVM runner VM. Exit 0 = pass.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -w /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] && [ "${KT_FORCE_RUNNER:-0}" != 1 ]; then
	dir=$("$here/build-runner.sh" | tail -n1)
	target=${CARGO_TARGET_DIR:-$root/target}
	PATH=$target/release:$target/release/examples:$PATH KT_GUEST_DIR=$dir/guest \
		exec sh "$here/in-runner-boot-test.sh"
fi
exec "$here/run.sh" --timeout "${KT_RUNNER_TIMEOUT:-600}" -- kt-test-boot
