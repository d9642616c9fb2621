//! Benchmarks of the workspace.
//!
//! - `crypto` (criterion, under `benches/`): ss-crypto's TCP framing and UDP datagrams against the bare
//!   AEAD primitives (`cargo bench -p ss-benches --bench crypto`; `crypto-summary.sh` turns the results
//!   into a table).
//! - `proxy-bench` (a binary, `src/bin/proxy-bench.rs`, library code in [`proxy`]): our server and local
//!   against shadowsocks-rust and shadowsocks-libev as subprocesses, side by side (`proxy-bench.sh`).

pub mod proxy;
