#!/usr/bin/env python3
"""Configs for bench/scale.sh: Skiff and Envoy at N routes, clusters or endpoints.

  scale_gen.py --scenario hosts --n 1000 --proxy skiff --dir DIR --listen 40001 \
      --admin 40002 --backend 127.0.0.1:40000

Scenarios (the request that bench/scale.sh sends always matches the LAST
route, so a proxy that matches in order walks all N):

  hosts      N routes, route i `match: { host: svc-i.ns.svc.cluster.local }`
             to its own cluster svc-i (one endpoint: the backend). Envoy: N
             virtual hosts with one domain each, N STATIC clusters.
  prefixes   N routes in one catch-all host, route i
             `match: { path: { prefix: /svc-i/ } }`, all to one cluster.
             Envoy: one virtual host, N prefix routes.
  endpoints  one route, one cluster of N endpoints 127.0.B.A:EP_PORT (distinct
             loopback addresses; the backend listens on 0.0.0.0:EP_PORT).
             Skiff's default lb (or round_robin with --round-robin), Envoy
             ROUND_ROBIN; both with the per-cluster connection limit raised
             (max_connections 1000000) so N pooled connections are allowed.
  reload     `hosts`, plus a second version of the config in which cluster
             svc-(N-1) points at --alt instead (the backend's other port,
             which answers another body). Envoy reads this one from files
             (dynamic_resources, path_config_source: lds.yaml and cds.yaml)
             so that it can reload it, as Skiff does its config file.

Writes into DIR: conf/ (the files the proxy reads: skiff.yaml, or
envoy.yaml [+ lds.yaml, cds.yaml]) and, for `reload`, stage/base and
stage/alt: the two versions of the file that changes (skiff.yaml, or
cds.yaml), for the probe to rename over conf/ in turn. conf/ holds nothing
else: Skiff re-reads its file on any event in that directory.

Standard library only; YAML written as text (flow style for the repeated
parts), or JSON for Envoy with --envoy-format json.
"""

import argparse
import json
import os

DOMAIN = "ns.svc.cluster.local"


def host(i):
    return f"svc-{i}.{DOMAIN}"


def ep_addr(i, port):
    # 127.0.B.A with A in 2..251: distinct loopback addresses, all on lo.
    return f"127.0.{i // 250}.{2 + i % 250}:{port}"


# ----------------------------------------------------------------- Skiff ----


def skiff(args, alt=False):
    n = args.n
    out = [
        "# bench/scale.sh (scale_gen.py): scenario %s, N=%d" % (args.scenario, n),
        "runtime: { workers: 1 }",
        f'admin: {{ address: "127.0.0.1:{args.admin}" }}',
        "listeners:",
        "  - name: main",
        f'    address: "127.0.0.1:{args.listen}"',
        "    protocol: http1",
        "    routes: mesh",
        "routes:",
        "  mesh:",
    ]
    sc = args.scenario
    if sc in ("hosts", "reload"):
        for i in range(n):
            out.append(f"    - {{ name: svc-{i}, match: {{ host: {host(i)} }}, cluster: svc-{i} }}")
        out.append("clusters:")
        for i in range(n):
            be = args.alt if alt and i == n - 1 else args.backend
            out.append(f'  svc-{i}: {{ endpoints: ["{be}"] }}')
    elif sc == "prefixes":
        for i in range(n):
            out.append(f"    - {{ name: svc-{i}, match: {{ path: {{ prefix: /svc-{i}/ }} }}, cluster: backend }}")
        out.append("clusters:")
        out.append(f'  backend: {{ endpoints: ["{args.backend}"] }}')
    elif sc == "endpoints":
        out.append("    - { name: all, cluster: backend }")
        out.append("clusters:")
        out.append("  backend:")
        if args.round_robin:
            out.append("    lb: round_robin")
        out.append("    circuit_breaker: { max_connections: 1000000 }")
        out.append("    endpoints:")
        for i in range(n):
            out.append(f'      - "{ep_addr(i, args.ep_port)}"')
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------- Envoy ----

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"


def sock(addr):
    h, p = addr.rsplit(":", 1)
    return {"socket_address": {"address": h, "port_value": int(p)}}


def cluster(name, addrs, lb=None, max_conns=None):
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock(a)}} for a in addrs]}],
        },
    }
    if lb:
        c["lb_policy"] = lb
    if max_conns:
        c["circuit_breakers"] = {"thresholds": [{"max_connections": max_conns}]}
    return c


def envoy_parts(args, alt=False):
    """(listener, clusters) as dicts."""
    n, sc = args.n, args.scenario
    if sc in ("hosts", "reload"):
        vhosts = [
            {"name": f"svc-{i}", "domains": [host(i)], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"svc-{i}"}}]}
            for i in range(n)
        ]
        clusters = [
            cluster(f"svc-{i}", [args.alt if alt and i == n - 1 else args.backend]) for i in range(n)
        ]
    elif sc == "prefixes":
        vhosts = [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": f"/svc-{i}/"}, "route": {"cluster": "backend"}} for i in range(n)],
            }
        ]
        clusters = [cluster("backend", [args.backend])]
    else:  # endpoints
        vhosts = [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]
        clusters = [
            cluster("backend", [ep_addr(i, args.ep_port) for i in range(n)], lb="ROUND_ROBIN", max_conns=1000000)
        ]
    listener = {
        "name": "main",
        "address": sock(f"127.0.0.1:{args.listen}"),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": "main",
                            "codec_type": "HTTP1",
                            "route_config": {"name": "mesh", "virtual_hosts": vhosts},
                            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
                        },
                    }
                ]
            }
        ],
    }
    return listener, clusters


def dump(obj, fmt):
    """JSON, or YAML: the same structure as YAML flow style (one list item a
    line at the top levels), which is valid YAML and what yaml-cpp reads."""
    if fmt == "json":
        return json.dumps(obj, indent=1) + "\n"
    return to_yaml(obj, 0) + "\n"


def to_yaml(obj, indent):
    pad = "  " * indent
    if isinstance(obj, dict):
        lines = []
        for k, v in obj.items():
            key = json.dumps(k) if k.startswith("@") else k
            if isinstance(v, (dict, list)) and v and indent < 12 and not flat(v):
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}{key}: {json.dumps(v)}")
        return "\n".join(lines)
    if isinstance(obj, list):
        lines = []
        for v in obj:
            if isinstance(v, dict) and not flat(v):
                body = to_yaml(v, indent + 1)
                lines.append(f"{pad}- {body.lstrip()}")
            else:
                lines.append(f"{pad}- {json.dumps(v)}")
        return "\n".join(lines)
    return f"{pad}{json.dumps(obj)}"


def flat(v):
    """Small leaves go on one line as flow style (JSON is flow-style YAML)."""
    return len(json.dumps(v)) <= 200


def envoy(args, conf):
    ext = "json" if args.envoy_format == "json" else "yaml"
    listener, clusters = envoy_parts(args)
    admin = {"address": sock(f"127.0.0.1:{args.admin}")}
    files = {}
    if args.scenario == "reload":
        boot = {
            "node": {"id": "skiff-scale", "cluster": "skiff-scale"},
            "admin": admin,
            "dynamic_resources": {
                "lds_config": {"resource_api_version": "V3", "path_config_source": {"path": f"{conf}/lds.{ext}"}},
                "cds_config": {"resource_api_version": "V3", "path_config_source": {"path": f"{conf}/cds.{ext}"}},
            },
        }
        files[f"envoy.{ext}"] = dump(boot, args.envoy_format)
        files[f"lds.{ext}"] = dump({"resources": [dict({"@type": LISTENER}, **listener)]}, args.envoy_format)
        cds = {"resources": [dict({"@type": CLUSTER}, **c) for c in clusters]}
        files[f"cds.{ext}"] = dump(cds, args.envoy_format)
        _, alt_clusters = envoy_parts(args, alt=True)
        alt = {"resources": [dict({"@type": CLUSTER}, **c) for c in alt_clusters]}
        return files, f"cds.{ext}", files[f"cds.{ext}"], dump(alt, args.envoy_format)
    boot = {"admin": admin, "static_resources": {"listeners": [listener], "clusters": clusters}}
    files[f"envoy.{ext}"] = dump(boot, args.envoy_format)
    return files, None, None, None


# ------------------------------------------------------------------ main ----


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=("hosts", "prefixes", "endpoints", "reload"), required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--proxy", choices=("skiff", "envoy"), required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--admin", type=int, required=True)
    ap.add_argument("--backend", default="", help="HOST:PORT of the backend (hosts, prefixes, reload)")
    ap.add_argument("--alt", default="", help="HOST:PORT the reload points cluster svc-(N-1) at")
    ap.add_argument("--ep-port", type=int, default=0, help="the backend's 0.0.0.0 port (endpoints)")
    ap.add_argument("--round-robin", action="store_true", help="Skiff: lb round_robin (endpoints)")
    ap.add_argument("--envoy-format", choices=("yaml", "json"), default="yaml")
    args = ap.parse_args()
    if args.n < 1:
        ap.error("--n must be at least 1")
    if args.scenario == "endpoints" and not args.ep_port:
        ap.error("endpoints needs --ep-port")
    if args.scenario == "reload" and not args.alt:
        ap.error("reload needs --alt")
    if args.scenario != "endpoints" and not args.backend:
        ap.error("--backend is required")

    conf = os.path.join(os.path.abspath(args.dir), "conf")
    os.makedirs(conf, exist_ok=True)
    if args.proxy == "skiff":
        text = skiff(args)
        files = {"skiff.yaml": text}
        changing, base, alt = "skiff.yaml", text, (skiff(args, alt=True) if args.scenario == "reload" else None)
    else:
        files, changing, base, alt = envoy(args, conf)
    for name, text in files.items():
        with open(os.path.join(conf, name), "w") as f:
            f.write(text)
    if args.scenario == "reload":
        stage = os.path.join(os.path.abspath(args.dir), "stage")
        os.makedirs(stage, exist_ok=True)
        for name, text in (("base", base), ("alt", alt)):
            with open(os.path.join(stage, name), "w") as f:
                f.write(text)
        with open(os.path.join(stage, "target"), "w") as f:
            f.write(os.path.join(conf, changing) + "\n")
    # The file to start the proxy with.
    print(os.path.join(conf, "skiff.yaml" if args.proxy == "skiff" else next(iter(files))))


if __name__ == "__main__":
    main()
