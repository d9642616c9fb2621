//! The Shadowsocks server: decrypts each client connection, checks it (authentication, replay, target
//! policy), resolves and connects to the target, and relays both ways.
//!
//! [`run`] takes already-bound listeners and a cancellation token, so tests start a server in-process on
//! port 0 and stop it when they are done. `main.rs` only turns the command line and config file into
//! [`Settings`].

#![warn(missing_docs)]

mod connection;
pub mod policy;
pub mod replay;
pub mod replay_snapshot;
mod udp;
pub mod udp_replay;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use ss_crypto::{Key, Method};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use policy::TargetPolicy;
use replay::ReplayFilter;

/// Everything the server needs to know, checked and typed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Encryption method.
    pub method: Method,
    /// Master key (password-derived for classic methods, the PSK for 2022).
    pub key: Key,
    /// Which targets may be connected to.
    pub policy: TargetPolicy,
    /// Time from accept within which the request header must arrive; also when rejected
    /// connections are closed.
    pub handshake_timeout: Duration,
    /// Time allowed for resolving and connecting to a target.
    pub connect_timeout: Duration,
    /// A relayed connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections served at once per listener; further clients wait in the backlog.
    pub max_connections: usize,
    /// At shutdown, how long open connections may take to finish.
    pub drain_timeout: Duration,
    /// Set TCP_NODELAY on both sockets of a relay.
    pub no_delay: bool,
    /// Classic salts remembered by the replay filter (see [`replay`]).
    pub replay_capacity: usize,
    /// Where the classic replay filter is saved and loaded from ([`replay_snapshot`]); `None` keeps it
    /// in memory only. Unused for 2022 methods.
    pub replay_snapshot: Option<PathBuf>,
    /// A UDP association with no datagram either way for this long is dropped.
    pub udp_timeout: Duration,
    /// Most UDP associations at once; beyond it the least recently used is evicted.
    pub max_udp_associations: usize,
    /// Counters the server keeps up to date (tests and diagnostics read them).
    pub stats: Arc<Stats>,
    /// Threads TCP connections are spread over, the caller's included ([`ss_net::Workers`]); 1 runs
    /// everything on the caller's runtime.
    pub threads: usize,
}

/// Live counters of a running server.
#[derive(Debug, Default)]
pub struct Stats {
    /// UDP associations (NAT entries) currently open.
    pub udp_associations: AtomicUsize,
    /// Client request salts entered into the replay filter (each at the moment its first record
    /// authenticated).
    pub salts_recorded: AtomicU64,
}

/// The sockets a server serves on: TCP listeners and UDP sockets.
#[derive(Debug, Default)]
pub struct Listeners {
    /// TCP listeners.
    pub tcp: Vec<TcpListener>,
    /// UDP sockets (empty when UDP is off).
    pub udp: Vec<UdpSocket>,
}

impl Settings {
    /// Settings with the defaults of a production server for `method` and `key`.
    pub fn new(method: Method, key: Key) -> Settings {
        Settings {
            method,
            key,
            policy: TargetPolicy::PublicOnly,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(5),
            no_delay: true,
            replay_capacity: replay::DEFAULT_CLASSIC_CAPACITY,
            replay_snapshot: None,
            udp_timeout: Duration::from_secs(300),
            max_udp_associations: 4096,
            stats: Arc::default(),
            threads: 1,
        }
    }
}

/// State shared by every connection of a server.
#[derive(Debug)]
struct Shared {
    settings: Settings,
    replay: ReplayFilter,
    /// Cancelled at shutdown; connections still in their handshake stop at once.
    shutdown: CancellationToken,
}

/// Serves TCP and UDP on every listener until `shutdown` is cancelled, then lets open TCP connections
/// finish for the drain time and returns.
pub async fn run(settings: Settings, listeners: Listeners, shutdown: CancellationToken) {
    let replay = ReplayFilter::new(
        &settings.key,
        settings.method.generation(),
        settings.replay_capacity,
        settings.handshake_timeout,
    );
    let method = settings.method;
    let snapshot = settings.replay_snapshot.clone().filter(|_| !method.is_2022());
    if let Some(path) = &snapshot {
        replay_snapshot::load(path, method, &replay);
    }
    let limits = ss_net::Limits { max_connections: settings.max_connections, drain: settings.drain_timeout };
    let workers = ss_net::Workers::start(settings.threads);
    let shared = Arc::new(Shared { settings, replay, shutdown: shutdown.clone() });
    let mut servers = tokio::task::JoinSet::new();
    for socket in listeners.udp {
        if let Ok(addr) = socket.local_addr() {
            tracing::info!(%addr, method = %shared.settings.method, "listening (UDP)");
        }
        servers.spawn(udp::serve(socket, shared.clone(), shutdown.clone()));
    }
    for listener in listeners.tcp {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, method = %shared.settings.method, "listening (TCP)");
        }
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let workers = workers.clone();
        servers.spawn(async move {
            ss_net::serve(listener, limits, &workers, shutdown, move |stream, peer, slot| {
                connection::handle(stream, peer, shared.clone(), slot)
            })
            .await;
        });
    }
    if let Some(path) = snapshot.clone() {
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        servers.spawn(async move {
            replay_snapshot::save_periodically(&shared.replay, method, &path, shutdown).await;
        });
    }
    while servers.join_next().await.is_some() {}
    // After the drain: every salt a connection recorded is in the snapshot.
    if let Some(path) = snapshot {
        replay_snapshot::save(&shared.replay, method, &path).await;
    }
}
