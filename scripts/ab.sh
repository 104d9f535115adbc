#!/usr/bin/env bash
# Alternating A/B of two berth binaries on one workload: the only comparison this noisy
# machine supports. Each run gets a fresh server and data directory; runs alternate
# A, B, A, B, ... so drift in the machine lands on both sides.
#
#   scripts/ab.sh BEFORE_BINARY AFTER_BINARY
#   knobs: ROUNDS=3 DURATION=8 WARMUP=1 CONCURRENCY=64 WORKLOAD=w1 TENANTS=1 PORT=18090
#          ARGS_A="" ARGS_B="" (extra `berth serve` flags of each side, e.g. ARGS_B="--durability group")
#          IDLE=10s (--object-idle), IDLE_A/IDLE_B (one side's, defaulting to IDLE)
#          ENV_A="" ENV_B="" (extra environment of each side's server, e.g. ENV_B="LD_PRELOAD=...")
#          PERF_RECORD=1: `perf record -a` over each measured run, to $OUT/perf-<label>-<n>.data
#          (PERF_FREQ=499, PERF_CALL_GRAPH=fp or dwarf; system-wide because attaching to one
#          process fails with thousands of threads)
#          COUNTERS=events: `perf stat -e events` on the server over each run, printed per pair
#          (e.g. COUNTERS=page-faults,syscalls:sys_enter_mprotect,syscalls:sys_enter_fsync)
#          DATA_TEMPLATE=dir: every run starts from a copy of this data directory (created once
#          by the A binary with the workload's setup if missing) and the loadgen skips its
#          setup: W2 then starts with all TENANTS tenants hibernated, without minutes of setup
#          per run. DATA_TEMPLATE_B=dir: B's runs start from this one instead (made by B with
#          the same setup if missing), for a change in how files are laid out. SETUP=1 (with
#          DATA_TEMPLATE): the loadgen still runs its setup calls (answered "already exists"),
#          as scripts/bench.sh's runs do: every tenant wakes just before the window, and those
#          set up earliest hibernate inside it. STRACE=1: count fsync-family syscalls (fsync, fdatasync, syncfs) per run.
#
# Prints one line per run (label, pairs/s, grant p99 ms, server CPU) for the pair workloads
# (w1, w2) and writes the loadgen JSON lines to scripts/.work/ab-<stamp>/runs.jsonl.
set -euo pipefail

A=${1:?usage: scripts/ab.sh BEFORE_BINARY AFTER_BINARY}
B=${2:?usage: scripts/ab.sh BEFORE_BINARY AFTER_BINARY}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
CONCURRENCY=${CONCURRENCY:-64}
WORKLOAD=${WORKLOAD:-w1}
TENANTS=${TENANTS:-1}
PORT=${PORT:-18090}
ARGS_A=${ARGS_A:-}
ARGS_B=${ARGS_B:-}
IDLE=${IDLE:-10s}
IDLE_A=${IDLE_A:-$IDLE}
IDLE_B=${IDLE_B:-$IDLE}
ENV_A=${ENV_A:-}
ENV_B=${ENV_B:-}
COUNTERS=${COUNTERS:-}
DATA_TEMPLATE=${DATA_TEMPLATE:-}
DATA_TEMPLATE_B=${DATA_TEMPLATE_B:-$DATA_TEMPLATE}
STRACE=${STRACE:-0}
SETUP=${SETUP:-0}
PERF_RECORD=${PERF_RECORD:-0}
PERF_FREQ=${PERF_FREQ:-499}
PERF_CALL_GRAPH=${PERF_CALL_GRAPH:-fp}
PRELUDE=${PRELUDE:-}
PRELUDE_TEMPLATE=${PRELUDE_TEMPLATE:-}
PRELUDE_TENANTS=${PRELUDE_TENANTS:-10000}
PRELUDE_S=${PRELUDE_S:-10}
PRELUDE_GAP=${PRELUDE_GAP:-2}
TOKEN=${TOKEN:-ab-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
OUT=${OUT:-$ROOT/scripts/.work/ab-$(date -u +%Y%m%dT%H%M%SZ)}
LOADGEN=${LOADGEN:-$ROOT/target/loadgen/release/loadgen}
mkdir -p "$OUT"

if [ ! -x "$LOADGEN" ]; then
  CARGO_TARGET_DIR="$ROOT/target/loadgen" cargo build --release --locked \
    --manifest-path "$ROOT/../shared/anchors/loadgen/Cargo.toml"
fi

TICKS=$(getconf CLK_TCK)
# User + system CPU ticks of a process, from /proc/<pid>/stat (fields 14 and 15).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_server() {
  local bin=$1 data=$2 log=$3 extra_env=${SERVER_ENV:-} idle=${SERVER_IDLE:-$IDLE}
  shift 3
  # shellcheck disable=SC2086 # extra flags and environment are words
  env $extra_env BERTH_ADMIN_TOKEN=$TOKEN "$bin" serve --data-dir "$data" --listen "127.0.0.1:$PORT" \
    --enable-fake --object-idle "$idle" "$@" >"$log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/healthz" && break
    sleep 0.1
  done
}

# Creates data template $2 with binary $1: the workload's setup, then a clean stop.
make_template() {
  local bin=$1 template=$2
  echo "== creating $template: $TENANTS tenants set up by $bin"
  start_server "$bin" "$template" "$OUT/server-template.log"
  "$LOADGEN" --preset berth --base-url "http://127.0.0.1:$PORT" -H "Authorization: Bearer $TOKEN" \
    --workload "$WORKLOAD" --concurrency 1 --threads 2 --tenants "$TENANTS" --setup-concurrency 32 \
    --tenant-prefix ab \
    --duration-s 1 --warmup-s 0 --label template >"$OUT/template.txt" 2>&1
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  echo "$TOKEN" >"$template.token"
}
if [ -n "$DATA_TEMPLATE" ] && [ ! -d "$DATA_TEMPLATE" ]; then
  make_template "$A" "$DATA_TEMPLATE"
fi
if [ -n "$DATA_TEMPLATE_B" ] && [ ! -d "$DATA_TEMPLATE_B" ]; then
  [ -f "$DATA_TEMPLATE.token" ] && TOKEN=$(cat "$DATA_TEMPLATE.token")
  make_template "$B" "$DATA_TEMPLATE_B"
fi
if [ -n "$DATA_TEMPLATE" ]; then
  TOKEN=$(cat "$DATA_TEMPLATE.token")
fi
if [ -n "$PRELUDE" ] && { [ -n "$DATA_TEMPLATE" ] || [ ! -f "$PRELUDE_TEMPLATE.token" ]; }; then
  echo "PRELUDE needs PRELUDE_TEMPLATE (an existing data template) and no DATA_TEMPLATE" >&2
  exit 1
fi
[ -n "$PRELUDE" ] && TOKEN=$(cat "$PRELUDE_TEMPLATE.token")

run() {
  local label=$1 bin=$2 n=$3 args=$4 extra_env=$5 idle=$6 template=$7
  local data=$OUT/data-$label-$n setup=()
  # Each template keeps the admin token it was made with (dynamic scope: start_server sees it).
  local TOKEN=$TOKEN
  [ -n "$template" ] && [ -f "$template.token" ] && TOKEN=$(cat "$template.token")
  if [ -n "$template" ]; then
    cp -a "$template" "$data"
    sync
    setup=(--tenant-prefix "$(cat "$template.prefix" 2>/dev/null || echo ab)")
    [ "$SETUP" = 1 ] || setup=(--setup '' "${setup[@]}")
  fi
  [ -n "$PRELUDE" ] && cp -a "$PRELUDE_TEMPLATE" "$data" && sync
  # shellcheck disable=SC2086 # extra flags are words
  SERVER_ENV=$extra_env SERVER_IDLE=$idle start_server "$bin" "$data" "$OUT/server-$label-$n.log" $args
  local pid=$SERVER before spid= ppid=
  if [ -n "$PRELUDE" ]; then
    "$LOADGEN" --preset berth --base-url "http://127.0.0.1:$PORT" -H "Authorization: Bearer $TOKEN" \
      --workload "$PRELUDE" --concurrency "$CONCURRENCY" --threads 1 --tenants "$PRELUDE_TENANTS" \
      --setup '' --tenant-prefix ab --duration-s "$PRELUDE_S" --warmup-s 0 \
      --label "prelude-$label" >"$OUT/prelude-$label-$n.txt" 2>&1 || true
    sleep "$PRELUDE_GAP"
  fi
  if [ "$STRACE" = 1 ]; then
    strace -f -c -e trace=fsync,fdatasync,syncfs -p "$pid" -o "$OUT/strace-$label-$n.txt" 2>/dev/null &
    spid=$!
    sleep 0.5
  fi
  if [ -n "$COUNTERS" ]; then
    perf stat -x, -e "$COUNTERS" -p "$pid" -o "$OUT/perf-$label-$n.txt" 2>/dev/null &
    ppid=$!
  fi
  local rpid=
  if [ "$PERF_RECORD" = 1 ]; then
    perf record -F "$PERF_FREQ" --call-graph "$PERF_CALL_GRAPH" -a -o "$OUT/perf-$label-$n.data" -- sleep 600 >/dev/null 2>&1 &
    rpid=$!
  fi
  before=$(cpu_ticks "$pid")
  "$LOADGEN" --preset berth --base-url "http://127.0.0.1:$PORT" -H "Authorization: Bearer $TOKEN" \
    --workload "$WORKLOAD" --concurrency "$CONCURRENCY" --threads 1 --tenants "$TENANTS" \
    "${setup[@]}" --duration-s "$DURATION" --warmup-s "$WARMUP" --label "$label" >"$OUT/run-$label-$n.txt" 2>&1 || true
  local used=$(( $(cpu_ticks "$pid") - before ))
  if [ -n "$rpid" ]; then
    # perf stops at the signal of its child: the `sleep` ends, perf writes its file and exits.
    pkill -INT -P "$rpid" sleep 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
  fi
  if [ -n "$ppid" ]; then
    kill -INT "$ppid" 2>/dev/null || true
    wait "$ppid" 2>/dev/null || true
    # Counted over warm-up and window, like the CPU: per pair of the measured window.
    local pairs
    pairs=$(grep -o '"pairs":[0-9]*' "$OUT/run-$label-$n.txt" | head -1 | cut -d: -f2)
    echo "$label counters per pair: $(awk -F, -v pairs="${pairs:-0}" \
      '$3 != "" && $1 ~ /^[0-9]+$/ && pairs > 0 {printf "%s %.1f  ", $3, $1 / pairs}' "$OUT/perf-$label-$n.txt")"
  fi
  if [ -n "$spid" ]; then
    kill -INT "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    echo "$label syncs: $(awk '$NF ~ /^(fsync|fdatasync|syncfs)$/ {printf "%s %s  ", $NF, $4}' "$OUT/strace-$label-$n.txt")"
  fi
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  grep '^{' "$OUT/run-$label-$n.txt" | TICKS=$TICKS USED=$used python3 -c '
import json, os, sys
line = json.loads(sys.stdin.read())
line["server_cpu_s"] = int(os.environ["USED"]) / int(os.environ["TICKS"])
print(json.dumps(line))' | tee -a "$OUT/runs.jsonl" | LABEL=$label WARMUP=$WARMUP python3 -c '
import json, os, sys
l = json.loads(sys.stdin.read())
r = l.get("result", {})
rate = r.get("pairs_per_s", 0)
p99 = (r.get("grant") or {}).get("p99_ms", "?")
cpu = l["server_cpu_s"]
# CPU is measured over warmup and window, so per-pair figures compare builds, not absolutes.
per = cpu / (rate * (r.get("window_s", 0) + float(os.environ["WARMUP"]))) * 1e6 if rate else 0
label = os.environ["LABEL"]
print(f"{label}\t{rate:,.0f} pairs/s\tgrant p99 {p99} ms\tserver CPU {cpu:.1f} s (~{per:.0f} µs per pair)")'
}

for n in $(seq 1 "$ROUNDS"); do
  run A "$A" "$n" "$ARGS_A" "$ENV_A" "$IDLE_A" "$DATA_TEMPLATE"
  sleep 2
  run B "$B" "$n" "$ARGS_B" "$ENV_B" "$IDLE_B" "$DATA_TEMPLATE_B"
  sleep 2
done
echo "runs: $OUT/runs.jsonl"
