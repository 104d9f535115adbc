"""Time from lease request to `ready`, cold and from a ready pool, against a running berth.

Run by scripts/ready-bench.sh (which builds and starts berth); stdlib only. For each provider
setup it creates a tenant, an account and two pools of the same runner — `cold` (no warm
runners) and `warm` (`min_ready` warm runners) — then, in the same run, requests LEASES leases
of each pool, CONCURRENCY at a time, and releases each lease as soon as it is ready. A lease's
time is from sending the request to the moment berth answers it `ready` (the request's own
answer for a warm hit, else a long poll `?wait=ready`). Prints one JSON line per pool and a
markdown table.

Usage: ready_bench.py BASE_URL TOKEN [--leases 500] [--concurrency 4] [--interval-ms 250]
           [--process-interval-ms 20] [--setups fake,process] [--boot-delay-ms 2000]
           [--min-ready 10]

The warm pool's requests are paced (one every --interval-ms for the fake provider,
--process-interval-ms for the process provider) so its refills can keep up; the cold pool's
are not.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


class Api:
    """One keep-alive connection per thread to berth."""

    def __init__(self, base, token):
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port
        self.token = token
        self.local = threading.local()

    def call(self, method, path, body=None, timeout=120):
        for attempt in range(3):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
                self.local.conn = conn
            headers = {"Authorization": f"Bearer {self.token}"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                return response.status, (json.loads(raw) if raw else None)
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise RuntimeError("unreachable")

    def must(self, method, path, body=None, want=(200, 201)):
        status, value = self.call(method, path, body)
        if status not in want:
            sys.exit(f"{method} {path}: {status} {value}")
        return value


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def setup(api, name, kind, config, command, min_ready, leases):
    api.must(
        "POST",
        "/v1/tenants",
        {
            "name": name,
            "limits": {"max_active_leases": 200, "max_queued": 0},
            "quota": {"max_warm": max(min_ready, 10)},
        },
    )
    api.must("PUT", f"/v1/tenants/{name}/providers/{kind}", {"kind": kind, "config": config})
    for pool, ready in (("cold", 0), ("warm", min_ready)):
        put_pool(api, name, pool, kind, command, ready)


def put_pool(api, tenant, pool, kind, command, min_ready):
    body = {"provider": kind, "machine_type": "m", "hourly_price_micros": 0, "min_ready": min_ready}
    if command:
        body["command"] = command
    api.must("PUT", f"/v1/tenants/{tenant}/pools/{pool}", body)


def wait_warm(api, tenant, min_ready, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pools = api.must("GET", f"/v1/tenants/{tenant}/pools")["items"]
        warm = next(p for p in pools if p["name"] == "warm")["warm"]
        if warm["ready"] >= min_ready:
            return
        time.sleep(0.1)
    sys.exit(f"{tenant}: the warm pool never had {min_ready} runners ready")


def one_lease(api, tenant, pool):
    """Seconds from request to ready, and whether a warm runner was taken."""
    started = time.perf_counter()
    status, lease = api.call("POST", f"/v1/tenants/{tenant}/leases", {"pool": pool, "ttl_s": 600})
    if status != 201:
        raise RuntimeError(f"request: {status} {lease}")
    while lease["state"] != "ready":
        if lease["state"] not in ("provisioning",):
            raise RuntimeError(f"lease ended before ready: {lease}")
        path = f"/v1/tenants/{tenant}/leases/{lease['id']}?wait=ready&timeout_s=60"
        status, lease = api.call("GET", path)
        if status != 200:
            raise RuntimeError(f"wait: {status} {lease}")
    elapsed = time.perf_counter() - started
    warm = bool((lease.get("runner") or {}).get("warm"))
    api.call("DELETE", f"/v1/tenants/{tenant}/leases/{lease['id']}")
    return elapsed, warm


def run_pool(api, tenant, pool, leases, concurrency, interval_s):
    times, hits, errors = [], 0, []
    lock = threading.Lock()
    next_index = [0]
    started = time.monotonic()

    def worker():
        nonlocal hits
        while True:
            with lock:
                i = next_index[0]
                if i >= leases:
                    return
                next_index[0] += 1
            if interval_s:
                # Paced arrivals: lease i starts no earlier than i × interval.
                delay = started + i * interval_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                elapsed, warm = one_lease(api, tenant, pool)
            except Exception as err:  # noqa: BLE001 - reported, the run goes on
                with lock:
                    errors.append(str(err))
                continue
            with lock:
                times.append(elapsed)
                hits += warm

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    return {
        "tenant": tenant,
        "pool": pool,
        "leases": len(times),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "warm_hits": hits,
        "p50_ms": round(percentile(times, 50) * 1000, 1) if times else None,
        "p99_ms": round(percentile(times, 99) * 1000, 1) if times else None,
        "mean_ms": round(statistics.fmean(times) * 1000, 1) if times else None,
        "max_ms": round(max(times) * 1000, 1) if times else None,
        "wall_s": round(wall, 1),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("token")
    parser.add_argument("--leases", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--interval-ms", type=float, default=250.0)
    parser.add_argument("--process-interval-ms", type=float, default=20.0)
    parser.add_argument("--setups", default="fake,process")
    parser.add_argument("--boot-delay-ms", type=int, default=2000)
    parser.add_argument("--min-ready", type=int, default=10)
    args = parser.parse_args()
    api = Api(args.base, args.token)
    stamp = time.strftime("%H%M%S")
    results = []
    for kind in args.setups.split(","):
        tenant = f"rb-{kind}-{stamp}"
        if kind == "fake":
            config = {"cloud": tenant, "boot_delay_ms": args.boot_delay_ms}
            command = None
        elif kind == "process":
            config = {"grace_ms": 200}
            command = ["sh", "-c", "exec sleep 3600"]
        else:
            sys.exit(f"unknown setup {kind}")
        setup(api, tenant, kind, config, command, args.min_ready, args.leases)
        wait_warm(api, tenant, args.min_ready)
        # Cold first, then warm, in the same run and against the same server.
        for pool in ("cold", "warm"):
            pace = args.interval_ms if kind == "fake" else args.process_interval_ms
            interval = pace / 1000 if pool == "warm" else 0
            result = run_pool(api, tenant, pool, args.leases, args.concurrency, interval)
            result["setup"] = kind
            print(json.dumps(result), flush=True)
            results.append(result)
        # Wind down: no warm runners left behind.
        put_pool(api, tenant, "warm", kind, command, 0)
    print()
    print("| provider | pool | leases | warm hits | p50 | p99 | mean | max | wall |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['setup']} | {r['pool']} | {r['leases']} | {r['warm_hits']} | {r['p50_ms']} ms "
            f"| {r['p99_ms']} ms | {r['mean_ms']} ms | {r['max_ms']} ms | {r['wall_s']} s |"
        )
    if any(r["errors"] for r in results):
        sys.exit("some leases failed: " + "; ".join(str(r["first_error"]) for r in results if r["errors"]))


if __name__ == "__main__":
    main()
