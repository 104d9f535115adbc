#!/usr/bin/env bash
# Where berth's time goes under one loadgen workload: starts the release build on a fresh data
# directory, runs the workload for DURATION seconds under `perf record` (call graphs), and
# prints the server's CPU time per acknowledged request, the split of samples by thread and
# by library, and the top symbols. The numbers behind BENCHMARKS.md's "what limits it".
#
# Usage:  scripts/profile.sh                (W1 at 64 clients)
# Knobs (environment), with their defaults:
#   WORKLOAD=w1  C=64  DURATION=8  PORT=18090  FREQ=999  OUT=scripts/.work/profile-<stamp>
#   LOADGEN_ARGS=""  (extra loadgen flags)  SETUP_WAIT=2 (s of setup and warm-up before perf starts;
#   w2 sets up 10,000 tenants first: raise it, or profile w1 and w3)
# Needs `perf` (linux-perf). Bounded by DURATION; 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WORKLOAD=${WORKLOAD:-w1}
C=${C:-64}
DURATION=${DURATION:-8}
PORT=${PORT:-18090}
FREQ=${FREQ:-999}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
SETUP_WAIT=${SETUP_WAIT:-2}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/scripts/.work/profile-$STAMP}
mkdir -p "$OUT"

cargo build --release --locked --bin berth
CARGO_TARGET_DIR="$ROOT/target/loadgen" cargo build --release --locked \
  --manifest-path "$ROOT/../shared/anchors/loadgen/Cargo.toml"
LOADGEN=$ROOT/target/loadgen/release/loadgen
BERTH=$ROOT/target/release/berth
BASE=http://127.0.0.1:$PORT
TOKEN="prof-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

BERTH_ADMIN_TOKEN=$TOKEN "$BERTH" serve --data-dir "$OUT/data" --listen "127.0.0.1:$PORT" \
  --enable-fake --log-format json --object-idle 10s >"$OUT/berth.log" 2>&1 &
BPID=$!
stop_berth() {
  kill -TERM "$BPID" 2>/dev/null || true
  wait "$BPID" 2>/dev/null || true
  rm -rf "$OUT/data"
}
trap stop_berth EXIT
for _ in $(seq 1 100); do
  curl -s -o /dev/null --max-time 1 "$BASE/healthz" && break
  sleep 0.1
done

# perf starts after the loadgen's setup and warm-up (1 s), and stops before the run ends.
# shellcheck disable=SC2086
"$LOADGEN" --preset berth --base-url "$BASE" -H "Authorization: Bearer $TOKEN" \
  --workload "$WORKLOAD" --concurrency "$C" --threads 1 --duration-s "$((DURATION + 3))" \
  $LOADGEN_ARGS >"$OUT/loadgen.txt" 2>&1 &
LPID=$!
sleep "$SETUP_WAIT"
ticks=$(getconf CLK_TCK)
cpu_before=$(awk '{print $14 + $15}' "/proc/$BPID/stat")
perf record -F "$FREQ" -g -p "$BPID" -o "$OUT/perf.data" -- sleep "$DURATION" 2>"$OUT/perf-record.txt"
cpu_after=$(awk '{print $14 + $15}' "/proc/$BPID/stat")
wait "$LPID" || true

requests_per_s=$(python3 - "$OUT/loadgen.txt" <<'EOF'
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("{")][-1]
r = json.loads(line)
print(r["requests_sent"] / (r["duration_s"] or 1))
EOF
)
cpu_s=$(python3 -c "print(($cpu_after - $cpu_before) / $ticks)")
{
  echo "workload $WORKLOAD c=$C, perf over ${DURATION}s"
  grep -v '^{' "$OUT/loadgen.txt" | sed -n '2,12p'
  python3 -c "
cpu = $cpu_s; d = $DURATION; rps = $requests_per_s
print(f'server CPU {cpu:.2f} s in {d} s = {cpu / d:.2f} cores; {cpu / (rps * d) * 1e6:.0f} µs CPU per request')"
  echo
  echo "## samples by thread"
  perf report -i "$OUT/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -12
  echo
  echo "## samples by library"
  perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -12
  echo
  echo "## top symbols (self time)"
  perf report -i "$OUT/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -40
} | tee "$OUT/profile.txt"
echo "profile in $OUT/profile.txt"
