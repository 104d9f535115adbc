#!/usr/bin/env bash
# The outside conformance check: schemathesis (from PyPI, installed here into its own venv)
# reads berth's /openapi.json and sends generated valid and invalid requests to every route,
# then follows the spec's links in its stateful phase (create a token → revoke it, request a
# lease → read, heartbeat, release it, …). Every check schemathesis has runs except
# `use_after_free` (a lease's DELETE is a release: the lease stays readable, by design), plus
# berth's own `problem_json` (scripts/schemathesis_hooks.py): no 5xx; status codes, content
# types, headers and bodies as documented; schema-valid requests accepted and schema-invalid
# ones refused; required headers required; unsupported methods refused with `Allow`; auth
# not ignored; every error answer problem+json with a `code`. Afterwards the server log must
# hold no panic.
#
# Usage:  scripts/schemathesis.sh [path/to/berth]        (default: target/debug/berth)
# Knobs (environment), with their defaults:
#   ST_MAX_EXAMPLES=25  ST_SEED=20261205  ST_WORKERS=1  ST_VERSION=4.32.5  ST_TIMEOUT=1200
#   ST_VENV=target/schemathesis-venv  ST_PORT=<a free port>
# Only 127.0.0.1 is used. The run is bounded in count (max-examples per operation and per
# stateful scenario) and in time (ST_TIMEOUT seconds for the whole run, and a request
# timeout); the server is stopped on exit. Exit status: schemathesis's (1 when it found a
# failure), 124 when the time ran out, or 1 on a panic.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BERTH=$(realpath "${1:-$ROOT/target/debug/berth}")
ST_MAX_EXAMPLES=${ST_MAX_EXAMPLES:-25}
# Not the seed of the project's earlier runs (20261127): a conformance check should meet
# inputs the code was not tuned to.
ST_SEED=${ST_SEED:-20261205}
ST_TIMEOUT=${ST_TIMEOUT:-1200}
# One worker: hypothesis builds ASTs while it generates, and CPython 3.11's AST constructor
# keeps its recursion depth in shared interpreter state, so two threads doing it at once fail
# with "AST constructor recursion depth mismatch" (python/cpython#106905), a flake that has
# nothing to do with berth.
ST_WORKERS=${ST_WORKERS:-1}
ST_VERSION=${ST_VERSION:-4.32.5}
ST_VENV=${ST_VENV:-$ROOT/target/schemathesis-venv}

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "schemathesis.sh needs python3 with venv and pip (Debian: apt-get install python3-venv)" >&2
    exit 1
fi
if [[ ! -x "$ST_VENV/bin/st" ]] || [[ "$("$ST_VENV/bin/st" --version)" != *"$ST_VERSION"* ]]; then
    python3 -m venv "$ST_VENV"
    "$ST_VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

WORK=$(mktemp -d)
PORT=${ST_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
URL="http://127.0.0.1:$PORT"
TOKEN="adm_$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
LOG="$WORK/berth.log"

# Runs from the scratch directory, so nothing a generated request names lands in the repo.
cd "$WORK"
BERTH_ADMIN_TOKEN="$TOKEN" "$BERTH" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
    --enable-fake --log-format json >"$LOG" 2>&1 &
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

call() { # method path [json]
    curl -fsS -X "$1" "$URL$2" -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' ${3:+--data "$3"}
}
# A tenant with a provider, a pool and a lease, so generated requests reach the tenant's
# object and its leases instead of stopping at 404.
call POST /v1/tenants '{"name":"acme","limits":{"max_active_leases":50}}' >/dev/null
call PUT /v1/tenants/acme/providers/fake '{"kind":"fake","config":{}}' >/dev/null
call PUT /v1/tenants/acme/pools/small '{"provider":"fake","machine_type":"s","hourly_price_micros":1000}' >/dev/null
call PUT /v1/tenants/acme/webhooks/hook '{"url":"https://hooks.example.com/berth"}' >/dev/null
LEASE=$(call POST /v1/tenants/acme/leases '{"pool":"small","ttl_s":3600}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')

# Path parameters point at what exists; bodies, queries and headers are generated.
cat >"$WORK/schemathesis.toml" <<EOF
[parameters]
"path.tenant" = "acme"
"path.id" = "$LEASE"
"path.lease_id" = "$LEASE"
"path.name" = "hook"

# A body over the route's size limit (64 KiB; 1 MiB for GitHub deliveries) is refused with 413
# before it is read, whatever it holds: a limit of the server, documented on every route with
# a body, that JSON Schema cannot state.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

# Schema-valid bodies the server may still refuse with 422, on the operations whose bodies
# meet rules JSON Schema cannot state: they depend on the tenant (a pool or a provider account
# that exists, a TTL within its max_ttl_s, limits within its quota), on several fields at once
# (default_ttl_s <= max_ttl_s), on a provider kind's own config, or on DNS (a webhook host
# that resolves to a private address), or on the server's own settings (a backup path must lie
# inside its --backup-dir, and name a new directory). Everything a schema can say is in the spec, and
# `well_formed_bodies_are_read` (scripts/schemathesis_hooks.py) still fails any schema-valid
# body refused for its form. Query parameters and headers get no such allowance.
[[operations]]
include-name-regex = '^(POST /v1/admin/(backups|restores)|POST /v1/tenants|PATCH /v1/tenants/{tenant}|PUT /v1/tenants/{tenant}/(providers|pools|webhooks)/{(name|pool)}|PUT /v1/tenants/{tenant}/integrations/github|POST /v1/tenants/{tenant}/leases(/{id}/heartbeat)?)$'
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "422", "429", "5xx"]
EOF

status=0
PYTHONPATH="$ROOT/scripts" SCHEMATHESIS_HOOKS=schemathesis_hooks timeout "$ST_TIMEOUT" \
    "$ST_VENV/bin/st" --config-file "$WORK/schemathesis.toml" run "$URL/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --checks all \
    --exclude-checks use_after_free \
    --phases examples,coverage,fuzzing,stateful \
    --exclude-path-regex '/events$' \
    --max-examples "$ST_MAX_EXAMPLES" \
    --seed "$ST_SEED" \
    --workers "$ST_WORKERS" \
    --request-timeout 30 \
    --generation-database none \
    --no-color || status=$?

if grep -q 'panicked' "$LOG"; then
    echo "berth panicked during the run:" >&2
    grep 'panicked' "$LOG" | head -5 >&2
    status=1
fi
exit "$status"
