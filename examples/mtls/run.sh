#!/usr/bin/env bash
# The mTLS demo: two Skiffs talking mTLS on loopback.
#
#   app (curl) ──plaintext──> frontend Skiff :8080 ──mTLS──> backend Skiff :15006 ──> demo-http :9001
#                                                                                └──> demo-greeter :9003
#
#   bash examples/mtls/run.sh             start everything, print what to try; Ctrl-C stops it all
#   bash examples/mtls/run.sh --check     start, check every line of the tour, stop (the tests run this)
#   add --no-build                        use the binaries already built (the tests' own)
#
# Ports and the certificates' directory come from these variables (defaults shown):
#   MTLS_APP_PORT=8080 MTLS_MESH_PORT=15006 MTLS_FRONTEND_ADMIN=15100 MTLS_BACKEND_ADMIN=15200
#   MTLS_WEB_PORT=9001 MTLS_GREETER_PORT=9003 MTLS_CERTS=examples/mtls/certs
# Binaries are found where cargo puts them: CARGO_TARGET_DIR and .cargo/config.toml are honoured.
set -euo pipefail
cd "$(dirname "$0")/../.."

check=false build=true
for arg in "$@"; do
  case "$arg" in
    --check) check=true ;;
    --no-build) build=false ;;
    *) echo "usage: bash examples/mtls/run.sh [--check] [--no-build]" >&2; exit 2 ;;
  esac
done

export MTLS_APP_PORT="${MTLS_APP_PORT:-8080}" MTLS_MESH_PORT="${MTLS_MESH_PORT:-15006}"
export MTLS_FRONTEND_ADMIN="${MTLS_FRONTEND_ADMIN:-15100}" MTLS_BACKEND_ADMIN="${MTLS_BACKEND_ADMIN:-15200}"
export MTLS_WEB_PORT="${MTLS_WEB_PORT:-9001}" MTLS_GREETER_PORT="${MTLS_GREETER_PORT:-9003}"
export MTLS_CERTS="${MTLS_CERTS:-examples/mtls/certs}"

if $build; then
  cargo build -q -p skiff -p skiff-examples --bins
fi
# cargo knows where it builds; ask it rather than assume ./target.
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target/debug"
for b in skiff demo-http demo-greeter demo-grpc-client; do
  [ -x "$bin/$b" ] || { echo "run.sh: $bin/$b is missing (run without --no-build)" >&2; exit 1; }
done

# A mesh CA and one workload certificate per sidecar (24h, SPIFFE URI SANs).
"$bin/skiff" certs ca --out "$MTLS_CERTS/ca" >/dev/null
for who in frontend backend; do
  "$bin/skiff" certs issue --ca "$MTLS_CERTS/ca" --id "spiffe://demo.local/ns/default/sa/$who" \
    --out "$MTLS_CERTS/$who" >/dev/null
done

logs=$(mktemp -d)
pids=() names=()
stop() {
  ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$logs"
}
trap stop EXIT
trap 'exit 130' INT TERM

start() { # NAME COMMAND...: runs COMMAND in the background, its output in $logs/NAME
  local name=$1; shift
  "$@" >"$logs/$name" 2>&1 &
  pids+=($!) names+=("$name")
}

# If a process has died (a port already taken, a bad config), say which one
# and show its last lines, and stop everything.
fail_if_dead() {
  local i
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "run.sh: ${names[$i]} exited; its last lines:" >&2
      tail -n 3 "$logs/${names[$i]}" | cut -c 1-300 | sed 's/^/  /' >&2
      exit 1
    fi
  done
}

start demo-http "$bin/demo-http" --listen "127.0.0.1:$MTLS_WEB_PORT" --instance a
start demo-greeter "$bin/demo-greeter" --listen "127.0.0.1:$MTLS_GREETER_PORT"
start "backend Skiff" "$bin/skiff" run -c examples/mtls/backend.yaml
start "frontend Skiff" "$bin/skiff" run -c examples/mtls/frontend.yaml

# Ready within 30 s, or fail with the reason.
for admin in "$MTLS_BACKEND_ADMIN" "$MTLS_FRONTEND_ADMIN"; do
  for ((tries = 0; ; tries++)); do
    curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break
    fail_if_dead
    if ((tries == 300)); then
      echo "run.sh: the Skiff with admin port $admin is not ready after 30 s" >&2
      exit 1
    fi
    sleep 0.1
  done
done
# The backends have no /ready: they are up once their ports answer.
for port in "$MTLS_WEB_PORT" "$MTLS_GREETER_PORT"; do
  for ((tries = 0; ; tries++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    fail_if_dead
    ((tries == 300)) && { echo "run.sh: nothing listens on $port after 30 s" >&2; exit 1; }
    sleep 0.1
  done
done

app="127.0.0.1:$MTLS_APP_PORT" mesh="127.0.0.1:$MTLS_MESH_PORT"
if $check; then
  checks=0
  expect() { # WHAT WANT GOT
    if [[ "$3" != *"$2"* ]]; then
      echo "run.sh --check: $1: expected \"$2\" in:" >&2
      printf '%s\n' "$3" | sed 's/^/  /' >&2
      exit 1
    fi
    checks=$((checks + 1))
  }
  expect "GET /api/hello through both Skiffs" '"instance":"a"' "$(curl -s "$app/api/hello")"
  expect "GET /admin is not authorized" "skiff-error: forbidden" "$(curl -si "$app/admin")"
  expect "plaintext to the mTLS-only port" "refused" \
    "$(curl -s "$mesh/api/hello" >/dev/null 2>&1 && echo served || echo refused)"
  expect "gRPC through both Skiffs" "Hello, mtls! (from greeter)" \
    "$("$bin/demo-grpc-client" "$app" --name mtls 2>&1)"
  expect "the backend counted the handshake" 'skiff_tls_handshakes_total{listener="inbound",result="ok"}' \
    "$(curl -s "127.0.0.1:$MTLS_BACKEND_ADMIN/metrics")"
  echo "mtls example: $checks checks passed"
  exit 0
fi

cat <<TRY

Two Skiffs are talking mTLS. Try:
  curl -s $app/api/hello              # 200: frontend -> mTLS -> backend -> demo-http
  curl -si $app/admin | head -3       # 403 forbidden: the authorization rule allows /api/* only
  curl -si $mesh/api/hello            # refused: the backend's listener is mTLS only
  $bin/demo-grpc-client $app --name you     # gRPC through both Skiffs
  curl -s 127.0.0.1:$MTLS_BACKEND_ADMIN/metrics | grep skiff_tls_handshakes_total
  # rotate the backend's certificate; the next connection uses it, no restart:
  $bin/skiff certs issue --ca $MTLS_CERTS/ca --id spiffe://demo.local/ns/default/sa/backend --out $MTLS_CERTS/backend
  # a TLS stack that is not ours, as the frontend:
  printf 'GET /api/x HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n' | openssl s_client -quiet -connect $mesh \\
    -cert $MTLS_CERTS/frontend/cert.pem -key $MTLS_CERTS/frontend/key.pem \\
    -CAfile $MTLS_CERTS/ca/ca.pem -verify_return_error

Ctrl-C stops everything (and frees the ports).
TRY
wait -n || true
fail_if_dead
