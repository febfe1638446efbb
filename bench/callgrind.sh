#!/usr/bin/env bash
# Instructions per request, counted by valgrind (callgrind): a figure that
# does not move with whatever else the machine is doing, unlike req/s.
#
#   bash bench/callgrind.sh                       # Skiff, nginx, HAProxy and Envoy
#   CG_PROXIES=skiff bash bench/callgrind.sh      # Skiff only
#
# For each proxy (one worker, the configs of bench/run.sh) run under
# `valgrind --tool=callgrind`: CG_WARMUP HTTP/1.1 requests and CG_WARMUP h2c
# end-to-end requests (connections, pools, caches and lazy set-up warm), a
# dump of the counters (`callgrind_control --dump`, which also zeroes them),
# CG_REQUESTS HTTP/1.1 keep-alive requests, a dump, CG_REQUESTS h2c
# end-to-end requests, a dump. Each load's dump holds exactly the
# instructions (Ir, user space, every thread of the process) executed
# between the two dumps around it; divided by the requests, that is the
# figure printed:
#
#   skiff HTTP/1.1 instructions per request: 41234
#   skiff h2c-e2e instructions per request: 39876
#
# (nginx has no HTTP/2 upstream: its h2c-e2e line is h2c to HTTP/1.1.) The
# loads are closed-loop and count-based: `h2load --h1 -n CG_REQUESTS
# -c CG_CONNS` and `h2load -n CG_REQUESTS -c CG_CONNS -m CG_STREAMS`.
# Kernel work (system calls, TCP) is not counted.
#
# Knobs (environment), besides those of bench/run.sh (SKIFF_BIN, SKIP_BUILD,
# PROXY_CPU, LOAD_CPU, NO_PIN, NO_INSTALL, KEEP_TMP):
#   CG_PROXIES="skiff nginx haproxy envoy"
#   CG_WARMUP=2000      warm-up requests per protocol
#   CG_REQUESTS=20000   measured requests per protocol
#   CG_CONNS=4          client connections
#   CG_STREAMS=10       concurrent streams per h2c connection
#   CG_WAIT=120         seconds a proxy may take to start under valgrind
#   BE_H1, BE_H2        ports of a running backend (bench/run.sh passes its
#                       own); without them a backend is started here
set -euo pipefail

# This script does not measure latency: never install oha for it.
export LAT_TOOL=h2load
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CG_PROXIES=${CG_PROXIES:-skiff nginx haproxy envoy}
CG_WARMUP=${CG_WARMUP:-2000}
CG_REQUESTS=${CG_REQUESTS:-20000}
CG_CONNS=${CG_CONNS:-4}
CG_STREAMS=${CG_STREAMS:-10}
WAIT_TIMEOUT=${CG_WAIT:-120}

need_tools
need_valgrind
case " $CG_PROXIES " in *" nginx "* | *" haproxy "* | *" envoy "*) need_peers ;; esac
if [[ " $CG_PROXIES " == *" skiff "* ]]; then
    if [[ $SKIP_BUILD != 1 ]]; then
        log "cargo build --release -p skiff"
        (cd "$ROOT" && cargo build --release -p skiff >&2)
    fi
    [[ -x $SKIFF_BIN ]] || die "no skiff binary at $SKIFF_BIN"
fi
if [[ $NO_PIN != 1 ]] && (($(nproc) < 2)); then NO_PIN=1; fi

if [[ -z ${BE_H1:-} || -z ${BE_H2:-} ]]; then
    read -r BE_H1 BE_H2 < <(free_ports 2)
    export BE_H1 BE_H2 TMP
    log "backend nginx on :$BE_H1 (h1) :$BE_H2 (h2c), CPU $LOAD_CPU"
    start_backend "$TEMPLATES/backend-nginx.conf"
    wait_http "http://127.0.0.1:$BE_H1/"
    wait_http "http://127.0.0.1:$BE_H2/" --http2-prior-knowledge
fi
export BE_H1 BE_H2
mkdir -p "$TMP/cg"

# dump WHO NAME: dump (and zero) the counters of WHO's valgrind; prints the
# dump's total Ir.
dump() {
    local pid=${P_PID[$1]} file
    callgrind_control --dump="$2" "$pid" >"$TMP/cg/$1.$2.control" 2>&1 ||
        die "callgrind_control --dump failed for $1: $(cat "$TMP/cg/$1.$2.control")"
    # The valgrind'd process writes the dump when it next runs: wait for the
    # file whose trigger is this dump, and for its totals line (the last).
    for _ in $(seq 1 600); do
        file=$(grep -l "^desc: Trigger: dump $2\$" "$TMP/cg/$1.out".* 2>/dev/null | head -1 || true)
        if [[ -n $file ]] && grep -q '^totals:' "$file"; then
            awk '/^totals:/ {print $2; exit}' "$file"
            return 0
        fi
        sleep 0.1
    done
    die "no callgrind dump '$2' from $1 after 60 s"
}

load() { # load WHO h1|h2 URL N
    local args=(-t1 -c"$CG_CONNS" -n"$4") out ok
    if [[ $2 == h1 ]]; then args+=(--h1); else args+=(-m"$CG_STREAMS"); fi
    out=$(pin "$LOAD_CPU" h2load "${args[@]}" "$3" 2>&1) || true
    ok=$(awk '/^requests:/ {print $8}' <<<"$out")
    if [[ $ok != "$4" ]]; then
        log "h2load: ${ok:-no} of $4 requests succeeded against $1 ($3):"
        grep -v '^progress' <<<"$out" >&2 || true
        log "$1's log (the end):"
        tail -n 20 "${P_DIR[$1]}/stderr.log" >&2 || true
        die "callgrind load failed for $1"
    fi
}

for who in $CG_PROXIES; do
    # Dumps go to $who.out.N, one per callgrind_control --dump.
    PROXY_WRAP=(valgrind --tool=callgrind --callgrind-out-file="$TMP/cg/$who.out"
        --dump-line=no --compress-strings=no --log-file="$TMP/cg/$who.valgrind.log")
    t0=$SECONDS
    start_proxy "$who" 1 "$PROXY_CPU"
    log "$who under callgrind: up in $((SECONDS - t0)) s; $CG_WARMUP + $CG_WARMUP warm-up requests"
    load "$who" h1 "http://127.0.0.1:${P_H1[$who]}/" "$CG_WARMUP"
    load "$who" h2 "http://127.0.0.1:${P_H2E[$who]}/" "$CG_WARMUP"
    dump "$who" warm >/dev/null
    t0=$SECONDS
    load "$who" h1 "http://127.0.0.1:${P_H1[$who]}/" "$CG_REQUESTS"
    ir_h1=$(dump "$who" h1)
    load "$who" h2 "http://127.0.0.1:${P_H2E[$who]}/" "$CG_REQUESTS"
    ir_h2=$(dump "$who" h2e)
    log "$who: $CG_REQUESTS + $CG_REQUESTS requests in $((SECONDS - t0)) s under callgrind"
    stop_proxy "$who"
    echo "$who HTTP/1.1 instructions per request: $((ir_h1 / CG_REQUESTS))"
    echo "$who h2c-e2e instructions per request: $((ir_h2 / CG_REQUESTS))"
done
