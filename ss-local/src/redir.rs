//! Transparent proxying (libev's ss-redir, shadowsocks-rust's `redir`; Linux only): the firewall of a
//! router diverts other machines' connections and datagrams to this listener, which relays each to the
//! destination the client had in mind, through the server.
//!
//! - TCP by `redirect` (nftables `redirect to :PORT`, iptables `REDIRECT`): the kernel rewrote the
//!   destination, and conntrack keeps the original, read with `SO_ORIGINAL_DST` (IPv4) or
//!   `IP6T_SO_ORIGINAL_DST` (IPv6).
//! - TCP by `tproxy` (nftables `tproxy to :PORT`): the destination is untouched; the listener is
//!   `IP_TRANSPARENT`, so it accepts connections to any address, and the accepted socket's own address is
//!   the destination.
//! - UDP by `tproxy` only: the socket is `IP_TRANSPARENT` with `IP_RECVORIGDSTADDR` /
//!   `IPV6_RECVORIGDSTADDR`, so each datagram comes with its destination in a control message. Replies
//!   must appear to come from that destination: they leave from an `IP_TRANSPARENT` socket bound to it,
//!   kept per destination until `udp_timeout` passes unused.
//!
//! A connection that was not diverted (someone connected to the listener itself) has no other
//! destination than the listener; it is refused rather than relayed to itself. With `tproxy` that
//! means a destination with the listener's port is refused: pick a listener port no client dials.
//! Creating `IP_TRANSPARENT` sockets needs `CAP_NET_ADMIN`.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    getsockopt, recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6,
    SockaddrLike, SockaddrStorage,
};
use socket2::{Domain, SockAddr, Socket, Type};
use ss_config::TcpRedir;
use ss_crypto::Address;
use ss_net::canonical_addr;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::nat::{Nat, Replier};
use crate::udp::MAX_DATAGRAM;
use crate::Settings;

/// Most reply sockets kept at once (one per destination in use); the least recently used goes first.
const MAX_REPLY_SOCKETS: usize = 4096;

/// An `IP_TRANSPARENT` TCP listener on `addr`, for `tcp_redir: "tproxy"`.
pub(crate) fn bind_tcp_transparent(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = transparent_socket(addr, Type::STREAM)?;
    socket.bind(&addr.into())?;
    socket.listen(ss_net::accept::BACKLOG as i32)?;
    TcpListener::from_std(socket.into())
}

/// An `IP_TRANSPARENT` UDP socket on `addr` that reports each datagram's original destination.
pub(crate) fn bind_udp_transparent(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = transparent_socket(addr, Type::DGRAM)?;
    match addr {
        SocketAddr::V4(_) => setsockopt(&socket, sockopt::Ipv4OrigDstAddr, &true)?,
        SocketAddr::V6(_) => {
            setsockopt(&socket, sockopt::Ipv6OrigDstAddr, &true)?;
            // IPv4 datagrams arriving on a dual-stack socket report their destination this way.
            let _ = setsockopt(&socket, sockopt::Ipv4OrigDstAddr, &true);
        }
    }
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Where an accepted redir connection was going; an error for one that was not diverted here.
pub(crate) fn destination(
    stream: &TcpStream,
    kind: TcpRedir,
    listener: SocketAddr,
) -> io::Result<SocketAddr> {
    let local = canonical_addr(stream.local_addr()?);
    let target = match kind {
        TcpRedir::Tproxy => local,
        TcpRedir::Redirect => canonical_addr(original_destination(stream, local)?),
    };
    let looped = match kind {
        // conntrack reports the address itself for a connection no rule rewrote.
        TcpRedir::Redirect => target == local,
        TcpRedir::Tproxy => is_listener(target, listener),
    };
    if looped {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{target} is this listener itself: the connection was not diverted by the firewall"),
        ));
    }
    Ok(target)
}

/// Relays the datagrams TPROXY delivers to `socket` until `shutdown`.
pub(crate) async fn serve_udp(socket: UdpSocket, settings: Arc<Settings>, shutdown: CancellationToken) {
    if settings.current_servers().is_empty() {
        error!("no server for redir's UDP");
        return;
    }
    let Ok(listener) = socket.local_addr() else { return };
    let replier = Arc::new(FromDestination { sockets: Mutex::default(), idle: settings.udp_timeout });
    let nat = Nat::for_listener(&settings, replier, &shutdown);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = socket.async_io(Interest::READABLE, || receive(&socket, &mut buf)) => received,
        };
        let (len, client, destination) = match received {
            Ok(received) => received,
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(error) => {
                error!(%error, "redir UDP receive failed; redir's UDP port stops");
                return;
            }
        };
        let Some(destination) = destination.map(canonical_addr) else {
            debug!(%client, "UDP datagram without an original destination (not TPROXYed); dropped");
            continue;
        };
        if is_listener(destination, listener) {
            debug!(%client, "UDP datagram to the redir port itself; dropped");
            continue;
        }
        let Some(payload) = buf.get(..len) else { continue };
        nat.send(canonical_addr(client), &Address::Ip(destination), payload, &mut out).await;
    }
}

fn transparent_socket(addr: SocketAddr, kind: Type) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, None)?;
    let transparent = match addr {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true),
        SocketAddr::V6(_) => {
            // The IPv4 option too, for IPv4 traffic on a dual-stack socket.
            let _ = socket.set_ip_transparent_v4(true);
            socket.set_ip_transparent_v6(true)
        }
    };
    transparent.map_err(|error| {
        io::Error::new(error.kind(), format!("IP_TRANSPARENT (needs CAP_NET_ADMIN): {error}"))
    })?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn original_destination(stream: &TcpStream, local: SocketAddr) -> io::Result<SocketAddr> {
    let read = match local {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst).map(|sin| SockaddrIn::from(sin).into()),
        SocketAddr::V6(_) => {
            getsockopt(stream, sockopt::Ip6tOriginalDst).map(|sin6| SockaddrIn6::from(sin6).into())
        }
    };
    read.map_err(|errno| {
        io::Error::new(
            io::Error::from(errno).kind(),
            format!("the original destination cannot be read ({errno}): not REDIRECTed here?"),
        )
    })
}

/// Whether `target` is the listener's own address and port (a datagram or connection that was not
/// diverted, and would loop).
fn is_listener(target: SocketAddr, listener: SocketAddr) -> bool {
    let listener = canonical_addr(listener);
    target.port() == listener.port() && (listener.ip().is_unspecified() || listener.ip() == target.ip())
}

/// One datagram, its sender and its original destination (`None` without the control message).
fn receive(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!(nix::libc::sockaddr_in6);
    let message =
        recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(&mut control), MsgFlags::empty())?;
    let from = message.address.as_ref().and_then(socket_addr).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "a datagram without an IP sender address")
    })?;
    let mut destination = None;
    for control in message.cmsgs()? {
        match control {
            ControlMessageOwned::Ipv4OrigDstAddr(sin) => destination = Some(SockaddrIn::from(sin).into()),
            ControlMessageOwned::Ipv6OrigDstAddr(sin6) => destination = Some(SockaddrIn6::from(sin6).into()),
            _ => {}
        }
    }
    Ok((message.bytes, from, destination))
}

fn socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(sin) = storage.as_sockaddr_in() {
        return Some((*sin).into());
    }
    storage.as_sockaddr_in6().map(|sin6| (*sin6).into()).filter(|_| storage.len() > 0)
}

/// Replies leave from a socket bound to the address the client wrote to, so that the client (and its
/// NAT or firewall) sees an answer from the host it asked.
struct FromDestination {
    sockets: Mutex<HashMap<SocketAddr, (Socket, Instant)>>,
    idle: Duration,
}

impl Replier for FromDestination {
    fn reply(&self, source: &Address, client: SocketAddr, payload: &[u8]) {
        let Address::Ip(source) = source else {
            debug!(%source, "UDP reply from a name cannot be sent from it; dropped");
            return;
        };
        let source = canonical_addr(*source);
        let mut sockets = self.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if !sockets.contains_key(&source) {
            sockets.retain(|_, (_, last_used)| now.saturating_duration_since(*last_used) < self.idle);
            if sockets.len() >= MAX_REPLY_SOCKETS {
                let oldest =
                    sockets.iter().min_by_key(|(_, (_, last_used))| *last_used).map(|(addr, _)| *addr);
                if let Some(oldest) = oldest {
                    sockets.remove(&oldest);
                }
            }
            let socket = match transparent_socket(source, Type::DGRAM)
                .and_then(|socket| socket.bind(&source.into()).map(|()| socket))
            {
                Ok(socket) => socket,
                Err(error) => {
                    debug!(%source, %error, "no socket for UDP replies from this address; reply dropped");
                    return;
                }
            };
            sockets.insert(source, (socket, now));
        }
        let Some((socket, last_used)) = sockets.get_mut(&source) else { return };
        *last_used = now;
        if let Err(error) = socket.send_to(payload, &SockAddr::from(client)) {
            debug!(%client, %source, %error, "UDP reply dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_itself_is_no_destination() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(is_listener(addr("192.0.2.1:1234"), addr("0.0.0.0:1234")));
        assert!(is_listener(addr("192.0.2.1:1234"), addr("[::]:1234")));
        assert!(is_listener(addr("192.0.2.1:1234"), addr("[::ffff:192.0.2.1]:1234")));
        assert!(!is_listener(addr("192.0.2.1:1235"), addr("0.0.0.0:1234")));
        assert!(!is_listener(addr("192.0.2.2:1234"), addr("192.0.2.1:1234")));
    }

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let error = destination(&accepted, TcpRedir::Redirect, addr).unwrap_err();
        // Without conntrack the option is missing (ENOENT); with it, the address is the listener's.
        assert!(error.to_string().contains("not"), "{error}");
        let error = destination(&accepted, TcpRedir::Tproxy, addr).unwrap_err();
        assert!(error.to_string().contains("this listener itself"), "{error}");
    }

    /// A free UDP port on `ip` (loopback).
    fn free_udp(ip: &str) -> SocketAddr {
        let socket = std::net::UdpSocket::bind((ip, 0)).unwrap();
        socket.local_addr().unwrap()
    }

    #[tokio::test]
    async fn replies_leave_from_the_destination_and_unused_sockets_are_dropped() {
        use std::io::Write as _;
        let probe = transparent_socket(free_udp("127.0.0.1"), Type::DGRAM);
        if probe.as_ref().is_err_and(|error| error.kind() == io::ErrorKind::PermissionDenied) {
            let ci = std::env::var("CI").is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"));
            assert!(!ci, "IP_TRANSPARENT needs CAP_NET_ADMIN (root); CI is set, so this fails");
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: redir reply sockets: IP_TRANSPARENT needs CAP_NET_ADMIN (run as root)"
            );
            return;
        }
        let idle = Duration::from_secs(30);
        let replier = FromDestination { sockets: Mutex::default(), idle };
        let count = || replier.sockets.lock().unwrap().len();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client_addr = client.local_addr().unwrap();
        let (first, second) = (free_udp("127.0.0.3"), free_udp("127.0.0.4"));
        let mut buf = [0u8; 16];
        for round in 0..2u8 {
            replier.reply(&Address::Ip(first), client_addr, &[round]);
            let (len, from) = tokio::time::timeout(Duration::from_secs(20), client.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!((from, &buf[..len]), (first, &[round][..]));
        }
        assert_eq!(count(), 1, "one socket per destination, reused");
        replier.reply(&Address::Domain("name.test".into(), 53), client_addr, b"x");
        assert_eq!(count(), 1, "a reply from a name has no address to come from");
        tokio::time::pause();
        tokio::time::advance(idle + Duration::from_secs(1)).await;
        replier.reply(&Address::Ip(second), client_addr, b"2");
        let (_, from) =
            tokio::time::timeout(Duration::from_secs(20), client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(from, second);
        assert_eq!(count(), 1, "the unused socket of the first destination is gone");
    }
}
