#!/usr/bin/env bash
# Runs the `crypto` benchmark briefly and prints its results as markdown tables on stdout (cargo's and
# criterion's own output go to stderr). Extra arguments go to criterion, e.g. a filter: `tcp-16KiB`.
#
#   benches/crypto-summary.sh > crypto.md
#
# Numbers are criterion's median time per iteration, turned into decimal MB/s of payload (criterion's
# console shows binary MiB/s or GiB/s). Short runs on a shared machine move by several percent; compare
# runs on the same machine, not across machines.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
nice cargo bench -p ss-benches --bench crypto -- --warm-up-time 1 --measurement-time 3 "$@" >&2

target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

python3 - "$target_dir/criterion" "$started" <<'EOF'
import json
import sys
from pathlib import Path

criterion_dir, started = Path(sys.argv[1]), int(sys.argv[2])

# (group, function, method) -> (median ns per iteration, payload bytes per iteration); only results of
# this run, so a filtered run does not mix in old numbers.
results = {}
for info_path in criterion_dir.glob("**/new/benchmark.json"):
    estimates_path = info_path.with_name("estimates.json")
    if estimates_path.stat().st_mtime < started:
        continue
    info = json.loads(info_path.read_text())
    median_ns = json.loads(estimates_path.read_text())["median"]["point_estimate"]
    payload = (info.get("throughput") or {}).get("Bytes")
    results[(info["group_id"], info["function_id"], info["value_str"])] = (median_ns, payload)


def mb_per_s(key):
    if key not in results:
        return None
    ns, payload = results[key]
    return payload / ns * 1e3  # bytes per ns -> MB/s


def cell(value, fmt="{:,.0f}"):
    return "n/a" if value is None else fmt.format(value)


def methods(group):
    # Classic methods first, then 2022: the order of `Method::ALL`.
    names = {method for (g, _, method) in results if g == group}
    return sorted(names, key=lambda name: (name.startswith("2022-"), name))


tcp = "tcp-16KiB"
if methods(tcp):
    print("TCP, 16 KiB payload per iteration (seal + open):\n")
    print("| method | framing MB/s | raw ring MB/s | raw rustcrypto MB/s | framing overhead vs raw ring (%) |")
    print("|---|---:|---:|---:|---:|")
    for method in methods(tcp):
        framing, ring, rustcrypto = (mb_per_s((tcp, f, method)) for f in ("framing", "raw-ring", "raw-rustcrypto"))
        # Extra time per byte that the framing costs over the bare ring primitive.
        overhead = None if framing is None or ring is None else (ring / framing - 1) * 100
        print(f"| {method} | {cell(framing)} | {cell(ring)} | {cell(rustcrypto)} | {cell(overhead, '{:+.1f}')} |")

udp = "udp-1200B"
if methods(udp):
    print("\nUDP, one datagram with 1200 bytes of payload (seal + open):\n")
    print("| method | µs per datagram | MB/s |")
    print("|---|---:|---:|")
    for method in methods(udp):
        key = (udp, "seal+open", method)
        print(f"| {method} | {cell(results[key][0] / 1e3, '{:.2f}')} | {cell(mb_per_s(key))} |")
EOF
