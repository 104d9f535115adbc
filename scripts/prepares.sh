#!/usr/bin/env bash
# SQLite statements prepared per W2 pair on hibernated tenants: what a cold wake costs in
# statement preparation, counted exactly (a uprobe on `sqlite3_prepare_v3`), not timed.
#
#   scripts/prepares.sh BINARY
#   knobs: DATA_TEMPLATE=dir (made by `scripts/ab.sh` with WORKLOAD=w2; its .token beside it)
#          TENANTS=10000 DURATION=3 PORT=18123 ARGS="--durability log" (extra `berth serve` flags)
#          OUT=scripts/.work/prepares-<stamp>
#
# Runs W2 at one client for DURATION seconds over a copy of the template and prints pairs/s,
# the tenants touched, the statements prepared and their count per tenant touched (every
# pair of this run wakes its tenant from hibernation or finds it live from an earlier pair;
# alarm wakes of other tenants are counted too, so read it beside `tenants touched`). Needs
# `perf` and root (uprobes). Bounded: one run of DURATION seconds; 127.0.0.1 only.
set -euo pipefail
BIN=$(realpath "${1:?usage: scripts/prepares.sh BINARY}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA_TEMPLATE=${DATA_TEMPLATE:?DATA_TEMPLATE: a W2 data template (scripts/ab.sh makes one)}
TENANTS=${TENANTS:-10000}
DURATION=${DURATION:-3}
PORT=${PORT:-18123}
ARGS=${ARGS:---durability log}
OUT=${OUT:-$ROOT/scripts/.work/prepares-$(date -u +%Y%m%dT%H%M%SZ)}
. "$ROOT/scripts/lib.sh"
build_loadgen
perf probe -q -d '*:sqlite3_prepare_v3' 2>/dev/null || true
perf probe -q -x "$BIN" sqlite3_prepare_v3
# The probe's group is named after the binary (`probe_<name>`).
EVENT=$(perf probe -l 2>/dev/null | awk '/sqlite3_prepare_v3/ {print $1; exit}')
at_exit() { perf probe -q -d "$EVENT" 2>/dev/null || true; }
# shellcheck disable=SC2086 # extra flags are words
serve_template $ARGS
perf stat -e "$EVENT" -p "$SERVER" -o "$OUT/perf.txt" &
STAT=$!
sleep 0.5
"$LOADGEN" --preset berth --base-url "http://127.0.0.1:$PORT" -H "Authorization: Bearer $TOKEN" \
  --workload w2 --concurrency 1 --threads 2 --tenants "$TENANTS" \
  --tenant-prefix "$(cat "$DATA_TEMPLATE.prefix" 2>/dev/null || echo ab)" --setup '' \
  --duration-s "$DURATION" --warmup-s 0 --label prepares >"$OUT/run.txt" 2>&1
sleep 0.5
kill -INT "$STAT"
wait "$STAT" || true
PAIRS=$(awk '$1 == "pairs" {print $2, $3, $4, $5, $6, $7}' "$OUT/run.txt")
TOUCHED=$(awk '$1 == "tenants" && $2 == "touched" {print $3}' "$OUT/run.txt")
PREPARED=$(awk '/sqlite3_prepare_v3/ {gsub(",", "", $1); print $1}' "$OUT/perf.txt")
echo "pairs: $PAIRS"
echo "tenants touched: $TOUCHED; statements prepared: $PREPARED;" \
  "per tenant touched: $(awk -v p="$PREPARED" -v t="$TOUCHED" 'BEGIN {printf "%.1f", p / t}')"
