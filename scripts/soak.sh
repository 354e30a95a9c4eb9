#!/usr/bin/env bash
# The long soak with faults: the end-to-end test e2e_soak (tests/tests/
# e2e_soak.rs, docs/e2e.md) with MESSAGES messages in all (default
# 1,000,000; `make test` runs it with 100,000). Builds what it needs like
# scripts/e2e.sh; prints the per-soak table and a `KT-SOAK total:` line.
#   scripts/soak.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
case "$n" in
'' | *[!0-9]*) echo "usage: scripts/soak.sh [MESSAGES] (a number, default 1000000)" >&2; exit 2 ;;
esac
KT_SOAK_MESSAGES=$n exec scripts/e2e.sh e2e_soak
