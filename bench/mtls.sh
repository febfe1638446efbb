#!/usr/bin/env bash
# mTLS benchmark: two Skiffs in a row (caller's sidecar -> callee's sidecar ->
# backend), once with mTLS between them and once in plaintext, on loopback.
#
#   bash bench/mtls.sh                      # full run: 3 runs x 10s, updates docs/benchmarks.md
#   RUNS=1 DURATION=2 bash bench/mtls.sh    # smoke run (leaves the docs alone)
#
# Measures, for both paths: HTTP/1.1 keep-alive throughput (wrk), p50/p99 at a
# fixed rate (oha, open loop), and new mTLS handshakes per second against the
# callee's strict listener (openssl s_time with a client certificate: a TLS
# stack that is not ours). Knobs as in bench/run.sh (RUNS, DURATION, H1_CONNS,
# RATE, LAT_CONNS, LAT_TOOL, PROXY_CPU, LOAD_CPU, NO_PIN, NO_INSTALL,
# SKIP_BUILD, SKIFF_BIN, UPDATE_DOCS, KEEP_TMP).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_tools
command -v openssl >/dev/null || apt_install openssl
if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release -p skiff"
    (cd "$ROOT" && cargo build --release -p skiff >&2)
fi
[[ -x $SKIFF_BIN ]] || die "no skiff binary at $SKIFF_BIN"
if [[ $NO_PIN != 1 ]] && (($(nproc) < 2)); then NO_PIN=1; fi

read -r BE_H1 BE_H2 CALLER_TLS CALLER_PLAIN CALLER_ADMIN CALLEE_TLS CALLEE_PLAIN CALLEE_ADMIN < <(free_ports 8)
export BE_H1 BE_H2 TMP
mkdir -p "$TMP/backend" "$TMP/raw"
render "$TEMPLATES/backend-nginx.conf" "$TMP/backend/nginx.conf"

# A mesh CA and one identity per sidecar, as `skiff certs` makes them.
"$SKIFF_BIN" certs ca --out "$TMP/certs/ca" >&2
"$SKIFF_BIN" certs issue --ca "$TMP/certs/ca" --id spiffe://bench.local/ns/default/sa/caller --out "$TMP/certs/caller" >&2
"$SKIFF_BIN" certs issue --ca "$TMP/certs/ca" --id spiffe://bench.local/ns/default/sa/callee --out "$TMP/certs/callee" >&2

# The callee's sidecar: the same routes behind a strict mTLS listener and a
# plaintext one. The caller's sidecar: one listener per path, each to its own
# cluster, so both paths run in the same two processes.
cat >"$TMP/callee.yaml" <<EOF
runtime: { workers: 1 }
admin: { address: "127.0.0.1:$CALLEE_ADMIN" }
identity:
  cert: $TMP/certs/callee/cert.pem
  key: $TMP/certs/callee/key.pem
  trust_bundle: $TMP/certs/callee/ca.pem
listeners:
  - { name: mtls, address: "127.0.0.1:$CALLEE_TLS", direction: inbound, protocol: http1, tls: { mode: strict }, routes: local }
  - { name: plain, address: "127.0.0.1:$CALLEE_PLAIN", direction: inbound, protocol: http1, routes: local }
routes:
  local:
    - cluster: backend
clusters:
  backend:
    protocol: http1
    endpoints: ["127.0.0.1:$BE_H1"]
EOF
cat >"$TMP/caller.yaml" <<EOF
runtime: { workers: 1 }
admin: { address: "127.0.0.1:$CALLER_ADMIN" }
identity:
  cert: $TMP/certs/caller/cert.pem
  key: $TMP/certs/caller/key.pem
  trust_bundle: $TMP/certs/caller/ca.pem
listeners:
  - { name: to-mtls, address: "127.0.0.1:$CALLER_TLS", protocol: http1, routes: to-mtls }
  - { name: to-plain, address: "127.0.0.1:$CALLER_PLAIN", protocol: http1, routes: to-plain }
routes:
  to-mtls:
    - cluster: callee-mtls
  to-plain:
    - cluster: callee-plain
clusters:
  callee-mtls:
    protocol: http1
    endpoints: ["127.0.0.1:$CALLEE_TLS"]
    tls: { server_identity: spiffe://bench.local/ns/default/sa/callee }
  callee-plain:
    protocol: http1
    endpoints: ["127.0.0.1:$CALLEE_PLAIN"]
EOF
"$SKIFF_BIN" check -c "$TMP/callee.yaml" >&2
"$SKIFF_BIN" check -c "$TMP/caller.yaml" >&2

log "backend nginx :$BE_H1, CPU $LOAD_CPU; both sidecars (workers: 1) on CPU $PROXY_CPU"
spawn "$LOAD_CPU" "$NGINX" -e stderr -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -g 'daemon off;' \
    2>"$TMP/backend/stderr.log" &
PIDS+=($!)
spawn "$PROXY_CPU" "$SKIFF_BIN" run -c "$TMP/callee.yaml" --log-level warn 2>"$TMP/callee.log" &
PIDS+=($!)
CALLEE_PID=$!
spawn "$PROXY_CPU" "$SKIFF_BIN" run -c "$TMP/caller.yaml" --log-level warn 2>"$TMP/caller.log" &
PIDS+=($!)
CALLER_PID=$!
wait_http "http://127.0.0.1:$BE_H1/"
wait_http "http://127.0.0.1:$CALLEE_ADMIN/ready"
wait_http "http://127.0.0.1:$CALLER_ADMIN/ready"
wait_http "http://127.0.0.1:$CALLER_TLS/"
wait_http "http://127.0.0.1:$CALLER_PLAIN/"
log "all up"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# run_s_time NAME: new full mTLS handshakes per second against the callee's
# strict listener, from openssl (each connection: handshake, close).
run_s_time() {
    local out=$TMP/raw/$1.stime c0 c1
    c0=$(cpu_seconds "$CALLEE_PID")
    pin "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$CALLEE_TLS" -new -time "$DURATION" \
        -cert "$TMP/certs/caller/cert.pem" -key "$TMP/certs/caller/key.pem" \
        -CAfile "$TMP/certs/caller/ca.pem" >"$out" 2>&1 || die "openssl s_time failed: $(cat "$out")"
    c1=$(cpu_seconds "$CALLEE_PID")
    # "N connections in T real seconds, ...": the rate, and the rate per
    # core of the callee (the client, not Skiff, is usually the limit).
    awk -v cpu="$(python3 -c "print(($c1 - $c0))")" \
        '/connections in .* real seconds/ {printf "%.0f %.0f\n", $1 / $4, (cpu > 0 ? $1 / cpu : 0); exit}' "$out"
}

declare -A VAL
warm "http://127.0.0.1:$CALLER_TLS/"
warm "http://127.0.0.1:$CALLER_PLAIN/"
for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS: throughput (wrk -t1 -c$H1_CONNS)"
    VAL[rps_plain_$run]=$(run_wrk "rps_plain_$run" "http://127.0.0.1:$CALLER_PLAIN/" "$CALLER_PID")
    VAL[rps_mtls_$run]=$(run_wrk "rps_mtls_$run" "http://127.0.0.1:$CALLER_TLS/" "$CALLER_PID")
    log "  plaintext ${VAL[rps_plain_$run]}  mTLS ${VAL[rps_mtls_$run]} req/s"
    log "run $run/$RUNS: latency at $RATE req/s"
    read -r VAL[p50_plain_$run] VAL[p99_plain_$run] <<<"$(run_latency "lat_plain_$run" "http://127.0.0.1:$CALLER_PLAIN/")"
    read -r VAL[p50_mtls_$run] VAL[p99_mtls_$run] <<<"$(run_latency "lat_mtls_$run" "http://127.0.0.1:$CALLER_TLS/")"
    log "  p50/p99 ms: plaintext ${VAL[p50_plain_$run]}/${VAL[p99_plain_$run]}  mTLS ${VAL[p50_mtls_$run]}/${VAL[p99_mtls_$run]}"
    log "run $run/$RUNS: new mTLS handshakes (openssl s_time -new)"
    read -r VAL[hs_$run] VAL[hscore_$run] <<<"$(run_s_time "hs_$run")"
    log "  ${VAL[hs_$run]} handshakes/s (${VAL[hscore_$run]} per callee core)"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
HANDSHAKES=$(curl -s "http://127.0.0.1:$CALLEE_ADMIN/metrics" | grep '^skiff_tls_handshakes_total' || true)

{
    for k in "${!VAL[@]}"; do echo "$k ${VAL[$k]}"; done
} >"$TMP/values.txt"
python3 - "$TMP/values.txt" >"$TMP/table.md" <<EOF
import statistics, sys
vals = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    vals[k] = float(v)
def med(prefix):
    xs = [v for k, v in vals.items() if k.rsplit("_", 1)[0] == prefix]
    return statistics.median(xs)
rp, rm = med("rps_plain"), med("rps_mtls")
p50p, p50m, p99p, p99m = med("p50_plain"), med("p50_mtls"), med("p99_plain"), med("p99_mtls")
hs, hscore = med("hs"), med("hscore")
print("Run $(date +%Y-%m-%d), $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), "
      "medians of $RUNS runs x ${DURATION}s; both sidecars pinned to CPU $PROXY_CPU, load and backend on CPU $LOAD_CPU; "
      "load average $LOAD_BEFORE before, $LOAD_AFTER after.")
print()
print("| client -> caller Skiff -> callee Skiff -> backend | plaintext | mTLS | mTLS/plaintext |")
print("|---|---:|---:|---:|")
print(f"| HTTP/1.1 keep-alive throughput, req/s (wrk, $H1_CONNS conns) | {rp:,.0f} | {rm:,.0f} | {rm / rp:.2f}x |")
print(f"| p50 at $RATE req/s, ms | {p50p:.3f} | {p50m:.3f} | {p50m / p50p:.2f}x |")
print(f"| p99 at $RATE req/s, ms | {p99p:.3f} | {p99m:.3f} | {p99m / p99p:.2f}x |")
print(f"| new mTLS handshakes/s on the callee (openssl s_time -new, ECDSA P-256) | - | {hs:,.0f} | - |")
print(f"| the same per core of the callee's CPU time | - | {hscore:,.0f} | - |")
EOF
echo
cat "$TMP/table.md"
echo "$HANDSHAKES" | sed 's/^/    /' >&2
if [[ $UPDATE_DOCS == auto ]]; then
    if ((RUNS >= 3 && DURATION >= 10)); then UPDATE_DOCS=1; else UPDATE_DOCS=0; fi
fi
if [[ $UPDATE_DOCS == 1 ]]; then
    write_doc_section "$DOC" mtls "$TMP/table.md"
    log "updated $DOC"
fi
