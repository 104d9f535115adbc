#!/usr/bin/env bash
# Cluster mode against the embedded default: same loadgen, same machine, same run.
#
#   W1 (one tenant per loadgen, C=64 in all) and W2 (many tenants, C=64 in all) on
#     embedded  one node on its SQLite files (the default)
#     pg1       one node on PostgreSQL (--cluster)
#     pg3       three nodes on PostgreSQL, the clients split over them (a loadgen per node,
#               C=22 each, each with tenants of its own, so each node owns what it serves)
#   then recovery: three nodes, RECOVERY_TENANTS tenants spread over them, kill -9 one node,
#   and time until each of its tenants answers again through the others (p50/p99).
#
#   scripts/cluster-bench.sh
#   knobs: DURATION=8 WARMUP=1 W2_TENANTS=1000 RECOVERY_TENANTS=150 MEMBERSHIP=5s
#          PG=postgres://postgres@127.0.0.1:5432/postgres BERTH=target/release/berth
#
# Only 127.0.0.1 is used; every run is bounded; servers are stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-1}
W2_TENANTS=${W2_TENANTS:-1000}
RECOVERY_TENANTS=${RECOVERY_TENANTS:-150}
MEMBERSHIP=${MEMBERSHIP:-5s}
PG=${PG:-${BERTH_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}}
BERTH=${BERTH:-$ROOT/target/release/berth}
LOADGEN=${LOADGEN:-$ROOT/target/loadgen/release/loadgen}
OUT=${OUT:-$ROOT/scripts/.work/cluster-bench-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
[ -x "$BERTH" ] || cargo build --release --locked --bin berth
if [ ! -x "$LOADGEN" ]; then
  CARGO_TARGET_DIR="$ROOT/target/loadgen" cargo build --release --locked \
    --manifest-path "$ROOT/../shared/anchors/loadgen/Cargo.toml"
fi

TOKEN="adm_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export BERTH_ADMIN_TOKEN=$TOKEN BERTH_MASTER_KEY=$KEY
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT

# A fresh database on the PostgreSQL server of $PG; prints its URL.
fresh_db() {
  local name="berth_bench_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  psql -q "$PG" -c "CREATE DATABASE $name" >/dev/null
  echo "${PG%/*}/$name"
}

# start_node NAME PORT [--cluster URL]: starts berth, waits until it answers.
start_node() {
  local name=$1 port=$2
  shift 2
  "$BERTH" serve --data-dir "$OUT/data-$RUN-$name" --listen "127.0.0.1:$port" --enable-fake \
    --log-format json --node-id "$name" --cluster-membership "$MEMBERSHIP" "$@" \
    >"$OUT/$RUN-$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" && return 0
    sleep 0.1
  done
  echo "node $name did not start: $OUT/$RUN-$name.log" >&2
  exit 1
}

# loadgen WORKLOAD PORT C TENANTS LABEL: one loadgen run, its JSON line appended to runs.jsonl.
loadgen() {
  "$LOADGEN" --preset berth --base-url "http://127.0.0.1:$2" -H "Authorization: Bearer $TOKEN" \
    --workload "$1" --concurrency "$3" --threads 1 --tenants "$4" \
    --duration-s "$DURATION" --warmup-s "$WARMUP" --label "$5" >"$OUT/$5.txt" 2>&1 || true
  grep '^{' "$OUT/$5.txt" >>"$OUT/runs.jsonl" || true
}

rate() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['result']['pairs_per_s'])" <(grep '^{' "$OUT/$1.txt"); }
p99() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['result']['grant']['p99_ms'])" <(grep '^{' "$OUT/$1.txt"); }

echo "config	workload	pairs/s	grant p99 ms" | tee "$OUT/summary.tsv"
for RUN in embedded pg1 pg3; do
  for wl in w1 w2; do
    tenants=1
    [ "$wl" = w2 ] && tenants=$W2_TENANTS
    case $RUN in
      embedded)
        start_node a 18701
        loadgen "$wl" 18701 64 "$tenants" "$RUN-$wl"
        line="$(rate "$RUN-$wl")	$(p99 "$RUN-$wl")" ;;
      pg1)
        db=$(fresh_db)
        start_node a 18701 --cluster "$db"
        loadgen "$wl" 18701 64 "$tenants" "$RUN-$wl"
        line="$(rate "$RUN-$wl")	$(p99 "$RUN-$wl")" ;;
      pg3)
        db=$(fresh_db)
        start_node a 18701 --cluster "$db"
        start_node b 18702 --cluster "$db"
        start_node c 18703 --cluster "$db"
        share=$(( (tenants + 2) / 3 ))
        loadgen "$wl" 18701 22 "$share" "$RUN-$wl-a" &
        one=$!
        loadgen "$wl" 18702 21 "$share" "$RUN-$wl-b" &
        two=$!
        loadgen "$wl" 18703 21 "$share" "$RUN-$wl-c" &
        wait $one $! $two
        total=$(python3 -c "print(sum(float(x) for x in '$(rate "$RUN-$wl-a") $(rate "$RUN-$wl-b") $(rate "$RUN-$wl-c")'.split()))")
        line="$total	$(p99 "$RUN-$wl-a") / $(p99 "$RUN-$wl-b") / $(p99 "$RUN-$wl-c")" ;;
    esac
    echo "$RUN	$wl	$line" | tee -a "$OUT/summary.tsv"
    stop_all
    sleep 2
  done
done

# Recovery: tenants spread over three nodes; kill -9 one; how soon is each of its tenants
# served again through the others?
RUN=recovery
db=$(fresh_db)
start_node a 18701 --cluster "$db"
start_node b 18702 --cluster "$db"
start_node c 18703 --cluster "$db"
KILLED_PID=${PIDS[0]}
python3 - "$TOKEN" "$RECOVERY_TENANTS" "$KILLED_PID" <<'EOF' | tee -a "$OUT/summary.tsv"
import json, os, signal, sys, threading, time, urllib.request
token, n, victim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ports = [18701, 18702, 18703]
def call(port, method, path, body=None, timeout=5):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return 0
owned = []
for i in range(n):
    port = ports[i % 3]
    assert call(port, "POST", "/v1/tenants", {"name": f"r{i:04d}"}) == 201
    if port == 18701:
        owned.append(f"r{i:04d}")
os.kill(victim, signal.SIGKILL)
killed = time.monotonic()
times = {}
def probe(tenant, port):
    while time.monotonic() - killed < 120:
        if call(port, "GET", f"/v1/tenants/{tenant}/leases?limit=1", timeout=2) == 200:
            times[tenant] = time.monotonic() - killed
            return
        time.sleep(0.02)
threads = [threading.Thread(target=probe, args=(t, ports[1 + i % 2])) for i, t in enumerate(owned)]
for t in threads: t.start()
for t in threads: t.join()
values = sorted(times.values())
def pct(p): return values[min(len(values) - 1, round((len(values) - 1) * p))] if values else float("nan")
print(f"recovery\t{len(values)} of {len(owned)} tenants of the killed node served again\tp50 {pct(0.5):.2f} s\tp99 {pct(0.99):.2f} s, max {values[-1] if values else float('nan'):.2f} s")
EOF
stop_all
echo "output: $OUT"
