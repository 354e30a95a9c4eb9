# Workload "backend-restart": a channel to the host service "echo" opens
# (so the rings are in use); the host then restarts kt-vhost-device (the
# test waits for "KT: ready for backend restart"); QEMU reconnects, the new
# backend sends a transport reset, the driver reports it, and a new channel
# to "echo" opens. Data after the reset is the full restart test's job.
. /workloads/lib.sh
need_module kerntransport

diagnose() {
	echo "KT: interrupts:"
	grep -i -e virtio -e CPU /proc/interrupts
	echo "KT: driver stats:"
	kt stats 2>&1
	dmesg | grep -i kerntransport | tail -n 20
}

# open_echo WHEN: open a channel to "echo", check it is open, close it.
open_echo() {
	out=$(kt info echo 2>&1) || {
		diagnose
		fail "opening a channel $1 the restart failed: $out"
	}
	echo "$out"
	case "$out" in
	*"open ("*) ;;
	*) fail "channel opened $1 the restart is not open: $out" ;;
	esac
}

open_echo before
echo "KT: ready for backend restart"
i=0
until dmesg | grep -q 'transport reset'; do
	i=$((i + 1))
	[ "$i" -le 1200 ] || { diagnose; fail "no transport reset within 120 s"; }
	usleep 100000
done
echo "KT: transport reset seen"

open_echo after
