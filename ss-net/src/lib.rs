//! Runtime pieces both Shadowsocks binaries share. Protocol code lives in `ss-crypto` (pure: no clock,
//! no sockets, no global state); policy (what to accept, where to connect) lives in each binary.
//!
//! - [`acl`]: the ACL file both binaries route and filter by, swapped whole on SIGHUP.
//! - [`accept`]: the accept loop with its connection cap, back-off and drain.
//! - [`workers`]: thread per core, connections placed on the least loaded runtime.
//! - [`stream`]: [`DecryptReader`] / [`EncryptWriter`], ss-crypto's TCP state machines over async sockets.
//! - [`buffer`] and [`pooled`]: per-thread read buffers held only while bytes are in flight.
//! - [`sealing`]: [`SealingReader`], plaintext read into the gaps of its records and sealed in place.
//! - [`mod@relay`]: the two-way relay with half-close and idle timeout.
//! - [`udp_batch`]: many UDP datagrams per system call (recvmmsg with GRO, GSO sends).
//! - [`window`]: the AEAD-2022 UDP packet-id replay window.
//! - [`addr`]: socket addresses in canonical (unmapped IPv4) form.
//! - [`socket_options`]: Fast Open, SO_REUSEPORT, MPTCP, no-delay and keep-alive, set in one place.
//! - [`happy_eyeballs`]: RFC 8305 connection racing over a name's addresses.
//! - [`clock`]: the wall clock in Unix seconds, for AEAD-2022 timestamps.
//! - [`process`]: log setup, the descriptor limit, the shutdown signal, readiness for systemd.
//! - [`check`]: `--check`'s report: the open-file limit, then each binary's own checks.
//! - `resolve` (feature `resolve`): the bounded asynchronous resolver.
//! - [`metrics_http`] and [`metrics_process`]: the Prometheus endpoint and the process's own metrics
//!   (descriptors, build).
//! - [`plugin`]: SIP003 plugins for both binaries: start, readiness, restart with backoff, die with us.

#![warn(missing_docs)]

pub mod accept;
pub mod acl;
pub mod addr;
pub mod buffer;
pub mod check;
pub mod clock;
pub mod hangup;
pub mod happy_eyeballs;
pub mod metrics_http;
pub mod metrics_process;
pub mod plugin;
pub mod pooled;
pub mod process;
pub mod relay;
#[cfg(feature = "resolve")]
pub mod resolve;
pub mod sealing;
pub mod socket_options;
pub mod stream;
pub mod udp_batch;
pub mod window;
pub mod workers;

pub use accept::{accept_loop, bind_tcp, Limits, Slot};
pub use acl::SharedAcl;
pub use addr::canonical_addr;
pub use clock::unix_now;
pub use pooled::PooledReader;
pub use relay::{abort, relay, RelayEnd, RelayOutcome};
#[cfg(feature = "resolve")]
pub use resolve::{ResolveError, ResolveSettings, Resolver};
pub use sealing::SealingReader;
pub use socket_options::SocketOptions;
pub use stream::{DecryptReader, EncryptWriter};
pub use window::PacketWindow;
pub use workers::Workers;
