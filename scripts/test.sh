#!/usr/bin/env bash
# The project's test command: formatting, lints (both AEAD backends), docs, unit, property and known-answer
# tests, the benchmark smoke run, and the fuzz targets over their corpus for a bounded time.
# Needs: the Rust toolchain (rustfmt, clippy), the shared vectors beside the repo (../shared/vectors or
# SS_VECTORS_DIR), and cargo-fuzz (bash .ci/run installs everything).
#
# Tests that need something from outside the repository (peer binaries, Chromium, root) print a line
# starting with "SKIPPED:" when it is missing (tests/src/skip.rs); cargo still reports them as ok, so the
# summary at the end lists them. With CI set (.ci/run sets it) they fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
# Runs a test command, its output also kept for the skip summary.
run_tests() { "$@" 2>&1 | tee -a "$test_log"; }

step "format"
cargo fmt --all -- --check

step "clippy (default build: ring backend)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "clippy (RustCrypto backend)"
cargo clippy -p ss-crypto --no-default-features --all-targets --locked -- -D warnings

step "docs (broken or private intra-doc links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --locked

step "tests (ring backend)"
run_tests cargo test --workspace --locked

step "tests (RustCrypto backend)"
run_tests cargo test -p ss-crypto --no-default-features --locked

step "fuzz targets over their corpus (${FUZZ_SECONDS:-30}s each)"
bash .ci/fuzz.sh

step "summary"
skipped=$(grep -o 'SKIPPED: .*' "$test_log" | sort -u || true)
if [ -n "$skipped" ]; then
    printf '%s\n' "$skipped"
    echo "every test that ran passed; $(printf '%s\n' "$skipped" | wc -l) SKIPPED, listed above (cargo counts them as passed)"
else
    echo "all tests passed; none skipped"
fi
