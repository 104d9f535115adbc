#!/usr/bin/env bash
# Makes a data directory with an earlier build of berth, for tests/upgrade.rs (DESIGN.md §9:
# a data directory written by an earlier commit opens and serves with a later one).
#
#   scripts/make-upgrade-fixture.sh <berth binary of the earlier build> <output directory>
#
# The directory gets a tenant `acme` with limits and a spend cap; a `hetzner` account with
# sealed credentials; a `process` account with no root (so its runners lived in
# <data>/runners, the old default) and a pool `local`; a webhook endpoint and a GitHub
# integration (sealed secrets); two tokens; one lease released (ledger rows) and one still
# ready, whose runner process is then killed (as if the machine had rebooted). The secrets
# the test needs are in <output>/secrets.json. The server is stopped with SIGTERM, so every
# database is checkpointed.
set -euo pipefail
BERTH=$(realpath "$1")
OUT=$2
rm -rf "$OUT"
mkdir -p "$OUT"
DATA="$OUT/data"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
# The earlier build puts process runners in <data>/runners (there is no --runners-dir yet).
"$BERTH" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" --log-format json 2>"$OUT/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "$URL/healthz" >/dev/null && break; sleep 0.1; done
ADMIN=$(cat "$DATA/admin-token")
call() { # method path [body]
  curl -fsS -X "$1" "$URL$2" -H "authorization: Bearer $ADMIN" -H 'content-type: application/json' ${3:+-d "$3"}
}
call POST /v1/tenants '{"name":"acme","limits":{"max_active_leases":3,"max_queued":7,"spend_cap_daily_micros":20000000,"max_ttl_s":7200,"default_ttl_s":600}}' >/dev/null
call PUT /v1/tenants/acme/providers/cloud '{"kind":"hetzner","credentials":{"token":"hz-fixture-token"}}' >/dev/null
call PUT /v1/tenants/acme/providers/local '{"kind":"process","config":{"grace_ms":200}}' >/dev/null
call PUT /v1/tenants/acme/pools/local '{"provider":"local","machine_type":"local","hourly_price_micros":120000,"command":["sleep","600"],"labels":["linux"]}' >/dev/null
call PUT /v1/tenants/acme/webhooks/alerts '{"url":"https://ci.example.com/berth","secret":"whsec_Zml4dHVyZS13ZWJob29rLXNlY3JldC0xMjM0NTY="}' >/dev/null
call PUT /v1/tenants/acme/integrations/github '{"secret":"gh-fixture-secret"}' >/dev/null
ADMIN_T=$(call POST /v1/tenants/acme/tokens '{"scopes":["tenant:admin"],"name":"admin"}' | jq -r .token)
CI_T=$(call POST /v1/tenants/acme/tokens '{"scopes":["leases:write"],"name":"ci"}' | jq -r .token)
wait_state() { # lease state
  for _ in $(seq 100); do
    [ "$(call GET "/v1/tenants/acme/leases/$1" | jq -r .state)" = "$2" ] && return 0
    sleep 0.1
  done
  echo "lease $1 never became $2" >&2; return 1
}
DONE=$(call POST /v1/tenants/acme/leases '{"pool":"local","ttl_s":600,"labels":{"repo":"acme/web"}}' | jq -r .id)
wait_state "$DONE" ready
call POST "/v1/tenants/acme/leases/$DONE/release" >/dev/null
wait_state "$DONE" released
LIVE=$(call POST /v1/tenants/acme/leases '{"pool":"local","ttl_s":3600}' | jq -r .id)
wait_state "$LIVE" ready
kill -TERM $SERVER
wait $SERVER || true
trap - EXIT
# The live lease's runner dies with the machine: kill its process group.
PID=$(jq -r .pid "$DATA/runners/acme/$LIVE/runner.json")
kill -KILL -- "-$PID" 2>/dev/null || true
rm -f "$DATA/berth.lock"
jq -n --arg admin "$ADMIN" --arg tenant_admin "$ADMIN_T" --arg ci "$CI_T" \
  --arg released "$DONE" --arg live "$LIVE" --arg built_by "$("$BERTH" --version)" \
  '{admin: $admin, tenant_admin: $tenant_admin, ci: $ci, released: $released, live: $live,
    github_secret: "gh-fixture-secret", built_by: $built_by}' >"$OUT/secrets.json"
rm -f "$OUT/serve.log"
echo "fixture in $OUT (released $DONE, live $LIVE)"
