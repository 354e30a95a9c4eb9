# shellcheck shell=sh
# Workload "mq-bench": the guest's half of scripts/bench-multiqueue.sh
# (issue 11). Prints the queue pairs the driver uses, then for each
# direction runs one `kt bench --direction to-host|from-host` message-rate
# phase (64 B) per vCPU, each pinned with taskset (the driver opens a
# channel on its CPU's pair), all at once against the host bench peer
# (`kt serve --mode bench`). The aggregate is all their messages over the
# wall time from the first start to the last end (/proc/uptime, 10 ms
# resolution). Lines: "BENCH mq: pairs N", "BENCH mq: WAY cpuI R msgs/s"
# and "BENCH mq: WAY aggregate R msgs/s". kt.mq_bench=COUNT: messages per
# process per direction (default 200000).
# shellcheck source=images/workloads/lib.sh
. /workloads/lib.sh
need_module kerntransport
sys=$(kt_sysfs) || fail "no kerntransport device bound"
count=$(kt_arg kt.mq_bench) || count=200000
cpus=$(grep -c '^processor' /proc/cpuinfo)
echo "BENCH mq: pairs $(cat "$sys/queue_pairs" 2>/dev/null || echo 1)"
echo "BENCH mq: guest $cpus vCPUs, $count x 64 B messages per vCPU per direction"

# centis: /proc/uptime in hundredths of a second.
centis() {
	read -r up _ </proc/uptime
	echo "${up%.*}${up#*.}"
}

for way in to-host from-host; do
	t0=$(centis)
	pids=
	i=0
	while [ "$i" -lt "$cpus" ]; do
		taskset -c "$i" kt bench bench --direction "$way" --iterations 0 --bulk-mb 0 \
			--small-size 64 --small-count "$count" --timeout 120 \
			>"/tmp/mq-$way-$i.out" 2>"/tmp/mq-$way-$i.err" &
		pids="$pids $!"
		i=$((i + 1))
	done
	for p in $pids; do
		wait "$p" || fail "kt bench $way: $(cat /tmp/mq-$way-*.err | tail -n 3)"
	done
	t1=$(centis)
	i=0
	while [ "$i" -lt "$cpus" ]; do
		r=$(sed -n 's/^message rate, .* \([0-9][0-9]*\) msgs\/s$/\1/p' "/tmp/mq-$way-$i.out")
		[ -n "$r" ] || fail "no message rate from kt bench $way on cpu $i: $(cat "/tmp/mq-$way-$i.out")"
		echo "BENCH mq: $way cpu$i $r msgs/s"
		i=$((i + 1))
	done
	echo "BENCH mq: $way aggregate $((cpus * count * 100 / (t1 - t0 + 1))) msgs/s"
done
