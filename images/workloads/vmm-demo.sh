# Workload "vmm-demo": the guest half of scripts/demo-vmm.sh (host half:
# images/runner/in-runner-demo.sh). Lines starting "DEMO:" are shown to the
# user. A guest program talks to the host service "echo"; then the guest
# waits until a host program has used the in-kernel service k.echo
# (kt_kecho.ko) and that channel is closed again.
. /workloads/lib.sh
need_module kerntransport
need_module kt_kecho
sys=$(kt_sysfs) || fail "no kerntransport device bound"
dev=$(basename "$(dirname "$sys")")
echo "DEMO: Linux $(uname -r) under kt-vmm, $(grep -c ^processor /proc/cpuinfo) vCPUs"
echo "DEMO: kerntransport.ko bound $dev (virtio ID $(cat "/sys/bus/virtio/devices/$dev/device"), virtio-mmio)"
echo "DEMO: [1] guest program -> host service \"echo\": kt connect echo"
set -- "hello, host" "this message went guest -> kt-vhost-device -> host socket" "bye"
for m in "$@"; do echo "DEMO:     guest sends:    $m"; done
replies=$(printf '%s\n' "$@" | kt connect echo --count 3 --timeout 30 2>&1) ||
	fail "kt connect echo: $replies"
echo "$replies" | while IFS= read -r l; do echo "DEMO:     host answers:   $l"; done
[ "$replies" = "$(printf '%s\n' "$@")" ] || fail "the echo answers differ from what was sent"
echo "KT: ready for host connections"
i=0
until [ "$(cat "$sys/opens_in")" -ge 1 ] && [ "$(cat "$sys/open_channels")" = 0 ]; do
	i=$((i + 1))
	[ "$i" -le 600 ] || fail "no host channel to k.echo within 60 s"
	usleep 100000
done
echo "DEMO: driver counters: messages sent $(cat "$sys/tx_msgs"), received $(cat "$sys/rx_msgs"), channels opened by the guest $(cat "$sys/opens_out"), by the host $(cat "$sys/opens_in")"
