#!/usr/bin/env bash
# Installs what building and running Weft's mesh on one machine needs, from
# Debian's packages. Safe to run again: it installs only what is missing.
# (Prometheus, CoreDNS and Kubernetes are built from their Go modules, on
# first use, by tests/kube/gobuild.sh and tests/kube/apiserver.sh.)
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "weft: run this as root (it creates network namespaces and installs packages)" >&2
    exit 1
fi

# package -> a file it provides
declare -A wanted=(
    [containernetworking-plugins]=/usr/lib/cni/bridge
    [nftables]=/usr/sbin/nft
    [iproute2]=/usr/sbin/ip
    [util-linux]=/usr/bin/setpriv
    [protobuf-compiler]=/usr/bin/protoc
    [haproxy]=/usr/sbin/haproxy
    [wrk]=/usr/bin/wrk
    [curl]=/usr/bin/curl
    [procps]=/usr/bin/pgrep
    [tcpdump]=/usr/bin/tcpdump
    [python3]=/usr/bin/python3
    [openssl]=/usr/bin/openssl
)
missing=()
for pkg in "${!wanted[@]}"; do
    [[ -e ${wanted[$pkg]} ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "weft: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # haproxy's package starts a system instance where systemd runs; the
    # benchmark starts its own.
    for unit in haproxy; do
        if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
            systemctl stop "$unit" || true
        fi
    done
fi

if ! command -v cargo >/dev/null; then
    echo "weft: cargo not found; install Rust (rustup) first" >&2
    exit 1
fi
if ! command -v go >/dev/null; then
    echo "weft: go not found; install Go 1.26 first (Kubernetes, CoreDNS and Prometheus are built from their Go modules)" >&2
    exit 1
fi
# NAT redirect needs these; they load on demand on most kernels, this makes
# a missing one fail here with a clear message instead of in a test.
for mod in nf_tables nf_nat nft_redir nf_conntrack; do
    modprobe -q "$mod" 2>/dev/null || true
done
