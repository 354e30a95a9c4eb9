# Workload "vmm-e2e": the guest half of the kt-vmm end-to-end run
# (images/runner/in-runner-e2e-test.sh is the host half; it follows the
# "KT-STEP: ..." lines on the serial console). Host services in the policy:
# echo (kt serve --mode echo), g2h, slow, after (kt verify --socket).
#   1. guest -> host: kt gen g2h, N messages, verified on the host
#   2. host -> guest: kt verify --listen h2g, N messages from the host's
#      kt gen; meanwhile the host talks to the in-kernel k.echo
#   3. backpressure: kt gen slow while the host's reader is stopped
#   4. backend restart: a channel to echo stays open, the host restarts
#      kt-vhost-device, the channel fails with ECONNRESET, new channels work
#      and traffic continues (kt gen after, verified on the host)
# kt.n=N (default 20000) sets N.
. /workloads/lib.sh
need_module kerntransport
need_module kt_kecho
n=$(kt_arg kt.n) || n=20000
step() { echo "KT-STEP: $*"; }

diagnose() {
	echo "KT: interrupts:"
	grep -i -e virtio -e CPU /proc/interrupts
	echo "KT: driver stats:"
	kt stats 2>&1
	dmesg | grep -i -e kerntransport -e virtio | tail -n 20
}

# round_trip TEXT: a new channel to "echo", TEXT must come back.
round_trip() {
	out=$(echo "$1" | kt connect echo --count 1 --timeout 30 2>&1) || {
		diagnose
		fail "round trip '$1' failed: $out"
	}
	case "$out" in
	*"$1"*) echo "KT: echo answered '$out'" ;;
	*) fail "round trip '$1' came back as '$out'" ;;
	esac
}

# 0. the queue pairs the driver set up (the host checks them).
sys=$(kt_sysfs) || fail "no kerntransport device bound"
step "pairs $(cat "$sys/queue_pairs" 2>/dev/null || echo none)"

# 1. guest -> host.
step "g2h start $n"
out=$(kt gen g2h --count "$n" --min-size 1 --max-size 256 --seed 11 2>&1) || {
	diagnose
	fail "kt gen g2h: $out"
}
echo "KT: g2h: $out"

# 2. host -> guest (the host retries until this listener exists).
kt verify h2g --listen --count "$n" --min-size 1 --max-size 256 --seed 12 \
	--timeout 120 >/tmp/h2g.out 2>&1 &
vpid=$!
step "h2g listening $n"
if ! wait "$vpid"; then
	diagnose
	fail "kt verify h2g: $(tr '\n' ' ' </tmp/h2g.out)"
fi
echo "KT: h2g: $(cat /tmp/h2g.out)"

# 3. backpressure: the host stopped the reader of "slow" before this.
step "backpressure start"
(kt gen slow --count 2000 --min-size 1024 --max-size 4096 --seed 13 >/tmp/slow.out 2>&1 &&
	echo "KT-STEP: backpressure gen done") &
gpid=$!
if ! wait "$gpid"; then
	diagnose
	fail "kt gen slow: $(tr '\n' ' ' </tmp/slow.out)"
fi
echo "KT: slow: $(cat /tmp/slow.out)"

# 4. backend restart with a channel open.
round_trip ping-before
kt recv echo --timeout 300 >/tmp/held.out 2>&1 &
rpid=$!
i=0
until [ "$(cat "$(kt_sysfs)/open_channels")" -ge 1 ]; do
	i=$((i + 1))
	[ "$i" -le 100 ] || fail "the held channel to echo never opened"
	usleep 100000
done
step "ready for backend restart"
if wait "$rpid"; then
	fail "the held channel ended cleanly across the restart: $(cat /tmp/held.out)"
fi
held=$(tr '\n' ' ' </tmp/held.out)
case "$held" in
*ECONNRESET*) echo "KT: held channel failed as expected: $held" ;;
*) diagnose; fail "held channel: expected ECONNRESET, got '$held'" ;;
esac
dmesg | grep -q 'transport reset' || fail "driver logged no transport reset"
round_trip ping-after
out=$(kt gen after --count 2000 --min-size 1 --max-size 1024 --seed 14 2>&1) || {
	diagnose
	fail "kt gen after: $out"
}
echo "KT: after restart: $out"
step "done"
