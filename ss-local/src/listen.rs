//! The listeners of one ss-local process and what serves each: a [`Listener`] is a bound TCP listener
//! and/or UDP socket with its [`Inbound`] protocol; [`run_listeners`] runs them all until shutdown.
//!
//! | inbound  | TCP                                     | UDP                                        |
//! |----------|-----------------------------------------|--------------------------------------------|
//! | socks    | SOCKS5, SOCKS4/4a or HTTP by first byte | SOCKS5 UDP ASSOCIATE (`udp.rs`)            |
//! | http     | HTTP proxy only (CONNECT, plain, PAC)   | none                                       |
//! | tunnel   | each connection to the fixed target     | per client address to the fixed target     |
//! | redir    | to the diverted destination             | TPROXY, to the diverted destination        |
//!
//! The TCP and UDP sockets of a tunnel or redir listener share one port: when the configured port is 0
//! (tests), UDP is bound on the port the kernel gave TCP.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use ss_config::{Local, Mode, Protocol, TcpRedir};
use ss_crypto::Address;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::route::Router;
use crate::{connection, Settings};

/// What a listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// SOCKS5, SOCKS4/4a and HTTP on one port, told apart by the first byte (the default port).
    Socks,
    /// HTTP proxy only (a `locals[]` entry with `"protocol": "http"`).
    Http,
    /// Every connection and datagram goes to this target through the server.
    Tunnel(Address),
    /// Transparent proxying (Linux): TCP diverted as `TcpRedir` says, UDP by TPROXY.
    Redir(TcpRedir),
}

/// A bound listener: its TCP listener and UDP socket (either may be absent, as its mode says).
#[derive(Debug)]
pub struct Listener {
    /// What it speaks.
    pub inbound: Inbound,
    /// TCP and UDP served (a SOCKS5 listener's UDP means UDP ASSOCIATE).
    pub mode: Mode,
    /// The TCP listener.
    pub tcp: Option<TcpListener>,
    /// The UDP socket (tunnel and redir listeners).
    pub udp: Option<UdpSocket>,
}

impl Listener {
    /// A SOCKS5 listener serving CONNECT if `mode` has TCP and UDP ASSOCIATE if it has UDP.
    pub fn socks(tcp: TcpListener, mode: Mode) -> Listener {
        Listener { inbound: Inbound::Socks, mode, tcp: Some(tcp), udp: None }
    }

    /// Binds what `local` describes, with the listener options of `socket` (`reuse_port`, `fast_open`,
    /// `mptcp`). Redir listeners need `CAP_NET_ADMIN` for TPROXY sockets.
    pub async fn bind(local: &Local, socket: &ss_net::SocketOptions) -> io::Result<Listener> {
        let addr =
            tokio::net::lookup_host((local.address.as_str(), local.port)).await?.next().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the local address resolved to nothing")
            })?;
        let inbound = match &local.protocol {
            Protocol::Socks => Inbound::Socks,
            Protocol::Http => Inbound::Http,
            Protocol::Tunnel(forward) => Inbound::Tunnel(forward_address(&forward.host, forward.port)),
            Protocol::Redir { tcp } => Inbound::Redir(*tcp),
        };
        let wants_udp = local.mode.udp() && matches!(inbound, Inbound::Tunnel(_) | Inbound::Redir(_));
        // A SOCKS5 port always takes TCP (its UDP ASSOCIATE starts there).
        let wants_tcp = local.mode.tcp() || matches!(inbound, Inbound::Socks | Inbound::Http);
        // Port 0 for both: retry until the port the kernel gave TCP is free for UDP too.
        for _ in 0..16 {
            let tcp = match wants_tcp {
                true => Some(bind_tcp(&inbound, addr, socket)?),
                false => None,
            };
            let udp_addr = match &tcp {
                Some(tcp) => tcp.local_addr()?,
                None => addr,
            };
            let udp = match wants_udp {
                false => None,
                true => match bind_udp(&inbound, udp_addr, socket) {
                    Ok(udp) => Some(udp),
                    Err(error) if addr.port() == 0 && error.kind() == io::ErrorKind::AddrInUse => continue,
                    Err(error) => return Err(error),
                },
            };
            return Ok(Listener { inbound, mode: local.mode, tcp, udp });
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, "no port free for both TCP and UDP"))
    }
}

/// A tunnel's target as sent to the server: an IP literal as an address, anything else as a name.
pub(crate) fn forward_address(host: &str, port: u16) -> Address {
    match host.parse() {
        Ok(ip) => Address::Ip(SocketAddr::new(ip, port)),
        Err(_) => Address::Domain(host.to_string(), port),
    }
}

fn bind_tcp(inbound: &Inbound, addr: SocketAddr, socket: &ss_net::SocketOptions) -> io::Result<TcpListener> {
    #[cfg(target_os = "linux")]
    if *inbound == Inbound::Redir(TcpRedir::Tproxy) {
        return crate::redir::bind_tcp_transparent(addr);
    }
    let _ = inbound;
    socket.listen_tcp(addr, ss_net::accept::BACKLOG)
}

fn bind_udp(inbound: &Inbound, addr: SocketAddr, socket: &ss_net::SocketOptions) -> io::Result<UdpSocket> {
    match inbound {
        #[cfg(target_os = "linux")]
        Inbound::Redir(_) => crate::redir::bind_udp_transparent(addr),
        #[cfg(not(target_os = "linux"))]
        Inbound::Redir(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "redir needs Linux")),
        _ => socket.bind_udp(addr),
    }
}

/// Serves every listener until `shutdown` is cancelled, then lets open TCP connections finish for the
/// drain time and returns; UDP associations end at once.
pub async fn run_listeners(mut settings: Settings, listeners: Vec<Listener>, shutdown: CancellationToken) {
    if settings.server_list.is_none() {
        settings.server_list = Some(crate::ServerList::new(settings.servers.clone()));
    }
    let limits = ss_net::Limits { max_connections: settings.max_connections, drain: settings.drain_timeout };
    let workers = ss_net::Workers::start(settings.threads);
    let router = match &settings.acl {
        None => None,
        Some(acl) => match Router::new(acl.clone(), &settings.resolve) {
            Ok(router) => Some(Arc::new(router)),
            Err(error) => {
                tracing::error!(%error, "cannot set up name resolution for bypassed targets");
                return;
            }
        },
    };
    let shared = Arc::new(settings);
    if let Some(metrics) = &shared.metrics {
        metrics.watch(&shared);
    }
    let mut servers = tokio::task::JoinSet::new();
    crate::balance::start(&shared, &mut servers, &shutdown);
    for listener in listeners {
        let Listener { inbound, mode, tcp, udp } = listener;
        let settings = match inbound {
            // Each SOCKS5 listener has its own mode (locals[].mode, else the top level's).
            Inbound::Socks | Inbound::Http => {
                Arc::new(Settings { tcp: mode.tcp(), udp: mode.udp(), ..Settings::clone(&shared) })
            }
            _ => shared.clone(),
        };
        if let Some(udp) = udp {
            if let Ok(addr) = udp.local_addr() {
                tracing::info!(%addr, inbound = ?inbound, "listening (UDP)");
            }
            let (settings, shutdown) = (settings.clone(), shutdown.clone());
            match inbound.clone() {
                Inbound::Tunnel(target) => {
                    servers.spawn(crate::tunnel::serve_udp(udp, target, settings, shutdown));
                }
                #[cfg(target_os = "linux")]
                Inbound::Redir(_) => {
                    servers.spawn(crate::redir::serve_udp(udp, settings, shutdown));
                }
                _ => {}
            }
        }
        let Some(tcp) = tcp else { continue };
        let Ok(listen_addr) = tcp.local_addr() else { continue };
        // No-delay and keep-alive once here: accepted connections inherit them.
        settings.socket.tune_listener(&tcp);
        tracing::info!(addr = %listen_addr, inbound = ?inbound, "listening (TCP)");
        if matches!(inbound, Inbound::Socks | Inbound::Http)
            && !listen_addr.ip().is_loopback()
            && settings.users.is_none()
        {
            tracing::warn!(
                addr = %listen_addr,
                "LISTENING ON A NON-LOOPBACK ADDRESS WITHOUT AUTHENTICATION: anyone who can reach this port \
                 can use your server; set socks5_auth_config_path or listen on 127.0.0.1"
            );
        }
        let (router, workers, shutdown) = (router.clone(), workers.clone(), shutdown.clone());
        // One accept loop per kind, so that the SOCKS5 path's connection future is what it was.
        match inbound {
            Inbound::Socks | Inbound::Http => servers.spawn(async move {
                let protocols = match inbound {
                    Inbound::Http => crate::inbound::Protocols::Http,
                    _ => crate::inbound::Protocols::Mixed,
                };
                ss_net::accept_loop(tcp, limits, &workers, shutdown, move |stream, peer, slot| {
                    connection::handle(stream, peer, settings.clone(), router.clone(), slot, protocols)
                })
                .await;
            }),
            Inbound::Tunnel(target) => servers.spawn(async move {
                ss_net::accept_loop(tcp, limits, &workers, shutdown, move |stream, peer, slot| {
                    connection::handle_fixed(
                        stream,
                        peer,
                        target.clone(),
                        settings.clone(),
                        router.clone(),
                        slot,
                    )
                })
                .await;
            }),
            #[cfg(target_os = "linux")]
            Inbound::Redir(kind) => servers.spawn(async move {
                ss_net::accept_loop(tcp, limits, &workers, shutdown, move |stream, peer, slot| {
                    let target = crate::redir::destination(&stream, kind, listen_addr);
                    let (settings, router) = (settings.clone(), router.clone());
                    async move {
                        match target {
                            Ok(target) => {
                                let target = Address::Ip(target);
                                connection::handle_fixed(stream, peer, target, settings, router, slot).await
                            }
                            Err(error) => tracing::warn!(%peer, %error, "redir connection refused"),
                        }
                    }
                })
                .await;
            }),
            #[cfg(not(target_os = "linux"))]
            Inbound::Redir(_) => continue,
        };
    }
    while servers.join_next().await.is_some() {}
}
