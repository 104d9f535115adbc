#!/usr/bin/env bash
# Ready pools: time from lease request to `ready`, cold vs warm, p50/p99 over LEASES leases
# per pool, with (a) the fake provider with a 2 s boot delay and (b) the process provider.
#
# Builds berth (release), starts it on a fresh data directory on 127.0.0.1, and runs
# scripts/ready_bench.py, which prints one JSON line per pool and a markdown table.
#
# Usage:  scripts/ready-bench.sh
# Knobs (environment), with their defaults:
#   LEASES=500  CONCURRENCY=4  MIN_READY=10  BOOT_DELAY_MS=2000  INTERVAL_MS=250
#   PROCESS_INTERVAL_MS=20
#   SETUPS=fake,process  BERTH_PORT=18090  OUT=scripts/.work/ready-bench-<stamp>
# INTERVAL_MS (fake) and PROCESS_INTERVAL_MS (process) pace the warm pool's requests (one
# every so many ms at most), so that refills (MIN_READY runners per boot) can keep up; the
# cold pool is not paced.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
LEASES=${LEASES:-500}
CONCURRENCY=${CONCURRENCY:-4}
MIN_READY=${MIN_READY:-10}
BOOT_DELAY_MS=${BOOT_DELAY_MS:-2000}
INTERVAL_MS=${INTERVAL_MS:-250}
PROCESS_INTERVAL_MS=${PROCESS_INTERVAL_MS:-20}
SETUPS=${SETUPS:-fake,process}
BERTH_PORT=${BERTH_PORT:-18090}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/scripts/.work/ready-bench-$STAMP}
mkdir -p "$OUT"

cargo build --release --locked --bin berth
BERTH=${BERTH:-$ROOT/target/release/berth}
{
  echo "date_utc: $STAMP"
  echo "berth: $(git -C "$ROOT" rev-parse --short HEAD) $(git -C "$ROOT" diff --quiet || echo '(dirty)')"
  echo "cpus: $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "knobs: LEASES=$LEASES CONCURRENCY=$CONCURRENCY MIN_READY=$MIN_READY BOOT_DELAY_MS=$BOOT_DELAY_MS INTERVAL_MS=$INTERVAL_MS PROCESS_INTERVAL_MS=$PROCESS_INTERVAL_MS SETUPS=$SETUPS"
} | tee "$OUT/env.txt"

TOKEN="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
BASE=http://127.0.0.1:$BERTH_PORT
if curl -s -o /dev/null --max-time 1 "$BASE/healthz"; then
  echo "something already listens on 127.0.0.1:$BERTH_PORT; set BERTH_PORT=..." >&2
  exit 1
fi
BERTH_ADMIN_TOKEN=$TOKEN "$BERTH" serve --data-dir "$OUT/berth-data" --listen "127.0.0.1:$BERTH_PORT" \
  --enable-fake --log-format json >"$OUT/berth.log" 2>&1 &
BPID=$!
stop_berth() {
  if kill -0 "$BPID" 2>/dev/null; then
    kill -TERM "$BPID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BPID" 2>/dev/null || true
  fi
  wait "$BPID" 2>/dev/null || true
}
trap stop_berth EXIT
for _ in $(seq 1 100); do
  curl -s -o /dev/null --max-time 1 "$BASE/healthz" && break
  kill -0 "$BPID" 2>/dev/null || { echo "berth exited:"; cat "$OUT/berth.log"; exit 1; }
  sleep 0.2
done

python3 "$ROOT/scripts/ready_bench.py" "$BASE" "$TOKEN" --leases "$LEASES" \
  --concurrency "$CONCURRENCY" --interval-ms "$INTERVAL_MS" \
  --process-interval-ms "$PROCESS_INTERVAL_MS" --setups "$SETUPS" \
  --boot-delay-ms "$BOOT_DELAY_MS" --min-ready "$MIN_READY" | tee "$OUT/results.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/env.txt"
