# Workload "backend-restart": a round trip to the host service "echo"
# works; the host then restarts kt-vhost-device (the test waits for
# "KT: ready for backend restart"); QEMU reconnects, the new backend sends a
# transport reset, the driver reports it, and a round trip on a new channel
# to "echo" works again.
. /workloads/lib.sh
need_module kerntransport

diagnose() {
	echo "KT: interrupts:"
	grep -i -e virtio -e CPU /proc/interrupts
	echo "KT: driver stats:"
	kt stats 2>&1
	dmesg | grep -i kerntransport | tail -n 20
}

# round_trip TEXT: send TEXT on a new channel to "echo", expect it back.
round_trip() {
	out=$(echo "$1" | kt connect echo --count 1 --timeout 30 2>&1) || {
		diagnose
		fail "round trip '$1' failed: $out"
	}
	case "$out" in
	*"$1"*) ;;
	*) fail "round trip '$1' came back as '$out'" ;;
	esac
}

round_trip ping-before
echo "KT: ready for backend restart"
i=0
until dmesg | grep -q 'transport reset'; do
	i=$((i + 1))
	[ "$i" -le 1200 ] || { diagnose; fail "no transport reset within 120 s"; }
	usleep 100000
done
echo "KT: transport reset seen"
round_trip ping-after
