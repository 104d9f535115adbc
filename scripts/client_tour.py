"""The README's tour, run with a client generated from berth's /openapi.json.

scripts/client_tour.sh generates the package `berth_client` with openapi-python-client and
runs this with BERTH_URL and BERTH_ADMIN_TOKEN set. Every call goes through the generated
code (its models, enums and parameters), never through hand-written HTTP, so the tour passing
shows the spec is enough to drive berth. Prints one line per step; ends with `tour: done`.
"""

import os
import sys
from http import HTTPStatus

import httpx
from berth_client import AuthenticatedClient
from berth_client.api.leases import (
    delete_lease,
    get_lease,
    heartbeat,
    list_leases,
    logs,
    release_lease,
    request_lease,
)
from berth_client.api.pools import list_pools, put_pool
from berth_client.api.providers import put_provider
from berth_client.api.tenants import create_tenant, get_tenant, list_tenants
from berth_client.api.tokens import create_token, revoke_token
from berth_client.api.usage import ledger, usage
from berth_client.models import (
    GetLeaseWait,
    Heartbeat,
    LeaseRequest,
    LeaseRequestLabels,
    LimitsPatch,
    ListLeasesState,
    PoolPut,
    Problem,
    ProviderPut,
    ProviderPutConfigType0,
    ProviderPutKind,
    TenantCreate,
    TokenCreate,
    TokenCreateScopesItem,
    UsagePeriod,
)

URL = os.environ["BERTH_URL"]
TENANT = "acme"


def step(text):
    print(f"tour: {text}", flush=True)


def expect(response, status, what):
    """The parsed answer of `response`, which must have `status`."""
    if response.status_code != status:
        sys.exit(
            f"tour: {what}: expected {status.value}, got {response.status_code.value}: "
            f"{response.content.decode(errors='replace')}"
        )
    return response.parsed


def client(token):
    # Long polls take up to 30 s; give the transport room beyond them.
    return AuthenticatedClient(base_url=URL, token=token, timeout=httpx.Timeout(60.0))


def main():
    admin = client(os.environ["BERTH_ADMIN_TOKEN"])

    # The operator: a tenant with caps, a provider account, a pool, a token for its CI.
    tenant = expect(
        create_tenant.sync_detailed(
            client=admin,
            body=TenantCreate(
                name=TENANT,
                limits=LimitsPatch(
                    max_active_leases=2,
                    spend_cap_daily_micros=20_000_000,
                    default_ttl_s=1800,
                ),
            ),
        ),
        HTTPStatus.CREATED,
        "tenant create",
    )
    assert tenant.limits.max_active_leases == 2, tenant
    step(f"tenant {tenant.name} created, max_active_leases {tenant.limits.max_active_leases}")
    names = [t.name for t in expect(list_tenants.sync_detailed(client=admin, limit=10), HTTPStatus.OK, "tenant list").items]
    assert TENANT in names, names
    step(f"tenants: {names}")

    account = expect(
        put_provider.sync_detailed(
            TENANT,
            "local",
            client=admin,
            body=ProviderPut(
                kind=ProviderPutKind.PROCESS,
                config=ProviderPutConfigType0.from_dict({"grace_ms": 2000}),
            ),
        ),
        HTTPStatus.OK,
        "provider set",
    )
    step(f"provider account {account.name} ({account.kind})")
    pool = expect(
        put_pool.sync_detailed(
            TENANT,
            "linux",
            client=admin,
            body=PoolPut(
                provider="local",
                machine_type="local",
                hourly_price_micros=120_000,
                command=["sh", "-c", 'echo "hello from $BERTH_LEASE_ID"; exec sleep 3600'],
            ),
        ),
        HTTPStatus.OK,
        "pool set",
    )
    step(f"pool {pool.name} at {pool.hourly_price_micros} micros an hour")
    pools = [p.name for p in expect(list_pools.sync_detailed(TENANT, client=admin), HTTPStatus.OK, "pool list").items]
    assert pools == ["linux"], pools

    created = expect(
        create_token.sync_detailed(
            TENANT,
            client=admin,
            body=TokenCreate(scopes=[TokenCreateScopesItem.LEASESWRITE], name="ci"),
        ),
        HTTPStatus.CREATED,
        "token create",
    )
    step(f"token {created.id} for ci, scopes {[s.value for s in created.scopes]}")
    ci = client(created.token)

    # The tenant's CI: leases up to the cap, each waited for until its runner is ready.
    def lease_ready(labels, key):
        lease = expect(
            request_lease.sync_detailed(
                TENANT,
                client=ci,
                body=LeaseRequest(pool="linux", labels=LeaseRequestLabels.from_dict(labels)),
                idempotency_key=key,
            ),
            HTTPStatus.CREATED,
            "lease request",
        )
        for _ in range(10):
            lease = expect(
                get_lease.sync_detailed(TENANT, lease.id, client=ci, wait=GetLeaseWait.READY, timeout_s=30),
                HTTPStatus.OK,
                "lease wait",
            )
            if lease.state.value == "ready":
                return lease
        sys.exit(f"tour: lease {lease.id} is {lease.state.value}, not ready")

    first = lease_ready({"repo": "acme/web"}, "tour-first")
    step(f"first lease {first.id} ready, labels {first.labels.to_dict()}")
    again = expect(
        request_lease.sync_detailed(
            TENANT,
            client=ci,
            body=LeaseRequest(pool="linux", labels=LeaseRequestLabels.from_dict({"repo": "acme/web"})),
            idempotency_key="tour-first",
        ),
        HTTPStatus.CREATED,
        "lease request retried",
    )
    assert again.id == first.id, (again.id, first.id)
    step("a retry with the same Idempotency-Key returns the same lease")
    second = lease_ready({}, "tour-second")
    step(f"second lease {second.id} ready")
    refused = expect(
        request_lease.sync_detailed(TENANT, client=ci, body=LeaseRequest(pool="linux")),
        HTTPStatus.TOO_MANY_REQUESTS,
        "lease request at the cap",
    )
    assert isinstance(refused, Problem) and refused.code == "concurrency_cap", refused
    step(f"a third is refused: {refused.code}: {refused.detail}")
    active = expect(
        list_leases.sync_detailed(TENANT, client=ci, state=ListLeasesState.ACTIVE, limit=10),
        HTTPStatus.OK,
        "lease list",
    )
    assert sorted(lease.id for lease in active.items) == sorted([first.id, second.id]), active
    step(f"active: {[lease.id for lease in active.items]}")

    output = expect(logs.sync_detailed(TENANT, first.id, client=ci), HTTPStatus.OK, "lease logs")
    assert f"hello from {first.id}" in output.text, output.text
    step(f"runner output: {output.text.strip()}")

    renewed = expect(
        heartbeat.sync_detailed(TENANT, first.id, client=ci, body=Heartbeat(extend_ttl_s=900)),
        HTTPStatus.OK,
        "lease renew",
    )
    assert renewed.ttl_s == first.ttl_s + 900, (renewed.ttl_s, first.ttl_s)
    expect(heartbeat.sync_detailed(TENANT, first.id, client=ci), HTTPStatus.OK, "heartbeat without a body")
    step(f"renewed: ttl_s {first.ttl_s} -> {renewed.ttl_s}; a heartbeat without a body is taken")

    expect(release_lease.sync_detailed(TENANT, first.id, client=ci), HTTPStatus.OK, "lease release")
    ended = expect(
        get_lease.sync_detailed(TENANT, first.id, client=ci, wait=GetLeaseWait.ENDED, timeout_s=30),
        HTTPStatus.OK,
        "lease wait ended",
    )
    assert ended.state.value == "released", ended.state
    # DELETE is a release too, and the lease stays readable.
    expect(delete_lease.sync_detailed(TENANT, second.id, client=ci), HTTPStatus.OK, "lease delete")
    gone = expect(
        get_lease.sync_detailed(TENANT, second.id, client=ci, wait=GetLeaseWait.ENDED, timeout_s=30),
        HTTPStatus.OK,
        "lease read after delete",
    )
    assert gone.state.value == "released", gone.state
    step(f"released both: {ended.state.value}, {gone.state.value} (end reason {gone.end_reason.value})")

    spent = expect(usage.sync_detailed(TENANT, client=ci, period=UsagePeriod.MONTH), HTTPStatus.OK, "usage")
    assert spent.charged_micros > 0 and spent.reserved_micros == 0, spent
    step(f"usage this month: charged {spent.charged_micros} micros, reserved {spent.reserved_micros}")
    rows = expect(ledger.sync_detailed(TENANT, client=ci, limit=100), HTTPStatus.OK, "ledger").items
    kinds = sorted({row.kind.value for row in rows})
    assert kinds == ["charge", "release", "reserve"], kinds
    step(f"ledger: {len(rows)} rows of {kinds}")

    limits = expect(get_tenant.sync_detailed(TENANT, client=ci), HTTPStatus.OK, "tenant show").limits
    step(f"tenant show: max_active_leases {limits.max_active_leases}")
    expect(revoke_token.sync_detailed(TENANT, created.id, client=admin), HTTPStatus.NO_CONTENT, "token revoke")
    denied = list_leases.sync_detailed(TENANT, client=ci)
    assert denied.status_code == HTTPStatus.UNAUTHORIZED, denied.status_code
    step("the revoked token is refused")
    step("done")


if __name__ == "__main__":
    main()
