#!/usr/bin/env bash
# A real Kubernetes API server for tests that need the API but no running
# pods (controller discovery and TokenReview, the injector called by the
# API server), run with Debian's etcd. Kubernetes itself is built from the
# Go module proxy: `k8s.io/kubernetes` at a release tag, its staging modules
# pinned to the matching v0.x versions (tests/kube/go/go.mod, go.sum
# committed), with the machine's Go.
#
#   tests/kube/apiserver.sh build [CMD...]  # builds kube-apiserver (or CMDs), prints the bin dir;
#                                           # cached; all six commands take ~16 min cold on 2 cores
#   tests/kube/apiserver.sh start DIR [PID] # etcd + API server on free loopback ports;
#                                           # with PID, stopped when that process ends
#   . DIR/env                               # KUBECONFIG, KUBE_APISERVER_URL, pids
#   tests/kube/apiserver.sh stop DIR
#
# The build is cached outside the clone (WEFT_KUBE_CACHE, default
# /var/cache/weft-kube): the binaries per version, and Go's module and build
# caches beside them, so a second run and every later clone start in
# seconds. Nothing system-wide changes except the Debian packages it
# installs when missing (etcd-server, openssl, curl).
#
# Why 1.35: it is the newest release that runs on these machines as they
# are. 1.36 and later need containerd 2 (Debian 12 ships 1.6), and these
# hosts mount cgroup v1, which 1.35's kubelet still runs with
# `failCgroupV1: false`.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$HERE/go/go.mod")
[[ -n $VERSION ]] || { echo "apiserver.sh: no k8s.io/kubernetes version in $HERE/go/go.mod" >&2; exit 1; }
KUBE_CACHE=${WEFT_KUBE_CACHE:-/var/cache/weft-kube}
CACHE=$KUBE_CACHE/$VERSION

die() { echo "apiserver.sh: $*" >&2; exit 1; }

# package -> a file it provides
need() {
    local missing=() pkg
    declare -A files=([etcd-server]=/usr/bin/etcd [openssl]=/usr/bin/openssl
        [curl]=/usr/bin/curl [python3]=/usr/bin/python3)
    for pkg in "${!files[@]}"; do [[ -e ${files[$pkg]} ]] || missing+=("$pkg"); done
    if ((${#missing[@]})); then
        echo "apiserver.sh: installing ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    command -v go >/dev/null || die "go not found (Kubernetes is built from its Go modules; install Go first)"
}

# Builds the named commands (default: the API server) into $CACHE/bin and
# prints that folder. One `go build` for all of them, so shared packages
# compile once.
build() {
    local want=("$@")
    ((${#want[@]})) || want=(kube-apiserver)
    local missing=() c
    for c in "${want[@]}"; do [[ -x $CACHE/bin/$c ]] || missing+=("$c"); done
    if ((${#missing[@]} == 0)); then echo "$CACHE/bin"; return; fi
    mkdir -p "$CACHE/bin" "$KUBE_CACHE/go"
    # The module cache is read-only for Go's sake; the build cache is
    # Go's own. Neither lives in the clone.
    export GOMODCACHE=$KUBE_CACHE/go/mod GOCACHE=$KUBE_CACHE/go/build GOTOOLCHAIN=local \
        CGO_ENABLED=0 GOFLAGS=-mod=readonly GOWORK=off
    local minor=${VERSION#v1.}
    minor=${minor%%.*}
    local ldflags="-s -w" p
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=$VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    local started=$SECONDS out
    out=$(mktemp -d "$CACHE/bin.XXXX")
    echo "apiserver.sh: building Kubernetes $VERSION: ${missing[*]}" >&2
    (cd "$HERE/go" && nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$out/" \
        "${missing[@]/#/k8s.io/kubernetes/cmd/}") >&2 || { rm -rf "$out"; die "go build failed"; }
    for c in "${missing[@]}"; do mv "$out/$c" "$CACHE/bin/$c"; done
    rm -rf "$out"
    echo "apiserver.sh: built ${missing[*]} in $((SECONDS - started)) s" >&2
    echo "$CACHE/bin"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=${1:?usage: apiserver.sh start DIR [OWNER_PID]} owner=${2:-}
    local bin
    bin=$(build)/kube-apiserver
    mkdir -p "$dir/pki"
    local etcd_port peer_port api_port
    etcd_port=$(free_port) peer_port=$(free_port) api_port=$(free_port)

    etcd --name weft --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "weft=http://127.0.0.1:$peer_port" >"$dir/etcd.log" 2>&1 &
    local etcd_pid=$!

    # Service-account tokens are signed with this key, so TokenRequest
    # (projected tokens) and TokenReview work.
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/pki/sa.key" 2>/dev/null
    openssl ec -in "$dir/pki/sa.key" -pubout -out "$dir/pki/sa.pub" 2>/dev/null
    local token
    token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "$token,admin,admin,system:masters" >"$dir/pki/tokens.csv"

    # No kube-proxy runs: aggregator routing sends webhook and aggregated
    # API calls to a Service's endpoints, not its unrouted cluster IP.
    "$bin" --etcd-servers="http://127.0.0.1:$etcd_port" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
        --cert-dir="$dir/pki/serving" --service-cluster-ip-range=10.96.0.0/16 \
        --service-account-key-file="$dir/pki/sa.pub" --service-account-signing-key-file="$dir/pki/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc \
        --api-audiences=https://kubernetes.default.svc \
        --token-auth-file="$dir/pki/tokens.csv" --authorization-mode=RBAC \
        --enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook \
        --enable-aggregator-routing=true \
        --allow-privileged=true >"$dir/apiserver.log" 2>&1 &
    local api_pid=$!
    echo "$etcd_pid $api_pid" >"$dir/pids"

    local url=https://127.0.0.1:$api_port
    for _ in $(seq 1 240); do
        curl -skf -H "Authorization: Bearer $token" "$url/readyz" >/dev/null 2>&1 && break
        kill -0 "$api_pid" 2>/dev/null || die "kube-apiserver exited; see $dir/apiserver.log"
        sleep 0.5
    done
    curl -skf -H "Authorization: Bearer $token" "$url/readyz" >/dev/null \
        || die "kube-apiserver not ready after 2 min; see $dir/apiserver.log"

    cat >"$dir/admin.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: weft-test
  cluster: {server: "$url", insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: weft-test
  context: {cluster: weft-test, user: admin}
current-context: weft-test
KUBECONFIG
    if [[ -n $owner ]]; then
        # Test processes cannot run destructors for what they share; this
        # watchdog stops the server and removes its state when its owner is
        # gone, however it ended.
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop "$3"; rm -rf "$3"' \
            watchdog "$owner" "$(realpath "$0")" "$dir" </dev/null >/dev/null 2>&1 &
    fi
    echo "export KUBECONFIG=$dir/admin.kubeconfig KUBE_APISERVER_URL=$url ETCD_PID=$etcd_pid APISERVER_PID=$api_pid" >"$dir/env"
    echo "kube-apiserver $VERSION ready at $url; . $dir/env" >&2
}

stop() {
    local dir=${1:?usage: apiserver.sh stop DIR}
    [[ -f $dir/pids ]] || return 0
    local pid
    for pid in $(cat "$dir/pids"); do kill "$pid" 2>/dev/null || true; done
    for pid in $(cat "$dir/pids"); do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$dir/pids"
}

case ${1:-} in
    build) need; build "${@:2}" ;;
    bin-dir) echo "$CACHE/bin" ;;
    start) need; start "${2:-}" "${3:-}" ;;
    stop) stop "${2:-}" ;;
    *) die "usage: apiserver.sh build | bin-dir | start DIR [OWNER_PID] | stop DIR" ;;
esac
