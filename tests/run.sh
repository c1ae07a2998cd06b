#!/usr/bin/env bash
# The whole test suite: lints, one release build shared by every test, the
# unit tests and the end-to-end tests in network namespaces (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
./tests/deps.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== build (release, shared by all tests)"
cargo build --locked --release --bins
echo "== tests"
# End-to-end tests mostly wait on the network, so run more of them at once
# than there are cores; each builds its own namespaces.
cargo test --locked --release --workspace -- --test-threads=6
echo "== benchmark smoke run (figures are not checked; see README)"
./target/release/weft-mesh bench --duration 1 >/dev/null
echo "benchmark ran"
