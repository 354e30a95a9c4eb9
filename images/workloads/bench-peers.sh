# Workload "bench-peers": the guest's half of scripts/bench-peers.sh. Runs
# the same `kt bench` (64 B ping-pong, 64 KiB one-way stream, 16 B message
# rate) against a host echo peer over three transports in this one boot:
#   kt      kerntransport, host service "echo" (kt serve --mode echo)
#   vsock   AF_VSOCK SOCK_STREAM to CID 2 port 5000 (vhost-device-vsock ->
#           host kt serve --framed), u32 length prefix per message
#   serial  virtio-serial port named kt.bench (QEMU chardev socket -> host
#           kt serve --framed), u32 length prefix per message
# Every output line of a bench is printed as "BENCH <transport>: <line>";
# a transport that fails prints "BENCH <transport>: n/a <reason>" and the
# others still run. Sizes: kt.bench=ITERATIONS,BULK_MB,SMALL_COUNT.
. /workloads/lib.sh
need_module kerntransport

params=$(kt_arg kt.bench) || params=1000,8,10000
iter=${params%%,*}
rest=${params#*,}
bulk_mb=${rest%%,*}
small=${rest#*,}
bench_args="--iterations $iter --size 64 --bulk-size 65536 --bulk-mb $bulk_mb --small-size 16 --small-count $small --timeout 120"
echo "KT: bench-peers: $bench_args"

ok=0
# run_bench LABEL KT-CHANNEL-ARGS...: one kt bench, output labeled.
run_bench() {
	_label=$1
	shift
	echo "KT: bench-peers: $_label: kt bench $* $bench_args"
	# shellcheck disable=SC2086
	if _out=$(kt bench "$@" $bench_args 2>/tmp/bench-$_label.err); then
		echo "$_out" | while IFS= read -r l; do echo "BENCH $_label: $l"; done
		ok=$((ok + 1))
	else
		echo "BENCH $_label: n/a $(tail -n1 /tmp/bench-$_label.err)"
	fi
}

run_bench kt echo

# vsock: the 6.12 cloud kernel has it as modules (the image carries them
# decompressed in /lib/modules/peers).
vsock_ready=1
for m in vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
	grep -q "^$m " /proc/modules && continue
	if ! out=$(insmod "/lib/modules/peers/$m.ko" 2>&1); then
		echo "BENCH vsock: n/a insmod $m.ko: $out"
		vsock_ready=0
		break
	fi
done
# Writes of at most 16 KiB: the 6.12 kernel sends vsock packets above
# 32 KiB as a header plus several data descriptors (Linux commit 6693731487a8,
# "vsock/virtio: Allocate nonlinear SKBs"), which vhost-device-vsock 0.3.0
# rejects (DescriptorLengthTooSmall) and the stream stalls.
if [ "$vsock_ready" = 1 ]; then
	run_bench vsock --vsock 2:5000 --write-chunk 16384
fi

# virtio-serial (built in): the port named kt.bench, found through sysfs
# (no udev here to make /dev/virtio-ports/kt.bench).
port=
for d in /sys/class/virtio-ports/*; do
	[ "$(cat "$d/name" 2>/dev/null)" = kt.bench ] && port=/dev/${d##*/}
done
if [ -n "$port" ] && [ -c "$port" ]; then
	run_bench serial --serial "$port"
else
	echo "BENCH serial: n/a no virtio-serial port named kt.bench"
fi

[ "$ok" -gt 0 ] || fail "no transport could be measured"
