#!/usr/bin/env bash
# The mTLS demo: two Skiffs talking mTLS on loopback.
#
#   app (curl) ──plaintext──> frontend Skiff :8080 ──mTLS──> backend Skiff :15006 ──> demo-http :9001
#                                                                                └──> demo-greeter :9003
#
# Run from the repository root: bash examples/mtls/run.sh   (Ctrl-C stops everything)
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build -q -p skiff -p skiff-examples
bin=target/debug
certs=examples/mtls/certs

# A mesh CA and one workload certificate per sidecar (24h, SPIFFE URI SANs).
"$bin/skiff" certs ca --out "$certs/ca"
"$bin/skiff" certs issue --ca "$certs/ca" --id spiffe://demo.local/ns/default/sa/frontend --out "$certs/frontend"
"$bin/skiff" certs issue --ca "$certs/ca" --id spiffe://demo.local/ns/default/sa/backend --out "$certs/backend"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT
"$bin/demo-http" --listen 127.0.0.1:9001 --instance a & pids+=($!)
"$bin/demo-greeter" --listen 127.0.0.1:9003 & pids+=($!)
"$bin/skiff" run -c examples/mtls/backend.yaml & pids+=($!)
"$bin/skiff" run -c examples/mtls/frontend.yaml & pids+=($!)

for admin in 127.0.0.1:15100 127.0.0.1:15200; do
  until curl -sf "http://$admin/ready" >/dev/null; do sleep 0.2; done
done

cat <<'TRY'

Two Skiffs are talking mTLS. Try:
  curl -s localhost:8080/api/hello              # 200: frontend -> mTLS -> backend -> demo-http
  curl -si localhost:8080/admin | head -3       # 403 forbidden: the authorization rule allows /api/* only
  curl -si localhost:15006/api/hello            # refused: the backend's listener is mTLS only
  curl -s localhost:15200/metrics | grep skiff_tls_handshakes_total
  # rotate the backend's certificate; the next connection uses it, no restart:
  target/debug/skiff certs issue --ca examples/mtls/certs/ca --id spiffe://demo.local/ns/default/sa/backend --out examples/mtls/certs/backend
  # a TLS stack that is not ours, as the frontend:
  printf 'GET /api/x HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n' | openssl s_client -quiet -connect 127.0.0.1:15006 \
    -cert examples/mtls/certs/frontend/cert.pem -key examples/mtls/certs/frontend/key.pem \
    -CAfile examples/mtls/certs/ca/ca.pem -verify_return_error

Ctrl-C stops everything.
TRY
wait
