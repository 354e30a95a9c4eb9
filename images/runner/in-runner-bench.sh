#!/bin/sh
# The kt-vmm half of scripts/bench-peers.sh (KT_BENCH_VMM=1), run inside
# the KVM runner VM (installed as kt-bench-vmm) or on a host with a real
# /dev/kvm: the host bench peer (`kt serve --mode bench`), kt-vhost-device,
# and the project image under kt-vmm with workload bench-peers limited to
# kerntransport (kt.peers=kt); when the guest is ready it runs the host
# benches of k.echo and u.echo itself. Prints the guest's "BENCH kt: ..."
# lines and its own "BENCH kecho: ..." / "BENCH uecho: ..." lines, then
# "KT-VMM-BENCH: done". Usage: kt-bench-vmm ITER,BULK_MB,SMALL_COUNT
set -u
img=${KT_IMAGE_DIR:-/kt-image}
params=${1:-2000,32,50000}
tmp=$(mktemp -d)
log=$tmp/serial.log
pids=
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null; done
	rm -rf "$tmp"
}
trap cleanup EXIT
die() {
	echo "kt-bench-vmm: FAILED: $*"
	tail -n 20 "$log" 2>/dev/null | sed 's/^/kt-bench-vmm:   /'
	exit 1
}
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]; }
iter=${params%%,*}
bulk_mb=${params#*,}
bulk_mb=${bulk_mb%%,*}
small=${params##*,}

printf '[[service]]\nname = "bench"\nsocket = "%s/bench.sock"\n' "$tmp" >"$tmp/policy.toml"
kt serve --socket "$tmp/bench.sock" --mode bench --cpu-pids "$tmp/cpu.pids" >"$tmp/serve.log" 2>&1 &
pids="$pids $!"
kt-vhost-device --socket-path "$tmp/vm.vhost" --policy "$tmp/policy.toml" \
	--listen "$tmp/listen.sock" --guest-id 7 --log-level warn >"$tmp/device.log" 2>&1 &
dev_pid=$!
pids="$pids $dev_pid"
i=0
until [ -S "$tmp/vm.vhost" ] && [ -S "$tmp/bench.sock" ]; do
	i=$((i + 1))
	[ "$i" -le 100 ] || die "kt-vhost-device did not start: $(cat "$tmp/device.log")"
	sleep 0.1
done
: >"$log"
kt-vmm --kernel "$img/vmlinuz" --initrd "$img/initramfs.cpio.gz" --cpus 1 --mem 512M \
	--cmdline "console=ttyS0 reboot=k panic=-1 quiet kt.workload=bench-peers kt.peers=kt kt.bench=$params kt.timeout=1500" \
	--vhost-user "socket=$tmp/vm.vhost,virtio-id=60,queues=3,queue-size=256,config-size=16" \
	>"$log" 2>&1 </dev/null &
vmm_pid=$!
pids="$vmm_pid $pids"
echo "$vmm_pid $dev_pid" >"$tmp/cpu.pids"
: >"$tmp/host.txt"
host_bench() {
	if out=$(kt --host "$tmp/listen.sock" bench "$2" --iterations "$iter" --size 64 \
		--bulk-size 65536 --bulk-mb "$bulk_mb" --small-size 64 --small-count "$small" \
		--timeout 120 2>"$tmp/$1.err"); then
		printf '%s\n' "$out" | sed "s/^/BENCH $1: /" >>"$tmp/host.txt"
	else
		echo "BENCH $1: n/a $(tail -n1 "$tmp/$1.err")" >>"$tmp/host.txt"
	fi
}
host_done=0
i=0
until grep -q "KT-RESULT:" "$log"; do
	alive "$vmm_pid" || die "kt-vmm exited without a result"
	if [ "$host_done" = 0 ] && grep -q "KT: bench-peers: host benches ready" "$log"; then
		host_done=1
		host_bench kecho k.echo
		host_bench uecho u.echo
	fi
	i=$((i + 1))
	[ "$i" -le 15000 ] || die "no result from the guest within 1500 s"
	sleep 0.1
done
grep -q "KT-RESULT: PASS" "$log" || die "the guest failed: $(grep 'KT-RESULT' "$log")"
tr -d '\r' <"$log" | grep '^BENCH '
cat "$tmp/host.txt"
echo "KT-VMM-BENCH: $(kt-vmm --version 2>/dev/null | head -n1), runner kernel $(uname -r), guest $(tr -d '\r' <"$log" | sed -n 's/^KT: init running on //p' | head -n1)"
echo "KT-VMM-BENCH: done"
