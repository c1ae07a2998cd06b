#!/usr/bin/env bash
# Builds a Go program the tests run next to Weft from its Go module, with
# the machine's Go and nothing but the Go module proxy:
#
#   tests/kube/gobuild.sh coredns      # prints the path of the binary
#   tests/kube/gobuild.sh prometheus
#   tests/kube/gobuild.sh echo-server  # Istio's echo app (echo-advanced)
#   tests/kube/gobuild.sh echo-client
#
# Each program has a module of its own beside this script (go.mod and
# go.sum committed, a `tool` line or a main.go of ours), so the versions are
# pinned and reviewed like Cargo.lock. Binaries are cached outside the clone
# under WEFT_KUBE_CACHE (default /var/cache/weft-kube), keyed by the
# module's files, with Go's module and build caches beside them; a second run, and
# every later clone, starts in a second.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
KUBE_CACHE=${WEFT_KUBE_CACHE:-/var/cache/weft-kube}

die() { echo "gobuild.sh: $*" >&2; exit 1; }

name=${1:-}
# Build tags per program: Prometheus keeps only the discovery it is used
# with here (Kubernetes, file, HTTP), which halves its build, and serves its
# API without the web UI's assets (they are built with npm, not Go).
module=$HERE/$name
case $name in
    coredns) package=. tags= ;;
    prometheus) package=github.com/prometheus/prometheus/cmd/prometheus tags=remove_all_sd,enable_kubernetes_sd ;;
    # The Gateway API mesh conformance suite's client and server.
    echo-server | echo-client)
        package=istio.io/istio/pkg/test/echo/cmd/${name#echo-} tags= module=$HERE/echo-advanced ;;
    # The Gateway API conformance suite, a Go test binary.
    gateway-api-conformance) package=. tags= module=$HERE/gateway-api ;;
    *) die "usage: gobuild.sh coredns | prometheus | echo-server | echo-client | gateway-api-conformance" ;;
esac
command -v go >/dev/null || die "go not found (install Go first)"
sources=("$module/go.mod" "$module/go.sum")
for f in "$module"/*.go; do [[ -e $f ]] && sources+=("$f"); done
key=$(cat "${sources[@]}" | sha256sum | cut -c1-12)
out=$KUBE_CACHE/tools/$name-$key/$name
mkdir -p "$KUBE_CACHE/tools"
# Tests build on first use, several at once: one builds, the others wait.
exec 9>"$KUBE_CACHE/tools/.$name.lock"
flock 9
if [[ ! -x $out ]]; then
    mkdir -p "$(dirname "$out")" "$KUBE_CACHE/go"
    export GOMODCACHE=$KUBE_CACHE/go/mod GOCACHE=$KUBE_CACHE/go/build GOTOOLCHAIN=local \
        CGO_ENABLED=0 GOFLAGS=-mod=readonly GOWORK=off
    started=$SECONDS
    echo "gobuild.sh: building $name ($package)" >&2
    if [[ $name == gateway-api-conformance ]]; then build=(test -c); else build=(build); fi
    (cd "$module" && nice -n 10 go "${build[@]}" -trimpath -tags "$tags" -ldflags "-s -w" -o "$out.tmp" "$package") >&2 \
        || { rm -f "$out.tmp"; die "go build of $name failed"; }
    mv "$out.tmp" "$out"
    echo "gobuild.sh: built $name in $((SECONDS - started)) s" >&2
fi
echo "$out"
