#!/usr/bin/env python3
"""Turn bench/run.sh's per-run values into the Markdown for docs/benchmarks.md
and a JSON file of the same figures.

    report.py VALUES_FILE [RESULTS_JSON]

Input: a file of `KEY VALUE` lines, KEY = NAME_RUN, NAME = TEST_WHO (e.g.
`h1_skiff_2`), WHO one of direct, skiff, nginx, haproxy, envoy. Next to each
throughput run: `cpu_TEST_WHO_RUN` (cores the measured server used),
`cpus_...` (its CPU seconds) and `reqs_...` (requests completed). Run-once
figures (idle memory, instruction counts) have RUN 1. Settings come from
the environment run.sh exports.

Every throughput and latency cell is the median over runs; per-core and
per-request figures are medians of per-run ratios, so one noisy run cannot
pair a high rate with a low CPU reading.
"""

import datetime
import json
import os
import statistics
import sys
from collections import defaultdict

PROXIES = ("skiff", "nginx", "haproxy", "envoy")
NAMES = {"direct": "direct", "skiff": "Skiff", "nginx": "nginx", "haproxy": "HAProxy", "envoy": "Envoy"}
COLUMNS = ("direct",) + PROXIES


def load(path):
    vals = defaultdict(dict)
    for line in open(path):
        parts = line.split()
        if len(parts) != 2 or not parts[1]:
            continue
        key, value = parts
        name, run = key.rsplit("_", 1)
        try:
            vals[name][int(run)] = float(value)
        except ValueError:
            continue
    return vals


class Figures:
    def __init__(self, vals):
        self.vals = vals

    def med(self, name):
        runs = self.vals.get(name)
        return statistics.median(runs.values()) if runs else None

    def per_run(self, f, *names):
        """Median over runs of f(values of names in that run)."""
        series = [self.vals.get(n, {}) for n in names]
        out = []
        for run in series[0]:
            xs = [s.get(run) for s in series]
            if all(x is not None for x in xs):
                y = f(*xs)
                if y is not None:
                    out.append(y)
        return statistics.median(out) if out else None

    def per_core(self, test, who):
        return self.per_run(lambda r, c: r / c if c > 0 else None, f"{test}_{who}", f"cpu_{test}_{who}")

    def us_per_req(self, test, who):
        # Proxy CPU seconds over requests completed, in microseconds.
        return self.per_run(lambda s, n: s / n * 1e6 if n > 0 else None, f"cpus_{test}_{who}", f"reqs_{test}_{who}")

    def added(self, pct, who):
        # Proxy minus the direct run next to it, per run, then the median.
        return self.per_run(lambda p, d: p - d, f"{pct}_{who}", f"{pct}_direct")


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def main():
    vals = load(sys.argv[1])
    json_path = sys.argv[2] if len(sys.argv) > 2 else None
    fig = Figures(vals)
    env = os.environ.get
    runs, duration = env("RUNS", "?"), env("DURATION", "?")
    h1c, h2c, h2m = env("H1_CONNS", "?"), env("H2_CONNS", "?"), env("H2_STREAMS", "?")
    rate, latc, lat_tool = env("RATE", "?"), env("LAT_CONNS", "?"), env("LAT_TOOL", "?")
    idle_ns = env("IDLE_H1_NS", "1000 10000").split()
    idle_h2 = env("IDLE_H2_N", "1000")
    big_n = max(idle_ns, key=int) if idle_ns else None

    # figures[row key][who] = number or None; rows keeps the order and labels.
    figures = {}
    rows = []
    marks = {}  # (row key, who) -> footnote mark

    def row(key, label, cells, digits=0):
        figures[key] = {w: cells.get(w) for w in COLUMNS}
        rows.append((key, label, digits))

    # -- HTTP/1.1 keep-alive throughput
    row("h1_rps", f"HTTP/1.1 keep-alive throughput, req/s (wrk, {h1c} conns)",
        {w: fig.med(f"h1_{w}") for w in COLUMNS})
    row("h1_cores", "  proxy CPU during it, cores", {w: fig.med(f"cpu_h1_{w}") for w in PROXIES}, 2)
    row("h1_per_core", "  **req/s per proxy core**", {w: fig.per_core("h1", w) for w in PROXIES})
    row("h1_us", "  **CPU per request**, µs", {w: fig.us_per_req("h1", w) for w in PROXIES}, 2)

    # -- h2c -> HTTP/1.1 upstream
    row("h2_rps", f"h2c → HTTP/1.1 upstream, req/s (h2load, {h2c} conns × {h2m} streams)",
        {w: fig.med(f"h2_{w}") for w in COLUMNS})
    row("h2_cores", "  proxy CPU during it, cores", {w: fig.med(f"cpu_h2_{w}") for w in PROXIES}, 2)
    row("h2_per_core", "  req/s per proxy core", {w: fig.per_core("h2", w) for w in PROXIES})
    row("h2_us", "  CPU per request, µs", {w: fig.us_per_req("h2", w) for w in PROXIES}, 2)

    # -- h2c end to end; nginx: its h2c -> HTTP/1.1 figures; direct: h2c to the backend
    def e2e(kind, w):
        test = "h2" if w in ("direct", "nginx") else "h2e"
        if kind == "rps":
            return fig.med(f"{test}_{w}")
        if kind == "cores":
            return fig.med(f"cpu_{test}_{w}")
        if kind == "per_core":
            return fig.per_core(test, w)
        return fig.us_per_req(test, w)

    row("h2e_rps", f"h2c end to end (h2c → proxy → h2c backend), req/s ({h2c} conns × {h2m} streams)",
        {w: e2e("rps", w) for w in COLUMNS})
    row("h2e_cores", "  proxy CPU during it, cores", {w: e2e("cores", w) for w in PROXIES}, 2)
    row("h2e_per_core", "  req/s per proxy core", {w: e2e("per_core", w) for w in PROXIES})
    row("h2e_us", "  **CPU per request**, µs", {w: e2e("us", w) for w in PROXIES}, 2)
    for key in ("h2e_rps", "h2e_cores", "h2e_per_core", "h2e_us"):
        marks[(key, "nginx")] = "ᵃ"

    # -- latency
    row("p50", f"HTTP/1.1 p50 latency at {rate} req/s, ms", {w: fig.med(f"p50_{w}") for w in COLUMNS}, 3)
    row("p99", f"HTTP/1.1 p99 latency at {rate} req/s, ms", {w: fig.med(f"p99_{w}") for w in COLUMNS}, 3)
    row("p50_added", "  **added p50** over direct, ms", {w: fig.added("p50", w) for w in PROXIES}, 3)
    row("p99_added", "  added p99 over direct, ms", {w: fig.added("p99", w) for w in PROXIES}, 3)

    # -- memory (KiB in the values; Pss)
    def mib(x):
        return None if x is None else x / 1024

    row("rss_idle", "**memory idle**, MiB (Pss, after start-up and one request)",
        {w: mib(fig.med(f"rssidle_{w}")) for w in PROXIES}, 1)
    for n in idle_ns:
        row(f"idle_h1_{n}", f"  per idle HTTP/1.1 keep-alive connection, KiB ({int(n):,} conns)",
            {w: fig.med(f"idle_h1_{n}_perconnpsskib_{w}") for w in PROXIES}, 2)
    if big_n:
        row("idle_h1_total", f"  memory with {int(big_n):,} idle HTTP/1.1 connections, MiB",
            {w: mib(fig.med(f"idle_h1_{big_n}_afterpsskib_{w}")) for w in PROXIES}, 1)
        row("idle_h1_upstream", f"  upstream connections held meanwhile (of the {int(big_n):,})",
            {w: fig.med(f"idle_h1_{big_n}_upstreamconns_{w}") for w in PROXIES})
    row("idle_h2", f"  per idle h2c connection, KiB ({int(idle_h2):,} conns)",
        {w: fig.med(f"idle_h2_{idle_h2}_perconnpsskib_{w}") for w in PROXIES}, 2)

    # -- instructions
    cgn = env("CG_REQUESTS", "20000")
    row("ir_h1", f"instructions per request, HTTP/1.1 (callgrind, {int(cgn):,} requests)",
        {w: fig.med(f"ir_h1_{w}") for w in PROXIES})
    row("ir_h2e", "instructions per request, h2c end to end", {w: fig.med(f"ir_h2e_{w}") for w in PROXIES})
    marks[("ir_h2e", "nginx")] = "ᵃ"

    # -- two workers
    row("w2_h1_rps", "2 workers, unpinned: HTTP/1.1 keep-alive, req/s", {w: fig.med(f"w2h1_{w}") for w in PROXIES})
    row("w2_h1_cores", "  proxy CPU during it, cores", {w: fig.med(f"cpu_w2h1_{w}") for w in PROXIES}, 2)
    row("w2_h1_us", "  CPU per request, µs", {w: fig.us_per_req("w2h1", w) for w in PROXIES}, 2)
    row("w2_h2e_rps", "2 workers, unpinned: h2c end to end, req/s", {w: fig.med(f"w2h2e_{w}") for w in PROXIES})
    row("w2_h2e_cores", "  proxy CPU during it, cores", {w: fig.med(f"cpu_w2h2e_{w}") for w in PROXIES}, 2)
    row("w2_h2e_us", "  CPU per request, µs", {w: fig.us_per_req("w2h2e", w) for w in PROXIES}, 2)
    for key in ("w2_h2e_rps", "w2_h2e_cores", "w2_h2e_us"):
        marks[(key, "nginx")] = "ᵃ"

    # Rows of rounds that were skipped are left out rather than shown empty.
    skipped = set()
    if env("IDLE") == "0":
        skipped |= {k for k, _, _ in rows if k.startswith(("rss_idle", "idle_"))}
    if env("CALLGRIND") == "0":
        skipped |= {"ir_h1", "ir_h2e"}
    if env("TWO_WORKERS") == "0":
        skipped |= {k for k, _, _ in rows if k.startswith("w2_")}

    table = [
        "| | " + " | ".join(NAMES[w] for w in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for key, label, digits in rows:
        if key in skipped:
            continue
        cells = []
        for w in COLUMNS:
            x = figures[key][w]
            cells.append("" if x is None and w == "direct" else fmt(x, digits) + marks.get((key, w), ""))
        table.append(f"| {label} | " + " | ".join(cells) + " |")

    # -- against the bar
    def verdict(ok):
        return "**meets**" if ok else "**misses**"

    f = figures
    bar = []
    s, n, h = (f["h1_per_core"][w] for w in ("skiff", "nginx", "haproxy"))
    if s is not None and (n is not None or h is not None):
        best_w = max((w for w in ("nginx", "haproxy") if f["h1_per_core"][w] is not None), key=lambda w: f["h1_per_core"][w])
        best = f["h1_per_core"][best_w]
        bar.append(
            f"- HTTP/1.1 keep-alive req/s per proxy core: Skiff {fmt(s)} vs {NAMES[best_w]} {fmt(best)} "
            f"(best of nginx and HAProxy; {s / best:.2f}×): {verdict(s >= best)} the bar (≥ the best)."
        )
    s = f["h1_us"]["skiff"]
    peers = [w for w in ("nginx", "haproxy") if f["h1_us"][w] is not None]
    if s is not None and peers:
        best_w = min(peers, key=lambda w: f["h1_us"][w])
        best = f["h1_us"][best_w]
        bar.append(
            f"- HTTP/1.1 CPU per request: Skiff {s:.2f} µs vs {NAMES[best_w]} {best:.2f} µs "
            f"(best of nginx and HAProxy; {s / best:.2f}×): {verdict(s <= best)} the bar (≤ the best)."
        )
    s, h = f["h2e_us"]["skiff"], f["h2e_us"]["haproxy"]
    if s is not None and h is not None:
        bar.append(
            f"- h2c end-to-end CPU per request: Skiff {s:.2f} µs vs HAProxy {h:.2f} µs ({s / h:.2f}×): "
            f"{verdict(s <= 1.1 * h)} the bar (≤ 1.1× HAProxy)."
        )
    s, n = f["p50_added"]["skiff"], f["p50_added"]["nginx"]
    if s is not None and n is not None:
        bar.append(
            f"- Added p50 at {rate} req/s: Skiff {s:+.3f} ms vs nginx {n:+.3f} ms: {verdict(s <= n)} the bar (≤ nginx)."
        )
    s = f.get("rss_idle", {}).get("skiff")
    if s is not None and "rss_idle" not in skipped:
        bar.append(f"- Memory idle: Skiff {s:.1f} MiB: {verdict(s <= 10)} the bar (≤ 10 MiB).")
    key = f"idle_h1_{big_n}" if big_n else None
    s = f.get(key, {}).get("skiff") if key else None
    if s is not None and key not in skipped:
        bar.append(
            f"- Memory per idle HTTP/1.1 keep-alive connection ({int(big_n):,} connections): Skiff {s:.2f} KiB: "
            f"{verdict(s <= 4)} the bar (≤ 4 KiB)."
        )
    s = f.get("idle_h2", {}).get("skiff")
    if s is not None and "idle_h2" not in skipped:
        bar.append(f"- Memory per idle h2c connection: Skiff {s:.2f} KiB: {verdict(s <= 16)} the bar (≤ 16 KiB).")

    # -- warnings: idle connections the proxy closed during the test
    notes = []
    for name, runs_ in sorted(vals.items()):
        if "_closedbyproxy_" in name and any(v > 0 for v in runs_.values()):
            test, who = name.split("_closedbyproxy_")
            notes.append(f"- **Warning**: {NAMES.get(who, who)} closed {int(max(runs_.values()))} idle connections "
                         f"during `{test}`; that figure undercounts.")

    pinning = (
        "not pinned"
        if env("NO_PIN") == "1"
        else f"proxy under test alone on CPU {env('PROXY_CPU')}; load generator and backend on CPU {env('LOAD_CPU')}"
    )
    latency_tool = env("V_OHA", "-") if lat_tool == "oha" else env("V_H2LOAD", "?")
    out = [
        f"Run {datetime.date.today().isoformat()} · {os.cpu_count()} CPUs, {env('CPU_MODEL', '?')}, "
        f"Linux {env('V_KERNEL', '?')} · {env('V_SKIFF', '?')} (release) · {env('V_NGINX', '?')} · "
        f"{env('V_HAPROXY', '?')} · {env('V_ENVOY', '?')} · {env('V_WRK', '?')} · {env('V_H2LOAD', '?')} · "
        f"latency: {latency_tool} · {env('V_VALGRIND', '?')}",
        "",
        f"Medians of {runs} runs × {duration} s per throughput and latency cell; memory and instruction "
        f"counts measured once. Pinning: {pinning}; the 2-worker rows unpinned. One worker per proxy "
        f"elsewhere. Load average (1/5/15 min) before: {env('LOAD_BEFORE', '?')}, after: "
        f"{env('LOAD_AFTER', '?')}; {int(env('ELAPSED', '0')) // 60} min in all. Latency: {lat_tool}, "
        f"{latc} connections, open loop at {rate} req/s"
        + (" with latency correction (coordinated omission)." if lat_tool == "oha" else "."),
        "",
        *table,
        "",
        "ᵃ nginx 1.22 cannot proxy to an HTTP/2 upstream: its cell is h2c on the client side and HTTP/1.1 "
        "to the backend (the h2c → HTTP/1.1 figures). The direct column of the h2c end-to-end row is h2c "
        "straight to the backend.",
        "",
        "Memory is Pss (`/proc/PID/smaps_rollup`) summed over the proxy's processes (nginx: master and "
        "worker), so pages shared between processes or with other programs count once; per connection = "
        "(with the connections idle − before them) ÷ connections, in KiB, the proxy's upstream pool "
        "included (its connections are counted in the table). CPU per request = the proxy's CPU "
        "seconds (user + system, from `/proc`) during the run ÷ requests completed.",
        "",
        "Against the bar:",
        "",
        *bar,
        *([""] + notes if notes else []),
    ]
    print("\n".join(out))

    if json_path:
        doc = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "settings": {k: env(k) for k in (
                "RUNS", "DURATION", "H1_CONNS", "H2_CONNS", "H2_STREAMS", "RATE", "LAT_CONNS", "LAT_TOOL",
                "PROXY_CPU", "LOAD_CPU", "NO_PIN", "IDLE_H1_NS", "IDLE_H2_N", "CG_WARMUP", "CG_REQUESTS",
                "CG_CONNS", "CG_STREAMS")},
            "machine": {"cpus": os.cpu_count(), "cpu_model": env("CPU_MODEL"), "kernel": env("V_KERNEL"),
                        "load_before": env("LOAD_BEFORE"), "load_after": env("LOAD_AFTER")},
            "versions": {k.lower()[2:]: env(k) for k in (
                "V_SKIFF", "V_NGINX", "V_HAPROXY", "V_ENVOY", "V_WRK", "V_H2LOAD", "V_OHA", "V_VALGRIND")},
            "units": {"rps": "req/s", "cores": "CPU cores", "per_core": "req/s per core", "us": "µs CPU per request",
                      "p50/p99": "ms", "rss_idle": "MiB (Pss)", "idle_h1_N/idle_h2": "KiB per connection (Pss)",
                      "idle_h1_total": "MiB (Pss)", "ir": "instructions per request"},
            "figures": {k: v for k, v in figures.items() if k not in skipped},
            "bar": bar,
            "per_run": {k: {str(r): x for r, x in sorted(v.items())} for k, v in sorted(vals.items())},
        }
        with open(json_path, "w") as fh:
            json.dump(doc, fh, indent=1, ensure_ascii=False)
            fh.write("\n")


if __name__ == "__main__":
    main()
