# shellcheck shell=sh
# Workload "multiqueue": the guest half of tests/tests/e2e_multiqueue.rs
# (issue 11, SPEC §1.4). Checks the number of rx/tx queue pairs the driver
# set up against kt.pairs= (what the host's device and VMM allow), then
# runs two verified echo soaks at once, one pinned to each of CPU 0 and
# CPU 1 (with two pairs their channels live on different pairs: the driver
# opens a channel on the pair of the opening CPU), and a third soak from
# the host into guest listener "uecho" (channels the device opens, pair 0).
#
#   read $sys/queue_pairs                          -> "KT: queue pairs N"
#   kt listen uecho --echo (the host soaks it)     -> "KT: listening"
#   taskset -c 0 / -c 1 kt soak echo, both at once -> "KT: soaks done"
#   (host: its soak of uecho ends, sends "bye" on ctl)
#   the driver's counters: no message on a wrong pair
#                                                  -> "KT: counters ok"
# shellcheck source=images/workloads/lib.sh
. /workloads/lib.sh
need_module kerntransport
sys=$(kt_sysfs) || fail "no kerntransport device bound"
want=$(kt_arg kt.pairs) || fail "no kt.pairs= on the kernel command line"
count=$(kt_arg kt.mq_count) || count=4000
[ -r "$sys/queue_pairs" ] || fail "$sys/queue_pairs missing"
pairs=$(cat "$sys/queue_pairs")
echo "KT: queue pairs $pairs"
[ "$pairs" = "$want" ] || fail "the driver uses $pairs queue pair(s), want $want"

kt listen uecho --echo --quiet >/tmp/uecho.out 2>&1 &
kt recv ctl --listen --count 1 --timeout 600 >/tmp/ctl.out 2>&1 &
ctl=$!
echo "KT: listening"

taskset -c 0 kt soak echo --channels 2 --count "$count" --max-size 4096 \
	--label cpu0 >/tmp/soak0.out 2>&1 &
s0=$!
taskset -c 1 kt soak echo --channels 2 --count "$count" --max-size 4096 \
	--label cpu1 >/tmp/soak1.out 2>&1 &
s1=$!
ok=1
wait "$s0" || ok=0
wait "$s1" || ok=0
cat /tmp/soak0.out /tmp/soak1.out
[ "$ok" = 1 ] || fail "a soak failed (see its KT-SOAK line)"
echo "KT: soaks done"

wait "$ctl" || fail "ctl: $(cat /tmp/ctl.out)"
grep -q '^bye$' /tmp/ctl.out || fail "ctl: expected bye, got: $(cat /tmp/ctl.out)"
wrong=$(cat "$sys/wrong_pair" 2>/dev/null) || fail "$sys/wrong_pair missing"
[ "$wrong" = 0 ] || fail "$wrong message(s) arrived on a pair other than their channel's"
echo "KT: counters ok"
