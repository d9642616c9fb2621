#!/usr/bin/env bash
# The project's test command: formatting, lints (both AEAD backends), unit, property and known-answer
# tests, the benchmark smoke run, and the fuzz targets over their corpus for a bounded time.
# Needs: the Rust toolchain (rustfmt, clippy), the shared vectors beside the repo (../shared/vectors or
# SS_VECTORS_DIR), and cargo-fuzz (bash .ci/run installs everything).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "clippy (default build: ring backend)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "clippy (RustCrypto backend)"
cargo clippy -p ss-crypto --no-default-features --all-targets --locked -- -D warnings

step "tests (ring backend)"
cargo test --workspace --locked

step "tests (RustCrypto backend)"
cargo test -p ss-crypto --no-default-features --locked

step "fuzz targets over their corpus (${FUZZ_SECONDS:-30}s each)"
bash .ci/fuzz.sh
