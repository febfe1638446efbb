#!/usr/bin/env python3
"""The table and the JSON of bench/scale.sh.

  scale_report.py VALUES JSON_OUT > table.md

VALUES has one measurement a line, `SCENARIO N PROXY METRIC VALUE` (several
lines for the same key: one per run, or per reload). Medians go in the
table; the JSON keeps every value too. The run's knobs and versions come
from the environment (SCALE_* variables set by scale.sh).
"""

import json
import os
import statistics
import sys
from collections import defaultdict

SCENARIOS = {
    "hosts": "host routes",
    "prefixes": "prefix routes",
    "endpoints": "endpoints per cluster",
    "reload": "routes + clusters",
}
PROXIES = ("skiff", "envoy")


def load(path):
    vals = defaultdict(list)
    for line in open(path):
        parts = line.split()
        if len(parts) != 5:
            continue
        scen, n, who, metric, value = parts
        try:
            v = float(value)
        except ValueError:
            continue
        vals[(scen, int(n), who)].append((metric, v))
    return vals


def med(xs):
    return statistics.median(xs) if xs else None


def summarize(pairs):
    by = defaultdict(list)
    for m, v in pairs:
        by[m].append(v)
    out = {}
    for m in ("rps", "cpu_us", "ready_s", "pss_load_kib", "pss_start_kib", "pss_idle_kib", "pss_reload1_kib", "reload_ms"):
        if by.get(m):
            out[m] = med(by[m])
    if by.get("reload_ms"):
        out["reload_ms_max"] = max(by["reload_ms"])
        out["reloads_timed"] = len(by["reload_ms"])
    out["non2xx"] = int(sum(by.get("non2xx", [])))
    out["reload_timeouts"] = int(sum(by.get("reload_timeouts", [])))
    out["proxy_exited"] = int(sum(by.get("proxy_exited", [])))
    if by.get("pool_conns_after"):
        d = med(by["pool_conns_after"]) - med(by["pool_conns_before"])
        mem = med(by["pool_pss_after_kib"]) - med(by["pool_pss_before_kib"])
        out["pool_conns"] = int(med(by["pool_conns_after"]))
        out["pool_kib_per_conn"] = mem / d if d > 0 else None
        out["pool_failed"] = int(sum(by.get("pool_failed", [])))
    if by.get("churn_last_kib") and by.get("churn_first_kib"):
        out["churn_reloads"] = int(med(by["churn_reloads"]))
        out["churn_ratio"] = med(by["churn_last_kib"]) / med(by["churn_first_kib"])
        out["churn_last_kib"] = med(by["churn_last_kib"])
    out["raw"] = {m: v for m, v in by.items()}
    return out


def ms(s):
    if s is None:
        return "–"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f} MiB"


def rate(r):
    if r is None:
        return "–"
    return f"{r / 1000:.1f}k req/s" if r >= 1000 else f"{r:.0f} req/s"


def cell(scen, s):
    if not s:
        return "–"
    parts = []
    if scen == "reload":
        parts.append(f"ready {ms(s.get('ready_s'))}")
        if s.get("reload_ms") is not None:
            parts.append(f"reload {s['reload_ms']:.0f} ms")
        else:
            parts.append("reload –")
        if s["reload_timeouts"]:
            parts[-1] += " (timed out)"
        parts.append(f"{mib(s.get('pss_start_kib'))} at start, {mib(s.get('pss_idle_kib'))} settled")
        parts.append(f"{mib(s.get('pss_reload1_kib'))} after 1 reload")
        if s.get("churn_ratio") is not None:
            parts.append(f"×{s['churn_ratio']:.2f} after {s['churn_reloads']}")
        text = " · ".join(parts)
        if s["proxy_exited"]:
            text += f" ⚠ the proxy exited during reloads ({s['proxy_exited']}×)"
        return text
    cpu = s.get("cpu_us")
    parts.append("–" if cpu is None else f"{cpu:.1f} µs/req")
    parts.append(rate(s.get("rps")))
    parts.append(f"ready {ms(s.get('ready_s'))}")
    parts.append(mib(s.get("pss_load_kib")))
    if scen == "endpoints":
        k = s.get("pool_kib_per_conn")
        conns = s.get("pool_conns")
        parts.append(("–" if k is None else f"{k:.1f} KiB") + f"/pooled conn ({conns})")
    text = " · ".join(parts)
    if s["non2xx"]:
        text += f" ⚠ {s['non2xx']} non-2xx"
    return text


def main():
    vals = load(sys.argv[1])
    env = os.environ.get
    results = []
    cells = {}
    for (scen, n, who), pairs in sorted(vals.items(), key=lambda kv: (list(SCENARIOS).index(kv[0][0]), kv[0][1], kv[0][2])):
        s = summarize(pairs)
        cells[(scen, n, who)] = s
        results.append({"scenario": scen, "n": n, "proxy": who, **s})

    rows = sorted({(scen, n) for scen, n, _ in cells}, key=lambda k: (list(SCENARIOS).index(k[0]), k[1]))
    out = []
    out.append(
        f"Mesh scale: Skiff and Envoy with one worker each, pinned alone to CPU {env('PROXY_CPU', '1')}; "
        f"wrk (1 thread, {env('H1_CONNS', '50')} keep-alive connections) and the nginx backend on CPU "
        f"{env('LOAD_CPU', '0')}. Medians of {env('RUNS')} runs of {env('DURATION')} s; the request "
        "always matches the last route."
    )
    out.append("")
    out.append("| scenario | N | Skiff | Envoy |")
    out.append("|---|---:|---|---|")
    for scen, n in rows:
        out.append(
            f"| {SCENARIOS[scen]} | {n:,} | {cell(scen, cells.get((scen, n, 'skiff')))} | "
            f"{cell(scen, cells.get((scen, n, 'envoy')))} |"
        )
    out.append("")
    out.append(
        "µs/req: the proxy's CPU time (user + system, /proc) over the requests wrk completed; "
        "ready: from the process start until the last route answers; MiB: Pss after the load runs "
        "(routes + clusters: idle after the start and one request, at once and settled, i.e. "
        f"{env('SCALE_IDLE_SETTLE', '?')} s after the start; then settled after the first reload); "
        "KiB/pooled conn: Pss growth from one to N idle pooled upstream connections (N requests in "
        "sequence, round robin: Skiff `lb: round_robin` for this measure only, its default lb for the "
        "load), over the connections the proxy holds (counted with ss; in brackets); reload: from "
        "the rename of the changed file over the old one until a new request is answered by the "
        f"changed cluster (median of {env('SCALE_RELOADS', '?')} reloads per start, "
        f"{env('SCALE_CHURN', '?')} for Skiff's first start); ×: Skiff's settled Pss after that many "
        "reloads over after the first. req/s counts less than µs/req here: wrk and the backend share "
        "one core, so a cheaper proxy does not always show as more req/s."
    )
    out.append(
        "Envoy: hosts, prefixes and endpoints from a static bootstrap; routes + clusters from files "
        "(`dynamic_resources`, LDS and CDS `path_config_source`), the reload rewriting cds; "
        f"config files in {env('SCALE_ENVOY_FORMAT', 'yaml').upper()}. Both proxies' per-cluster "
        "connection limits raised to 1,000,000 for endpoints per cluster (default 1024 in both)."
    )
    out.append("")
    out.append(
        f"{env('SCALE_V_SKIFF', 'skiff')}; {env('SCALE_V_ENVOY', 'envoy')}; {env('SCALE_V_NGINX', 'nginx')}; "
        f"{env('SCALE_V_WRK', 'wrk')}; Linux {env('SCALE_V_KERNEL', '?')}; {env('SCALE_CPU_MODEL', '?')}; "
        f"load average {env('SCALE_LOAD_BEFORE', '?')} before, {env('SCALE_LOAD_AFTER', '?')} after; "
        f"took {env('SCALE_ELAPSED', '?')} s."
    )
    print("\n".join(out))

    meta = {k[len("SCALE_"):].lower(): v for k, v in os.environ.items() if k.startswith("SCALE_")}
    for k in ("RUNS", "DURATION", "H1_CONNS", "PROXY_CPU", "LOAD_CPU", "NO_PIN", "NS"):
        meta[k.lower()] = env(k)
    with open(sys.argv[2], "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
