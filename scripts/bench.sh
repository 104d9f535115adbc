#!/usr/bin/env bash
# berth vs the workerd Durable Object reference, same loadgen, same machine, same run.
#
# Builds berth (release) and the shared loadgen (as an outside tool, its own target dir),
# starts berth on a fresh data directory, runs W1–W4 at each concurrency REPEATS times
# (interleaved), measures fsyncs per acknowledged write with strace on a short W1 run, then
# runs the workerd reference suite (`anchors/run-workerd.sh`) on a copy of ../shared/anchors,
# and prints a side-by-side markdown table (scripts/bench_table.py).
#
# Usage:  scripts/bench.sh
# Knobs (environment), with their defaults:
#   CONCURRENCY="1 16 64"  REPEATS=3  DURATION=10  WARMUP=1  WORKLOADS="w1 w2 w3 w4"
#   W2_TENANTS=10000  W3_CAP=10  W4_LEASES=10000  W4_TENANTS=100  W4_TTL=2
#   BERTH_PORT=18080  WORKERD_PORT=8787  SKIP_WORKERD=0  FSYNC_CHECK=1
#   BERTH_ARGS="" (extra `berth serve` flags, e.g. "--durability group")
#   OUT=scripts/.work/bench-<stamp>
# Every run is bounded (duration, request count, drain timeout); only 127.0.0.1 is used.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ANCHORS_SRC=$(cd "$ROOT/../shared/anchors" && pwd)

CONCURRENCY=${CONCURRENCY:-"1 16 64"}
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
WORKLOADS=${WORKLOADS:-"w1 w2 w3 w4"}
W2_TENANTS=${W2_TENANTS:-10000}
W3_CAP=${W3_CAP:-10}
W4_LEASES=${W4_LEASES:-10000}
W4_TENANTS=${W4_TENANTS:-100}
W4_TTL=${W4_TTL:-2}
BERTH_PORT=${BERTH_PORT:-18080}
WORKERD_PORT=${WORKERD_PORT:-8787}
SKIP_WORKERD=${SKIP_WORKERD:-0}
FSYNC_CHECK=${FSYNC_CHECK:-1}
COOLDOWN=${COOLDOWN:-2}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/scripts/.work/bench-$STAMP}
mkdir -p "$OUT/runs"

# --- tools --------------------------------------------------------------------------------
# The anchors folder is read-only: work on a copy (node_modules, results and data go there).
ANCHORS=$OUT/anchors
rm -rf "$ANCHORS"
cp -r "$ANCHORS_SRC" "$ANCHORS"
chmod -R u+w "$ANCHORS"
cargo build --release --locked --bin berth
CARGO_TARGET_DIR="$ROOT/target/loadgen" cargo build --release --locked --manifest-path "$ANCHORS/loadgen/Cargo.toml"
LOADGEN=$ROOT/target/loadgen/release/loadgen
BERTH=${BERTH:-$ROOT/target/release/berth}

# --- environment record ---------------------------------------------------------------------
{
  echo "date_utc: $STAMP"
  echo "berth: $(git -C "$ROOT" rev-parse --short HEAD) $(git -C "$ROOT" diff --quiet || echo '(dirty)')"
  echo "rustc: $(rustc --version)"
  echo "kernel: $(uname -srm)"
  echo "cpus: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "mem: $(free -g | awk '/Mem:/{print $2" GiB"}')"
  echo "fs: $(df -T "$OUT" | awk 'NR==2{print $2" on "$1}')"
  echo "fd limit: $(ulimit -n)"
  echo "knobs: CONCURRENCY='$CONCURRENCY' REPEATS=$REPEATS DURATION=$DURATION WARMUP=$WARMUP WORKLOADS='$WORKLOADS' W2_TENANTS=$W2_TENANTS W3_CAP=$W3_CAP W4_LEASES=$W4_LEASES W4_TENANTS=$W4_TENANTS W4_TTL=$W4_TTL"
} | tee "$OUT/env.txt"

# --- berth --------------------------------------------------------------------------------------
TOKEN="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DATA=$OUT/berth-data
BASE=http://127.0.0.1:$BERTH_PORT
if curl -s -o /dev/null --max-time 1 "$BASE/healthz"; then
  echo "something already listens on 127.0.0.1:$BERTH_PORT; set BERTH_PORT=..." >&2
  exit 1
fi
# A live object holds 2 files (database, WAL): keep the cap under the fd limit.
FD_LIMIT=$(ulimit -n)
MAX_LIVE=$(( (FD_LIMIT - 512) / 2 ))
BERTH_ADMIN_TOKEN=$TOKEN "$BERTH" serve --data-dir "$DATA" --listen "127.0.0.1:$BERTH_PORT" \
  --enable-fake --log-format json --max-live-objects "$MAX_LIVE" --object-idle 10s ${BERTH_ARGS:-} >"$OUT/berth.log" 2>&1 &
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

metric() { curl -s "$BASE/metrics" | awk -v m="$1" '$1==m {print $2}'; }

run_one() {
  local wl=$1 c=$2 r=$3
  shift 3
  local log="$OUT/runs/berth-$wl-c$c-r$r.txt"
  echo "== berth $wl c=$c repeat $r"
  local before after
  before=$(metric berth_object_commits_total)
  "$LOADGEN" --preset berth --base-url "$BASE" -H "Authorization: Bearer $TOKEN" --workload "$wl" \
    --concurrency "$c" --threads 1 "$@" >"$log" 2>&1 || echo "loadgen exited $? (see $log)"
  after=$(metric berth_object_commits_total)
  grep -v '^{' "$log" | tail -n 6 || true
  # Attach the commit count of the run to its JSON line.
  grep '^{' "$log" | python3 -c "import json,sys; l=json.loads(sys.stdin.read()); l['berth_commits']=int('$after' or 0)-int('$before' or 0); print(json.dumps(l))" >>"$OUT/berth.jsonl" || true
  kill -0 "$BPID" 2>/dev/null || { echo "berth died; log:"; tail -20 "$OUT/berth.log"; exit 1; }
}

for r in $(seq 1 "$REPEATS"); do
  for wl in $WORKLOADS; do
    for c in $CONCURRENCY; do
      case $wl in
        w1) run_one w1 "$c" "$r" --duration-s "$DURATION" --warmup-s "$WARMUP" --tenants 1; sleep "$COOLDOWN" ;;
        w2) run_one w2 "$c" "$r" --duration-s "$DURATION" --warmup-s "$WARMUP" --tenants "$W2_TENANTS"; sleep "$COOLDOWN" ;;
        w3) run_one w3 "$c" "$r" --duration-s "$DURATION" --warmup-s "$WARMUP" --cap "$W3_CAP"; sleep "$COOLDOWN" ;;
        w4) run_one w4 "$c" "$r" --leases "$W4_LEASES" --tenants "$W4_TENANTS" --ttl-s "$W4_TTL"; sleep "$COOLDOWN" ;;
        *) echo "unknown workload $wl" >&2; exit 2 ;;
      esac
    done
  done
done

# --- fsyncs per acknowledged write: strace a short single-client and a 64-client W1 run --------
if [ "$FSYNC_CHECK" = 1 ] && command -v strace >/dev/null; then
  for c in 1 64; do
    echo "== fsync check c=$c (strace attached to berth $BPID)"
    strace -f -tt -yy -s 256 -e trace=fsync,fdatasync,syncfs,recvfrom,read,writev,write,sendmsg,sendto \
      -p "$BPID" -o "$OUT/strace-c$c.txt" 2>"$OUT/strace-c$c.stderr" &
    SPID=$!
    sleep 1
    "$LOADGEN" --preset berth --base-url "$BASE" -H "Authorization: Bearer $TOKEN" --workload w1 \
      --concurrency "$c" --duration-s 2 --warmup-s 0 --label berth-under-strace >"$OUT/runs/fsync-check-c$c.txt" 2>&1 || true
    kill -INT "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    python3 "$ANCHORS/fsync_check.py" "$OUT/strace-c$c.txt" | tee "$OUT/fsync-check-c$c.txt" || true
    # fsync_check.py (shared with the workerd reference) counts fsync and fdatasync; the
    # shared durability barrier of `--durability group` syncs with syncfs.
    { echo "syncfs calls: $(grep -c ' syncfs(' "$OUT/strace-c$c.txt" || true)"
      echo "acknowledged writes (2xx answers): $(grep -cE '"HTTP/1\.1 20[01]' "$OUT/strace-c$c.txt" || true)"
    } | tee -a "$OUT/fsync-check-c$c.txt"
    rm -f "$OUT/strace-c$c.txt"
  done
fi
stop_berth
trap - EXIT
du -sh "$DATA" | tee "$OUT/berth-data-size.txt"
rm -rf "$DATA"

# --- workerd ------------------------------------------------------------------------------------
if [ "$SKIP_WORKERD" != 1 ]; then
  (cd "$ANCHORS" && OUT="$OUT/workerd" PORT="$WORKERD_PORT" CONCURRENCY="$CONCURRENCY" REPEATS="$REPEATS" \
    DURATION="$DURATION" WARMUP="$WARMUP" WORKLOADS="$WORKLOADS" W2_TENANTS="$W2_TENANTS" W3_CAP="$W3_CAP" \
    W4_LEASES="$W4_LEASES" W4_TENANTS="$W4_TENANTS" W4_TTL="$W4_TTL" FSYNC_CHECK=0 ./run-workerd.sh)
fi

python3 "$ROOT/scripts/bench_table.py" "$OUT/berth.jsonl" "$OUT/workerd/results.jsonl" | tee "$OUT/table.md"
echo "results in $OUT"
