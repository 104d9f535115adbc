#!/usr/bin/env python3
"""First request to hibernated tenants: GET one lease list from each of N random tenants,
one at a time over one keep-alive connection, and print latency percentiles.

Usage: first_request.py BASE_URL TOKEN PREFIX TENANTS [N]
Tenants are named PREFIX-<i> (the loadgen's naming). Each tenant is asked once, so every
request wakes a hibernated object. The client's own overhead (Python, ~0.1 ms) is included.
Bounded: N requests, 10 s timeout each; 127.0.0.1 only.
"""
import http.client
import json
import random
import sys
import time
import urllib.parse


def main():
    base, token, prefix, tenants = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    n = min(int(sys.argv[5]) if len(sys.argv) > 5 else 1000, tenants)
    url = urllib.parse.urlparse(base)
    assert url.hostname in ("127.0.0.1", "::1", "localhost"), "loopback only"
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"}
    latencies, statuses = [], {}
    for i in random.sample(range(tenants), n):
        start = time.perf_counter()
        conn.request("GET", f"/v1/tenants/{prefix}-{i}/leases?limit=1", headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - start) * 1000)
        statuses[response.status] = statuses.get(response.status, 0) + 1
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(json.dumps({
        "requests": n,
        "statuses": statuses,
        "p50_ms": round(pick(0.50), 3),
        "p90_ms": round(pick(0.90), 3),
        "p99_ms": round(pick(0.99), 3),
        "max_ms": round(latencies[-1], 3),
    }))


if __name__ == "__main__":
    main()
