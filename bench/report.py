#!/usr/bin/env python3
"""Turn bench/run.sh's per-run values into the Markdown table for docs/benchmarks.md.

Input: a file of `KEY VALUE` lines, KEY = TEST_WHO_RUN (e.g. `h1_skiff_2`) or
`cpu_TEST_WHO_RUN` for the CPU (in cores) the measured server spent during a
throughput run. Settings come from the environment run.sh exports.
Every cell is the median over runs; per-core figures are medians of per-run
ratios, so one noisy run cannot pair a high rate with a low CPU reading.
"""

import datetime
import os
import statistics
import sys
from collections import defaultdict


def load(path):
    vals = defaultdict(dict)
    for line in open(path):
        parts = line.split()
        if len(parts) != 2 or not parts[1]:
            continue
        key, value = parts
        name, run = key.rsplit("_", 1)
        vals[name][int(run)] = float(value)
    return vals


def med(vals, name):
    runs = vals.get(name)
    return statistics.median(runs.values()) if runs else None


def per_core(vals, test, who):
    rates, cpus = vals.get(f"{test}_{who}", {}), vals.get(f"cpu_{test}_{who}", {})
    ratios = [rates[r] / cpus[r] for r in rates if cpus.get(r, 0) > 0]
    return statistics.median(ratios) if ratios else None


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def main():
    vals = load(sys.argv[1])
    env = os.environ.get
    runs, duration = env("RUNS", "?"), env("DURATION", "?")
    h1c, h2c, h2m = env("H1_CONNS", "?"), env("H2_CONNS", "?"), env("H2_STREAMS", "?")
    rate, latc, lat_tool = env("RATE", "?"), env("LAT_CONNS", "?"), env("LAT_TOOL", "?")

    rows = []

    def row(label, d, s, n, digits=0, sd=True, sn=True):
        rows.append(
            f"| {label} | {fmt(d, digits)} | {fmt(s, digits)} | {fmt(n, digits)} "
            f"| {ratio(s, d) if sd else '–'} | {ratio(s, n) if sn else '–'} |"
        )

    h1 = {w: med(vals, f"h1_{w}") for w in ("direct", "skiff", "nginx")}
    h2 = {w: med(vals, f"h2_{w}") for w in ("direct", "skiff", "nginx")}
    h2e = med(vals, "h2e_skiff")
    cpu_h1 = {w: med(vals, f"cpu_h1_{w}") for w in ("skiff", "nginx")}
    cpu_h2 = {w: med(vals, f"cpu_h2_{w}") for w in ("skiff", "nginx")}
    pc_h1 = {w: per_core(vals, "h1", w) for w in ("skiff", "nginx")}
    pc_h2 = {w: per_core(vals, "h2", w) for w in ("skiff", "nginx")}
    p50 = {w: med(vals, f"p50_{w}") for w in ("direct", "skiff", "nginx")}
    p99 = {w: med(vals, f"p99_{w}") for w in ("direct", "skiff", "nginx")}
    # Added latency per run (proxy minus the direct run next to it), then the median.
    added = {}
    for w in ("skiff", "nginx"):
        d, p = vals.get("p99_direct", {}), vals.get(f"p99_{w}", {})
        diffs = [p[r] - d[r] for r in p if r in d]
        added[w] = statistics.median(diffs) if diffs else None

    row(f"HTTP/1.1 keep-alive throughput, req/s (wrk, {h1c} conns)", h1["direct"], h1["skiff"], h1["nginx"])
    row("  proxy CPU during it, cores", None, cpu_h1["skiff"], cpu_h1["nginx"], 2, sd=False)
    row("  **per proxy core**, req/s", None, pc_h1["skiff"], pc_h1["nginx"], sd=False)
    row(
        f"h2c throughput, req/s (h2load, {h2c} conns × {h2m} streams; upstream HTTP/1.1)",
        h2["direct"], h2["skiff"], h2["nginx"],
    )
    row("  proxy CPU during it, cores", None, cpu_h2["skiff"], cpu_h2["nginx"], 2, sd=False)
    row("  **per proxy core**, req/s", None, pc_h2["skiff"], pc_h2["nginx"], sd=False)
    row("h2c end to end, req/s (Skiff upstream h2c; nginx cannot)", h2["direct"], h2e, None, sn=False)
    row(f"HTTP/1.1 p50 latency at {rate} req/s, ms", p50["direct"], p50["skiff"], p50["nginx"], 3)
    row(f"HTTP/1.1 p99 latency at {rate} req/s, ms", p99["direct"], p99["skiff"], p99["nginx"], 3)
    row("  **added p99** over direct, ms", None, added["skiff"], added["nginx"], 3, sd=False)

    def verdict(ok):
        return "**meets**" if ok else "**misses**"

    bar = []
    for label, pc in (("HTTP/1.1", pc_h1), ("h2c", pc_h2)):
        s, n = pc["skiff"], pc["nginx"]
        if s is not None and n is not None:
            bar.append(
                f"- Throughput per core, {label}: Skiff {fmt(s)} req/s vs nginx {fmt(n)} "
                f"({s / n:.2f}×): {verdict(s >= n)} the bar (≥ nginx)."
            )
    s, n = added["skiff"], added["nginx"]
    if s is not None and n is not None:
        bar.append(
            f"- Added p99 at {rate} req/s: Skiff +{s:.3f} ms vs nginx +{n:.3f} ms: "
            f"{verdict(s <= n)} the bar (≤ nginx)."
        )

    pinning = (
        "not pinned"
        if env("NO_PIN") == "1"
        else f"proxy under test alone on CPU {env('PROXY_CPU')}; load generator and backend on CPU {env('LOAD_CPU')}"
    )
    out = [
        f"Run {datetime.date.today().isoformat()} · {os.cpu_count()} CPUs, {env('CPU_MODEL', '?')}, "
        f"Linux {env('V_KERNEL', '?')} · {env('V_SKIFF', '?')} (release) · {env('V_NGINX', '?')} · "
        f"{env('V_WRK', '?')} · {env('V_H2LOAD', '?')} · latency: {env('V_OHA', '-') if lat_tool == 'oha' else env('V_H2LOAD', '?')}",
        "",
        f"Medians of {runs} runs × {duration} s per cell. Pinning: {pinning}. "
        f"Load average (1/5/15 min) before: {env('LOAD_BEFORE', '?')}, after: {env('LOAD_AFTER', '?')}. "
        f"Latency: {lat_tool}, {latc} connections, open loop at {rate} req/s"
        + (" with latency correction (coordinated omission)." if lat_tool == "oha" else "."),
        "",
        "| test | direct | Skiff | nginx | Skiff/direct | Skiff/nginx |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Against the bar:",
        "",
        *bar,
    ]
    print("\n".join(out))


if __name__ == "__main__":
    main()
