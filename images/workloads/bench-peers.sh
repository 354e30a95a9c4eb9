# shellcheck shell=sh
# Workload "bench-peers": the guest's half of scripts/bench-peers.sh. Runs
# the same `kt bench --direction both` against a host bench peer
# (`kt serve --mode bench`: echoes round trips, sinks guest->host streams,
# sources host->guest streams, reports its CPU) over three transports in
# this one boot:
#   kt      kerntransport, host service "bench"
#   vsock   AF_VSOCK SOCK_STREAM to CID 2 port 5000 (vhost-device-vsock ->
#           host kt serve --framed), u32 length prefix per message, writes
#           of at most 16 KiB; then once more guest->host with 64 KiB
#           writes and a 20 s stall limit ("vsock64k")
#   serial  virtio-serial port named kt.bench (QEMU chardev socket -> host
#           kt serve --framed), u32 length prefix per message
# Then the host measures guest services itself: it prints
# "KT: bench-peers: host benches ready", the host runs `kt --host ... bench`
# against k.echo (kt_kecho.ko, guest kernel) and u.echo (`kt listen --echo`
# here, guest user space), and this waits until both channels are done.
# Every output line of a bench is printed as "BENCH <transport>: <line>";
# a transport that fails prints "BENCH <transport>: n/a <reason>" and the
# others still run. Sizes: kt.bench=ITERATIONS,BULK_MB,SMALL_COUNT.
# kt.batch=N[,N...] (optional): kerntransport's message-rate phases N
# messages per system call (`kt bench --batch N`): the first N for the full
# kt bench, each further one a message-rate-only kt bench labeled "ktbN".
# shellcheck source=images/workloads/lib.sh
. /workloads/lib.sh
need_module kerntransport

params=$(kt_arg kt.bench) || params=2000,32,50000
iter=${params%%,*}
rest=${params#*,}
bulk_mb=${rest%%,*}
small=${rest#*,}
bench_args="--direction both --iterations $iter --size 64 --bulk-size 65536 --bulk-size 4096 --bulk-mb $bulk_mb --small-size 64 --small-count $small --timeout 120"
# kt.peers=LIST (comma-separated; default kt,vsock,serial): the transports
# to measure (kt-vmm has only kerntransport: kt.peers=kt).
peers=$(kt_arg kt.peers) || peers=kt,vsock,serial
want() {
	case ",$peers," in *",$1,"*) return 0 ;; esac
	return 1
}
echo "KT: bench-peers: $bench_args (transports: $peers)"

ok=0
# run_bench LABEL KT-BENCH-ARGS...: one kt bench, output labeled.
run_bench() {
	_label=$1
	shift
	echo "KT: bench-peers: $_label: kt bench $*"
	if _out=$(kt bench "$@" 2>"/tmp/bench-$_label.err"); then
		echo "$_out" | while IFS= read -r l; do echo "BENCH $_label: $l"; done
		ok=$((ok + 1))
	else
		echo "BENCH $_label: n/a $(tail -n1 "/tmp/bench-$_label.err")"
	fi
}

batches=$(kt_arg kt.batch) || batches=
if want kt; then
	kt_batch=
	[ -z "$batches" ] || kt_batch="--batch ${batches%%,*}"
	# shellcheck disable=SC2086
	run_bench kt bench $bench_args $kt_batch
	case "$batches" in
	*,*)
		for b in $(echo "${batches#*,}" | tr ',' ' '); do
			run_bench "ktb$b" bench --direction both --iterations 0 --bulk-mb 0 \
				--small-size 64 --small-count "$small" --timeout 120 --batch "$b"
		done
		;;
	esac
fi

# vsock: the 6.12 cloud kernel has it as modules (the image carries them
# decompressed in /lib/modules/peers).
vsock_ready=1
want vsock || vsock_ready=0
[ "$vsock_ready" = 0 ] || for m in vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
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
# rejects (DescriptorLengthTooSmall) and the stream stalls. The 64 KiB-write
# run comes last, alone, with a 20 s stall limit: it shows what happens.
if [ "$vsock_ready" = 1 ]; then
	# shellcheck disable=SC2086
	run_bench vsock --vsock 2:5000 --write-chunk 16384 $bench_args
	run_bench vsock64k --vsock 2:5000 --direction to-host --iterations 0 --small-count 0 \
		--bulk-size 65536 --bulk-mb "$bulk_mb" --timeout 20
fi

# virtio-serial (built in): the port named kt.bench, found through sysfs
# (no udev here to make /dev/virtio-ports/kt.bench).
port=
want serial && for d in /sys/class/virtio-ports/*; do
	[ "$(cat "$d/name" 2>/dev/null)" = kt.bench ] && port=/dev/${d##*/}
done
if ! want serial; then
	:
elif [ -n "$port" ] && [ -c "$port" ]; then
	# shellcheck disable=SC2086
	run_bench serial --serial "$port" $bench_args
else
	echo "BENCH serial: n/a no virtio-serial port named kt.bench"
fi

# Host-initiated benches of guest services: k.echo (kt_kecho.ko) and
# u.echo (user space, this kt listen).
if grep -q "^kt_kecho " /proc/modules; then
	opens0=$(kt_stat opens_in)
	kt listen u.echo --echo -q --channels 1 >/tmp/uecho.out 2>&1 &
	uecho=$!
	usleep 200000
	echo "KT: bench-peers: host benches ready"
	_n=0
	until [ "$(kt_stat opens_in)" -ge $((opens0 + 2)) ] && [ "$(kt_stat open_channels)" = 0 ]; do
		_n=$((_n + 1))
		[ "$_n" -le 12000 ] || break
		usleep 100000
	done
	kill "$uecho" 2>/dev/null
	echo "KT: bench-peers: host benches done (opens_in $(($(kt_stat opens_in) - opens0)))"
else
	echo "BENCH kecho: n/a kt_kecho.ko is not loaded"
fi

[ "$ok" -gt 0 ] || fail "no transport could be measured"
