#!/usr/bin/env bash
# A real two-node Kubernetes on this machine (the version tests/kube/go/go.mod
# pins, built by apiserver.sh from the Go module proxy), for the end-to-end
# tests: etcd, kube-apiserver, controller-manager and scheduler, and on each
# node a kube-proxy (iptables mode) and a kubelet driving its own instance of
# Debian's containerd, with runc and the CNI plugins. Pods are real
# containers in real network namespaces.
#
#   tests/kube/node.sh build             # binaries (cached, ~8 min cold) + packages;
#                                        # prints the bin dir (kubectl is there)
#   tests/kube/node.sh up                # ~40 s; writes $WEFT_NODE/admin.kubeconfig
#                                        # and $WEFT_NODE/nodes (name, CNI conf and
#                                        # bin folders as this machine sees them);
#                                        # with WEFT_NODE_OWNER=PID, down when PID ends;
#                                        # WEFT_NODES=1 for one node
#   tests/kube/node.sh import IMAGE.tar  # into every node's containerd
#   tests/kube/node.sh tag IMAGE NEW     # a second tag for an image, on every node
#   tests/kube/node.sh down              # stops it and removes what `up` made
#   tests/kube/node.sh status
#
# The first node is this machine's own network namespace (so one cluster
# runs at a time) and also runs the control plane. The second node is a
# network namespace of its own, `weftnode2`, with its own mount namespace
# in which its folders (below) are bound over the paths a node hard-codes,
# and its own cgroup root, /weftnode2. Their network is private to the
# machine:
# - node 1's pod bridge `weftbr0` is 10.244.0.1/24 and is also its address;
#   the API server and kubelet listen there, etcd on loopback. Node 2's
#   bridge `weftbr1` is 10.244.1.1/24, its address likewise.
# - the nodes are joined by an underlay link, 10.243.0.1/30 (node 1,
#   `weftul2`) to 10.243.0.2/30 (node 2, `underlay`); each routes the other's
#   pod subnet via the other's underlay address, as flannel's host-gw does.
#   No NAT anywhere.
# - pods get a route to the pod network 10.244.0.0/16 and to the Service
#   range (10.96.0.0/24, via their bridge, where kube-proxy translates it),
#   nothing else: no default route, no masquerade. A packet to anywhere else
#   is dropped. Unused Service addresses are routed back onto the bridge,
#   where nothing answers, never out of the machine. Node 2 has no default
#   route either.
# - CoreDNS (tests/kube/coredns.yaml) is the cluster DNS at 10.96.0.10:
#   pods get the usual resolv.conf (search <ns>.svc.cluster.local, ...).
# CNI configuration lives where a real node keeps it, /etc/cni/net.d and
# /opt/cni/bin (created by `up`, removed by `down` when `up` created them;
# node 2's are $WEFT_NODE/node2/host/*, bound there in its mount namespace),
# so Weft's CNI installer runs with its shipped manifest on both.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NODE_DIR=${WEFT_NODE:-/tmp/weft-node}
RUN=$NODE_DIR/run
LOGS=$NODE_DIR/log
PKI=$NODE_DIR/pki
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
# The kube-dns Service (tests/kube/coredns.yaml).
CLUSTER_DNS=10.96.0.10
BRIDGE=weftbr0
# Every node's pod subnet.
POD_NETWORK=10.244.0.0/16
NODES=${WEFT_NODES:-2}
# The second node.
NODE2_NETNS=weftnode2
NODE2_NAME=weft-node-2
NODE2_IP=10.244.1.1
NODE2_POD_CIDR=10.244.1.0/24
NODE2_BRIDGE=weftbr1
NODE2_CGROUP=weftnode2
UNDERLAY1=10.243.0.1
UNDERLAY2=10.243.0.2
UNDERLAY_LINK=weftul2
# Node 2's folders, bound over these paths in its mount namespace.
NODE2_BINDS=(/etc/cni/net.d /opt/cni/bin /var/lib/cni /var/lib/kubelet /var/log/pods
    /var/log/containers /run/containerd /run/netns)
CNI_CONF_DIR=/etc/cni/net.d
CNI_BIN_DIR=/opt/cni/bin
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)
# Host paths the kubelet, containerd and CNI hard-code; `down` removes the
# ones `up` found missing.
HOST_PATHS=(/var/log/pods /var/log/containers /var/lib/cni /var/lib/kubelet /run/containerd
    /usr/libexec/kubernetes "$CNI_CONF_DIR" "$CNI_BIN_DIR" /etc/cni)
# Kernel settings the kubelet and kube-proxy change; `down` restores them.
SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet)

die() { echo "node.sh: $*" >&2; exit 1; }
log() { echo "node.sh: $*" >&2; }

packages() {
    local missing=() pkg
    declare -A files=([containerd]=/usr/bin/containerd [runc]=/usr/sbin/runc
        [containernetworking-plugins]=/usr/lib/cni/bridge [etcd-server]=/usr/bin/etcd
        [iptables]=/usr/sbin/iptables-restore [nftables]=/usr/sbin/nft [conntrack]=/usr/sbin/conntrack
        [openssl]=/usr/bin/openssl [python3]=/usr/bin/python3 [gcc]=/usr/bin/gcc [libc6-dev]=/usr/lib/x86_64-linux-gnu/libc.a)
    for pkg in "${!files[@]}"; do [[ -e ${files[$pkg]} ]] || missing+=("$pkg"); done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

bin_dir() { "$HERE/apiserver.sh" build "${COMMANDS[@]}"; }

build() {
    packages
    bin_dir
    pause_image >/dev/null
    coredns_image >/dev/null
}

# CoreDNS from its Go module, packed like the pause image.
coredns_image() {
    local binary out
    binary=$("$HERE/gobuild.sh" coredns)
    out=$(dirname "$binary")/coredns.tar
    if [[ ! -s $out ]]; then
        python3 "$HERE/oci-image.py" --name localhost/coredns:weft --out "$out.tmp" \
            --entrypoint /coredns --user 0:0 --file "$binary:/coredns" >&2
        mv "$out.tmp" "$out"
    fi
    echo "$out"
}

# The sandbox ("pause") image: a static C program that waits for a signal
# and reaps zombies, packed as an OCI archive like Weft's own images.
pause_image() {
    local out=${WEFT_KUBE_CACHE:-/var/cache/weft-kube}/pause.tar
    if [[ ! -s $out ]]; then
        local work
        work=$(mktemp -d)
        cat >"$work/pause.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction term = {.sa_handler = stop}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;) pause();
}
C
        gcc -static -Os -o "$work/pause" "$work/pause.c"
        python3 "$HERE/oci-image.py" --name localhost/pause:3.2 --out "$out.tmp" \
            --entrypoint /pause --file "$work/pause:/pause" >&2
        mv "$out.tmp" "$out"
        rm -rf "$work"
    fi
    echo "$out"
}

free_ports() {
    python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])' "$1"
}

spawn() { # NAME COMMAND...: runs in the background, remembered by pid
    local name=$1
    shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

kubeconfig() { # NAME TOKEN
    cat >"$NODE_DIR/$1.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: weft-node
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: $1
  user: {token: "$2"}
contexts:
- name: weft-node
  context: {cluster: weft-node, user: $1}
current-context: weft-node
YAML
}

certificates() {
    local node=$1
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=weft-node-ca \
        -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
    sign() { # NAME SUBJECT EXTENSIONS
        openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
        printf '%s\n' "$3" >"$PKI/$1.ext"
        openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
            -days 30 -extfile "$PKI/$1.ext" -out "$PKI/$1.crt" 2>/dev/null
    }
    sign apiserver /CN=kube-apiserver "subjectAltName=IP:$NODE_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
    sign kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
    sign kubelet "/CN=$node" "subjectAltName=IP:$NODE_IP,DNS:$node
extendedKeyUsage=serverAuth"
    sign kubelet-2 "/CN=$NODE2_NAME" "subjectAltName=IP:$NODE2_IP,DNS:$NODE2_NAME
extendedKeyUsage=serverAuth"
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    token() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
    {
        echo "$(token),admin,admin,system:masters"
        echo "$(token),system:kube-controller-manager,controller-manager"
        echo "$(token),system:kube-scheduler,scheduler"
        echo "$(token),system:kube-proxy,kube-proxy"
        echo "$(token),system:node:$node,node,system:nodes"
        echo "$(token),system:node:$NODE2_NAME,node-2,system:nodes"
    } >"$PKI/tokens.csv"
}

# The node's primary CNI network: Debian's bridge and host-local plugins.
primary_cni() { # CONF_DIR BIN_DIR BRIDGE GATEWAY POD_CIDR IPAM_DIR
    local conf=$1 bin=$2 bridge=$3 gateway=$4 cidr=$5 ipam=$6 p
    mkdir -p "$conf" "$bin" "$ipam"
    for p in /usr/lib/cni/*; do [[ -e $bin/${p##*/} ]] || ln -s "$p" "$bin/"; done
    cat >"$conf/10-weft-node.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "weft-node",
  "plugins": [
    {
      "type": "bridge", "bridge": "$bridge", "isGateway": true, "isDefaultGateway": false,
      "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$ipam",
        "ranges": [[{"subnet": "$cidr", "rangeStart": "${gateway%.1}.10", "gateway": "$gateway"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}, {"dst": "$POD_NETWORK"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

containerd_config() { # DIR SOCKET
    local dir=$1 socket=$2
    mkdir -p "$dir"
    cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$socket"
[ttrpc]
  address = "$socket.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.2"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # Sandboxes here may not lower oom_score_adj (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$dir/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
TOML
}

kubelet_config() { # DIR ADDRESS CERT SOCKET CGROUP_ROOT
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $2
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTH
tlsCertFile: $PKI/$3.crt
tlsPrivateKeyFile: $PKI/$3.key
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: "$PKI/ca.crt"}}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: $5
# These hosts mount cgroup v1; 1.35 still runs there when told to.
failCgroupV1: false
containerRuntimeEndpoint: unix://$4
runtimeRequestTimeout: 5m
failSwapOn: false
makeIPTablesUtilChains: false
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS]
# No eviction: both nodes share this machine's disk and memory with
# everything else on it (the build's target folder among them), so what a
# kubelet measures there says nothing about the test's pods. A CI run once
# lost every scenario when both nodes evicted their pods at once. "0%" turns
# a signal off; a disk that is really full still fails where it is written.
evictionHard: {memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%", imagefs.inodesFree: "0%", pid.available: "0%"}
imageGCHighThresholdPercent: 100
# Mounted Secrets and ConfigMaps follow their objects at each pod sync:
# every 10 s instead of every minute, so that a CA rotation's steps reach
# the controller and the injector within seconds in the tests.
syncFrequency: 10s
volumePluginDir: $dir/flexvolume
YAML
}

wait_socket() { # SOCKET NAME
    local i
    for i in $(seq 60); do [[ -S $1 ]] && return 0; sleep 0.5; done
    die "$2 did not start; see $LOGS/$2.log"
}

# Starts a node's containerd, kube-proxy and kubelet. NAME is the node's,
# SUFFIX its processes' ("" or "-2"), ENTER how to enter its namespaces.
start_node() { # NAME SUFFIX IP POD_CIDR DIR CGROUP_ROOT ENTER...
    local name=$1 suffix=$2 ip=$3 dir=$5 cgroot=$6
    shift 6
    local enter=("$@") socket=$RUN/containerd$suffix.sock
    # No conntrack tuning: these sandboxes may not write those sysctls.
    spawn "kube-proxy$suffix" "${enter[@]}" "$bin/kube-proxy" --kubeconfig="$NODE_DIR/kube-proxy.kubeconfig" \
        --hostname-override="$name" --proxy-mode=iptables --cluster-cidr="$POD_NETWORK" \
        --nodeport-addresses="$ip/32" --healthz-bind-address="127.0.0.1:$PROXY_HEALTH" \
        --metrics-bind-address="127.0.0.1:$PROXY_METRICS" --conntrack-max-per-core=0 \
        --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
    containerd_config "$dir/containerd" "$socket"
    spawn "containerd$suffix" "${enter[@]}" containerd --config "$dir/containerd/config.toml"
    wait_socket "$socket" "containerd$suffix"
    import_into "$socket" "$pause"
    kubelet_config "$dir/kubelet" "$ip" "kubelet$suffix" "$socket" "$cgroot"
    spawn "kubelet$suffix" "${enter[@]}" "$bin/kubelet" --config="$dir/kubelet/config.yaml" \
        --kubeconfig="$NODE_DIR/kubelet$suffix.kubeconfig" --root-dir="$dir/kubelet/root" \
        --node-ip="$ip" --hostname-override="$name"
}

# Node 2's namespaces: a network namespace on the underlay, and a mount
# namespace, held by a sleeping process, with node 2's folders bound over
# the node paths. Prints the holder's pid.
node2_namespaces() {
    local n2=$NODE_DIR/node2 p
    ip netns add "$NODE2_NETNS"
    ip -n "$NODE2_NETNS" link set lo up
    ip link add "$UNDERLAY_LINK" type veth peer name underlay netns "$NODE2_NETNS"
    ip addr add "$UNDERLAY1/30" dev "$UNDERLAY_LINK"
    ip link set "$UNDERLAY_LINK" up
    ip -n "$NODE2_NETNS" addr add "$UNDERLAY2/30" dev underlay
    ip -n "$NODE2_NETNS" link set underlay up
    ip -n "$NODE2_NETNS" link add "$NODE2_BRIDGE" type bridge
    ip -n "$NODE2_NETNS" addr add "$NODE2_IP/24" dev "$NODE2_BRIDGE"
    ip -n "$NODE2_NETNS" link set "$NODE2_BRIDGE" up
    ip -n "$NODE2_NETNS" route add "$SERVICE_CIDR" dev "$NODE2_BRIDGE"
    # host-gw: each node reaches the other's pods via its underlay address.
    # Sourced from the node address, which pods route back to (they have
    # no route to the underlay).
    ip route add "$NODE2_POD_CIDR" via "$UNDERLAY2" dev "$UNDERLAY_LINK" src "$NODE_IP"
    ip -n "$NODE2_NETNS" route add "$POD_CIDR" via "$UNDERLAY1" dev underlay src "$NODE2_IP"
    ip netns exec "$NODE2_NETNS" sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw net.ipv4.ip_forward=1
    # Its own cgroup root, in every v1 hierarchy (cpuset needs its CPUs and
    # memory nodes before anything can join it).
    for p in /sys/fs/cgroup/*/; do
        [[ -L ${p%/} ]] && continue
        mkdir -p "$p$NODE2_CGROUP"
        if [[ -e ${p}cpuset.cpus ]]; then
            cat "${p}cpuset.cpus" >"$p$NODE2_CGROUP/cpuset.cpus"
            cat "${p}cpuset.mems" >"$p$NODE2_CGROUP/cpuset.mems"
        fi
    done
    # The binds are made by the holder itself, inside its new namespace, so
    # that none can land in this machine's (an earlier version bound from
    # outside with nsenter, and once raced the holder's unshare).
    local binds=""
    for p in "${NODE2_BINDS[@]}"; do
        mkdir -p "$p" "$n2/host/$(node2_folder "$p")"
        binds+="mount --bind '$n2/host/$(node2_folder "$p")' '$p' && "
    done
    rm -f "$RUN/mounts-2.ready"
    spawn mounts-2 nsenter --net="/run/netns/$NODE2_NETNS" unshare --mount --propagation private \
        sh -c "${binds}touch '$RUN/mounts-2.ready' && exec sleep infinity"
    for p in $(seq 100); do
        [[ -e $RUN/mounts-2.ready ]] && break
        alive mounts-2 || die "node 2's mount namespace failed; see $LOGS/mounts-2.log"
        sleep 0.1
    done
    [[ -e $RUN/mounts-2.ready ]] || die "node 2's mount namespace is not ready; see $LOGS/mounts-2.log"
    local holder
    holder=$(cat "$RUN/mounts-2.pid")
    echo "$holder"
}

node2_folder() { local p=${1#/}; echo "${p//\//-}"; }

token_of() { grep ",$1," "$PKI/tokens.csv" | cut -d, -f1; }

up() {
    [[ -e $RUN/etcd.pid ]] && die "a node is already up in $NODE_DIR (run: $0 down)"
    packages
    local bin pause node
    bin=$(bin_dir)
    pause=$(pause_image)
    node=$(hostname)
    mkdir -p "$RUN" "$LOGS" "$PKI" "$NODE_DIR"/{containerd,kubelet,cni-ipam}

    # What `down` must put back exactly as it was.
    local p
    for p in "${HOST_PATHS[@]}"; do [[ -e $p ]] && echo "$p"; done >"$RUN/paths.before" || true
    sysctl -n "${SYSCTLS[@]}" >"$RUN/sysctl.before"

    certificates "$node"
    read -r ETCD_PORT PEER_PORT API_PORT KUBELET_PORT KUBELET_HEALTH PROXY_HEALTH PROXY_METRICS <<<"$(free_ports 7)"
    echo "API_PORT=$API_PORT" >"$RUN/ports"

    # The bridge exists before anything listens on its address.
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    # Service addresses kube-proxy does not translate go back to the bridge
    # and die there, instead of following this machine's default route.
    ip route add "$SERVICE_CIDR" dev "$BRIDGE"

    kubeconfig admin "$(token_of admin)"
    kubeconfig controller-manager "$(token_of system:kube-controller-manager)"
    kubeconfig scheduler "$(token_of system:kube-scheduler)"
    kubeconfig kube-proxy "$(token_of system:kube-proxy)"
    kubeconfig kubelet "$(token_of "system:node:$node")"
    kubeconfig kubelet-2 "$(token_of "system:node:$NODE2_NAME")"

    spawn etcd etcd --name weft-node --data-dir "$NODE_DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-cluster "weft-node=http://127.0.0.1:$PEER_PORT"
    spawn kube-apiserver "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc \
        --token-auth-file="$PKI/tokens.csv" --authorization-mode=Node,RBAC --allow-privileged=true \
        --kubelet-client-certificate="$PKI/kubelet-client.crt" --kubelet-client-key="$PKI/kubelet-client.key" \
        --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
        --enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook
    local kubectl=("$bin/kubectl" --kubeconfig "$NODE_DIR/admin.kubeconfig")
    local i
    for i in $(seq 120); do
        "${kubectl[@]}" get --raw /readyz >/dev/null 2>&1 && break
        alive kube-apiserver || die "kube-apiserver exited; see $LOGS/kube-apiserver.log"
        sleep 0.5
    done
    "${kubectl[@]}" get --raw /readyz >/dev/null || die "kube-apiserver not ready; see $LOGS/kube-apiserver.log"

    spawn kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig="$NODE_DIR/controller-manager.kubeconfig" --secure-port=0 --leader-elect=false \
        --use-service-account-credentials=true --service-account-private-key-file="$PKI/sa.key" \
        --root-ca-file="$PKI/ca.crt" --cluster-signing-cert-file="$PKI/ca.crt" \
        --cluster-signing-key-file="$PKI/ca.key" --flex-volume-plugin-dir="$NODE_DIR/kubelet/flexvolume" \
        --controllers='*,-nodeipam,-cloud-node-lifecycle'
    spawn kube-scheduler "$bin/kube-scheduler" --kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
        --secure-port=0 --leader-elect=false
    # The nodes' primary CNI networks.
    primary_cni "$CNI_CONF_DIR" "$CNI_BIN_DIR" "$BRIDGE" "$NODE_IP" "$POD_CIDR" "$NODE_DIR/cni-ipam"
    start_node "$node" "" "$NODE_IP" "$POD_CIDR" "$NODE_DIR" /
    local names=("$node")
    printf '%s %s %s\n' "$node" "$CNI_CONF_DIR" "$CNI_BIN_DIR" >"$NODE_DIR/nodes"
    if ((NODES > 1)); then
        local holder n2=$NODE_DIR/node2
        holder=$(node2_namespaces)
        primary_cni "$n2/host/$(node2_folder "$CNI_CONF_DIR")" "$n2/host/$(node2_folder "$CNI_BIN_DIR")" \
            "$NODE2_BRIDGE" "$NODE2_IP" "$NODE2_POD_CIDR" "$n2/cni-ipam"
        start_node "$NODE2_NAME" -2 "$NODE2_IP" "$NODE2_POD_CIDR" "$n2" "/$NODE2_CGROUP" \
            nsenter -t "$holder" -m -n
        names+=("$NODE2_NAME")
        printf '%s %s %s\n' "$NODE2_NAME" "$n2/host/$(node2_folder "$CNI_CONF_DIR")" \
            "$n2/host/$(node2_folder "$CNI_BIN_DIR")" >>"$NODE_DIR/nodes"
    fi
    local n
    for n in "${names[@]}"; do
        for i in $(seq 120); do
            "${kubectl[@]}" get node "$n" 2>/dev/null | grep -qw Ready && break
            alive kubelet || die "kubelet exited; see $LOGS/kubelet.log"
            ((NODES < 2)) || alive kubelet-2 || die "kubelet-2 exited; see $LOGS/kubelet-2.log"
            sleep 1
        done
        "${kubectl[@]}" get node "$n" | grep -qw Ready || die "node $n is not Ready; see $LOGS/kubelet*.log"
    done
    # The default service account appears shortly after the namespace.
    for i in $(seq 60); do
        "${kubectl[@]}" get serviceaccount default >/dev/null 2>&1 && break
        sleep 0.5
    done
    # Cluster DNS.
    import "$(coredns_image)"
    for i in $(seq 60); do
        "${kubectl[@]}" -n kube-system get serviceaccount default >/dev/null 2>&1 && break
        sleep 0.5
    done
    "${kubectl[@]}" apply -f "$HERE/coredns.yaml" >/dev/null
    "${kubectl[@]}" -n kube-system rollout status deploy/coredns --timeout=120s >&2 \
        || die "CoreDNS did not become ready; see $LOGS/kubelet.log"
    if [[ -n ${WEFT_NODE_OWNER:-} ]]; then
        # Test processes cannot always run their cleanup; this watchdog
        # brings the node down when its owner is gone, however it ended.
        WEFT_NODE=$NODE_DIR setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down' \
            watchdog "$WEFT_NODE_OWNER" "$(realpath "$0")" </dev/null >/dev/null 2>&1 &
    fi
    log "node $node is Ready; export KUBECONFIG=$NODE_DIR/admin.kubeconfig (kubectl: $bin/kubectl)"
}

import_into() { # SOCKET IMAGE.tar
    ctr --address "$1" -n k8s.io images import --no-unpack=false "$2" >/dev/null
}

import() {
    local archive=${1:?usage: node.sh import IMAGE.tar} socket
    for socket in "$RUN"/containerd*.sock; do import_into "$socket" "$archive"; done
}

tag() {
    local image=${1:?usage: node.sh tag IMAGE NEW} new=${2:?usage: node.sh tag IMAGE NEW} socket
    for socket in "$RUN"/containerd*.sock; do
        ctr --address "$socket" -n k8s.io images tag --force "$image" "$new" >/dev/null
    done
}

alive() { [[ -e $RUN/$1.pid ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

stop_process() {
    alive "$1" || { rm -f "$RUN/$1.pid"; return 0; }
    local pid i
    pid=$(cat "$RUN/$1.pid")
    kill "$pid"
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$RUN/$1.pid"
}

down() {
    [[ -d $RUN ]] || { log "no node in $NODE_DIR"; return 0; }
    local bin kubectl
    bin=$("$HERE/apiserver.sh" bin-dir)
    kubectl=("$bin/kubectl" --kubeconfig "$NODE_DIR/admin.kubeconfig" --request-timeout=10s)
    # Pods go through the kubelet first, so CNI DEL and unmounts run.
    if alive kubelet && alive kube-apiserver; then
        "${kubectl[@]}" delete pods --all-namespaces --all --grace-period=2 --wait=false >/dev/null 2>&1 || true
        local i
        for i in $(seq 30); do
            [[ -z $("${kubectl[@]}" get pods -A -o name 2>/dev/null) ]] && break
            sleep 1
        done
    fi
    local p suffix
    for p in kubelet kubelet-2 kube-proxy kube-proxy-2 kube-scheduler kube-controller-manager kube-apiserver etcd; do
        stop_process "$p"
    done
    # kube-proxy's chains and rules, from its own cleanup (node 2's go with
    # its network namespace).
    [[ -x $bin/kube-proxy ]] && "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
    local c
    for suffix in "" -2; do
        local ctr=(ctr --address "$RUN/containerd$suffix.sock" -n k8s.io)
        alive "containerd$suffix" || continue
        for c in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$c" 2>/dev/null || true; done
        sleep 0.5
        for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do
            "${ctr[@]}" tasks delete -f "$c" >/dev/null 2>&1 || true
            "${ctr[@]}" containers delete "$c" >/dev/null 2>&1 || true
        done
        stop_process "containerd$suffix"
    done
    # Shims of these nodes' containerds, known by the socket in their command line.
    for p in /proc/[0-9]*; do
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "-address $RUN/containerd" && kill -9 "${p#/proc/}" 2>/dev/null || true
    done
    # Node 2: its mount namespace goes with its last process; then its
    # network namespace, underlay link and cgroup root.
    stop_process mounts-2
    ip netns delete "$NODE2_NETNS" 2>/dev/null || true
    ip link del "$UNDERLAY_LINK" 2>/dev/null || true
    for p in /sys/fs/cgroup/*/"$NODE2_CGROUP"; do
        [[ -d $p ]] && find "$p" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    # Pod namespaces node 1's containerd made (cni-*), then its bridge and route.
    for p in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do ip netns delete "$p" 2>/dev/null || true; done
    ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
    ip link del "$BRIDGE" 2>/dev/null || true
    # Anything bound from this node's folders (none should be, here).
    awk -v dir="$NODE_DIR/" 'index($4, dir) == 1 {print $5}' /proc/self/mountinfo | sort -r \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    awk -v re="^($NODE_DIR|/var/lib/kubelet|/run/containerd)/" '$5 ~ re {print $5}' /proc/self/mountinfo | sort -r \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    for p in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [[ -d $p ]] && find "$p" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    for p in "${HOST_PATHS[@]}"; do
        grep -qxF "$p" "$RUN/paths.before" 2>/dev/null || rm -rf "$p"
    done
    if [[ -s $RUN/sysctl.before ]]; then
        paste -d= <(printf '%s\n' "${SYSCTLS[@]}") "$RUN/sysctl.before" | while read -r kv; do sysctl -qw "$kv" || true; done
    fi
    rm -rf "$NODE_DIR"
    log "down"
}

status() {
    local p
    for p in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy containerd kubelet \
        mounts-2 kube-proxy-2 containerd-2 kubelet-2; do
        if alive "$p"; then echo "$p: running ($(cat "$RUN/$p.pid"))"; else echo "$p: stopped"; fi
    done
}

case ${1:-} in
    build) build ;;
    up) up ;;
    import) import "${2:-}" ;;
    tag) tag "${2:-}" "${3:-}" ;;
    down) down ;;
    status) status ;;
    *) die "usage: node.sh build | up | import IMAGE.tar | tag IMAGE NEW | down | status" ;;
esac
