#!/usr/bin/env bash
# Slow peers: does back-pressure hold Skiff's memory flat? Two transfers of
# SIZE through one Skiff at once, each throttled by its far end:
#
#   download  a client reading at RATE (curl --limit-rate) a SIZE response
#             from a fast backend (Python's http.server, a sparse file);
#   upload    a fast client (curl -T) sending SIZE to a backend that reads
#             the body at RATE (bench/slow_reader.py).
#
# If Skiff buffered what the slow side has not taken, its memory would grow
# by up to SIZE per transfer; with back-pressure (TCP windows, hyper's
# bounded buffers, HTTP/2 flow control) it stays where it started. Skiff's
# RSS and Pss are sampled every SAMPLE seconds; the summary gives the start,
# the most, and the end.
#
#   bash bench/slow_peers.sh                     # 1 GiB each at 1 MiB/s: about 17 minutes
#   SIZE=64M RATE=4M bash bench/slow_peers.sh    # a 16 s smoke run
#
# Knobs (environment): SIZE=1G, RATE=1M (curl's units), SAMPLE=10,
# SKIFF_BIN (default: the release build, built when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE=${SIZE:-1G}
RATE=${RATE:-1M}
SAMPLE=${SAMPLE:-10}
SKIFF_BIN=${SKIFF_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/skiff}
[[ -x $SKIFF_BIN ]] || cargo build --release -p skiff --manifest-path "$ROOT/Cargo.toml"

TMP=$(mktemp -d /tmp/skiff-slow.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

log() { printf '[slow %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port PORT: until something accepts on it (10 s at most).
wait_port() {
    python3 - "$1" <<'PY'
import socket, sys, time
end = time.monotonic() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > end:
            sys.exit("nothing listens on port " + sys.argv[1])
        time.sleep(0.05)
PY
}

mkdir -p "$TMP/files"
truncate -s "$SIZE" "$TMP/files/big"
BYTES=$(stat -c %s "$TMP/files/big")
FILES=$(port) SLOW=$(port) LISTEN=$(port) ADMIN=$(port)
(cd "$TMP/files" && exec python3 -m http.server "$FILES" --bind 127.0.0.1 >/dev/null 2>&1) &
PIDS+=($!)
python3 "$ROOT/bench/slow_reader.py" --port "$SLOW" --rate "$RATE" &
PIDS+=($!)
cat >"$TMP/skiff.yaml" <<EOF
admin: { address: 127.0.0.1:$ADMIN }
runtime: { workers: 1 }
listeners:
  - { name: main, address: 127.0.0.1:$LISTEN, protocol: http1, routes: main }
routes:
  main:
    - { match: { path: { prefix: /upload } }, cluster: slow }
    - cluster: files
clusters:
  files: { endpoints: [127.0.0.1:$FILES] }
  slow: { endpoints: [127.0.0.1:$SLOW] }
EOF
wait_port "$FILES"
wait_port "$SLOW"
"$SKIFF_BIN" run -c "$TMP/skiff.yaml" --log-level warn &
SKIFF=$!
PIDS+=($SKIFF)
ready=0
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN/ready" >/dev/null && ready=1 && break
    sleep 0.1
done
((ready)) || { echo "skiff did not become ready" >&2; exit 1; }

# Skiff's memory now, in KiB; 0 once it is gone (reported, not fatal).
mem() { awk '/^VmRSS:/ {r=$2} END {printf "%d", r}' "/proc/$SKIFF/status" 2>/dev/null || echo 0; }
pss() { awk '/^Pss:/ {p=$2} END {printf "%d", p}' "/proc/$SKIFF/smaps_rollup" 2>/dev/null || echo 0; }
log "skiff $("$SKIFF_BIN" --version 2>/dev/null || echo) pid $SKIFF; $BYTES bytes each way at $RATE/s"
START_RSS=$(mem) START_PSS=$(pss)
MAX_RSS=$START_RSS MAX_PSS=$START_PSS
T0=$(date +%s)

curl -s --limit-rate "$RATE" -o /dev/null -w '%{http_code} %{size_download}\n' \
    "http://127.0.0.1:$LISTEN/big" >"$TMP/download.out" &
DOWN=$!
PIDS+=($DOWN)
curl -s -T "$TMP/files/big" -o "$TMP/upload.body" -w '%{http_code} %{size_upload}\n' \
    "http://127.0.0.1:$LISTEN/upload" >"$TMP/upload.out" &
UP=$!
PIDS+=($UP)
printf '%8s %10s %10s\n' "seconds" "RSS KiB" "Pss KiB"
while kill -0 "$DOWN" 2>/dev/null || kill -0 "$UP" 2>/dev/null; do
    sleep "$SAMPLE"
    r=$(mem) p=$(pss)
    ((r > MAX_RSS)) && MAX_RSS=$r
    ((p > MAX_PSS)) && MAX_PSS=$p
    printf '%8d %10d %10d\n' $(($(date +%s) - T0)) "$r" "$p"
done
wait "$DOWN" "$UP" || true
END_RSS=$(mem) END_PSS=$(pss)
ELAPSED=$(($(date +%s) - T0))
read -r DCODE DBYTES <"$TMP/download.out"
read -r UCODE UBYTES <"$TMP/upload.out"
RECEIVED=$(cat "$TMP/upload.body" 2>/dev/null || echo "?")
echo
echo "download: HTTP $DCODE, $DBYTES bytes at $RATE/s"
echo "upload:   HTTP $UCODE, $UBYTES bytes sent, $RECEIVED received by the slow reader"
echo "took ${ELAPSED}s; Skiff RSS start $((START_RSS / 1024)) MiB, most $((MAX_RSS / 1024)) MiB, end $((END_RSS / 1024)) MiB;" \
    "Pss start $((START_PSS / 1024)) MiB, most $((MAX_PSS / 1024)) MiB, end $((END_PSS / 1024)) MiB"
[[ $DCODE == 200 && $DBYTES == "$BYTES" && $UCODE == 200 && $RECEIVED == "$BYTES" ]] || {
    echo "a transfer did not complete" >&2
    exit 1
}
