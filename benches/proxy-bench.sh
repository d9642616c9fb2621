#!/usr/bin/env bash
# Builds our ss-server and ss-local and the proxy-bench binary in release mode, then runs proxy-bench under
# `nice` (the proxies it starts inherit the niceness). Arguments go to proxy-bench (`--help` lists them).
#
#   benches/proxy-bench.sh                              # full suite, 3 runs: benches/results/latest.md
#   benches/proxy-bench.sh --quick --out /tmp/x.md      # smoke run, about 30 s once built
#   benches/proxy-bench.sh --methods aes-128-gcm --runs 5
#
# To measure another build of ours (a clean checkout of a commit, say), pass --ours-dir DIR (and
# --ours-label TEXT to name it in the report).
#
# Without --out, a full run writes benches/results/latest.md (a --quick run only prints its table).
# shadowsocks-libev (Debian package) and shadowsocks-rust (`cargo install shadowsocks-rust`) are measured
# when installed; a missing one leaves its column empty. The report goes to stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p ss-server -p ss-local -p ss-benches --bins >&2

target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

has_out=0
quick=0
ours_elsewhere=0
for arg in "$@"; do
    case "$arg" in
        --out | --out=*) has_out=1 ;;
        --quick) quick=1 ;;
        --ours-dir | --ours-dir=* | --ours-label | --ours-label=*) ours_elsewhere=1 ;;
    esac
done
if [ "$has_out" = 0 ] && [ "$quick" = 0 ]; then
    set -- "$@" --out benches/results/latest.md
fi
# Say which tree our binaries come from ("-dirty": uncommitted changes were built too).
if [ "$ours_elsewhere" = 0 ] && tree=$(git describe --always --dirty 2>/dev/null); then
    set -- "$@" --ours-label "built from $tree"
fi

exec nice -n 10 "$target_dir/release/proxy-bench" "$@"
