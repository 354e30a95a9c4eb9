# Workload "kecho-reload": the host talks to the guest kernel's k.echo
# (kt_kecho.ko), then both modules are unloaded and loaded again while
# idle, and channels work again in both directions. The host test
# (tests/tests/e2e_kecho.rs) plays the other end; host service "echo" is
# `kt serve --mode echo`.
#
#   round trip to "echo"                        -> "KT: ready for k.echo"
#   (host: k.echo session; closes it)
#   rmmod kt_kecho kerntransport; insmod both   -> "KT: modules reloaded"
#   round trip to "echo"                        -> "KT: ready for k.echo after reload"
#   (host: k.echo session again)
. /workloads/lib.sh
need_module kerntransport
need_module kt_kecho
kt_sysfs >/dev/null || fail "no kerntransport device bound"

round_trip() { # TEXT
	out=$(echo "$1" | kt connect echo --count 1 --timeout 30 2>&1) ||
		fail "round trip '$1': $out"
	[ "$out" = "$1" ] || fail "round trip '$1' came back as '$out'"
	echo "KT: echo round trip: $out"
}

round_trip before-reload
o0=$(kt_stat opens_in)
echo "KT: ready for k.echo"
wait_until 120 "the host's k.echo session" host_sessions_done $((o0 + 1))

rmmod kt_kecho || fail "rmmod kt_kecho failed"
rmmod kerntransport || fail "rmmod kerntransport failed"
grep -q '^kerntransport ' /proc/modules && fail "kerntransport is still loaded"
[ -e /dev/kerntransport ] && fail "/dev/kerntransport still exists after rmmod"
echo "KT: modules unloaded"
for m in kerntransport kt_kecho; do
	out=$(insmod "/lib/modules/kerntransport/$m.ko" 2>&1) || fail "insmod $m.ko: $out"
done
bound() { kt_sysfs >/dev/null && [ -c /dev/kerntransport ]; }
wait_until 30 "the device to be bound again" bound
echo "KT: modules reloaded: max_msg_size $(kt_stat max_msg_size), resets $(kt_stat resets), open_channels $(kt_stat open_channels)"

round_trip after-reload
o0=$(kt_stat opens_in)
echo "KT: ready for k.echo after reload"
wait_until 120 "the host's second k.echo session" host_sessions_done $((o0 + 1))
