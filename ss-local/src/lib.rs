//! The Shadowsocks local side: a SOCKS5 server for browsers and other programs, relaying each connection
//! encrypted to a Shadowsocks server.
//!
//! [`run`] takes already-bound listeners and a cancellation token, so tests start it in-process on port 0.
//! `main.rs` only turns the command line and config file into [`Settings`].

#![warn(missing_docs)]

mod connection;
pub mod socks5;
mod udp;

use std::sync::Arc;
use std::time::Duration;

use ss_crypto::{Key, Method};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One remote Shadowsocks server.
#[derive(Debug, Clone)]
pub struct Server {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Encryption method.
    pub method: Method,
    /// Master key.
    pub key: Key,
}

/// Everything ss-local needs to know, checked and typed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Servers to use, tried in order when one cannot be reached.
    pub servers: Vec<Server>,
    /// Time allowed for a client's SOCKS5 greeting and request.
    pub handshake_timeout: Duration,
    /// Time allowed to connect to a server.
    pub connect_timeout: Duration,
    /// A relayed connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long to wait for the application's first bytes so they travel with the request header;
    /// protocols where the server speaks first pay this once per connection.
    pub first_payload_wait: Duration,
    /// Most connections served at once per listener.
    pub max_connections: usize,
    /// At shutdown, how long open connections may take to finish.
    pub drain_timeout: Duration,
    /// Set TCP_NODELAY on both sockets of a relay.
    pub no_delay: bool,
    /// Accept SOCKS5 CONNECT (off in udp_only mode).
    pub tcp: bool,
    /// Accept SOCKS5 UDP ASSOCIATE (libev's mode tcp_and_udp / udp_only, `-u` / `-U`).
    pub udp: bool,
    /// Threads TCP connections are spread over, the caller's included ([`ss_net::Workers`]); 1 runs
    /// everything on the caller's runtime.
    pub threads: usize,
}

impl Settings {
    /// Settings with sensible defaults for the given servers.
    pub fn new(servers: Vec<Server>) -> Settings {
        Settings {
            servers,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            first_payload_wait: Duration::from_millis(50),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(5),
            no_delay: true,
            tcp: true,
            udp: false,
            threads: 1,
        }
    }
}

/// Serves SOCKS5 on every listener until `shutdown` is cancelled, then lets open connections finish for
/// the drain time and returns.
pub async fn run(settings: Settings, listeners: Vec<TcpListener>, shutdown: CancellationToken) {
    let limits = ss_net::Limits { max_connections: settings.max_connections, drain: settings.drain_timeout };
    let workers = ss_net::Workers::start(settings.threads);
    let settings = Arc::new(settings);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "listening (SOCKS5)");
        }
        let settings = settings.clone();
        let (workers, shutdown) = (workers.clone(), shutdown.clone());
        servers.spawn(async move {
            ss_net::accept_loop(listener, limits, &workers, shutdown, move |stream, peer, slot| {
                connection::handle(stream, peer, settings.clone(), slot)
            })
            .await
        });
    }
    while servers.join_next().await.is_some() {}
}
