//! UDP associations of the tunnel and redir listeners: one per client address (address and port), each
//! with its own socket to the server and its own Shadowsocks UDP session ([`Codec`], as SOCKS5 UDP
//! ASSOCIATE uses), ended after `udp_timeout` without a datagram either way.
//!
//! ```text
//! client ──datagram──▶ listener ──▶ Nat::send(client, target) ──seal──▶ upstream socket ──▶ server
//! client ◀──────────── Replier ◀──────────────── open ◀── downlink task of the association ◀── server
//! ```
//!
//! Replies are received in batches ([`ss_net::udp_batch`]); each is handed to the [`Replier`] alone.
//!
//! Unlike SOCKS5 there is no control connection whose end closes the association, so the idle timeout
//! is what frees it. How a reply reaches the client is the listener's business ([`Replier`]): a tunnel
//! answers from its own socket, redir from a socket bound to the address the client wrote to.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ss_crypto::Address;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use ss_net::udp_batch::{self, BatchReceiver};

use crate::udp::Codec;
use crate::Server;

/// Most receive buffers of an association's replies (64 KiB each, added only while a receive fills all
/// there are; [`ss_net::udp_batch`]).
const REPLY_BATCH: usize = 8;

/// Hands a server's reply to the client; sends without waiting and drops what cannot go now (UDP is
/// lossy anyway, and one slow client must not hold up the others).
pub(crate) trait Replier: Send + Sync + 'static {
    /// `payload` came from `source` (as the server reports it) and goes to `client`.
    fn reply(&self, source: &Address, client: SocketAddr, payload: &[u8]);
}

/// The associations of one listener.
pub(crate) struct Nat {
    /// The server for a new association, asked each time (the balancer's UDP choice).
    server: Box<dyn Fn() -> Option<Server> + Send + Sync>,
    idle: Duration,
    max: usize,
    replier: Arc<dyn Replier>,
    table: Arc<Mutex<HashMap<SocketAddr, Arc<Association>>>>,
    shutdown: CancellationToken,
}

struct Association {
    upstream: UdpSocket,
    codec: Codec,
    last_active: Mutex<Instant>,
}

impl Nat {
    /// Associations through the server `server` returns when each opens, at most `max` at once, each
    /// freed after `idle` without traffic or at `shutdown`.
    pub(crate) fn new(
        server: impl Fn() -> Option<Server> + Send + Sync + 'static,
        idle: Duration,
        max: usize,
        replier: Arc<dyn Replier>,
        shutdown: CancellationToken,
    ) -> Nat {
        Nat { server: Box::new(server), idle, max: max.max(1), replier, table: Arc::default(), shutdown }
    }

    /// A listener's associations as its settings say: the balancer's UDP choice, `udp_timeout` and
    /// `max_connections`.
    pub(crate) fn for_listener(
        settings: &Arc<crate::Settings>,
        replier: Arc<dyn Replier>,
        shutdown: &CancellationToken,
    ) -> Nat {
        Nat::new(
            settings.udp_chooser(),
            settings.udp_timeout,
            settings.max_connections,
            replier,
            shutdown.clone(),
        )
    }

    /// Sends one datagram of `client` for `target` through the server, opening its association first
    /// if needed; `out` is the caller's buffer to seal into, reused across datagrams. Failures are logged
    /// and the datagram dropped.
    pub(crate) async fn send(&self, client: SocketAddr, target: &Address, payload: &[u8], out: &mut Vec<u8>) {
        let association = match self.association(client).await {
            Ok(Some(association)) => association,
            Ok(None) => return,
            Err(error) => {
                debug!(%client, %error, "UDP association not opened; datagram dropped");
                return;
            }
        };
        association.touch();
        out.clear();
        if let Err(error) = association.codec.seal(target, payload, out) {
            debug!(%error, "UDP datagram not sealed; dropped");
            return;
        }
        if let Err(error) = association.upstream.send(out).await {
            debug!(%error, %target, "UDP send to server failed");
        }
    }

    /// Associations open now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.table).len()
    }

    async fn association(&self, client: SocketAddr) -> io::Result<Option<Arc<Association>>> {
        if let Some(association) = lock(&self.table).get(&client) {
            return Ok(Some(association.clone()));
        }
        if lock(&self.table).len() >= self.max {
            debug!(%client, max = self.max, "too many UDP associations; datagram dropped");
            return Ok(None);
        }
        let server =
            (self.server)().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no server configured"))?;
        let (upstream, codec) = crate::udp::open_upstream(&server).await?;
        udp_batch::prepare(&upstream);
        let receiver = BatchReceiver::new(REPLY_BATCH)?;
        let association = Arc::new(Association { upstream, codec, last_active: Mutex::new(Instant::now()) });
        lock(&self.table).insert(client, association.clone());
        debug!(%client, "UDP association opened");
        let (table, replier) = (self.table.clone(), self.replier.clone());
        let (idle, shutdown) = (self.idle, self.shutdown.clone());
        let downlink = association.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = downlink.run(client, idle, replier.as_ref(), receiver) => {}
            }
            let mut table = lock(&table);
            if table.get(&client).is_some_and(|current| Arc::ptr_eq(current, &downlink)) {
                table.remove(&client);
            }
            debug!(%client, "UDP association closed");
        });
        Ok(Some(association))
    }
}

impl Association {
    fn touch(&self) {
        *lock(&self.last_active) = Instant::now();
    }

    /// Server → client until `idle` passes without a datagram either way, received with `receiver`.
    async fn run(
        &self,
        client: SocketAddr,
        idle: Duration,
        replier: &dyn Replier,
        mut receiver: BatchReceiver,
    ) {
        loop {
            let deadline = *lock(&self.last_active) + idle;
            let received = tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if *lock(&self.last_active) + idle <= Instant::now() {
                        return;
                    }
                    continue;
                }
                received = receiver.recv(&self.upstream) => received,
            };
            match received {
                Ok(_) => {}
                // ICMP port unreachable from an earlier send surfaces here; the association stays up.
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(error) => {
                    debug!(%error, "UDP receive from server failed");
                    return;
                }
            };
            for datagram in receiver.datagrams() {
                let packet = datagram.bytes;
                let Some((source, payload)) = self.codec.open(packet) else { continue };
                let Some(payload) = packet.get(payload) else { continue };
                self.touch();
                replier.reply(&source, client, payload);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use ss_crypto::Method;

    use super::*;

    struct Nowhere;

    impl Replier for Nowhere {
        fn reply(&self, _: &Address, _: SocketAddr, _: &[u8]) {}
    }

    /// A "server" on loopback that only counts datagrams, and a Nat in front of it.
    async fn nat(idle: Duration, max: usize) -> (Nat, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let key = ss_crypto::Key::from_password(Method::Aes128Gcm, "p").unwrap();
        let server_entry = Server::new(addr.ip().to_string(), addr.port(), Method::Aes128Gcm, key);
        (
            Nat::new(
                move || Some(server_entry.clone()),
                idle,
                max,
                Arc::new(Nowhere),
                CancellationToken::new(),
            ),
            server,
        )
    }

    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn an_association_lives_until_it_has_been_idle_for_the_timeout() {
        let idle = Duration::from_secs(60);
        let (nat, server) = nat(idle, 16).await;
        let (client, target) = ("127.0.0.1:5000".parse().unwrap(), Address::Domain("t.test".into(), 53));
        let mut out = Vec::new();
        nat.send(client, &target, b"one", &mut out).await;
        let mut buf = [0u8; 256];
        tokio::time::timeout(Duration::from_secs(20), server.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(nat.len(), 1);
        // From here on the clock is tokio's, moved by hand.
        tokio::time::pause();
        tokio::time::advance(idle - Duration::from_secs(1)).await;
        nat.send(client, &target, b"two", &mut out).await;
        settle().await;
        assert_eq!(nat.len(), 1, "traffic keeps it open");
        tokio::time::advance(idle - Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(nat.len(), 1, "idle for less than the timeout since the last datagram");
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(nat.len(), 0, "closed after the timeout");
    }

    #[tokio::test]
    async fn associations_beyond_the_cap_are_not_opened() {
        let (nat, server) = nat(Duration::from_secs(60), 1).await;
        let target = Address::Domain("t.test".into(), 53);
        let mut out = Vec::new();
        nat.send("127.0.0.1:5000".parse().unwrap(), &target, b"one", &mut out).await;
        nat.send("127.0.0.1:5001".parse().unwrap(), &target, b"two", &mut out).await;
        nat.send("127.0.0.1:5000".parse().unwrap(), &target, b"three", &mut out).await;
        assert_eq!(nat.len(), 1);
        let mut buf = [0u8; 256];
        let mut received = 0;
        while tokio::time::timeout(Duration::from_millis(500), server.recv(&mut buf)).await.is_ok() {
            received += 1;
        }
        assert_eq!(received, 2, "the second client's datagram was dropped");
    }
}
