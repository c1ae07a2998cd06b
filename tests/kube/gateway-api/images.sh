#!/usr/bin/env bash
# The Gateway API mesh conformance suite's app image, built from source as
# an OCI archive, under the name the suite's mesh manifests use (so nodes
# that import it run the manifests unchanged, with IfNotPresent):
#
#   tests/kube/gateway-api/images.sh OUT_DIR   # prints the archive's path
#
# `echo-advanced` is Istio's echo app: the server as the entrypoint and the
# client the suite runs with `kubectl exec`, both built by gobuild.sh from
# the istio.io/istio module tests/kube/echo-advanced pins, plus the
# self-signed certificate its manifests point the server's TLS port at.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: images.sh OUT_DIR}
mkdir -p "$out"
KUBE_CACHE=${WEFT_KUBE_CACHE:-/var/cache/weft-kube}
export GOMODCACHE=$KUBE_CACHE/go/mod GOCACHE=$KUBE_CACHE/go/build GOTOOLCHAIN=local \
    GOFLAGS=-mod=readonly GOWORK=off
suite=$(cd "$HERE" && go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance)
name=$(grep -om1 'registry.k8s.io/gateway-api/echo-advanced:[^ ]*' "$suite/mesh/manifests.yaml")
server=$("$HERE/../gobuild.sh" echo-server)
client=$("$HERE/../gobuild.sh" echo-client)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj /CN=echo -addext subjectAltName=DNS:echo -keyout "$work/cert.key" -out "$work/cert.crt" 2>/dev/null
chmod 644 "$work/cert.key"
python3 "$HERE/../oci-image.py" --name "$name" --out "$out/echo-advanced.tar" \
    --entrypoint /usr/local/bin/server --user 1000:1000 \
    --file "$server:/usr/local/bin/server" --file "$client:/usr/local/bin/client" \
    --file "$work/cert.crt:/cert.crt" --file "$work/cert.key:/cert.key" >&2
echo "$out/echo-advanced.tar"
