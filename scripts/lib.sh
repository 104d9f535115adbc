# Shell functions the measurement scripts share; sourced (`. "$ROOT/scripts/lib.sh"`), with
# ROOT set to the repository.

# Sets LOADGEN to the shared loadgen, built (release) if it is missing.
build_loadgen() {
  LOADGEN=$ROOT/target/loadgen/release/loadgen
  [ -x "$LOADGEN" ] || CARGO_TARGET_DIR="$ROOT/target/loadgen" cargo build --release --locked \
    --manifest-path "$ROOT/../shared/anchors/loadgen/Cargo.toml"
}

# Runs code of the caller's at exit, after the server started by `serve_template` stopped.
at_exit() { :; }

# Starts `$BIN serve` on 127.0.0.1:$PORT over a copy of W2 data template $DATA_TEMPLATE (made
# by scripts/ab.sh, its admin token beside it) in $OUT/data, with `--enable-fake
# --object-idle 10s` and the flags given; SERVER_ENV adds to its environment. Sets TOKEN and
# SERVER, stops the server at exit (then runs `at_exit`), and returns once it answers
# (bounded: 20 s).
serve_template() {
  TOKEN=$(cat "$DATA_TEMPLATE.token")
  mkdir -p "$OUT"
  cp -a "$DATA_TEMPLATE" "$OUT/data"
  # shellcheck disable=SC2086 # the extra environment is words
  env ${SERVER_ENV:-} BERTH_ADMIN_TOKEN="$TOKEN" "$BIN" serve --data-dir "$OUT/data" \
    --listen "127.0.0.1:$PORT" --enable-fake --object-idle 10s "$@" >"$OUT/server.log" 2>&1 &
  SERVER=$!
  trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; at_exit' EXIT
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/healthz" && break
    sleep 0.2
  done
}

# Waits until the server at base URL $1 has no live object (bounded: $2 seconds, default
# 300), then for two passes of its memory release (10 s apart): the pass that sees the last
# closes may also see the work just before them, and then only the next one trims
# (`objects::runtime::ReleasePolicy`). Resident memory read after this is after a trim.
wait_hibernated() {
  local base=$1 limit=${2:-300}
  for _ in $(seq 1 $((limit * 2))); do
    [ "$(curl -s "$base/metrics" | awk '$1 == "berth_live_objects" {print $2}')" = 0 ] && break
    sleep 0.5
  done
  sleep 21
}
