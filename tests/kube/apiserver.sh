#!/usr/bin/env bash
# A real Kubernetes API server for tests that need the API but no running
# pods (controller discovery and TokenReview, the injector called by the
# API server): v1.20.2 built offline from Debian bookworm's `kubernetes`
# source package with Debian's Go, run with Debian's etcd.
#
#   tests/kube/apiserver.sh build [CMD...]  # builds kube-apiserver (or CMDs), prints the bin dir;
#                                           # cached, ~3 min cold for the API server
#   tests/kube/apiserver.sh start DIR [PID] # etcd + API server on free loopback ports;
#                                           # with PID, stopped when that process ends
#   . DIR/env                               # KUBECONFIG, KUBE_APISERVER_URL, pids
#   tests/kube/apiserver.sh stop DIR
#
# The build is cached outside the clone (WEFT_KUBE_CACHE, default
# /var/cache/weft-kube), so a second run and every later clone start in
# seconds. Nothing system-wide changes except the Debian packages it
# installs when missing (etcd-server, dpkg-dev, openssl).
set -euo pipefail

VERSION=v1.20.2
CACHE=${WEFT_KUBE_CACHE:-/var/cache/weft-kube}/$VERSION

die() { echo "apiserver.sh: $*" >&2; exit 1; }

# package -> a file it provides
need() {
    local missing=() pkg
    declare -A files=([etcd-server]=/usr/bin/etcd [dpkg-dev]=/usr/bin/dpkg-source
        [openssl]=/usr/bin/openssl [curl]=/usr/bin/curl [python3]=/usr/bin/python3)
    for pkg in "${!files[@]}"; do [[ -e ${files[$pkg]} ]] || missing+=("$pkg"); done
    if ((${#missing[@]})); then
        echo "apiserver.sh: installing ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Builds the named commands (default: the API server) into $CACHE/bin and
# prints that folder. The source tree and Go toolchain are set up once.
build() {
    local want=("$@")
    ((${#want[@]})) || want=(kube-apiserver)
    local missing=() c
    for c in "${want[@]}"; do [[ -x $CACHE/bin/$c ]] || missing+=("$c"); done
    if ((${#missing[@]} == 0)); then echo "$CACHE/bin"; return; fi
    local work=$CACHE/work
    mkdir -p "$work"/{apt/lists/partial,apt/cache/archives/partial,debs,root,src} "$CACHE/bin"
    [[ -e $work/openapi-gen.done ]] || prepare_source "$work"

    export GOROOT=$work/root/usr/lib/go-1.19 GOPATH=$work/gopath GOCACHE=$work/gocache \
        GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=
    export PATH=$GOROOT/bin:$PATH
    cd "$work/gopath/src/k8s.io/kubernetes"
    local ldflags="-s -w" p
    for p in component-base/version client-go/pkg/version; do
        p=k8s.io/kubernetes/vendor/k8s.io/$p
        ldflags+=" -X $p.gitVersion=$VERSION -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitTreeState=archive"
    done
    for c in "${missing[@]}"; do
        echo "apiserver.sh: building $c" >&2
        nice -n 10 go build -o "$CACHE/bin/$c.tmp" -ldflags "$ldflags" "./cmd/$c" >&2
        mv "$CACHE/bin/$c.tmp" "$CACHE/bin/$c"
    done
    echo "$CACHE/bin"
}

# Debian's kubernetes source, its Go, and the generated code the source
# package lacks.
prepare_source() {
    local work=$1
    # Source packages come from the mirror this machine already uses; apt's
    # state for them stays under the cache.
    local mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [[ -n $mirror ]] || mirror=$(awk '$1=="deb" && /bookworm/ {for (i=2; i<=NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
    [[ -n $mirror ]] || die "no Debian mirror found in the apt configuration"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" >"$work/apt/sources.list"
    local apt=(-o "Dir::Etc::sourcelist=$work/apt/sources.list" -o Dir::Etc::sourceparts=/nonexistent
        -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o APT::Sandbox::User=root)
    apt-get "${apt[@]}" update -qq
    (cd "$work/src" && rm -rf k8s && apt-get "${apt[@]}" source --download-only -qq kubernetes \
        && dpkg-source -x --no-check kubernetes_*.dsc k8s >/dev/null)
    (cd "$work/debs" && apt-get download -qq golang-1.19-go golang-1.19-src \
        golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
    for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done

    # The vendored reflect2 1.0.1 and json-iterator 1.1.10 crash under Go
    # 1.18+ when custom resources are decoded; Debian ships fixed versions.
    local vendor=$work/src/k8s/vendor/github.com gocode=$work/root/usr/share/gocode/src/github.com
    rm -rf "$vendor/modern-go/reflect2" "$vendor/json-iterator/go"
    cp -r "$gocode/modern-go/reflect2" "$vendor/modern-go/reflect2"
    cp -r "$gocode/json-iterator/go" "$vendor/json-iterator/go"
    find "$vendor/modern-go/reflect2" "$vendor/json-iterator/go" -name '*_test.go' -delete

    mkdir -p "$work/gopath/src/k8s.io"
    ln -sfn "$work/src/k8s" "$work/gopath/src/k8s.io/kubernetes"
    (
        export GOROOT=$work/root/usr/lib/go-1.19 GOPATH=$work/gopath GOCACHE=$work/gocache \
            GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=
        export PATH=$GOROOT/bin:$PATH
        cd "$work/gopath/src/k8s.io/kubernetes"
        go build -o "$work/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
        local packages
        packages=$(grep -Rl --include='*.go' '+k8s:openapi-gen=' pkg/apis vendor/k8s.io \
            | grep -v -e code-generator -e sample-apiserver -e kube-openapi \
            | xargs -n1 dirname | sort -u | sed 's#^#k8s.io/kubernetes/#' | paste -sd,)
        "$work/openapi-gen" --logtostderr -i "$packages" -p k8s.io/kubernetes/pkg/generated/openapi \
            -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
            -r "$work/openapi-violations.report" 2>"$work/openapi-gen.log"
    )
    touch "$work/openapi-gen.done"
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
    start) need; start "${2:-}" "${3:-}" ;;
    stop) stop "${2:-}" ;;
    *) die "usage: apiserver.sh build | start DIR [OWNER_PID] | stop DIR" ;;
esac
