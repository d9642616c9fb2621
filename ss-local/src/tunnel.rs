//! Tunnels (libev's ss-tunnel as a mode): a local port whose TCP connections and UDP datagrams all go
//! to one fixed target through the server, e.g. DNS:
//!
//! ```text
//! ss-local -l 5353 -L 8.8.8.8:53 -u ...        dig @127.0.0.1 -p 5353 example.com   (UDP and +tcp)
//! ```
//!
//! TCP is served by `connection.rs` with the target known up front (no handshake, no reply). UDP is
//! served here: every datagram on the port goes to the target in the association of its sender
//! (`nat.rs`), and replies go back to that sender from the tunnel's own port. The port's datagrams are
//! received in batches ([`ss_net::udp_batch`]).

use std::net::SocketAddr;
use std::sync::Arc;

use ss_crypto::Address;
use ss_net::udp_batch::{self, BatchReceiver};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use crate::nat::{Nat, Replier};
use crate::udp::MAX_DATAGRAM;
use crate::Settings;

/// Relays the datagrams arriving on `socket` to `target` until `shutdown`.
pub(crate) async fn serve_udp(
    socket: UdpSocket,
    target: Address,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    if settings.current_servers().is_empty() {
        error!("no server for the tunnel's UDP");
        return;
    }
    let socket = Arc::new(socket);
    let replier = Arc::new(FromTunnel(socket.clone()));
    let nat = Nat::for_listener(&settings, replier, &shutdown);
    udp_batch::prepare(&socket);
    let mut receiver = match BatchReceiver::new(udp_batch::BATCH) {
        Ok(receiver) => receiver,
        Err(error) => {
            error!(%error, "no UDP receiver for the tunnel");
            return;
        }
    };
    let mut out = Vec::with_capacity(MAX_DATAGRAM);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = receiver.recv(&socket) => match received {
                Ok(_) => {}
                // ICMP port unreachable for an earlier reply surfaces here; the port stays open.
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(error) => {
                    error!(%error, "tunnel UDP receive failed; the tunnel's UDP port stops");
                    return;
                }
            },
        };
        for datagram in receiver.datagrams() {
            nat.send(datagram.from, &target, datagram.bytes, &mut out).await;
        }
    }
}

/// Replies leave from the tunnel's port, so the client sees the address it sent to.
struct FromTunnel(Arc<UdpSocket>);

impl Replier for FromTunnel {
    fn reply(&self, _source: &Address, client: SocketAddr, payload: &[u8]) {
        if let Err(error) = self.0.try_send_to(payload, client) {
            debug!(%client, %error, "tunnel UDP reply dropped");
        }
    }
}
