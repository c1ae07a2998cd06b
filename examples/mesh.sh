#!/usr/bin/env bash
# Runs the mesh on one machine: a node and two pods as network namespaces,
# wired by real CNI plugins plus weft-cni, each pod with a real weft-proxy,
# and shows traffic flowing through both proxies. Pass --keep to leave it
# running until Ctrl-C. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
./tests/deps.sh
cargo build --locked --release --bins
exec ./target/release/weft-mesh demo "$@"
