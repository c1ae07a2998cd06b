#!/usr/bin/env bash
# Runs every cargo-fuzz (libFuzzer) target for a bounded time:
#
#   tests/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 20); TARGETs narrow the run (default: all of
# them, in every crate's fuzz/ folder). Each target starts from its seed
# corpus (<crate>/fuzz/corpus/<target>/) and writes what it learns to a
# scratch corpus, so the seeds stay as committed. A crash stops the run;
# libFuzzer leaves the input in <crate>/fuzz/artifacts/<target>/. Keep it
# as a regression test (see the README's Reliability section).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
shift || true
dirs=(controller/api/fuzz proxy/fuzz cni/fuzz injector/fuzz controller/fuzz)

# libFuzzer's instrumentation needs nightly flags; the rest of the project
# builds on the pinned stable toolchain.
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: installing a nightly toolchain for cargo-fuzz" >&2
    rustup toolchain install nightly --profile minimal >&2
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz@0.13.2 >&2
fi

# No address sanitizer: the project forbids unsafe code and its C
# dependencies are not instrumented by it anyway, so what ASan would add
# is a slower build and half the executions. Debug assertions and overflow
# checks stay on (cargo-fuzz's default). A target dir of its own, so this
# can run beside the test build without waiting on its lock.
flags=(--sanitizer none --codegen-units 16 --target-dir target/fuzz)
# cargo-fuzz builds the release profile; without this each target binary
# would be thin-LTO-linked on its own, minutes apiece.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

wanted() {
    [[ $# -eq 1 ]] && return 0
    local target=$1
    shift
    printf '%s\n' "$@" | grep -qx "$target"
}

total=0
count=0
for dir in "${dirs[@]}"; do
    cargo +nightly fuzz build "${flags[@]}" --fuzz-dir "$dir" >&2
    for target in $(cargo +nightly fuzz list --fuzz-dir "$dir"); do
        wanted "$target" "$@" || continue
        mkdir -p "$scratch/$target"
        log="$scratch/$target.log"
        if ! cargo +nightly fuzz run "${flags[@]}" --fuzz-dir "$dir" "$target" \
            "$scratch/$target" "$dir/corpus/$target" \
            -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
            grep -A12 -m1 "panicked\|ERROR" "$log" || true
            tail -30 "$log"
            echo "fuzz: $dir $target FAILED; the input is in $dir/artifacts/$target/"
            exit 1
        fi
        runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
        echo "fuzz: $dir $target: ${runs:-0} executions in ${seconds} s, no crash"
        total=$((total + ${runs:-0}))
        count=$((count + 1))
    done
done
echo "fuzz: $count targets, $total executions, no crash"
