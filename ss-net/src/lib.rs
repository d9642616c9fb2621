//! Runtime pieces both Shadowsocks binaries share: the accept loop with its limits ([`accept`]) and the
//! two-way relay with half-close and idle timeout ([`relay`]), and the bounded asynchronous resolver
//! (`resolve`, feature `resolve`). Protocol code lives in `ss-crypto`;
//! policy (what to accept, where to connect) lives in each binary. [`plugin`] runs SIP003 plugins for both.

#![warn(missing_docs)]

pub mod accept;
pub mod plugin;
pub mod pooled;
pub mod process;
pub mod relay;
#[cfg(feature = "resolve")]
pub mod resolve;
pub mod window;
pub mod workers;

pub use accept::{bind_tcp, serve, Limits, Slot};
pub use pooled::PooledReader;
pub use relay::{abort, relay, RelayEnd, RelayOutcome};
#[cfg(feature = "resolve")]
pub use resolve::{ResolveError, ResolveSettings, Resolver};
pub use window::{unmap, PacketWindow};
pub use workers::Workers;
