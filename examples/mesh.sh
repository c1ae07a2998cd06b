#!/usr/bin/env bash
# Runs the mesh on one machine: two nodes and three pods as network
# namespaces, wired by real CNI plugins plus weft-cni, each pod with a real
# weft-proxy, and shows traffic by name flowing through the proxies and
# across the nodes as mTLS only. Pass --keep to leave it running until
# Ctrl-C. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
./tests/deps.sh
cargo build --locked --release --bins
exec ./target/release/weft-mesh demo "$@"
