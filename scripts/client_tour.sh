#!/usr/bin/env bash
# A client generated from berth's /openapi.json runs the README's tour against the real
# binary: openapi-python-client (from PyPI, installed here into its own venv) generates a
# Python package from the spec a running `berth serve` publishes, and scripts/client_tour.py
# drives it: tenant and token as the operator, a provider account and a pool, lease requests
# up to the cap, the long poll until ready, a heartbeat that extends the TTL, runner output,
# releases, usage and ledger. Only 127.0.0.1 is used; the server is stopped on exit.
#
# Usage:  scripts/client_tour.sh [path/to/berth]        (default: target/debug/berth)
# Knobs (environment), with their defaults:
#   TOUR_VENV=target/client-tour-venv  TOUR_GENERATOR_VERSION=0.29.1  TOUR_PORT=<a free port>
# Exit status: the tour's (0 when every step answered as the README says).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BERTH=$(realpath "${1:-$ROOT/target/debug/berth}")
TOUR_VENV=${TOUR_VENV:-$ROOT/target/client-tour-venv}
TOUR_GENERATOR_VERSION=${TOUR_GENERATOR_VERSION:-0.29.1}

if [[ ! -x "$TOUR_VENV/bin/openapi-python-client" ]] ||
    [[ "$("$TOUR_VENV/bin/openapi-python-client" --version)" != *"$TOUR_GENERATOR_VERSION"* ]]; then
    python3 -m venv "$TOUR_VENV"
    # The generator, and what the generated package imports (httpx, attrs, python-dateutil).
    "$TOUR_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "openapi-python-client==$TOUR_GENERATOR_VERSION" httpx attrs python-dateutil
fi

WORK=$(mktemp -d)
PORT=${TOUR_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
URL="http://127.0.0.1:$PORT"
LOG="$WORK/berth.log"

cd "$WORK"
"$BERTH" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --log-format json \
    >"$LOG" 2>&1 &
SERVER=$!
cleanup() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
    curl -fsS "$URL/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

# The spec as this server publishes it, and a client generated from it.
curl -fsS "$URL/openapi.json" -o "$WORK/openapi.json"
# No post hooks: the default ones format the code with ruff, which is not installed.
printf 'post_hooks: []\n' >"$WORK/generator.yaml"
"$TOUR_VENV/bin/openapi-python-client" generate --path "$WORK/openapi.json" \
    --config "$WORK/generator.yaml" --output-path "$WORK/berth_client" --meta none \
    >"$WORK/generate.log" 2>&1 || {
    cat "$WORK/generate.log" >&2
    exit 1
}
# The generator warns about what it could not turn into code; the whole spec must go through,
# except `/metrics`, whose OpenMetrics text (`application/openmetrics-text`) the generator has
# no type for — a scraper reads it, not an API client.
if grep -iE 'warning|error' "$WORK/generate.log" \
    | grep -vE '^Warning\(s\) encountered while generating|^WARNING parsing GET /metrics within operations\.$' \
    | grep -q .; then
    echo "openapi-python-client could not read all of /openapi.json:" >&2
    cat "$WORK/generate.log" >&2
    exit 1
fi

status=0
PYTHONPATH="$WORK" BERTH_URL="$URL" BERTH_ADMIN_TOKEN="$(cat "$WORK/data/admin-token")" \
    "$TOUR_VENV/bin/python" "$ROOT/scripts/client_tour.py" || status=$?

if grep -q 'panicked' "$LOG"; then
    echo "berth panicked during the tour:" >&2
    grep 'panicked' "$LOG" | head -5 >&2
    status=1
fi
exit "$status"
