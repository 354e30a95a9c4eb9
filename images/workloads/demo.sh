# Workload "demo": the guest's half of `make demo` (scripts/demo-qemu.sh).
# Lines starting "DEMO:" are what the demo shows; the host script prints
# them as they arrive and drives its own half on "KT: ready for host".
#   [1] a guest program sends messages to the host service "echo" and
#       prints the answers; a short `kt bench` against it
#   [2] (host) a host program talks to the guest kernel's k.echo
#   [3] (host) the device's counters
#   [4] the driver's counters (`kt stats`)
. /workloads/lib.sh
need_module kerntransport
need_module kt_kecho
kt_sysfs >/dev/null || fail "no kerntransport device bound"
say() { echo "DEMO: $*"; }
indent() { while IFS= read -r l; do say "    $l"; done; }

say "guest: Linux $(uname -r), kerntransport.ko + kt_kecho.ko loaded (k.echo is served by guest kernel code)"
kt info | indent

say ""
say "[1] guest program -> host service \"echo\": kt connect echo"
set -- "hello from the guest" "message boundaries are kept" "3rd message"
for m in "$@"; do say "    guest sends:   $m"; done
answers=$(printf '%s\n' "$@" | kt connect echo --count 3 --timeout 30 2>&1) ||
	fail "guest -> echo: $answers"
echo "$answers" | while IFS= read -r l; do say "    host answers:  $l"; done
[ "$answers" = "$(printf '%s\n' "$@")" ] || fail "the answers differ from what was sent"
say "    short benchmark against the same service (kt bench echo, TCG guest):"
bench=$(kt bench echo --iterations 200 --bulk-mb 2 --small-count 2000 2>&1) ||
	fail "kt bench: $bench"
echo "$bench" | indent

o0=$(kt_stat opens_in)
say ""
echo "KT: ready for host"
wait_until 60 "the host program's k.echo session" host_sessions_done $((o0 + 1))

say ""
say "[4] driver counters in the guest: kt stats"
kt stats | indent
