# shellcheck shell=sh
# Workload "fairness": the guest's half of scripts/bench-fairness.sh
# (issue 11). `kt bench echo --fairness N`: opens N channels to the host
# echo service (`kt serve --mode echo`), measures ITERATIONS 64 B round
# trips over N-1 of them in turn, idle and then while the N-th floods (64 B
# messages and their echoes, as fast as they go), and prints p50/p99 of
# both and p99 flooding / idle. Every output line is printed as
# "BENCH fairness: <line>". Sizes: kt.fairness=N,ITERATIONS (default
# 1000,5000). kt.flood=source: the flooding channel goes to host service
# "source" (`kt serve --mode source`) and is only read (a host -> guest
# flood) instead of echoing; kt.flood=sink: to host service "sink" (`kt
# serve --mode sink`), only written (a guest -> host flood).
# kt.tx_share=N[,N...]: run the bench once per value, with the driver's
# tx_share parameter set to it (its lines then start "tx_share N: ").
# shellcheck source=images/workloads/lib.sh
. /workloads/lib.sh
need_module kerntransport

params=$(kt_arg kt.fairness) || params=1000,5000
n=${params%%,*}
iter=${params#*,}
# One descriptor per channel, one more for the flood's reader.
ulimit -n $((n + 64)) 2>/dev/null || true
flood=$(kt_arg kt.flood) || flood=echo
case "$flood" in
echo) from= ;;
source) from="--flood-from source" ;;
sink) from="--flood-to sink" ;;
*) fail "kt.flood must be echo, source or sink, not '$flood'" ;;
esac
shares=$(kt_arg kt.tx_share) || shares=
param=/sys/module/kerntransport/parameters/tx_share
echo "KT: fairness: $n channels, $iter round trips per case, flood: $flood"
for share in $(echo "${shares:-default}" | tr , " "); do
	prefix=
	if [ "$share" != default ]; then
		echo "$share" >"$param" || fail "cannot set tx_share to '$share'"
		prefix="tx_share $share: "
	fi
	# shellcheck disable=SC2086 # $from is empty or two words
	if ! kt bench echo --fairness "$n" $from --iterations "$iter" --size 64 --small-size 64 \
		--timeout 120 >/tmp/fairness.out 2>/tmp/fairness.err; then
		sed "s/^/BENCH fairness: $prefix/" /tmp/fairness.out
		fail "kt bench --fairness: $(tail -n 1 /tmp/fairness.err)"
	fi
	sed "s/^/BENCH fairness: $prefix/" /tmp/fairness.out
done
