# Workload "vms": one of two guests served by the same kt-vhost-device
# process (tests/tests/e2e_vms.rs, docs/e2e.md). Each VM's policy names
# only its own echo service: kt.own= is this guest's, kt.other= the other
# VM's. The host kills one guest mid-stream and lets the other finish.
#
#   print guest_id, check the bound device     -> "KT: guest_id N"
#   kt send OTHER must fail with ENOENT          -> "KT: OTHER refused: ..."
#   kt recv ctl --listen (the host's commands),
#   kt soak OWN (2 channels, every echo verified,
#   KT-SOAK-PROGRESS OWN: ... every second)      -> "KT: streaming to OWN"
#   (host: sends "stop" on ctl)
#   SIGTERM the soak (it drains and reports its
#   KT-SOAK OWN: line; any loss fails it)        -> "KT: soak done"
#   (host: reads the device's stats, sends "bye" on ctl)
#                                                -> "KT: bye"
. /workloads/lib.sh
need_module kerntransport
sys=$(kt_sysfs) || fail "no kerntransport device bound"
own=$(kt_arg kt.own) || fail "no kt.own= on the kernel command line"
other=$(kt_arg kt.other) || fail "no kt.other= on the kernel command line"
echo "KT: guest_id $(cat "$sys/guest_id")"

# The other VM's service is not in this VM's policy: OPEN_ERR NOENT.
if out=$(kt send "$other" x 2>&1); then
	fail "$other: opened from this VM: $out"
fi
case "$out" in
*"no such service (ENOENT)"*) echo "KT: $other refused: $out" ;;
*) fail "$other: expected ENOENT, got: $out" ;;
esac

kt recv ctl --listen --count 2 --timeout 600 >/tmp/ctl.out 2>&1 &
ctl=$!
kt soak "$own" --channels 2 --count 1000000000 --max-size 4096 \
	--label "$own" --report-secs 1 &
soak=$!
echo "KT: streaming to $own"

told() { grep -q "^$1\$" /tmp/ctl.out; }
wait_until 600 "the host's stop" told stop
kill -0 "$soak" 2>/dev/null || fail "kt soak $own ended before the host's stop"
kill -TERM "$soak"
wait "$soak" || fail "kt soak $own failed (see its KT-SOAK line)"
echo "KT: soak done"

wait "$ctl" || fail "ctl: $(cat /tmp/ctl.out)"
told bye || fail "ctl: expected stop, bye; got: $(tr '\n' ' ' </tmp/ctl.out)"
echo "KT: bye"
