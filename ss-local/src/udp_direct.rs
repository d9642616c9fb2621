//! The ACL's bypass for SOCKS5 UDP ASSOCIATE: datagrams to targets the ACL bypasses are sent from
//! ss-local itself, and their replies handed back to the application; everything else goes through the
//! server as before ([`crate::udp`]).
//!
//! ```text
//! application ─▶ relay socket ─▶ route (ACL, as for CONNECT) ─ proxy ─▶ sealed to the server
//!                                                            └ bypass ─▶ direct socket ─▶ target
//! application ◀─ relay socket ◀──────────────────────────────────────── direct socket ◀─ target
//! ```
//!
//! The route is decided per datagram by the same [`Router`] as CONNECT, so the no-DNS-leak rule holds:
//! a name is looked up here only when it is bypassed or when IP rules need its address. Replies are
//! accepted only from addresses this association has sent to (at most [`MAX_PEERS`] remembered), so the
//! direct socket is no open door into the application.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;

use ss_crypto::Address;
use ss_net::canonical_addr;
use tokio::net::UdpSocket;
use tracing::debug;

use crate::route::{Decision, Router};

/// Most targets one association remembers sending to directly; beyond it the oldest are forgotten
/// (their late replies are dropped).
pub(crate) const MAX_PEERS: usize = 1024;

/// The direct half of one association.
pub(crate) struct Direct<'a> {
    router: &'a Router,
    v4: UdpSocket,
    v6: Option<UdpSocket>,
    peers: Mutex<Peers>,
}

#[derive(Default)]
struct Peers {
    known: HashSet<SocketAddr>,
    order: std::collections::VecDeque<SocketAddr>,
}

impl Peers {
    /// Remembers `addr`, forgetting the oldest address beyond [`MAX_PEERS`].
    fn insert(&mut self, addr: SocketAddr) {
        if !self.known.insert(addr) {
            return;
        }
        self.order.push_back(addr);
        if self.order.len() > MAX_PEERS {
            if let Some(oldest) = self.order.pop_front() {
                self.known.remove(&oldest);
            }
        }
    }
}

impl<'a> Direct<'a> {
    /// Binds the direct sockets (IPv4, and IPv6 where the host has it).
    pub(crate) async fn bind(router: &'a Router) -> io::Result<Direct<'a>> {
        let v4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
        let v6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).await.ok();
        Ok(Direct { router, v4, v6, peers: Mutex::default() })
    }

    /// Sends `payload` to `target` directly when the ACL bypasses it and returns true; false when the
    /// datagram belongs to the server. A bypassed target that cannot be reached (no address, no
    /// socket of its family) has its datagram dropped, never proxied instead.
    pub(crate) async fn send_if_bypassed(&self, target: &Address, payload: &[u8]) -> bool {
        let addresses = match self.router.decide(target).await {
            Ok(Decision::Proxy) => return false,
            Ok(Decision::Direct(addresses)) => addresses,
            Err(error) => {
                debug!(%target, %error, "UDP route undecided; datagram dropped");
                return true;
            }
        };
        let chosen = addresses.iter().find_map(|addr| Some((self.socket_for(addr)?, *addr)));
        let Some((socket, addr)) = chosen else {
            debug!(%target, "no local socket for the bypassed target's addresses; datagram dropped");
            return true;
        };
        self.remember(canonical_addr(addr));
        if let Err(error) = socket.send_to(payload, addr).await {
            debug!(%error, %addr, "direct UDP send failed");
        }
        true
    }

    /// The next reply from a target sent to directly: its source and length in `buf`.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<(Address, usize)> {
        loop {
            let socket = match &self.v6 {
                Some(v6) => tokio::select! {
                    ready = self.v4.readable() => ready.map(|()| &self.v4)?,
                    ready = v6.readable() => ready.map(|()| v6)?,
                },
                None => self.v4.readable().await.map(|()| &self.v4)?,
            };
            let (len, from) = match socket.try_recv_from(buf) {
                Ok(received) => received,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                // ICMP port unreachable from an earlier send: the target is gone, the association is not.
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(error) => return Err(error),
            };
            let from = canonical_addr(from);
            if self.lock().known.contains(&from) {
                return Ok((Address::Ip(from), len));
            }
            debug!(%from, "UDP datagram from an address not sent to; dropped");
        }
    }

    /// Hands replies from bypassed targets to the application at `client` (once known) until an error;
    /// pending forever without a bypass (`direct` is `None`).
    pub(crate) async fn downlink(
        direct: Option<&Direct<'_>>,
        relay: &UdpSocket,
        client: &Mutex<Option<SocketAddr>>,
    ) -> io::Result<()> {
        let Some(direct) = direct else { return std::future::pending().await };
        let mut buf = vec![0u8; 65_535];
        let mut out = Vec::with_capacity(65_535 + 32);
        loop {
            let (source, len) = direct.recv(&mut buf).await?;
            let Some(to) = *client.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) else { continue };
            out.clear();
            crate::socks5::write_udp_header(&source, &mut out);
            out.extend_from_slice(&buf[..len]);
            if let Err(error) = relay.send_to(&out, to).await {
                debug!(%error, "UDP reply to the application failed");
            }
        }
    }

    fn socket_for(&self, addr: &SocketAddr) -> Option<&UdpSocket> {
        match addr {
            SocketAddr::V4(_) => Some(&self.v4),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }

    fn remember(&self, addr: SocketAddr) {
        self.lock().insert(addr);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_bounded_and_the_oldest_forgotten_first() {
        let mut peers = Peers::default();
        let addr = |n: usize| SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), n as u16 + 1));
        for n in 0..MAX_PEERS + 10 {
            peers.insert(addr(n));
            peers.insert(addr(n)); // a repeat neither grows the set nor refreshes its place
        }
        assert_eq!((peers.known.len(), peers.order.len()), (MAX_PEERS, MAX_PEERS));
        assert!(!peers.known.contains(&addr(9)) && peers.known.contains(&addr(10)));
        assert!(peers.known.contains(&addr(MAX_PEERS + 9)));
    }
}
