#!/usr/bin/env bash
# Writes packaging/man/ss-server.1 and ss-local.1 from the binaries' own `--man-page` (ss-config/src/man.rs).
# Run after changing a flag or a page's text; tests/tests/packaging.rs fails while they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p ss-server -p ss-local
for binary in ss-server ss-local; do
    "target/debug/$binary" --man-page >"packaging/man/$binary.1"
done
echo "packaging/man: ss-server.1 and ss-local.1 written"
