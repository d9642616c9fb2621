//! `proxy-bench`: our `ss-server` + `ss-local` next to shadowsocks-rust's and shadowsocks-libev's, each
//! pair started as subprocesses on loopback and driven by one load generator, interleaved per method and
//! round, figures reported as medians with ratios of ours to each peer.
//!
//! - [`process`]: finding the binaries, starting a pair, CPU time and RSS from `/proc`.
//! - [`targets`]: the in-process loopback servers the tunnel leads to (bulk source/sink, echo, UDP echo).
//! - [`socks5`]: the load generator's SOCKS5 client; [`http_connect`]: its HTTP CONNECT client.
//! - [`workloads`]: the measurements; [`volume`]: those at volume (UDP at rising rates, many busy
//!   connections, busy ones in an idle crowd).
//! - [`suite`]: the order of the run and the workload sizes.
//! - [`report`]: medians, ratios and the markdown report.

pub mod http_connect;
pub mod process;
pub mod report;
pub mod socks5;
pub mod suite;
pub mod targets;
pub mod volume;
pub mod workloads;
