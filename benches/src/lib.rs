//! Benchmarks of the workspace, as criterion targets under `benches/`; this library is empty.
//!
//! - `crypto`: ss-crypto's TCP framing and UDP datagrams against the bare AEAD primitives
//!   (`cargo bench -p ss-benches --bench crypto`; `crypto-summary.sh` turns the results into a table).
