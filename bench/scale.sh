#!/usr/bin/env bash
# Skiff mesh-scale benchmark: Skiff and Envoy side by side at N routes,
# clusters or endpoints, one worker each (Skiff `runtime: { workers: 1 }`,
# Envoy --concurrency 1), the proxy pinned alone to PROXY_CPU, wrk and the
# nginx backend on LOAD_CPU. One proxy runs at a time, started afresh for
# each cell. Configs come from bench/scale_gen.py, measurements from
# bench/scale_probe.py, the table and JSON from bench/scale_report.py.
#
#   bash bench/scale.sh                                  # full run (about 20 minutes)
#   NS="1 100" RUNS=1 DURATION=2 bash bench/scale.sh     # smoke run (2-3 minutes)
#
# Scenarios (SCENARIOS, in this order); the request matches the LAST route:
#   hosts      N routes `match: { host: svc-i.ns.svc.cluster.local }`, each to
#              its own cluster svc-i (one endpoint: the backend). Envoy: N
#              virtual hosts of one domain, N STATIC clusters.
#   prefixes   N routes `match: { path: { prefix: /svc-i/ } }` in one
#              catch-all host, all to one cluster. Envoy: one virtual host.
#   endpoints  one route, one cluster of N endpoints 127.0.B.A:PORT (the
#              backend listens on the wildcard address, so every 127/8
#              address reaches it). CPU per request under load (Skiff's
#              default lb, Envoy ROUND_ROBIN), and, in a fresh process,
#              memory per pooled upstream connection: Pss growth from one to
#              N idle pooled connections (N requests in sequence, round
#              robin on both), over the connections counted with ss.
#   reload     N host routes + N clusters (as hosts): time to ready, idle Pss,
#              reload time (rename a changed file over the config: cluster
#              svc-(N-1) points at another backend port; time until a new
#              request gets that port's answer, ~1 ms polling), Pss after one
#              reload and, for Skiff, after CHURN reloads. Envoy reads its
#              listeners and clusters from files (dynamic_resources,
#              path_config_source), and the reload rewrites cds.
# Per cell: CPU µs per request (the proxy's CPU seconds from /proc over the
# requests wrk completed), req/s, time to ready (process start until the
# last route answers), reload time, memory (Pss).
#
# Knobs (environment; lib.sh's apply too: PROXY_CPU, LOAD_CPU, NO_PIN,
# H1_CONNS, NO_INSTALL, KEEP_TMP, SKIFF_BIN, ENVOY):
#   NS="1 100 1000 10000"   sizes
#   RUNS=3                  wrk runs per cell (median); starts per reload cell
#   DURATION=10             seconds per wrk run
#   SCENARIOS="hosts prefixes endpoints reload"
#   SCALE_PROXIES="skiff envoy"
#   RELOADS=5               timed reloads per start (reload scenario)
#   CHURN=100               reloads on Skiff's first start of each reload cell
#                           (Pss after CHURN reloads vs after the first); 0: off
#   READY_TIMEOUT=300       seconds a proxy may take to answer after its start
#   RELOAD_TIMEOUT=60       seconds one reload may take before giving up on the cell
#   IDLE_SETTLE=8           seconds after a start (or a reload) before memory counts
#                           as settled: Skiff holds ~50 MiB more for its first ~5 s
#                           at 10,000 routes + clusters
#   ENVOY_FORMAT=yaml       yaml | json: the format of Envoy's config files
#   SKIP_BUILD=1            do not `cargo build --release -p skiff` (never built
#                           when SKIFF_BIN is given)
#   RESULTS_JSON=PATH       the raw figures (default /tmp/skiff-scale-DATE.json)
#   UPDATE_DOCS=auto        1: write the table into docs/benchmarks.md between
#                           <!-- scale:begin --> and <!-- scale:end -->; 0: print
#                           only; auto: write only for a full run (default NS,
#                           RUNS>=3, DURATION>=10)
set -euo pipefail

SKIFF_BIN_GIVEN=${SKIFF_BIN:+1}
# No latency test here: keeps need_tools from installing oha with cargo.
LAT_TOOL=${LAT_TOOL:-h2load}
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NS_DEFAULT="1 100 1000 10000"
NS=${NS:-$NS_DEFAULT}
SCENARIOS=${SCENARIOS:-hosts prefixes endpoints reload}
SCALE_PROXIES=${SCALE_PROXIES:-skiff envoy}
RELOADS=${RELOADS:-5}
CHURN=${CHURN:-100}
READY_TIMEOUT=${READY_TIMEOUT:-300}
RELOAD_TIMEOUT=${RELOAD_TIMEOUT:-60}
IDLE_SETTLE=${IDLE_SETTLE:-8}
ENVOY_FORMAT=${ENVOY_FORMAT:-yaml}
RESULTS_JSON=${RESULTS_JSON:-/tmp/skiff-scale-$(date +%Y%m%d-%H%M%S).json}
BENCH=$ROOT/bench

for s in $SCENARIOS; do
    case $s in hosts | prefixes | endpoints | reload) ;; *) die "unknown scenario $s" ;; esac
done
for who in $SCALE_PROXIES; do
    case $who in skiff | envoy) ;; *) die "SCALE_PROXIES: skiff and/or envoy, not $who" ;; esac
done
[[ $ENVOY_FORMAT == yaml || $ENVOY_FORMAT == json ]] || die "ENVOY_FORMAT must be yaml or json"

# ----------------------------------------------------------------- setup ----

need_tools
need_envoy
command -v ss >/dev/null || apt_install iproute2
if [[ " $SCALE_PROXIES " == *" skiff "* ]]; then
    if [[ -z $SKIFF_BIN_GIVEN && $SKIP_BUILD != 1 ]]; then
        log "cargo build --release -p skiff"
        (cd "$ROOT" && cargo build --release -p skiff >&2)
    fi
    [[ -x $SKIFF_BIN ]] || die "no skiff binary at $SKIFF_BIN (SKIFF_BIN=PATH)"
    # A copy, so that a rebuild replacing SKIFF_BIN mid-run changes nothing.
    V_SKIFF_BIN="binary $SKIFF_BIN of $(date -r "$SKIFF_BIN" '+%Y-%m-%d %H:%M')"
    cp "$SKIFF_BIN" "$TMP/skiff"
    SKIFF=$TMP/skiff
fi
if [[ $NO_PIN != 1 ]] && (($(nproc) < 2)); then
    log "fewer than 2 CPUs: not pinning"
    NO_PIN=1
fi

# A rough estimate (seconds), from the knobs and timings seen on a 2-core
# machine: a start takes longer with N (Envoy ~5 s at 10,000 clusters, Skiff
# ~0.3 s); a load cell is RUNS wrk runs, a warm-up second and a start; a
# reload start RELOADS reloads (at 10,000: Envoy ~1.1 s each, Skiff ~0.3 s),
# plus Skiff's CHURN.
estimate() {
    awk -v ns="$NS" -v sc="$SCENARIOS" -v px="$SCALE_PROXIES" -v runs="$RUNS" -v dur="$DURATION" \
        -v reloads="$RELOADS" -v churn="$CHURN" -v settle="$IDLE_SETTLE" 'BEGIN {
        nn = split(ns, N, " "); ns_ = split(sc, S, " "); np = split(px, P, " ")
        for (i = 1; i <= nn; i++) for (j = 1; j <= ns_; j++) for (k = 1; k <= np; k++) {
            n = N[i]; start = 0.5 + (P[k] == "envoy" ? n / 2000 : n / 20000)
            load = runs * (dur + 0.3) + 1.5; if (load < settle) load = settle; load += 1.5 + start
            if (S[j] == "hosts" || S[j] == "prefixes") t += load
            else if (S[j] == "endpoints") t += load + 3 + start + n / 3000
            if (S[j] == "reload") t += 3 * settle
            if (S[j] == "reload" && P[k] == "envoy") t += runs * (start + 1.5 + reloads * (0.15 + n / 9000))
            if (S[j] == "reload" && P[k] == "skiff") {
                t += runs * (start + 1.5 + reloads * (0.15 + n / 30000))
                if (churn > reloads) t += (churn - reloads) * (0.15 + n / 30000)
            }
        }
        printf "%d\n", t + 2
    }'
}
EST=$(estimate)
log "estimated time: about $((EST / 60 + 1)) min (NS=\"$NS\", RUNS=$RUNS, DURATION=$DURATION, $SCALE_PROXIES)"

read -r BE_H1 BE_ALT BE_EP < <(free_ports 3)
export BE_H1 BE_ALT BE_EP TMP
mkdir -p "$TMP/backend" "$TMP/raw" "$TMP/cells"
log "backend nginx on 127.0.0.1:$BE_H1 (hello), 127.0.0.1:$BE_ALT (moved), *:$BE_EP (endpoints), CPU $LOAD_CPU"
start_backend "$TEMPLATES/scale-backend-nginx.conf"
wait_http "http://127.0.0.1:$BE_H1/"
wait_http "http://127.0.0.1:$BE_ALT/"
wait_http "http://127.0.0.2:$BE_EP/"

VALUES=$TMP/values.txt
: >"$VALUES"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$SECONDS

# rec SCEN N WHO METRIC VALUE: one measurement.
rec() { echo "$*" >>"$VALUES"; }
# rec_lines SCEN N WHO < "METRIC VALUE" lines (a probe's output).
rec_lines() {
    local m v
    while read -r m v; do
        if [[ -n $m ]]; then rec "$1" "$2" "$3" "$m" "$v"; fi
    done
}

# The request that matches the last of N routes: sets RQ_HOST, RQ_PATH, and
# RQ_WRK (wrk's extra arguments).
request_for() {
    local scen=$1 n=$2
    RQ_HOST="" RQ_PATH=/
    case $scen in
        hosts | reload) RQ_HOST=svc-$((n - 1)).ns.svc.cluster.local ;;
        prefixes) RQ_PATH=/svc-$((n - 1))/ ;;
    esac
    RQ_WRK=()
    [[ -z $RQ_HOST ]] || RQ_WRK=(-H "Host: $RQ_HOST")
}

# gen SCEN N WHO DIR [ARGS...]: configs into DIR (fresh ports); sets CONF
# (the file to start with) and LISTEN.
gen() {
    local scen=$1 n=$2 who=$3 dir=$4 admin
    shift 4
    read -r LISTEN admin < <(free_ports 2)
    CONF=$(python3 "$BENCH/scale_gen.py" --scenario "$scen" --n "$n" --proxy "$who" --dir "$dir" \
        --listen "$LISTEN" --admin "$admin" --backend "127.0.0.1:$BE_H1" --alt "127.0.0.1:$BE_ALT" \
        --ep-port "$BE_EP" --envoy-format "$ENVOY_FORMAT" "$@") || die "scale_gen.py failed"
    if [[ $who == skiff ]]; then
        "$SKIFF" check -c "$CONF" >"$dir/check.log" 2>&1 || die "skiff check failed: $(head -5 "$dir/check.log")"
    fi
}

# start WHO DIR SCEN N [RECORD]: starts the proxy on $CONF, pinned, and
# waits until the request for the last route answers; with RECORD the time
# from the start is recorded as ready_s. Sets P_PID[WHO].
start() {
    local who=$1 dir=$2 scen=$3 n=$4 record=${5:-} cmd=() probe out
    case $who in
        skiff) cmd=("$SKIFF" run -c "$CONF" --log-level warn) ;;
        envoy) cmd=("$ENVOY" -c "$CONF" --concurrency 1 --disable-hot-restart --log-level warning) ;;
    esac
    request_for "$scen" "$n"
    out=$dir/ready.out
    rm -f "$dir/t0" "$dir/pid"
    # The probe first (Python's start-up must not count), polling a port
    # nothing listens on yet; then the proxy, its start time in $dir/t0.
    pin "$LOAD_CPU" python3 "$BENCH/scale_probe.py" ready --port "$LISTEN" --host "$RQ_HOST" \
        --path "$RQ_PATH" --since-file "$dir/t0" --pid-file "$dir/pid" --timeout "$READY_TIMEOUT" >"$out" &
    probe=$!
    PIDS+=("$probe")
    sleep 0.3
    echo "$EPOCHREALTIME" >"$dir/t0"
    if [[ $NO_PIN == 1 ]]; then
        exec_cmd "${cmd[@]}" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    else
        exec_cmd taskset -c "$PROXY_CPU" "${cmd[@]}" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    fi
    P_PID[$who]=$!
    PIDS+=($!)
    echo "${P_PID[$who]}" >"$dir/pid"
    if ! wait "$probe"; then
        forget_pid "$probe"
        log "$who did not answer: $(tail -5 "$dir/stderr.log")"
        exited "$who"
        return 1
    fi
    forget_pid "$probe"
    if [[ -n $record ]]; then rec_lines "$scen" "$n" "$who" <"$out"; fi
    log "  $who up: $(cat "$out")"
}

# exited WHO: if the proxy is gone, log how it ended (a graceful exit, status
# 0, with nothing logged at warn level: a SIGTERM/SIGINT from elsewhere).
exited() {
    local who=$1 pid=${P_PID[$1]:-} rc=0
    [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null || return 0
    wait "$pid" 2>/dev/null || rc=$?
    log "  $who (pid $pid) exited on its own, status $rc$( ((rc > 128)) && echo " (signal $((rc - 128)))")"
}

# settle DIR: sleep until IDLE_SETTLE seconds after the proxy's start.
settle() {
    sleep "$(awk -v t0="$(cat "$1/t0")" -v now="$EPOCHREALTIME" -v s="$IDLE_SETTLE" \
        'BEGIN {gsub(",", ".", t0); gsub(",", ".", now); d = s - (now - t0); print (d > 0 ? d : 0)}')"
}

# Skiff's warnings and errors, Envoy's errors, once per cell (to stderr).
check_log() {
    local who=$1 dir=$2 pat
    if [[ $who == skiff ]]; then pat='WARN|ERROR'; else pat='\[(error|critical)\]'; fi
    if grep -Eq "$pat" "$dir/stderr.log" "$dir/stdout.log" 2>/dev/null; then
        log "  $who logged ($(grep -Ec "$pat" "$dir/stderr.log" "$dir/stdout.log" | paste -sd' ')):"
        grep -Eh "$pat" "$dir/stderr.log" "$dir/stdout.log" | head -3 | cut -c1-300 >&2
    fi
}

# A load cell: CPU per request, req/s over RUNS wrk runs, Pss after them.
cell_load() {
    local scen=$1 n=$2 who=$3 dir=$TMP/cells/$1-$2-$3 run name rps cpus reqs non2xx pid
    gen "$scen" "$n" "$who" "$dir"
    start "$who" "$dir" "$scen" "$n" record || {
        stop_proxy "$who"
        return 0
    }
    pid=${P_PID[$who]}
    local url="http://127.0.0.1:$LISTEN$RQ_PATH"
    warm "$url" "${RQ_WRK[@]}"
    for run in $(seq 1 "$RUNS"); do
        name=${scen}_${n}_${who}_$run
        rps=$(run_wrk "$name" "$url" "$pid" "${RQ_WRK[@]}")
        cpus=$(cat "$TMP/raw/$name.cpus")
        reqs=$(cat "$TMP/raw/$name.reqs")
        non2xx=$(awk '/Non-2xx/ {print $NF}' "$TMP/raw/$name.wrk")
        rec "$scen" "$n" "$who" rps "$rps"
        rec "$scen" "$n" "$who" cpus "$cpus"
        rec "$scen" "$n" "$who" reqs "$reqs"
        rec "$scen" "$n" "$who" non2xx "${non2xx:-0}"
        rec "$scen" "$n" "$who" cpu_us "$(awk -v c="$cpus" -v r="$reqs" 'BEGIN {if (r > 0) printf "%.3f", c / r * 1e6; else print "nan"}')"
        log "  $who run $run/$RUNS: $rps req/s, $(tail -1 "$VALUES" | awk '{print $5}') µs/req${non2xx:+, $non2xx non-2xx}"
    done
    settle "$dir"
    python3 "$BENCH/scale_probe.py" pss --pid "$pid" | sed 's/^pss_kib/pss_load_kib/' | rec_lines "$scen" "$n" "$who"
    check_log "$who" "$dir"
    stop_proxy "$who"
}

# Memory per pooled upstream connection (endpoints), in a fresh process.
cell_pool() {
    local n=$1 who=$2 dir=$TMP/cells/endpoints-$1-$2-pool out
    gen endpoints "$n" "$who" "$dir" --round-robin
    start "$who" "$dir" endpoints "$n" || {
        stop_proxy "$who"
        return 0
    }
    out=$dir/pool.out
    if pin "$LOAD_CPU" python3 "$BENCH/scale_probe.py" pool --port "$LISTEN" --pid "${P_PID[$who]}" \
        --n "$n" --upstream-port "$BE_EP" >"$out"; then
        rec_lines endpoints "$n" "$who" <"$out"
        log "  $who pooled connections: $(tr '\n' ' ' <"$out")"
    else
        log "  $who: the pooled-connection probe failed"
        exited "$who"
    fi
    check_log "$who" "$dir"
    stop_proxy "$who"
}

# N host routes + N clusters: ready, idle Pss, reloads (RUNS starts).
cell_reload() {
    local n=$1 who=$2 dir=$TMP/cells/reload-$1-$2 run count out target pss
    gen reload "$n" "$who" "$dir"
    target=$(cat "$dir/stage/target")
    for run in $(seq 1 "$RUNS"); do
        cp "$dir/stage/base" "$target"
        start "$who" "$dir" reload "$n" record || {
            stop_proxy "$who"
            return 0
        }
        # Pss right after the start (every start), and settled (the first).
        python3 "$BENCH/scale_probe.py" pss --pid "${P_PID[$who]}" | sed 's/^pss_kib/pss_start_kib/' |
            rec_lines reload "$n" "$who"
        pss=()
        if ((run == 1)); then
            settle "$dir"
            python3 "$BENCH/scale_probe.py" pss --pid "${P_PID[$who]}" | sed 's/^pss_kib/pss_idle_kib/' |
                rec_lines reload "$n" "$who"
            pss=(--pss --settle "$IDLE_SETTLE")
        fi
        count=$RELOADS
        if [[ $who == skiff && $run == 1 ]] && ((CHURN > count)); then count=$CHURN; fi
        out=$dir/reload.$run.out
        pin "$LOAD_CPU" timeout $((RELOAD_TIMEOUT * count + 120 + 2 * IDLE_SETTLE)) python3 "$BENCH/scale_probe.py" reload \
            --port "$LISTEN" --host "$RQ_HOST" --path "$RQ_PATH" --stage "$dir/stage" --count "$count" \
            --pid "${P_PID[$who]}" --timeout "$RELOAD_TIMEOUT" "${pss[@]}" >"$out" || {
            log "  $who: the reload probe failed"
            exited "$who"
        }
        if ((count == CHURN && CHURN > RELOADS)); then
            # The churn start: its first and last Pss, and how many it did.
            awk '$1 == "pss_reload1_kib" {print "churn_first_kib", $2}
                 $1 == "pss_reload_last_kib" {print "churn_last_kib", $2}
                 $1 == "reloads" {print "churn_reloads", $2}' "$out" | rec_lines reload "$n" "$who"
        fi
        { grep -v '^pss_reload_last_kib\|^reloads' "$out" || true; } | rec_lines reload "$n" "$who"
        log "  $who start $run/$RUNS: $(grep -c '^reload_ms' "$out") reloads, median $(awk '$1 == "reload_ms" {print $2}' "$out" | sort -n |
            awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)] " ms"; else print "–"}')$(grep -q '^reload_timeouts' "$out" && echo ', TIMED OUT')"
        check_log "$who" "$dir"
        stop_proxy "$who"
    done
}

# ------------------------------------------------------------------ run ----

for scen in $SCENARIOS; do
    for n in $NS; do
        for who in $SCALE_PROXIES; do
            log "$scen, N=$n: $who"
            case $scen in
                hosts | prefixes) cell_load "$scen" "$n" "$who" ;;
                endpoints)
                    cell_pool "$n" "$who"
                    cell_load endpoints "$n" "$who"
                    ;;
                reload) cell_reload "$n" "$who" ;;
            esac
        done
    done
done

# --------------------------------------------------------------- report ----

ELAPSED=$((SECONDS - T_START))
export SCALE_LOAD_BEFORE=$LOAD_BEFORE SCALE_ELAPSED=$ELAPSED SCALE_RELOADS=$RELOADS SCALE_CHURN=$CHURN
export SCALE_ENVOY_FORMAT=$ENVOY_FORMAT SCALE_NS=$NS SCALE_PROXIES SCALE_ESTIMATE=$EST SCALE_IDLE_SETTLE=$IDLE_SETTLE
export SCALE_LOAD_AFTER SCALE_CPU_MODEL SCALE_V_SKIFF SCALE_V_ENVOY SCALE_V_NGINX SCALE_V_WRK SCALE_V_KERNEL
export RUNS DURATION H1_CONNS PROXY_CPU LOAD_CPU NO_PIN NS
SCALE_LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
SCALE_CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
SCALE_V_ENVOY=$( ("$ENVOY" --version 2>&1 || true) | awk '/version:/ {split($NF, v, "/"); print "Envoy " v[2]; exit}')
SCALE_V_NGINX=$( ("$NGINX" -v 2>&1 || true) | sed 's/^nginx version: //')
SCALE_V_WRK=$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $1, $2}')
SCALE_V_KERNEL=$(uname -r)
SCALE_V_SKIFF="skiff $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- proxy filters control 2>/dev/null || echo '+dirty') tree"
if [[ -n ${V_SKIFF_BIN:-} ]]; then SCALE_V_SKIFF+=", $V_SKIFF_BIN"; fi

python3 "$BENCH/scale_report.py" "$VALUES" "$RESULTS_JSON" >"$TMP/table.md"
echo
cat "$TMP/table.md"
echo
log "figures as JSON: $RESULTS_JSON"
log "took $((ELAPSED / 60)) min $((ELAPSED % 60)) s (estimated $((EST / 60)) min $((EST % 60)) s)"
if [[ $UPDATE_DOCS == auto ]]; then
    if [[ $NS == "$NS_DEFAULT" ]] && ((RUNS >= 3 && DURATION >= 10)); then UPDATE_DOCS=1; else UPDATE_DOCS=0; fi
fi
if [[ $UPDATE_DOCS == 1 ]]; then
    write_doc_section "$DOC" scale "$TMP/table.md"
    log "updated $DOC (between <!-- scale:begin --> and <!-- scale:end -->)"
fi
