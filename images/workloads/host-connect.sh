# Workload "host-connect": host programs reach guest services (here the
# in-kernel k.echo of kt_kecho.ko) through kt-vhost-device's --listen
# socket. Prints "KT: ready for host connections", then passes once
# kt.opens=N (default 1) channels have been opened from the host and all
# of them have closed again, within kt.wait=SECS (default 60).
. /workloads/lib.sh
need_module kerntransport
need_module kt_kecho
want=$(kt_arg kt.opens) || want=1
secs=$(kt_arg kt.wait) || secs=60
sys=$(kt_sysfs) || fail "no kerntransport device bound"

echo "KT: ready for host connections"
i=0
until [ "$(cat "$sys/opens_in")" -ge "$want" ] && [ "$(cat "$sys/open_channels")" = 0 ]; do
	i=$((i + 1))
	[ "$i" -le $((secs * 10)) ] || fail "after $secs s: opens_in $(cat "$sys/opens_in") (want $want), open_channels $(cat "$sys/open_channels")"
	usleep 100000
done
echo "KT: $(cat "$sys/opens_in") host channel(s) served"
