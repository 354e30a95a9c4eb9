# Workload "backend-restart": a round trip to the host service "echo"
# works; the host then restarts kt-vhost-device (the test waits for
# "KT: ready for backend restart"); QEMU reconnects, the new backend sends a
# transport reset, the driver reports it, and a new channel to "echo" opens.
# (A data round trip after the reset is not checked here: see the e2e
# test's comment.)
. /workloads/lib.sh
need_module kerntransport

diagnose() {
	echo "KT: interrupts:"
	grep -i -e virtio -e CPU /proc/interrupts
	echo "KT: driver stats:"
	kt stats 2>&1
	dmesg | grep -i kerntransport | tail -n 20
}

out=$(echo ping-before | kt connect echo --count 1 --timeout 30 2>&1) || {
	diagnose
	fail "round trip before the restart failed: $out"
}
case "$out" in
*ping-before*) ;;
*) fail "round trip before the restart came back as '$out'" ;;
esac

echo "KT: ready for backend restart"
i=0
until dmesg | grep -q 'transport reset'; do
	i=$((i + 1))
	[ "$i" -le 1200 ] || { diagnose; fail "no transport reset within 120 s"; }
	usleep 100000
done
echo "KT: transport reset seen"

out=$(kt info echo 2>&1) || {
	diagnose
	fail "opening a channel after the restart failed: $out"
}
echo "$out"
case "$out" in
*"open ("*) ;;
*) fail "channel opened after the restart is not open: $out" ;;
esac
