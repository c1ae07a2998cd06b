#!/usr/bin/env bash
# Writes the Gateway API CRDs Weft serves into examples/install/gateway-api/,
# from the sigs.k8s.io/gateway-api module this folder's go.mod pins:
#
#   tests/kube/gateway-api/crds.sh           # write them
#   tests/kube/gateway-api/crds.sh --check   # fail if the committed ones differ
#
# HTTPRoute, GRPCRoute and ReferenceGrant, all from the experimental channel:
# HTTPRoute's `retry` (GEP-1731) is only there, and one channel keeps the
# bundle consistent. The files are upstream's, byte for byte, after a header.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/../../../examples/install/gateway-api
KUBE_CACHE=${WEFT_KUBE_CACHE:-/var/cache/weft-kube}
export GOMODCACHE=$KUBE_CACHE/go/mod GOCACHE=$KUBE_CACHE/go/build GOTOOLCHAIN=local \
    GOFLAGS=-mod=readonly GOWORK=off
module=$(cd "$HERE" && go mod download -json sigs.k8s.io/gateway-api | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["Dir"] + " " + d["Version"])')
dir=${module% *}
version=${module#* }

render() {
    echo "# Gateway API $version, experimental channel: upstream's"
    echo "# config/crd/experimental/$1, unchanged (tests/kube/gateway-api/crds.sh)."
    echo "# Apply server-side: kubectl apply --server-side -f examples/install/gateway-api/"
    cat "$dir/config/crd/experimental/$1"
}

status=0
check=false
[[ ${1:-} == --check ]] && check=true
mkdir -p "$OUT"
for kind in httproutes grpcroutes referencegrants; do
    file=gateway.networking.k8s.io_$kind.yaml
    if $check; then
        if ! render "$file" | cmp -s - "$OUT/$file"; then
            echo "crds.sh: examples/install/gateway-api/$file differs from Gateway API $version; run tests/kube/gateway-api/crds.sh" >&2
            status=1
        fi
    else
        render "$file" >"$OUT/$file"
    fi
done
exit $status
