#!/usr/bin/env bash
# A real pod, offline, with podman 4.3: a small app pod is injected by
# `skiff inject --classic-sidecar` (podman runs no native sidecars: it treats
# `restartPolicy: Always` init containers as ordinary ones, and the pod would
# never start) and played with `podman kube play`. Shows the init container's
# rules in the pod's network namespace, a request from outside the pod
# reaching the app through the sidecar's inbound capture, and the app's own
# call out going through the outbound capture (the passthrough cluster),
# both in the sidecar's metrics. Everything it creates is named skiff-pt-*
# and removed on exit.
#
#   bash deploy/podman/run.sh          # builds localhost/skiff:latest first
#   SKIP_IMAGE=1 bash deploy/podman/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CONTAINERS_CONF=$(mktemp)
cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
work=$(mktemp -d)
cleanup() {
    podman kube down "$work/pod.yaml" >/dev/null 2>&1 || true
    podman pod rm -f skiff-pt >/dev/null 2>&1 || true
    podman secret rm skiff-pt-identity >/dev/null 2>&1 || true
    podman volume rm -f skiff-pt-identity skiff-pt-config >/dev/null 2>&1 || true
    [[ -n ${host_pid:-} ]] && kill "$host_pid" 2>/dev/null || true
    rm -rf "$work" "$CONTAINERS_CONF"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

if [[ ${SKIP_IMAGE:-0} != 1 ]]; then
    step "the skiff image"
    bash deploy/build-image.sh
fi
# The same binary the image holds, for `skiff certs` and `skiff inject` here.
BIN=${SKIFF_BIN:-${STATIC_TARGET_DIR:-$HOME/.cache/skiff/static}/x86_64-unknown-linux-gnu/release/skiff}

step "the app image: busybox-static as a root filesystem"
mkdir -p "$work/app/bin"
cp "$(command -v busybox)" "$work/app/bin/busybox"
for t in sh httpd wget timeout sleep echo mkdir cat hostname; do ln -s busybox "$work/app/bin/$t"; done
tar -C "$work/app" -c . | podman import --change ENV=PATH=/bin - localhost/skiff-pt-app:latest >/dev/null

step "an identity, the sidecar's config, the pod"
"$BIN" certs ca --out "$work/ca" >/dev/null
"$BIN" certs issue --ca "$work/ca" --id spiffe://cluster.local/ns/default/sa/app --out "$work/id" >/dev/null
# podman 4.3 writes a Secret's `data` values verbatim (no base64).
{
    echo "apiVersion: v1"; echo "kind: Secret"; echo "metadata: { name: skiff-pt-identity }"; echo "data:"
    for f in cert key ca; do
        printf '  %s.pem: |\n' "$f"; sed 's/^/    /' "$work/id/$f.pem"
    done
} > "$work/secret.yaml"
podman secret create skiff-pt-identity "$work/secret.yaml" >/dev/null
cat > "$work/configmap.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: { name: skiff-pt-config }
data:
  skiff.yaml: |
    admin: { address: 0.0.0.0:15000 }
    identity:
      cert: /var/run/skiff/identity/cert.pem
      key: /var/run/skiff/identity/key.pem
      trust_bundle: /var/run/skiff/identity/ca.pem
    listeners:
      - { name: outbound, address: 0.0.0.0:15001, direction: outbound, transparent: true, routes: out }
      - { name: inbound, address: 0.0.0.0:15006, direction: inbound, transparent: true,
          tls: { mode: permissive }, routes: in, cluster: local-app }
    routes:
      out: [ { cluster: passthrough } ]
      in: [ { cluster: local-app } ]
    clusters:
      passthrough: { discovery: original_destination }
      local-app: { discovery: original_destination, original_destination: { host: 127.0.0.1 } }
YAML
cat > "$work/app.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata: { name: skiff-pt }
spec:
  # podman 4.3 applies the pod's restart policy to init containers too:
  # with Always (the default) a finished skiff-init is started again, and
  # again, until the play fails removing it. A kubelet never restarts an
  # init container that succeeded.
  restartPolicy: OnFailure
  containers:
    - name: app
      image: localhost/skiff-pt-app:latest
      command: [sh, -c, "mkdir -p /www && echo hello from the app > /www/index.html && exec httpd -f -p 8080 -h /www"]
YAML
"$BIN" inject -f "$work/app.yaml" --classic-sidecar --image localhost/skiff:latest \
    --config-map skiff-pt-config --identity-secret skiff-pt-identity > "$work/pod.yaml"
# podman refuses `ports:` on some networks and ignores probes and hooks
# (deploy/podman/README.md); the hook is replaced by waiting on /ready below.
sed -i '/^ *ports:$/,/^ *protocol: TCP$/d' "$work/pod.yaml"
# ... and gives only metadata.name from fieldRef: the rest as a kubelet would.
python3 - "$work/pod.yaml" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
for path, value in (("metadata.namespace", "default"), ("status.podIP", "")):
    s = re.sub(r"valueFrom:\n( *)fieldRef:\n *fieldPath: " + re.escape(path), "value: \"" + value + "\"", s)
open(p, "w").write(s)
PY
podman kube play --build=false --configmap "$work/configmap.yaml" "$work/pod.yaml" >/dev/null

step "the pod's network namespace: the init container's rules"
infra=$(podman pod inspect skiff-pt --format '{{.InfraContainerID}}')
pid=$(podman inspect -f '{{.State.Pid}}' "$infra")
nsenter -t "$pid" -n iptables-save -t nat | grep SKIFF
ip=$(nsenter -t "$pid" -n ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
echo "pod IP: $ip"

step "waiting for the sidecar's /ready"
for _ in $(seq 1 100); do
    curl -sf "http://$ip:15000/ready" >/dev/null && break
    sleep 0.1
done
curl -sS "http://$ip:15000/ready"

step "from outside the pod to the app's port 8080: through the inbound capture"
curl -sS "http://$ip:8080/"

step "the app calls out (a server on the host): through the outbound capture"
gw=$(nsenter -t "$pid" -n ip -4 route | awk '/default/ {print $3}')
mkdir -p "$work/host" && echo "hello from the host" > "$work/host/index.html"
busybox httpd -f -p "$gw:18181" -h "$work/host" & host_pid=$!
podman exec skiff-pt-app timeout 5 wget -qO- "http://$gw:18181/"

step "the sidecar's metrics"
curl -sS "http://$ip:15000/metrics" | grep '^skiff_requests_total{'
