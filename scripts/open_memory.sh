#!/usr/bin/env bash
# Resident memory per open and per parked tenant: one W2 run over a data template, then the
# server's RSS with the tenants open, and again once every tenant has hibernated.
#
#   scripts/open_memory.sh BINARY
#   knobs: DATA_TEMPLATE=dir (made by `scripts/ab.sh` with WORKLOAD=w2; its .token beside it)
#          TENANTS=10000 DURATION=15 CONCURRENCY=64 PORT=18095 ARGS="" (extra `berth serve`
#          flags, e.g. "--warm-objects 10000 --warm-idle 600s") ENV="" (extra environment)
#          OUT=scripts/.work/open-memory-<stamp>
#
# Prints pairs/s, then RSS, descriptors, open (`berth_live_objects`) and parked
# (`berth_warm_objects`) tenants right after the run and once none is open. Per open tenant:
# RSS after the run over the open count; per parked tenant: the hibernated RSS minus a run
# with `--warm-objects 0`, over the parked count. Bounded: one run of DURATION seconds, a wait
# of at most 60 s for the tenants to hibernate and 21 s for a trim (`wait_hibernated`);
# 127.0.0.1 only.
set -euo pipefail
BIN=${1:?usage: scripts/open_memory.sh BINARY}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA_TEMPLATE=${DATA_TEMPLATE:?DATA_TEMPLATE: a W2 data template (scripts/ab.sh makes one)}
TENANTS=${TENANTS:-10000}
DURATION=${DURATION:-15}
CONCURRENCY=${CONCURRENCY:-64}
PORT=${PORT:-18095}
OUT=${OUT:-$ROOT/scripts/.work/open-memory-$(date -u +%Y%m%dT%H%M%SZ)}
. "$ROOT/scripts/lib.sh"
build_loadgen
# shellcheck disable=SC2086 # extra flags are words
SERVER_ENV=${ENV:-} serve_template --log-format json ${ARGS:-}
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1==m {print $2}'; }
state() {
  echo "$(grep -E '^VmRSS' "/proc/$SERVER/status" | tr -s ' \t' ' ') fds=$(ls "/proc/$SERVER/fd" | wc -l)" \
    "open=$(metric berth_live_objects) parked=$(metric berth_warm_objects)"
}
"$LOADGEN" --preset berth --base-url "http://127.0.0.1:$PORT" -H "Authorization: Bearer $TOKEN" \
  --workload w2 --tenants "$TENANTS" --setup '' --tenant-prefix ab --concurrency "$CONCURRENCY" \
  --duration-s "$DURATION" --warmup-s 0 --threads 1 >"$OUT/w2.txt" 2>&1
grep '^{' "$OUT/w2.txt" | python3 -c "import json,sys; print('pairs/s', json.loads(sys.stdin.read())['result']['pairs_per_s'])"
echo "after the run: $(state)" | tee "$OUT/memory.txt"
wait_hibernated "http://127.0.0.1:$PORT" 60
echo "hibernated: $(state)" | tee -a "$OUT/memory.txt"
