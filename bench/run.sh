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

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
H1_CONNS=${H1_CONNS:-50}
H2_CONNS=${H2_CONNS:-10}
H2_STREAMS=${H2_STREAMS:-10}
RATE=${RATE:-2000}
LAT_CONNS=${LAT_CONNS:-20}
LAT_TOOL=${LAT_TOOL:-auto}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
NO_PIN=${NO_PIN:-0}
NO_INSTALL=${NO_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
UPDATE_DOCS=${UPDATE_DOCS:-auto}
KEEP_TMP=${KEEP_TMP:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SKIFF_BIN=${SKIFF_BIN:-$ROOT/target/release/skiff}
DOC=$ROOT/docs/benchmarks.md
TEMPLATES=$ROOT/bench/templates

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- tools ----

APT_UPDATED=0
apt_install() {
    [[ $NO_INSTALL == 1 ]] && die "missing $* and NO_INSTALL=1"
    command -v apt-get >/dev/null || die "missing $* and no apt-get to install it"
    local sudo=""
    [[ $(id -u) != 0 ]] && sudo="sudo"
    if [[ $APT_UPDATED == 0 ]]; then
        log "apt-get update"
        $sudo apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    # RUNLEVEL=1 keeps invoke-rc.d from starting the nginx service on install:
    # this script runs its own nginx instances and wants port 80 left alone.
    $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "$@" >/dev/null
}

need_tools() {
    local missing=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)

    # Latency at a fixed rate needs an open-loop client that corrects for
    # coordinated omission: oha measures each request from the moment it was
    # scheduled (--latency-correction), so a stall shows up in the
    # percentiles instead of silently slowing the offered load. wrk2 is not
    # packaged in Debian; oha is on crates.io. h2load --rps is the fallback:
    # it is rate-limited too but times each request from when it was sent.
    if [[ $LAT_TOOL == auto || $LAT_TOOL == oha ]]; then
        if ! command -v oha >/dev/null && [[ -x $HOME/.cargo/bin/oha ]]; then
            PATH=$HOME/.cargo/bin:$PATH
        fi
        if ! command -v oha >/dev/null && [[ $NO_INSTALL != 1 ]] && command -v cargo >/dev/null; then
            log "cargo install oha --locked (one time, a few minutes)"
            cargo install oha --locked >&2 || log "cargo install oha failed"
            PATH=$HOME/.cargo/bin:$PATH
        fi
        if command -v oha >/dev/null; then
            LAT_TOOL=oha
        elif [[ $LAT_TOOL == oha ]]; then
            die "LAT_TOOL=oha but oha is not available"
        else
            LAT_TOOL=h2load
        fi
    fi
    [[ $LAT_TOOL == oha || $LAT_TOOL == h2load ]] || die "LAT_TOOL must be auto, oha or h2load"
}

# ----------------------------------------------------------- processes ----

TMP=$(mktemp -d /tmp/skiff-bench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pin() { # pin CPU CMD...: run CMD pinned to CPU unless pinning is off
    local cpu=$1
    shift
    if [[ $NO_PIN == 1 ]]; then "$@"; else taskset -c "$cpu" "$@"; fi
}

# spawn CPU CMD... &: like pin, but exec'd, so that $! is the server's own pid
# (for kill on exit and for reading its CPU time), not a subshell's.
spawn() {
    local cpu=$1
    shift
    if [[ $NO_PIN == 1 ]]; then exec "$@"; else exec taskset -c "$cpu" "$@"; fi
}

free_ports() { # free_ports N: N distinct free loopback ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_http() { # wait_http URL [curl args...]: poll until URL answers 200 (10s)
    local url=$1
    shift
    for _ in $(seq 1 200); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" 2>/dev/null) == 200 ]]; then
            return 0
        fi
        sleep 0.05
    done
    die "$url did not become ready"
}

render() { # render TEMPLATE OUT: substitute @VARS@ from the environment
    python3 - "$1" "$2" <<'EOF'
import os, re, sys
text = open(sys.argv[1]).read()
def sub(m):
    name = m.group(1)
    if name not in os.environ:
        sys.exit(f"{sys.argv[1]}: @{name}@ is not set")
    return os.environ[name]
open(sys.argv[2], "w").write(re.sub(r"@([A-Z0-9_]+)@", sub, text))
EOF
}

# Accumulated CPU time (seconds) of a process and its children (nginx master
# plus workers), read from /proc: lets the table report how much of a core
# each proxy used, i.e. throughput per core even when a proxy is not saturated.
CLK_TCK=$(getconf CLK_TCK)
cpu_seconds() {
    local total=0 pid
    for pid in "$@" $(pgrep -P "$1" || true); do
        if [[ -r /proc/$pid/stat ]]; then
            # Fields 14 and 15 (utime, stime), counted after the ")" that
            # ends the command name.
            local t
            t=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
            total=$((total + t))
        fi
    done
    python3 -c "print($total / $CLK_TCK)"
}

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

# One measurement. Prints one number; raw tool output goes to $TMP/raw.
# Each also records the CPU the proxy (if any) spent, in $TMP/raw/*.cpu.
run_wrk() { # run_wrk NAME URL PROXY_PID
    local out=$TMP/raw/$1.wrk c0 c1
    c0=$(cpu_seconds "$3")
    pin "$LOAD_CPU" wrk -t1 -c"$H1_CONNS" -d"${DURATION}s" --latency "$2" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
    c1=$(cpu_seconds "$3")
    python3 -c "print(($c1 - $c0) / $DURATION)" >"$TMP/raw/$1.cpu"
    if grep -q 'Non-2xx\|Socket errors' "$out"; then log "warning ($1): $(grep 'Non-2xx\|Socket errors' "$out" | tr -s ' ')"; fi
    awk '/^Requests\/sec:/ {print $2}' "$out"
}

run_h2load() { # run_h2load NAME URL PROXY_PID
    local out=$TMP/raw/$1.h2load c0 c1
    c0=$(cpu_seconds "$3")
    pin "$LOAD_CPU" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" "$2" >"$out" 2>&1 || die "h2load failed: $(cat "$out")"
    c1=$(cpu_seconds "$3")
    python3 -c "print(($c1 - $c0) / $DURATION)" >"$TMP/raw/$1.cpu"
    grep -q 'h2c' "$out" || die "h2load did not speak h2c to $2: $(cat "$out")"
    local failed
    failed=$(awk '/^requests:/ {print $10}' "$out")
    [[ ${failed:-0} == 0 ]] || log "warning ($1): $failed requests failed"
    awk '/^finished in/ {print $4}' "$out"
}

run_latency() { # run_latency NAME URL: prints "p50_ms p99_ms"
    local out=$TMP/raw/$1.lat
    if [[ $LAT_TOOL == oha ]]; then
        pin "$LOAD_CPU" oha --no-tui --output-format json -z "${DURATION}s" -c "$LAT_CONNS" \
            -q "$RATE" --latency-correction "$2" >"$out" 2>&1 || die "oha failed: $(cat "$out")"
        python3 - "$out" "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
s = d["summary"]
# Requests still in flight when the duration ends are "aborted due to
# deadline": expected, and not counted in the percentiles.
errors = {k: v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k}
if errors:
    print(f"[bench] warning ({sys.argv[2]}): errors {errors}", file=sys.stderr)
p = d["latencyPercentiles"]
print(f"{p['p50'] * 1000:.3f} {p['p99'] * 1000:.3f}")
EOF
    else
        # h2load --rps is per client: spread RATE over LAT_CONNS clients.
        local per=$((RATE / LAT_CONNS))
        pin "$LOAD_CPU" h2load --h1 -t1 -c"$LAT_CONNS" --rps="$per" -D"$DURATION" \
            --log-file="$out.log" "$2" >"$out" 2>&1 || die "h2load failed: $(cat "$out")"
        python3 - "$out.log" <<'EOF'
import sys
lat = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.strip())
def pct(p):
    return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] / 1000
print(f"{pct(50):.3f} {pct(99):.3f}")
EOF
    fi
}

warm() { # a second of load so pools and caches are warm before measuring
    pin "$LOAD_CPU" wrk -t1 -c"$H1_CONNS" -d1s "$1" >/dev/null 2>&1 || true
}

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
    python3 - "$DOC" "$TMP/table.md" <<'EOF'
import sys
doc, table = sys.argv[1], open(sys.argv[2]).read()
begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
try:
    text = open(doc).read()
except FileNotFoundError:
    text = f"# Benchmarks\n\n{begin}\n{end}\n"
if begin not in text or end not in text:
    text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(f"{head}{begin}\n{table.strip()}\n{end}{tail}")
EOF
    log "updated $DOC"
fi
