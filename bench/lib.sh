# Shared by bench/run.sh and bench/mtls.sh: tools, processes, measurements.
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
