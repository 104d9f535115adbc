#!/usr/bin/env python3
"""Side-by-side table of berth vs the workerd reference from loadgen JSON lines.

Usage: bench_table.py berth.jsonl workerd.jsonl

Medians over repeats per (workload, concurrency), with min..max so the noise shows, the
berth/workerd ratio, and whether berth meets the goal of the performance issue. Latency
columns are the median of each run's percentile.
"""
import json
import statistics
import sys


def load(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    except FileNotFoundError:
        pass
    return rows


def get(d, path, default=None):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rng(xs):
    xs = [x for x in xs if x is not None]
    return f"{min(xs):.0f}..{max(xs):.0f}" if xs else "-"


def f0(x):
    return "-" if x is None else f"{x:,.0f}"


def f1(x):
    return "-" if x is None else f"{x:,.1f}"


def by(rows, workload, c):
    return [r for r in rows if r["workload"] == workload and r["concurrency"] == c]


# (workload id, title, headline path, unit, goal ratio or absolute goals)
WORKLOADS = [
    ("w1-grant-release", "W1 one tenant", "result.pairs_per_s", "pairs/s"),
    ("w2-many-tenants", "W2 10,000 tenants", "result.pairs_per_s", "pairs/s"),
    ("w3-cap-contention", "W3 cap 10", "result.grants_per_s", "grants/s"),
]
GOALS = {  # absolute berth goals at C=64, from the performance issue
    "w1-grant-release": ("≥ 7,000 pairs/s, grant p99 ≤ 20 ms", lambda t, p99: t >= 7000 and p99 <= 20),
    "w2-many-tenants": ("≥ 2,000 pairs/s", lambda t, p99: t >= 2000),
    "w3-cap-contention": ("≥ 4,000 grants/s, 0 violations", lambda t, p99: t >= 4000),
}


def commits_per_write(rs):
    """Object commits (one WAL fsync each) per acknowledged write (2xx grant or release)."""
    out = []
    for r in rs:
        commits = r.get("berth_commits")
        writes = 0
        for key in ("grant", "release", "grant_granted"):
            writes += sum(v for k, v in (get(r, f"result.{key}.status") or {}).items() if k.startswith("2"))
        if commits is not None and writes:
            out.append(commits / writes)
    return med(out)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    berth, workerd = load(sys.argv[1]), load(sys.argv[2])
    cs = sorted({r["concurrency"] for r in berth + workerd})
    lines = [
        "| workload | C | berth (median, min..max) | workerd (median, min..max) | ratio | berth grant p50 / p99 ms | workerd grant p99 ms | berth commits per write | goal at C=64 |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for wl, title, path, unit in WORKLOADS:
        for c in cs:
            b, w = by(berth, wl, c), by(workerd, wl, c)
            if not b and not w:
                continue
            bt, wt = med([get(r, path) for r in b]), med([get(r, path) for r in w])
            grant = "result.grant_granted" if wl.startswith("w3") else "result.grant"
            bp50, bp99 = med([get(r, f"{grant}.p50_ms") for r in b]), med([get(r, f"{grant}.p99_ms") for r in b])
            wp99 = med([get(r, f"{grant}.p99_ms") for r in w])
            ratio = f"{bt / wt:.1f}×" if bt and wt else "-"
            goal = ""
            if c == 64 and wl in GOALS and bt is not None:
                text, ok = GOALS[wl]
                met = ok(bt, bp99 or 0)
                if wl.startswith("w3"):
                    met = met and sum(get(r, "result.violations", 0) for r in b) == 0
                goal = f"{text}: {'met' if met else '**not met**'}"
            if wl.startswith("w3"):
                violations = sum(get(r, "result.violations", 0) for r in b)
                goal = (goal + f" ({violations} violations)").strip()
            cpw = commits_per_write(b)
            lines.append(
                f"| {title} | {c} | {f0(bt)} {unit} ({rng([get(r, path) for r in b])}) | {f0(wt)} ({rng([get(r, path) for r in w])}) | "
                f"{ratio} | {f1(bp50)} / {f1(bp99)} | {f1(wp99)} | {'-' if cpw is None else f'{cpw:.3f}'} | {goal} |"
            )
    lines += [
        "",
        "| W4 expiry, 10,000 leases × 100 tenants, TTL 2 s | C | berth lateness p50 / p99 / max ms | workerd lateness p50 / p99 / max ms | berth create grants/s | workerd create grants/s | goal p99 ≤ 50, max ≤ 250 |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for c in cs:
        b, w = by(berth, "w4-expiry", c), by(workerd, "w4-expiry", c)
        if not b and not w:
            continue

        def late(rs):
            ll = [get(r, "result.lease_lateness_ms") or {} for r in rs]
            return [med([x.get(k) for x in ll]) for k in ("p50", "p99", "max")]

        bl, wl_ = late(b), late(w)
        met = bl[1] is not None and bl[1] <= 50 and bl[2] is not None and bl[2] <= 250
        lines.append(
            f"| | {c} | {' / '.join(f0(x) for x in bl)} | {' / '.join(f0(x) for x in wl_)} | "
            f"{f0(med([get(r, 'result.create_grants_per_s') for r in b]))} | {f0(med([get(r, 'result.create_grants_per_s') for r in w]))} | "
            f"{'met' if met else '**not met**'} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
