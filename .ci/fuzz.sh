#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ once, then runs each for a bounded time starting from its
# committed seeds (fuzz/corpus/<target>/seed-*). Exits non-zero on the first crash; libFuzzer saves
# the input under fuzz/artifacts/<target>/ and cargo-fuzz prints how to reproduce it.
#
#   FUZZ_SECONDS  seconds per target (default 30)
#   FUZZ_TARGETS  space-separated targets to run (default: all, from `cargo fuzz list`)
#
# New inputs found during a run go to a scratch directory, so the work tree stays clean.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address); stable rustc accepts them with this set
# and ships the ASan runtime. Harmless on nightly.
export RUSTC_BOOTSTRAP=1

build_start=$SECONDS
cargo fuzz build
echo "fuzz: built all targets in $((SECONDS - build_start)) s"

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for target in $targets; do
    mkdir -p "$scratch/$target"
    seeds=()
    if [[ -d "corpus/$target" ]]; then seeds=("corpus/$target"); fi
    run_start=$SECONDS
    # The first corpus directory receives new inputs; the committed one is only read.
    cargo fuzz run "$target" "$scratch/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1 2>"$scratch/$target.log" || {
        grep -vE '^#[0-9]+' "$scratch/$target.log" >&2 # all but the progress lines
        echo "fuzz: $target FAILED" >&2
        exit 1
    }
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$target.log")"
    echo "fuzz: $target ok, ${runs:-?} runs in $((SECONDS - run_start)) s"
done
