#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS]: runs every fuzz target for a bounded time and
# prints one line per target (runs, coverage, corpus, crashes). Fails, naming
# the crash input and how to reproduce it, if any target crashes; fails with
# the reason if the nightly toolchain or cargo-fuzz is missing. Installs
# nothing (scripts/setup.sh does). Time per target: SECONDS, else
# $KT_FUZZ_SECS, else 60. Seeds (committed) are in */fuzz/seeds/TARGET;
# what a run finds goes to */fuzz/corpus/TARGET (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/fuzz-tools.sh
. scripts/lib/fuzz-tools.sh
PATH=$(kt_cargo_fuzz_root)/bin:$PATH
# Builds are cached outside the checkout (a fresh clone reuses them).
target_dir=${KT_FUZZ_TARGET_DIR:-${KT_CACHE:-$HOME/.cache/kerntransport}/fuzz-target}

secs=${1:-${KT_FUZZ_SECS:-60}}
case $secs in
'' | *[!0-9]* | 0)
	echo "fuzz: SECONDS must be a positive whole number, not '$secs'" >&2
	exit 1
	;;
esac

# Crate directory (holding fuzz/) and target, one pair per line.
TARGETS=(
	"proto decode"
	"vhost-device tx_chain"
)

if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "fuzz: FAIL: no nightly Rust toolchain (cargo +nightly does not run); install it with: rustup toolchain install nightly" >&2
	exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	echo "fuzz: FAIL: cargo-fuzz is not installed in $(kt_cargo_fuzz_root); scripts/setup.sh installs it" >&2
	exit 1
fi

logs=$(mktemp -d /tmp/kt-fuzz.XXXXXX)
trap 'rm -rf "$logs"' EXIT
crashed=0

for t in "${TARGETS[@]}"; do
	read -r crate target <<<"$t"
	log=$logs/$target.log
	if ! (cd "$crate" && nice cargo +nightly fuzz build --target-dir "$target_dir/$crate" "$target") >"$log" 2>&1; then
		tail -n 30 "$log" >&2
		echo "fuzz $target: FAIL: build failed (cd $crate && cargo +nightly fuzz build $target)" >&2
		exit 1
	fi
	mkdir -p "$crate/fuzz/corpus/$target"
	rc=0
	# Absent stats (an early crash) leave a field empty, shown as "?".
	(cd "$crate" && nice cargo +nightly fuzz run --target-dir "$target_dir/$crate" "$target" \
		"fuzz/corpus/$target" "fuzz/seeds/$target" -- \
		-max_total_time="$secs" -timeout=10 -print_final_stats=1) >"$log" 2>&1 || rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1 || true)
	cov=$(grep -o ' cov: [0-9]*' "$log" | tail -n 1 | tr -dc 0-9 || true)
	corp=$(grep -o ' corp: [0-9]*' "$log" | tail -n 1 | tr -dc 0-9 || true)
	input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1 || true)
	case $input in
	'' | /*) ;;
	*) input=$crate/$input ;;
	esac
	if [ "$rc" = 0 ] && [ -z "$input" ]; then
		echo "fuzz $target: ${runs:-?} runs in ${secs} s, coverage ${cov:-?} edges, corpus ${corp:-?}, crashes 0"
		continue
	fi
	crashed=1
	grep -E '^(==[0-9]+==|thread .* panicked|SUMMARY)' "$log" | head -n 10 >&2 || true
	if [ -n "$input" ]; then
		echo "fuzz $target: FAIL: crash after ${runs:-?} runs, input $input; reproduce: cd $crate && cargo +nightly fuzz run $target $input" >&2
	else
		tail -n 20 "$log" >&2
		echo "fuzz $target: FAIL: cargo fuzz exited with $rc and wrote no crash input" >&2
	fi
done
exit "$crashed"
