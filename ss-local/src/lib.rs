//! The Shadowsocks local side: a SOCKS5 server for browsers and other programs, relaying each connection
//! encrypted to a Shadowsocks server.
//!
//! [`run`] takes already-bound listeners and a cancellation token, so tests start it in-process on port 0.
//! `main.rs` parses the command line and config file, and [`Settings::from_config`] turns them into
//! [`Settings`].
//!
//! With an ACL ([`Settings::acl`], `--acl`) each CONNECT is routed: through the server, or directly from
//! here when the ACL bypasses the target (see `route.rs` for the order and the no-DNS-leak rule).
//!
//! One process serves several listeners ([`Listener`], bound from the config by [`Listener::bind`] and
//! served by [`run_listeners`]): SOCKS5, tunnels to a fixed target (`tunnel.rs`) and transparent
//! proxying (`redir.rs`, Linux).

#![warn(missing_docs)]

pub mod balance;
pub mod check;
pub mod clock_skew;
mod connection;
mod from_config;
pub mod inbound;
mod listen;
mod nat;
mod online;
#[cfg(target_os = "linux")]
mod redir;
mod route;
mod server_list;
pub mod socks5;
mod tunnel;
mod udp;
mod udp_direct;

pub use from_config::plugin_spec;
pub use listen::{run_listeners, Inbound, Listener};
pub use online::{OnlineSource, SetupError};
pub use server_list::ServerList;

use std::net::SocketAddr;
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
    /// Master key; with [`Server::identity_keys`], the user's key (uPSK).
    pub key: Key,
    /// SIP023 identity PSKs (`password: "iPSK:uPSK"`) for a multi-user server of an AES 2022 method:
    /// each TCP request names the next key under each of them. Empty for a single-key server.
    pub identity_keys: Vec<Key>,
    /// A SIP003 plugin in front of this server, if any: what it carries goes to its loopback address.
    pub plugin: Option<PluginRoute>,
    /// Try the IPv6 addresses of the server's name before its IPv4 ones (`ipv6_first`, `-6`); otherwise
    /// IPv4 first. Families alternate after the first attempt (Happy Eyeballs).
    pub ipv6_first: bool,
    /// Share of TCP connections under `round-robin` and `random` (`tcp_weight`, else `weight`; 1).
    pub tcp_weight: f64,
    /// Share of UDP associations under `round-robin` and `random` (`udp_weight`, else `weight`; 1).
    pub udp_weight: f64,
}

/// How a server is reached through its plugin (see [`ss_net::plugin`]).
#[derive(Debug, Clone)]
pub struct PluginRoute {
    /// The plugin's current loopback address (none while it restarts).
    pub endpoint: ss_net::plugin::Endpoint,
    /// TCP goes through the plugin (`plugin_mode` tcp_only or tcp_and_udp).
    pub tcp: bool,
    /// UDP goes through the plugin (SIP003u: `plugin_mode` udp_only or tcp_and_udp); else UDP goes to the
    /// server's own address and port.
    pub udp: bool,
}

impl Server {
    /// A server reached directly, without a plugin.
    pub fn new(host: impl Into<String>, port: u16, method: Method, key: Key) -> Server {
        Server {
            host: host.into(),
            port,
            method,
            key,
            identity_keys: Vec::new(),
            plugin: None,
            ipv6_first: false,
            tcp_weight: 1.0,
            udp_weight: 1.0,
        }
    }

    /// Opens a TCP connection to the server, through its plugin when one carries TCP. While the plugin
    /// is down this fails at once (`NotConnected`), so the client gets a prompt SOCKS5 failure. A server
    /// given by name with several addresses is reached by Happy Eyeballs ([`ss_net::happy_eyeballs`]).
    pub(crate) async fn connect_tcp(
        &self,
        options: &ss_net::SocketOptions,
    ) -> std::io::Result<tokio::net::TcpStream> {
        if let Some(route) = self.plugin.as_ref().filter(|route| route.tcp) {
            return options.connect(route.address()?).await;
        }
        let addresses = self.addresses().await?;
        let (stream, _) = ss_net::happy_eyeballs::race(&addresses, |addr| options.connect(addr)).await?;
        Ok(stream)
    }

    /// Where UDP datagrams for the server go: the plugin's address when it carries UDP.
    pub(crate) async fn udp_address(&self) -> std::io::Result<SocketAddr> {
        if let Some(route) = self.plugin.as_ref().filter(|route| route.udp) {
            return route.address();
        }
        self.addresses().await?.first().copied().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "server name resolved to no address")
        })
    }

    /// The server's addresses in the order to try them: families alternating, IPv6 first with
    /// `ipv6_first`, else IPv4.
    pub(crate) async fn addresses(&self) -> std::io::Result<Vec<SocketAddr>> {
        let addresses: Vec<SocketAddr> =
            tokio::net::lookup_host((self.host.as_str(), self.port)).await?.collect();
        Ok(ss_net::happy_eyeballs::interleave(&addresses, self.ipv6_first))
    }
}

impl PluginRoute {
    fn address(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.current().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotConnected, "the plugin is not running (restarting)")
        })
    }
}

/// Everything ss-local needs to know, checked and typed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Servers to use: the balancer orders them for each connection, the next tried when one cannot
    /// be reached.
    pub servers: Vec<Server>,
    /// Which server each connection uses, and what is known of each (`balance.rs`).
    pub balancer: Arc<balance::Balancer>,
    /// Time allowed for a client's SOCKS5 greeting and request.
    pub handshake_timeout: Duration,
    /// Time allowed to connect to a server.
    pub connect_timeout: Duration,
    /// A relayed connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// A tunnel's or redir's UDP association with no datagram either way for this long is closed
    /// (`udp_timeout`). SOCKS5 associations end with their control connection instead.
    pub udp_timeout: Duration,
    /// How long to wait for the application's first bytes so they travel with the request header;
    /// protocols where the server speaks first pay this once per connection.
    pub first_payload_wait: Duration,
    /// Most connections served at once per listener.
    pub max_connections: usize,
    /// At shutdown, how long open connections may take to finish.
    pub drain_timeout: Duration,
    /// Socket options of listeners, accepted and outbound connections (no-delay, keep-alive, Fast Open,
    /// MPTCP, SO_REUSEPORT: [`ss_net::socket_options`]).
    pub socket: ss_net::SocketOptions,
    /// Accept SOCKS5 CONNECT (off in udp_only mode); [`run`]'s listeners, while [`run_listeners`] goes by
    /// each [`Listener::mode`].
    pub tcp: bool,
    /// Accept SOCKS5 UDP ASSOCIATE (libev's mode tcp_and_udp / udp_only, `-u` / `-U`); as `tcp`.
    pub udp: bool,
    /// Threads TCP connections are spread over, the caller's included ([`ss_net::Workers`]); 1 runs
    /// everything on the caller's runtime.
    pub threads: usize,
    /// Routing rules (`acl`, `--acl`): targets the ACL bypasses are connected to directly. `None`: every
    /// target goes through the server.
    pub acl: Option<Arc<ss_net::SharedAcl>>,
    /// How names of bypassed targets are resolved here (`nameserver` overrides the system's servers).
    pub resolve: ss_net::ResolveSettings,
    /// Users allowed on the local port (`socks5_auth_config_path`): SOCKS5 username/password and HTTP
    /// `Proxy-Authorization: Basic` are then required, and SOCKS4 is refused. `None`: no authentication.
    pub users: Option<Arc<inbound::Users>>,
    /// A list that can change while running (SIP008 online config, [`OnlineSource`]): when set,
    /// connections take their servers from it as they start, and `servers` is not read.
    /// [`run_listeners`] sets it from `servers` when it is not set.
    pub server_list: Option<ServerList>,
}

impl Settings {
    /// Settings with sensible defaults for the given servers.
    pub fn new(servers: Vec<Server>) -> Settings {
        Settings {
            servers,
            balancer: Arc::default(),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            udp_timeout: Duration::from_secs(300),
            first_payload_wait: Duration::from_millis(50),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(5),
            socket: ss_net::SocketOptions::default(),
            tcp: true,
            udp: false,
            threads: 1,
            acl: None,
            resolve: ss_net::ResolveSettings::default(),
            users: None,
            server_list: None,
        }
    }

    /// The servers for a connection starting now, in the order to try them.
    pub(crate) fn current_servers(&self) -> Arc<Vec<Server>> {
        match &self.server_list {
            Some(list) => list.current(),
            None => Arc::new(self.servers.clone()),
        }
    }
}

impl Settings {
    /// For a listener's UDP associations: the server the balancer picks for each new one.
    pub(crate) fn udp_chooser(self: &Arc<Settings>) -> impl Fn() -> Option<Server> + Send + Sync + 'static {
        let settings = self.clone();
        move || {
            settings
                .balancer
                .order(balance::Kind::Udp, &settings.current_servers())
                .first()
                .map(|s| Server::clone(s))
        }
    }
}

/// Serves SOCKS5, SOCKS4/4a and HTTP proxying (see [`inbound`]) on every listener until `shutdown` is
/// cancelled, then lets open connections finish for the drain time and returns. [`run_listeners`] serves
/// listeners of every kind. [`Settings::tcp`] and [`Settings::udp`] say what each serves.
pub async fn run(settings: Settings, listeners: Vec<TcpListener>, shutdown: CancellationToken) {
    let mode = match (settings.tcp, settings.udp) {
        (true, true) => ss_config::Mode::TcpAndUdp,
        (false, true) => ss_config::Mode::UdpOnly,
        _ => ss_config::Mode::TcpOnly,
    };
    let listeners = listeners.into_iter().map(|tcp| Listener::socks(tcp, mode)).collect();
    run_listeners(settings, listeners, shutdown).await;
}
