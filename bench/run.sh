#!/usr/bin/env bash
# Skiff benchmark: the same load straight to a backend, through Skiff, and
# through nginx, on loopback, one worker thread per proxy.
#
#   bash bench/run.sh                      # full run: 3 runs x 10s per test, updates docs/benchmarks.md
#   RUNS=1 DURATION=2 bash bench/run.sh    # smoke run (about a minute; leaves the docs alone)
#
# Knobs (environment):
#   RUNS=3            runs per test; every cell is the median of these
#   DURATION=10       seconds per measurement
#   H1_CONNS=50       wrk connections for the HTTP/1.1 throughput test
#   H2_CONNS=10       h2load connections for the h2c throughput test
#   H2_STREAMS=10     h2load concurrent streams per connection
#   RATE=2000         offered load (req/s) for the latency test
#   LAT_CONNS=20      connections for the latency test
#   LAT_TOOL=auto     auto | oha | h2load (auto: oha, installed with cargo if missing; else h2load)
#   PROXY_CPU=1       CPU the proxy under test is pinned to (alone)
#   LOAD_CPU=0        CPU the load generator and the backend share
#   NO_PIN=1          do not pin anything
#   NO_INSTALL=1      do not apt-get/cargo install missing tools (fail instead)
#   SKIP_BUILD=1      do not run `cargo build --release -p skiff`
#   SKIFF_BIN=PATH    the skiff binary (default target/release/skiff)
#   UPDATE_DOCS=auto  1: write the table into docs/benchmarks.md; 0: print it only;
#                     auto (default): write it only for a full run (RUNS>=3, DURATION>=10)
#   KEEP_TMP=1        keep the temp dir (configs, logs, raw tool output)
#
# Everything listens on 127.0.0.1 on free ports picked at start; everything
# started here is killed on exit. nginx runs by hand from its own config in
# the temp dir (never the system service).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ------------------------------------------------------------------ main ----

need_tools
if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release -p skiff"
    (cd "$ROOT" && cargo build --release -p skiff >&2)
fi
[[ -x $SKIFF_BIN ]] || die "no skiff binary at $SKIFF_BIN"
if [[ $NO_PIN != 1 ]] && (($(nproc) < 2)); then
    log "fewer than 2 CPUs: not pinning"
    NO_PIN=1
fi

read -r BE_H1 BE_H2 SK_H1 SK_H2 SK_H2E SK_ADMIN NG_H1 NG_H2 < <(free_ports 8)
export BE_H1 BE_H2 SK_H1 SK_H2 SK_H2E SK_ADMIN NG_H1 NG_H2 TMP
mkdir -p "$TMP/backend" "$TMP/nginx" "$TMP/raw"
render "$TEMPLATES/backend-nginx.conf" "$TMP/backend/nginx.conf"
render "$TEMPLATES/proxy-nginx.conf" "$TMP/nginx/nginx.conf"
render "$TEMPLATES/skiff.yaml" "$TMP/skiff.yaml"
"$SKIFF_BIN" check -c "$TMP/skiff.yaml" >&2

log "backend nginx on :$BE_H1 (h1) :$BE_H2 (h2c), CPU $LOAD_CPU"
spawn "$LOAD_CPU" "$NGINX" -e stderr -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -g 'daemon off;' \
    2>"$TMP/backend/stderr.log" &
PIDS+=($!)
BE_PID=$!
log "skiff (workers: 1) on :$SK_H1 (h1) :$SK_H2 (h2c->h1) :$SK_H2E (h2c->h2c), CPU $PROXY_CPU"
spawn "$PROXY_CPU" "$SKIFF_BIN" run -c "$TMP/skiff.yaml" --log-level warn 2>"$TMP/skiff.log" &
PIDS+=($!)
SK_PID=$!
log "nginx proxy (worker_processes 1) on :$NG_H1 (h1) :$NG_H2 (h2c->h1), CPU $PROXY_CPU"
spawn "$PROXY_CPU" "$NGINX" -e stderr -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
    2>"$TMP/nginx/stderr.log" &
PIDS+=($!)
NG_PID=$!

wait_http "http://127.0.0.1:$BE_H1/"
wait_http "http://127.0.0.1:$BE_H2/" --http2-prior-knowledge
wait_http "http://127.0.0.1:$SK_ADMIN/ready"
wait_http "http://127.0.0.1:$SK_H1/"
wait_http "http://127.0.0.1:$SK_H2/" --http2-prior-knowledge
wait_http "http://127.0.0.1:$SK_H2E/" --http2-prior-knowledge
wait_http "http://127.0.0.1:$NG_H1/"
wait_http "http://127.0.0.1:$NG_H2/" --http2-prior-knowledge
log "all up"
# Other work on the machine skews every column; the load average before and
# after goes into the report so a reader can tell a quiet run from a busy one.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A VAL
for target in "direct http://127.0.0.1:$BE_H1/" "skiff http://127.0.0.1:$SK_H1/" "nginx http://127.0.0.1:$NG_H1/"; do
    warm "${target#* }"
done

for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS: HTTP/1.1 keep-alive throughput (wrk -t1 -c$H1_CONNS)"
    VAL[h1_direct_$run]=$(run_wrk "h1_direct_$run" "http://127.0.0.1:$BE_H1/" "$BE_PID")
    VAL[h1_skiff_$run]=$(run_wrk "h1_skiff_$run" "http://127.0.0.1:$SK_H1/" "$SK_PID")
    VAL[h1_nginx_$run]=$(run_wrk "h1_nginx_$run" "http://127.0.0.1:$NG_H1/" "$NG_PID")
    log "  direct ${VAL[h1_direct_$run]}  skiff ${VAL[h1_skiff_$run]}  nginx ${VAL[h1_nginx_$run]} req/s"

    log "run $run/$RUNS: h2c throughput (h2load -t1 -c$H2_CONNS -m$H2_STREAMS)"
    VAL[h2_direct_$run]=$(run_h2load "h2_direct_$run" "http://127.0.0.1:$BE_H2/" "$BE_PID")
    VAL[h2_skiff_$run]=$(run_h2load "h2_skiff_$run" "http://127.0.0.1:$SK_H2/" "$SK_PID")
    VAL[h2_nginx_$run]=$(run_h2load "h2_nginx_$run" "http://127.0.0.1:$NG_H2/" "$NG_PID")
    VAL[h2e_skiff_$run]=$(run_h2load "h2e_skiff_$run" "http://127.0.0.1:$SK_H2E/" "$SK_PID")
    log "  direct ${VAL[h2_direct_$run]}  skiff ${VAL[h2_skiff_$run]}  nginx ${VAL[h2_nginx_$run]}  skiff h2c end to end ${VAL[h2e_skiff_$run]} req/s"

    log "run $run/$RUNS: HTTP/1.1 latency at $RATE req/s ($LAT_TOOL, $LAT_CONNS connections)"
    for who in direct skiff nginx; do
        case $who in
            direct) port=$BE_H1 ;;
            skiff) port=$SK_H1 ;;
            nginx) port=$NG_H1 ;;
        esac
        res=$(run_latency "lat_${who}_$run" "http://127.0.0.1:$port/")
        read -r p50 p99 <<<"$res"
        VAL[p50_${who}_$run]=$p50
        VAL[p99_${who}_$run]=$p99
    done
    log "  p50/p99 ms: direct ${VAL[p50_direct_$run]}/${VAL[p99_direct_$run]}  skiff ${VAL[p50_skiff_$run]}/${VAL[p99_skiff_$run]}  nginx ${VAL[p50_nginx_$run]}/${VAL[p99_nginx_$run]}"
done

# Per-run values (and the proxy CPU recorded next to each throughput run)
# go to one file; python takes medians and writes the Markdown.
{
    for k in "${!VAL[@]}"; do echo "$k ${VAL[$k]}"; done
    for f in "$TMP"/raw/*.cpu; do echo "cpu_$(basename "$f" .cpu) $(cat "$f")"; done
} >"$TMP/values.txt"

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
export RUNS DURATION H1_CONNS H2_CONNS H2_STREAMS RATE LAT_CONNS LAT_TOOL PROXY_CPU LOAD_CPU NO_PIN CPU_MODEL LOAD_BEFORE LOAD_AFTER
export V_WRK V_H2LOAD V_NGINX V_SKIFF V_OHA V_KERNEL
V_WRK=$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $1, $2}')
V_H2LOAD=$( (h2load --version 2>&1 || true) | awk 'NR == 1')
V_NGINX=$( ("$NGINX" -v 2>&1 || true) | sed 's/^nginx version: //')
V_SKIFF="skiff $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- proxy filters control 2>/dev/null || echo '+dirty')"
V_OHA=$(if [[ $LAT_TOOL == oha ]]; then (oha --version 2>&1 || true) | awk 'NR == 1'; else echo "-"; fi)
V_KERNEL=$(uname -r)

python3 "$ROOT/bench/report.py" "$TMP/values.txt" >"$TMP/table.md"
echo
cat "$TMP/table.md"
if [[ $UPDATE_DOCS == auto ]]; then
    if ((RUNS >= 3 && DURATION >= 10)); then UPDATE_DOCS=1; else UPDATE_DOCS=0; fi
fi
if [[ $UPDATE_DOCS == 1 ]]; then
    write_doc_section "$DOC" bench "$TMP/table.md"
    log "updated $DOC"
fi
