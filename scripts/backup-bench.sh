#!/usr/bin/env bash
# Backup throughput, and W1 throughput while backups run back to back against without.
#
#   scripts/backup-bench.sh [BERTH_BINARY]          (default: target/release/berth)
#   knobs: TENANTS=2000 BACKUPS=3 ROUNDS=3 DURATION=8 WARMUP=1 CONCURRENCY=64 PORT=18095
#
# 1. One server: TENANTS tenants made and used by the loadgen's W2 (so each has a database
#    with leases, ledger rows and events), then BACKUPS backups through `berth backup`,
#    timed: tenants/s and MB/s.
# 2. W1 (one tenant, CONCURRENCY clients) for DURATION s, ROUNDS times each, alternating
#    "quiet" (no backup) and "backup" (`berth backup` in a loop on the same server, which
#    holds TENANTS tenants). Prints one line per run; loadgen JSON in scripts/.work/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BERTH=$(realpath "${1:-$ROOT/target/release/berth}")
TENANTS=${TENANTS:-2000}
BACKUPS=${BACKUPS:-3}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
CONCURRENCY=${CONCURRENCY:-64}
PORT=${PORT:-18095}
OUT=${OUT:-$ROOT/scripts/.work/backup-bench-$(date -u +%Y%m%dT%H%M%SZ)}
LOADGEN=${LOADGEN:-$ROOT/target/loadgen/release/loadgen}
mkdir -p "$OUT"
if [ ! -x "$LOADGEN" ]; then
  CARGO_TARGET_DIR="$ROOT/target/loadgen" cargo build --release --locked \
    --manifest-path "$ROOT/../shared/anchors/loadgen/Cargo.toml"
fi

URL=http://127.0.0.1:$PORT
TOKEN="bb-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
BERTH_ADMIN_TOKEN=$TOKEN "$BERTH" serve --data-dir "$OUT/data" --backup-dir "$OUT/backups" \
  --listen "127.0.0.1:$PORT" --enable-fake --object-idle 10s --log-format json \
  >"$OUT/server.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -s -o /dev/null --max-time 1 "$URL/healthz" && break
  sleep 0.1
done

loadgen() {
  "$LOADGEN" --preset berth --base-url "$URL" -H "Authorization: Bearer $TOKEN" --threads 1 "$@"
}
backup() {
  BERTH_URL=$URL BERTH_TOKEN=$TOKEN "$BERTH" backup --to "$1" -o json
}

echo "populating $TENANTS tenants (W2, 10 s)"
loadgen --workload w2 --tenants "$TENANTS" --concurrency 64 \
  --duration-s 10 --warmup-s 0 >"$OUT/populate.txt" 2>&1 || true
sleep 12  # let the tenants hibernate: the backup copies them at rest
for n in $(seq 1 "$BACKUPS"); do
  start=$(date +%s.%N)
  backup "t$n" >"$OUT/backup-$n.json"
  end=$(date +%s.%N)
  python3 - "$OUT/backup-$n.json" "$start" "$end" <<'PY'
import json, sys
b = json.load(open(sys.argv[1])); s = float(sys.argv[3]) - float(sys.argv[2])
print(f"backup: {b['objects']} objects, {b['bytes']/1e6:.1f} MB in {s:.2f} s: "
      f"{b['objects']/s:,.0f} tenants/s, {b['bytes']/1e6/s:.1f} MB/s")
PY
done

w1() {
  local label=$1 n=$2
  loadgen --workload w1 --tenants 1 --concurrency "$CONCURRENCY" \
    --duration-s "$DURATION" --warmup-s "$WARMUP" --label "$label" >"$OUT/w1-$label-$n.txt" 2>&1 || true
  grep '^{' "$OUT/w1-$label-$n.txt" | tee -a "$OUT/runs.jsonl" | LABEL=$label python3 -c '
import json, os, sys
r = json.loads(sys.stdin.read()).get("result", {})
label = os.environ["LABEL"]
rate = r.get("pairs_per_s", 0)
p99 = (r.get("grant") or {}).get("p99_ms", "?")
print(f"{label}\t{rate:,.0f} pairs/s\tgrant p99 {p99} ms")'
}
for n in $(seq 1 "$ROUNDS"); do
  w1 quiet "$n"
  sleep 2
  ( i=0; while [ ! -e "$OUT/stop" ]; do i=$((i+1)); backup "loop-$n-$i" >/dev/null || true; done ) &
  LOOP=$!
  w1 backup "$n"
  touch "$OUT/stop"; wait "$LOOP" || true; rm -f "$OUT/stop"
  echo "  backups during that run: $(ls -d "$OUT"/backups/loop-"$n"-* 2>/dev/null | wc -l)"
  rm -rf "$OUT"/backups/loop-*
  sleep 2
done
