#!/usr/bin/env bash
# Chaos on the upstream link: delay, jitter and packet loss between Skiff and
# its endpoints, on a real IP link, while a client sends retryable requests
# at a fixed rate. Root only (network namespaces, TUN devices).
#
#   bash bench/netem.sh                 # 20 s per phase, updates docs/benchmarks.md ("Chaos on the link")
#   PHASE_SECS=3 bash bench/netem.sh    # smoke run (leaves the docs alone)
#
# `tc qdisc ... netem` is what one would use, but this machine's kernel has
# no sch_netem. The link is two TUN devices instead, one in the root
# namespace (where the client and Skiff run) and one in the namespace
# `skiff-netem` (where the endpoints run, three nginx workers' ports), and
# bench/netem.py carries every packet between them with the phase's
# impairment, both directions. TCP runs over it for real: lost segments are
# retransmitted, delay stretches every round trip.
#
# Phases, in this order, each PHASE_SECS long at RATE req/s (oha, open loop,
# latency corrected, LAT_CONNS connections):
#   clean            no impairment
#   delay            DELAY_MS each way, JITTER_MS jitter
#   loss             LOSS_PCT % of packets lost each way
#   delay+loss       both
# Through Skiff, with a retry policy (`attempts: 3` on connect-failure, reset
# and 5xx, `per_try_timeout: PER_TRY`) and a route timeout: the success rate
# and latency of each phase. And straight to one endpoint, for comparison.
#
# Knobs: PHASE_SECS=20 RATE=200 LAT_CONNS=50 DELAY_MS=20 JITTER_MS=5
#        LOSS_PCT=5 PER_TRY=300ms SKIP_BUILD=1 SKIFF_BIN=... UPDATE_DOCS=auto
set -euo pipefail

# Before lib.sh, whose defaults (for bench/run.sh) differ.
PHASE_SECS=${PHASE_SECS:-20}
RATE=${RATE:-200}
LAT_CONNS=${LAT_CONNS:-50}

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DELAY_MS=${DELAY_MS:-20}
JITTER_MS=${JITTER_MS:-5}
LOSS_PCT=${LOSS_PCT:-5}
PER_TRY=${PER_TRY:-300ms}
UPDATE_DOCS=${UPDATE_DOCS:-auto}
NS=skiff-netem
NEAR=skn-near
FAR=skn-far
NEAR_IP=10.77.0.1
FAR_IP=10.77.0.2

[[ $(id -u) == 0 ]] || die "bench/netem.sh needs root (network namespaces, TUN devices)"
LAT_TOOL=oha need_tools
if [[ $SKIP_BUILD != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p skiff >&2)
fi
[[ -x $SKIFF_BIN ]] || die "no skiff binary at $SKIFF_BIN"

teardown() {
    ip link del "$NEAR" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap 'cleanup; teardown' EXIT
teardown

# --- the link: a namespace, two TUN devices, the relay between them ---------
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip tuntap add dev "$NEAR" mode tun
ip netns exec "$NS" ip tuntap add dev "$FAR" mode tun
ip addr add "$NEAR_IP/32" dev "$NEAR"
ip link set "$NEAR" up
ip route add "$FAR_IP/32" dev "$NEAR"
ip netns exec "$NS" ip addr add "$FAR_IP/32" dev "$FAR"
ip netns exec "$NS" ip link set "$FAR" up
ip netns exec "$NS" ip route add "$NEAR_IP/32" dev "$FAR"

mkdir -p "$TMP/raw"
CONTROL=$TMP/impairment.json
echo '{}' >"$CONTROL"
python3 "$ROOT/bench/netem.py" --near "$NEAR" --far "$FAR" --far-netns "$NS" \
    --control "$CONTROL" >"$TMP/relay.out" 2>"$TMP/relay.err" &
RELAY=$!
PIDS+=("$RELAY")
for _ in $(seq 50); do grep -q ready "$TMP/relay.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$TMP/relay.out" || die "the relay did not start: $(cat "$TMP/relay.err")"

# --- three endpoints behind the link: one nginx, three ports ----------------
read -r E1 E2 E3 ADMIN LISTEN < <(free_ports 5)
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx;
    proxy_temp_path $TMP/nginx;
    fastcgi_temp_path $TMP/nginx;
    uwsgi_temp_path $TMP/nginx;
    scgi_temp_path $TMP/nginx;
    keepalive_requests 1000000;
    server {
        listen $FAR_IP:$E1; listen $FAR_IP:$E2; listen $FAR_IP:$E3;
        location / { return 200 "hello\n"; }
    }
}
EOF
ip netns exec "$NS" nginx -c "$TMP/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=("$!")

# --- Skiff, with a retry policy ---------------------------------------------
cat >"$TMP/skiff.yaml" <<EOF
runtime: { workers: 1 }
admin: { address: "127.0.0.1:$ADMIN" }
listeners:
  - { name: main, address: "127.0.0.1:$LISTEN", routes: main }
routes:
  main:
    - cluster: app
      timeout: 5s
      retry: { attempts: 3, on: [connect-failure, reset, 5xx], per_try_timeout: $PER_TRY }
clusters:
  app:
    endpoints: ["$FAR_IP:$E1", "$FAR_IP:$E2", "$FAR_IP:$E3"]
    connect_timeout: 1s
EOF
"$SKIFF_BIN" check -c "$TMP/skiff.yaml" >&2
"$SKIFF_BIN" run -c "$TMP/skiff.yaml" --log-level warn 2>"$TMP/skiff.log" &
PIDS+=("$!")
wait_http "http://$FAR_IP:$E1/"
wait_http "http://127.0.0.1:$LISTEN/"

impair() { # impair DELAY_MS JITTER_MS LOSS (a fraction)
    printf '{"delay_ms": %s, "jitter_ms": %s, "loss": %s}\n' "$1" "$2" "$3" >"$CONTROL"
    kill -USR1 "$RELAY"
    sleep 0.2
}

# phase NAME URL: oha at RATE for PHASE_SECS; prints "ok total p50 p99 max" (ms)
phase() {
    local out=$TMP/raw/$1.json
    oha --no-tui --output-format json -z "${PHASE_SECS}s" -c "$LAT_CONNS" -q "$RATE" \
        --latency-correction -t 10s "$2" >"$out" 2>&1 || die "oha failed: $(cat "$out")"
    python3 - "$out" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution") or {}
ok = int(codes.get("200", 0))
# Requests still in flight when the phase ends are "aborted due to
# deadline": not sent in full, so not counted either way.
errors = sum(v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k)
total = sum(int(v) for v in codes.values()) + errors
p = d["latencyPercentiles"]
print(ok, total, f"{p['p50'] * 1000:.1f}", f"{p['p99'] * 1000:.1f}", f"{d['summary']['slowest'] * 1000:.1f}")
EOF
}

declare -A ROW
loss=$(awk -v p="$LOSS_PCT" 'BEGIN { printf "%.4f", p / 100 }')
for spec in "clean 0 0 0" "delay $DELAY_MS $JITTER_MS 0" "loss 0 0 $loss" "delay+loss $DELAY_MS $JITTER_MS $loss"; do
    read -r name d j l <<<"$spec"
    impair "$d" "$j" "$l"
    for who in skiff direct; do
        url="http://127.0.0.1:$LISTEN/"
        [[ $who == direct ]] && url="http://$FAR_IP:$E1/"
        log "phase $name, $who"
        ROW[$name.$who]=$(phase "$name.$who" "$url")
        log "  ok total p50 p99 max: ${ROW[$name.$who]}"
    done
done
impair 0 0 0
kill -TERM "$RELAY" 2>/dev/null || true
wait "$RELAY" 2>/dev/null || true
RELAY_STATS=$(tail -1 "$TMP/relay.out")

{
    echo "Run $(date -u '+%Y-%m-%d %H:%M') UTC · skiff $(git -C "$ROOT" rev-parse --short HEAD) · $RATE req/s for ${PHASE_SECS} s per phase, $LAT_CONNS connections (oha, open loop, latency corrected) · delay ${DELAY_MS} ms ± ${JITTER_MS} ms and loss ${LOSS_PCT} % each way · relay: $RELAY_STATS"
    echo
    echo "| phase | through Skiff: succeeded | p50 ms | p99 ms | slowest ms | straight to one endpoint: succeeded | p50 ms | p99 ms | slowest ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for name in clean delay loss delay+loss; do
        read -r ok total p50 p99 mx <<<"${ROW[$name.skiff]}"
        read -r dok dtotal dp50 dp99 dmx <<<"${ROW[$name.direct]}"
        echo "| $name | $ok of $total | $p50 | $p99 | $mx | $dok of $dtotal | $dp50 | $dp99 | $dmx |"
    done
} >"$TMP/table.md"
cat "$TMP/table.md"

if [[ $UPDATE_DOCS == auto ]]; then
    UPDATE_DOCS=0
    ((PHASE_SECS >= 20)) && UPDATE_DOCS=1
fi
if [[ $UPDATE_DOCS == 1 ]]; then
    python3 - "$ROOT/docs/benchmarks.md" "$TMP/table.md" <<'EOF'
import sys
doc, table = sys.argv[1], open(sys.argv[2]).read().strip()
text = open(doc).read()
begin, end = "<!-- netem:begin -->", "<!-- netem:end -->"
if begin not in text:
    sys.exit(f"{doc} has no {begin} marker")
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(head + begin + "\n" + table + "\n" + end + tail)
EOF
    log "docs/benchmarks.md updated"
fi
