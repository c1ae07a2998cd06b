#!/usr/bin/env bash
# The whole test suite: lints, one optimised build shared by every test (the
# `ci` profile: release without LTO), the unit tests and the end-to-end tests
# in network namespaces (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
./tests/deps.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== Grafana dashboards match their generator"
python3 examples/grafana/generate.py --check
echo "== Gateway API CRDs match the pinned module"
./tests/kube/gateway-api/crds.sh --check
echo "== cargo clippy (the fuzz targets too)"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== build (profile ci, shared by all tests)"
cargo build --locked --profile ci --bins
# Built from the Go module proxy once per version, cached outside the clone
# (/var/cache/weft-kube): on a cold 2-core machine about 9 min for
# Kubernetes, 6 for CoreDNS, 6 for Prometheus and 8.5 for the conformance
# suite with its echo app; seconds once cached.
echo "== Kubernetes $(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' tests/kube/go/go.mod) and CoreDNS for the Kubernetes tests"
started=$SECONDS
./tests/kube/node.sh build
echo "== Prometheus (upstream, with Kubernetes service discovery)"
./tests/kube/gobuild.sh prometheus
echo "== the Gateway API conformance suite and its echo app (Istio's)"
for tool in gateway-api-conformance echo-server echo-client; do
    ./tests/kube/gobuild.sh "$tool" >/dev/null
done
echo "Go builds took $((SECONDS - started)) s"
echo "== benchmark smoke run (figures are not checked; see README)"
./target/ci/weft-mesh bench --duration 1 >/dev/null
echo "benchmark ran"
log=$(mktemp)
fuzz_log=$(mktemp)
trap 'rm -f "$log" "$fuzz_log"' EXIT
echo "== fuzzing (tests/fuzz.sh, every target ${WEFT_FUZZ_SECONDS:-20} s, beside the tests at the lowest priority)"
# The end-to-end tests leave most of the CPU idle while they wait on the
# network; the fuzzers take what is left, and give it back when asked.
nice -n 19 ./tests/fuzz.sh "${WEFT_FUZZ_SECONDS:-20}" >"$fuzz_log" 2>&1 &
fuzz_pid=$!
echo "== tests"
# End-to-end tests mostly wait on the network, so run more of them at once
# than there are cores; each builds its own namespaces. (No doctests: the
# crates have no examples in their docs. The default members: all but the
# fuzz targets.)
set +e
cargo test --locked --profile ci --no-fail-fast --lib --bins --tests -- --test-threads=6 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
started=$SECONDS
wait "$fuzz_pid"
fuzz_status=$?
set -e
echo "== fuzzing results (waited $((SECONDS - started)) s for them after the tests)"
if ((fuzz_status == 0)); then
    grep '^fuzz:' "$fuzz_log"
else
    tail -100 "$fuzz_log"
    status=1
fi
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .*; ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo "total: $passed passed, $failed failed"
exit "$status"
