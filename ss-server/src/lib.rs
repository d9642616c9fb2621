//! The Shadowsocks server: decrypts each client connection, checks it (authentication, replay, target
//! policy), resolves and connects to the target, and relays both ways.
//!
//! [`run`] takes already-bound listeners and a cancellation token, so tests start a server in-process on
//! port 0 and stop it when they are done. `main.rs` parses the command line and config file, and
//! [`Settings::from_config`] turns them into the [`Settings`] of each server entry; the entries of one
//! process share one set of worker threads ([`run_on`]). Two management interfaces run beside the
//! servers: libev's ss-manager protocol, which adds and removes whole ports ([`manage`]), and the Server
//! Management API over HTTP, which manages the users of multi-user entries ([`api`]).

#![warn(missing_docs)]

pub mod accounting;
pub mod admission;
pub mod api;
pub mod check;
mod connection;
mod from_config;
pub mod limits;
pub mod listen;
pub mod manage;
pub mod metered;
pub mod metrics;
mod own_addresses;
pub mod policy;
pub mod quota;
pub mod rejections;
pub mod replay;
pub mod replay_snapshot;
mod udp;
pub mod udp_replay;
pub mod usage_store;
pub mod users;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use ss_crypto::{Key, Method};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use admission::Admission;
pub use policy::{AddressGuard, OwnAddresses, TargetPolicy};
use rejections::Rejections;
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
    /// connections are closed. Shorter under pressure (see [`admission`]).
    pub handshake_timeout: Duration,
    /// Most connections from one source (IPv4 address, IPv6 /64) in their handshake at once.
    pub max_handshakes_per_source: usize,
    /// Time allowed for connecting to a target, over all its addresses raced by Happy Eyeballs (name
    /// lookups are bounded by [`ResolveSettings::timeout`](ss_net::ResolveSettings::timeout)).
    pub connect_timeout: Duration,
    /// A relayed connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections served at once per listener; further clients wait in the backlog. `main` fits it
    /// to the descriptor limit.
    pub max_connections: usize,
    /// At shutdown, how long open connections may take to finish.
    pub drain_timeout: Duration,
    /// Socket options of listeners, accepted and outbound connections (no-delay, keep-alive, Fast Open,
    /// SO_REUSEPORT, MPTCP: [`ss_net::socket_options`]).
    pub socket: ss_net::SocketOptions,
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
    /// everything on the caller's runtime. [`run`] starts them; [`run_on`] is given them instead.
    pub threads: usize,
    /// Name servers, lookup timeout and limits of the server's resolver ([`ss_net::resolve`]).
    pub resolve: ss_net::ResolveSettings,
    /// The ACL (`acl`, `--acl`): clients it refuses get the probe treatment, its outbound lists apply
    /// on top of [`Settings::policy`] ([`policy`]).
    pub acl: Option<Arc<ss_net::SharedAcl>>,
    /// Many users on this port ([`users`]): `None` serves the one key [`Settings::key`] (which, with
    /// users, is the identity PSK of the AES 2022 methods and unused by the others).
    pub users: Option<Arc<users::Users>>,
    /// Where [`Settings::users`]' usage is saved ([`usage_store`]); `None` keeps it in memory only.
    pub usage_store: Option<usage_store::Saving>,
    /// A single-key server whose traffic is counted as one user's ([`Settings::count_as`]): metrics and
    /// the manager's per-port statistics read its [`users::User::usage`]. `None` counts nothing (the
    /// relay then runs without meters). Unused when [`Settings::users`] is set.
    pub owner: Option<Arc<users::User>>,
    /// This entry's part of the process's Prometheus metrics ([`metrics`]); `None`: metrics are off.
    pub metrics: Option<Arc<metrics::EntryMetrics>>,
}

/// Live counters of a running server.
#[derive(Debug, Default)]
pub struct Stats {
    /// UDP associations (NAT entries) currently open.
    pub udp_associations: AtomicUsize,
    /// Refused connections by reason.
    pub rejections: Arc<Rejections>,
    /// UDP datagrams for a domain target waiting for its name to resolve (each holds its payload).
    pub udp_awaiting_resolution: AtomicUsize,
    /// UDP datagrams dropped because their name could not be looked up right away: every lookup slot
    /// taken, or too many datagrams already waiting for names.
    pub udp_unresolved_drops: AtomicU64,
    /// Client request salts entered into the replay filter (each at the moment its first record
    /// authenticated).
    pub salts_recorded: AtomicU64,
    /// UDP associations opened since start (those removed: this less [`Stats::udp_associations`]).
    pub udp_associations_added: AtomicU64,
    /// TCP connections past their handshake, relaying now.
    pub tcp_relaying: AtomicUsize,
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
            max_handshakes_per_source: admission::DEFAULT_PER_SOURCE,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(5),
            socket: ss_net::SocketOptions::default(),
            replay_capacity: replay::DEFAULT_CLASSIC_CAPACITY,
            replay_snapshot: None,
            udp_timeout: Duration::from_secs(300),
            max_udp_associations: 4096,
            stats: Arc::default(),
            threads: 1,
            resolve: ss_net::ResolveSettings::default(),
            acl: None,
            users: None,
            usage_store: None,
            owner: None,
            metrics: None,
        }
    }

    /// Counts a single-key server's traffic as a user named `name` with the server's key, and returns
    /// that user ([`Settings::owner`]).
    pub fn count_as(&mut self, name: impl Into<String>) -> Arc<users::User> {
        let owner = Arc::new(users::User::new(name, self.key.clone()));
        self.owner = Some(owner.clone());
        owner
    }
}

/// State shared by every connection of a server.
#[derive(Debug)]
struct Shared {
    settings: Settings,
    replay: ReplayFilter,
    /// The address policy with the host's own addresses.
    guard: AddressGuard,
    /// Connections in their handshake, per source.
    admission: Arc<Admission>,
    /// Resolves domain targets of TCP and UDP alike.
    resolver: Arc<ss_net::Resolver>,
    /// Cancelled at shutdown; connections still in their handshake stop at once.
    shutdown: CancellationToken,
}

impl Shared {
    /// Whether the ACL (if any) serves a client from `ip`.
    fn admits_client(&self, ip: std::net::IpAddr) -> bool {
        self.settings.acl.as_ref().is_none_or(|acl| acl.current().admits_client(ip))
    }
}

/// Serves TCP and UDP on every listener until `shutdown` is cancelled, then lets open TCP connections
/// finish for the drain time and returns. Starts `settings.threads` worker runtimes of its own.
pub async fn run(settings: Settings, listeners: Listeners, shutdown: CancellationToken) {
    let workers = ss_net::Workers::start(settings.threads);
    run_on(settings, listeners, workers, shutdown).await;
}

/// [`run`] with its TCP connections spread over `workers`, which several servers of one process share
/// (`settings.threads` is not used).
pub async fn run_on(
    settings: Settings,
    listeners: Listeners,
    workers: ss_net::Workers,
    shutdown: CancellationToken,
) {
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
    match settings.resolve.nameservers.as_slice() {
        [] => tracing::info!("resolving names with /etc/resolv.conf and /etc/hosts"),
        servers => {
            tracing::info!(?servers, "resolving names with the configured name servers and /etc/hosts")
        }
    }
    let resolver = match ss_net::Resolver::new(&settings.resolve) {
        Ok(resolver) => Arc::new(resolver),
        Err(error) => {
            tracing::error!(%error, "cannot set up name resolution");
            return;
        }
    };
    let own = match settings.policy {
        TargetPolicy::PublicOnly => OwnAddresses::watch(shutdown.clone()),
        TargetPolicy::AllowAll => OwnAddresses::default(),
    };
    let guard = AddressGuard::new(settings.policy, own).with_acl(settings.acl.clone());
    let admission = Admission::new(settings.max_connections, settings.max_handshakes_per_source);
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(settings.stats.rejections.clone().report(shutdown.clone()));
    let shared =
        Arc::new(Shared { settings, replay, resolver, guard, admission, shutdown: shutdown.clone() });
    if let Some(metrics) = &shared.settings.metrics {
        metrics.attach(&shared);
    }
    for socket in listeners.udp {
        if let Ok(addr) = socket.local_addr() {
            tracing::info!(%addr, method = %shared.settings.method, "listening (UDP)");
        }
        servers.spawn(udp::run_relay(socket, shared.clone(), shutdown.clone()));
    }
    for listener in listeners.tcp {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, method = %shared.settings.method, "listening (TCP)");
        }
        // No-delay and keep-alive once here: accepted connections inherit them.
        shared.settings.socket.tune_listener(&listener);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let workers = workers.clone();
        servers.spawn(async move {
            ss_net::accept_loop(listener, limits, &workers, shutdown, move |stream, peer, slot| {
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
    let saving = shared.settings.usage_store.clone().zip(shared.settings.users.clone());
    if let Some((saving, users)) = saving.clone() {
        servers.spawn(usage_store::save_periodically(saving.store, saving.server, users, shutdown.clone()));
    }
    while servers.join_next().await.is_some() {}
    // After the drain: the usage of every connection that ended.
    if let Some((saving, users)) = saving {
        usage_store::save(&saving.store, &saving.server, &users).await;
    }
    // After the drain: every salt a connection recorded is in the snapshot.
    if let Some(path) = snapshot {
        replay_snapshot::save(&shared.replay, method, &path).await;
    }
}
