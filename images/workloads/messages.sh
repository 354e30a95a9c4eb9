# Workload "messages": message sizes, order and the size limit, in both
# directions. The host test (tests/tests/e2e_messages.rs) plays the other
# end of every step; the stream parameters below must match it.
#
# MIXED (kt.mixed=, default 300) and ORDER (kt.order=, default 100000) set
# the sizes of two streams, so the same steps run against a device with a
# larger max_msg_size in reasonable time.
# guest -> host (host service "sink", one channel per step, in this order):
#   one    16 messages of 1 byte               kt gen --seed 11
#   max    16 messages of max_msg_size bytes   kt gen --seed 12
#   mixed  MIXED messages of 1..max_msg_size   kt gen --seed 13
#   order  ORDER messages of 16..64 bytes      kt gen --seed 14
#   over   kt send of a max_msg_size file, then of a max_msg_size+1 file:
#          the second write must fail with EMSGSIZE
#   empty  kt send sink "" a "" b "": zero-length messages are messages
# host -> guest (guest listeners, all started at once, then
# "KT: ready for host streams"):
#   h-one, h-max, h-mixed, h-order   kt verify --listen, seeds 21..24
#   h-over  kt recv --listen: the host sends "fits", then a message one
#           byte over the limit; the device closes the channel with
#           EMSGSIZE (SPEC section 9)
#   h-empty kt recv --listen --count 5 --hex: the host sends "", "a", "",
#           "b", "" and keeps the channel open until the guest reports
. /workloads/lib.sh
need_module kerntransport
sys=$(kt_sysfs) || fail "no kerntransport device bound"
max=$(cat "$sys/max_msg_size")
mixed=$(kt_arg kt.mixed) || mixed=300
order=$(kt_arg kt.order) || order=100000
echo "KT: max_msg_size $max"
# The negotiated feature bits (bit 33: ACCESS_PLATFORM, buffers mapped
# through the DMA API), for the bounce-buffer pass of scripts/e2e.sh.
echo "KT: features $(cat "$(kt_sysfs)/../features")"

# Host -> guest listeners first, so the host can work while we send.
start_verify() { # NAME COUNT MIN MAX SEED
	kt verify "$1" --listen --count "$2" --min-size "$3" --max-size "$4" \
		--seed "$5" --timeout 120 >"/tmp/$1.out" 2>&1 &
	echo "$!" >"/tmp/$1.pid"
}
start_verify h-one 16 1 1 21
start_verify h-max 16 "$max" "$max" 22
start_verify h-mixed "$mixed" 1 "$max" 23
start_verify h-order "$order" 16 64 24
kt recv h-over --listen --count 2 --timeout 120 >/tmp/h-over.out 2>&1 &
over_pid=$!
kt recv h-empty --listen --count 5 --hex --timeout 120 >/tmp/h-empty.out 2>&1 &
empty_pid=$!
echo "KT: ready for host streams"

g2h() { # LABEL kt-gen-args...
	label=$1
	shift
	out=$(kt gen sink "$@" 2>&1) || fail "g2h $label: $out"
	echo "KT: g2h $label: $out"
}
g2h one --count 16 --min-size 1 --max-size 1 --seed 11
g2h max --count 16 --min-size "$max" --max-size "$max" --seed 12
g2h mixed --count "$mixed" --min-size 1 --max-size "$max" --seed 13
g2h order --count "$order" --min-size 16 --max-size 64 --seed 14

dd if=/dev/zero of=/tmp/max bs="$max" count=1 2>/dev/null
dd if=/dev/zero of=/tmp/over bs=$((max + 1)) count=1 2>/dev/null
if out=$(kt send sink --file /tmp/max --file /tmp/over 2>&1); then
	fail "g2h over: a $((max + 1))-byte write was accepted"
fi
case "$out" in
*EMSGSIZE*) echo "KT: g2h over: $out" ;;
*) fail "g2h over: expected EMSGSIZE, got: $out" ;;
esac

out=$(kt send sink "" a "" b "" 2>&1) || fail "g2h empty: $out"
echo "KT: g2h empty: sent"

for name in h-one h-max h-mixed h-order; do
	wait "$(cat "/tmp/$name.pid")" || fail "h2g $name: $(cat "/tmp/$name.out")"
	echo "KT: h2g $name: $(cat "/tmp/$name.out")"
done
if wait "$over_pid"; then
	fail "h2g h-over: kt recv succeeded: $(cat /tmp/h-over.out)"
fi
case "$(cat /tmp/h-over.out)" in
fits*EMSGSIZE*) echo "KT: h2g h-over: $(tr '\n' ' ' </tmp/h-over.out)" ;;
*) fail "h2g h-over: expected 'fits' then EMSGSIZE, got: $(cat /tmp/h-over.out)" ;;
esac
wait "$empty_pid" || fail "h2g h-empty: $(cat /tmp/h-empty.out)"
# --hex prints each message as hex on its own line: an empty line is an
# empty message.
echo "KT: h2g h-empty: [$(tr '\n' '|' </tmp/h-empty.out)]"
