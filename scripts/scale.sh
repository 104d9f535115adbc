#!/usr/bin/env bash
# Scale check: many tenants created, left to hibernate, then woken one request at a time.
#
# Builds berth and the shared loadgen (release), starts berth on a fresh data directory with a
# short idle timeout, creates TENANTS tenants (each: tenant, `fake` provider, pool) through the
# loadgen's W2 setup, waits until every object has hibernated, records resident memory and
# open files, then wakes 1,000 random tenants with one GET each (scripts/first_request.py:
# the wake-up cost), and finally drives W2 (random tenant per grant+release pair) at one
# client, where nearly every grant is also a tenant's first request.
#
# Usage:  scripts/scale.sh
# Knobs: TENANTS=100000  SETUP_CONCURRENCY=32  MAX_LIVE=4096  IDLE=5s  WAKE_DURATION=10
#        BERTH_PORT=18090  OUT=scripts/.work/scale-<stamp>  BERTH=<binary>  KEEP_DATA=0
#        BERTH_ARGS="" (extra `berth serve` flags, e.g. "--durability log" as scripts/bench.sh runs)
# Bounded: the setup is bounded by the tenant count, the waits by fixed timeouts; 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TENANTS=${TENANTS:-100000}
SETUP_CONCURRENCY=${SETUP_CONCURRENCY:-32}
MAX_LIVE=${MAX_LIVE:-4096}
IDLE=${IDLE:-5s}
WAKE_DURATION=${WAKE_DURATION:-10}
BERTH_PORT=${BERTH_PORT:-18090}
KEEP_DATA=${KEEP_DATA:-0}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/scripts/.work/scale-$STAMP}
mkdir -p "$OUT"

cargo build --release --locked --bin berth
CARGO_TARGET_DIR="$ROOT/target/loadgen" cargo build --release --locked \
  --manifest-path "$ROOT/../shared/anchors/loadgen/Cargo.toml"
LOADGEN=$ROOT/target/loadgen/release/loadgen
. "$ROOT/scripts/lib.sh"
BERTH=${BERTH:-$ROOT/target/release/berth}

TOKEN="scale-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DATA=$OUT/berth-data
BASE=http://127.0.0.1:$BERTH_PORT
BERTH_ADMIN_TOKEN=$TOKEN "$BERTH" serve --data-dir "$DATA" --listen "127.0.0.1:$BERTH_PORT" \
  --enable-fake --log-format json --max-live-objects "$MAX_LIVE" --object-idle "$IDLE" ${BERTH_ARGS:-} >"$OUT/berth.log" 2>&1 &
BPID=$!
stop_berth() {
  kill -TERM "$BPID" 2>/dev/null || true
  wait "$BPID" 2>/dev/null || true
}
trap stop_berth EXIT
for _ in $(seq 1 100); do
  curl -s -o /dev/null --max-time 1 "$BASE/healthz" && break
  kill -0 "$BPID" 2>/dev/null || { cat "$OUT/berth.log"; exit 1; }
  sleep 0.2
done

metric() { curl -s "$BASE/metrics" | awk -v m="$1" '$1==m {print $2}'; }
status() { grep -E "^(VmRSS|VmHWM)" "/proc/$BPID/status" | tr -s ' ' | tr '\n' ' '; echo "fds: $(ls "/proc/$BPID/fd" | wc -l) live: $(metric berth_live_objects) open: $(metric berth_open_objects) trims: $(metric berth_heap_trims_total) wakes: $(metric berth_object_activations_total) events: $(metric berth_object_events_total) closes: $(metric berth_object_hibernations_total)"; }

PREFIX=scale-$(date +%s)
echo "== creating $TENANTS tenants ($SETUP_CONCURRENCY in parallel)"
start=$(date +%s)
"$LOADGEN" --preset berth --base-url "$BASE" -H "Authorization: Bearer $TOKEN" --workload w2 \
  --tenants "$TENANTS" --tenant-prefix "$PREFIX" --setup-concurrency "$SETUP_CONCURRENCY" \
  --concurrency 1 --duration-s 1 --warmup-s 0 --threads 2 >"$OUT/setup.txt" 2>&1
echo "setup took $(( $(date +%s) - start )) s" | tee "$OUT/setup-time.txt"
grep -v '^{' "$OUT/setup.txt" | tail -n 4
echo "after setup: $(status)" | tee "$OUT/memory.txt"

echo "== waiting for every object to hibernate"
wait_hibernated "$BASE" 300
echo "hibernated: $(status)" | tee -a "$OUT/memory.txt"
cp /proc/$BPID/smaps "$OUT/smaps-hibernated.txt" 2>/dev/null || true
du -sh "$DATA" | tee "$OUT/data-size.txt"

echo "== first request to hibernated tenants (GET, one at a time)"
python3 "$ROOT/scripts/first_request.py" "$BASE" "$TOKEN" "$PREFIX" "$TENANTS" 1000 | tee "$OUT/first-request.json"
echo "after first requests: $(status)" | tee -a "$OUT/memory.txt"
echo "== waiting for every object to hibernate again"
wait_hibernated "$BASE" 300
echo "hibernated again: $(status)" | tee -a "$OUT/memory.txt"

echo "== waking hibernated tenants with grant+release pairs (W2), one client"
activations_before=$(metric berth_object_activations_total)
"$LOADGEN" --preset berth --base-url "$BASE" -H "Authorization: Bearer $TOKEN" --workload w2 \
  --tenants "$TENANTS" --tenant-prefix "$PREFIX" --setup '' --concurrency 1 \
  --duration-s "$WAKE_DURATION" --warmup-s 0 --threads 1 >"$OUT/wake.txt" 2>&1
activations=$(( $(metric berth_object_activations_total) - activations_before ))
grep -v '^{' "$OUT/wake.txt" | tail -n 4
echo "activations during the wake run: $activations" | tee -a "$OUT/memory.txt"
echo "after wake: $(status)" | tee -a "$OUT/memory.txt"
stop_berth
trap - EXIT
[ "$KEEP_DATA" = 1 ] || rm -rf "$DATA"
echo "results in $OUT"
