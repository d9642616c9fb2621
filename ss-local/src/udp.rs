//! SOCKS5 UDP ASSOCIATE: a relay socket per association, datagrams sealed to the server and replies
//! opened and handed back with a SOCKS5 UDP header.
//!
//! ```text
//! application ──(RSV FRAG ATYP addr port | data)──▶ relay socket ──seal──▶ server
//! application ◀─(RSV FRAG ATYP src  port | data)─── relay socket ◀─open─── server
//! ```
//!
//! The association belongs to the first sender from the control connection's IP: its address and port
//! are fixed by its first datagram, and datagrams from any other address or port (RFC 1928, section 7),
//! and fragments (FRAG != 0), are dropped. Replies go only to that sender. The association ends when its
//! TCP control connection closes.
//!
//! Both ways take every datagram waiting with one receive and send what they relay in GSO runs
//! ([`ss_net::udp_batch`]): [`BATCH`] buffers per direction, allocated as the association's traffic needs
//! them. Each datagram is still checked on its own.
//!
//! With an ACL, datagrams to targets it bypasses are sent directly from here instead (`udp_direct.rs`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use ss_crypto::udp::{Header2022, Origin, Sender, Udp2022, UdpClassic, XNONCE_LEN};
use ss_crypto::{Address, Key, Method, Salt, SealError};
use ss_net::udp_batch::{self, BatchReceiver, BatchSender};
use ss_net::unix_now;
use ss_net::{canonical_addr, PacketWindow};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;
use tracing::debug;

use crate::route::Router;
use crate::socks5::{self, Reply};
use crate::udp_direct::Direct;
use crate::Server;

pub(crate) const MAX_DATAGRAM: usize = 65_535;
/// Most receive buffers of each direction of an association (64 KiB each, added only while a receive
/// fills all there are); a GRO buffer holds many datagrams.
const BATCH: usize = 16;

/// Serves one UDP ASSOCIATE request on its control connection until the client closes it.
pub(crate) async fn associate(
    mut control: TcpStream,
    server: &Server,
    router: Option<&Router>,
) -> io::Result<()> {
    let client_ip = canonical_addr(control.peer_addr()?).ip();
    let relay = UdpSocket::bind((control.local_addr()?.ip(), 0)).await?;
    let (upstream, codec) = open_upstream(server).await?;
    udp_batch::prepare(&relay);
    udp_batch::prepare(&upstream);
    let direct = match router {
        Some(router) => Some(Direct::bind(router).await?),
        None => None,
    };
    socks5::send_reply(&mut control, Reply::Succeeded, &Address::Ip(relay.local_addr()?)).await?;

    let client = Mutex::new(None);
    let up = Uplink { relay: &relay, upstream: &upstream, direct: direct.as_ref(), codec: &codec };
    tokio::select! {
        () = wait_for_close(&mut control) => debug!("UDP association closed by its control connection"),
        result = uplink(up, client_ip, &client) => result?,
        result = downlink(&relay, &upstream, &client, &codec) => result?,
        result = Direct::downlink(direct.as_ref(), &relay, &client) => result?,
    }
    Ok(())
}

async fn wait_for_close(control: &mut TcpStream) {
    let mut sink = [0u8; 64];
    while matches!(control.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Where the application's datagrams go: sealed to the server, or directly when the ACL bypasses them.
struct Uplink<'a> {
    relay: &'a UdpSocket,
    upstream: &'a UdpSocket,
    direct: Option<&'a Direct<'a>>,
    codec: &'a Codec,
}

/// Application → server (or → bypassed target).
async fn uplink(up: Uplink<'_>, client_ip: IpAddr, client: &Mutex<Option<SocketAddr>>) -> io::Result<()> {
    let Uplink { relay, upstream, direct, codec } = up;
    let server = upstream.peer_addr()?;
    let mut receiver = BatchReceiver::new(BATCH)?;
    let mut sender = BatchSender::<()>::new();
    loop {
        receiver.recv(relay).await?;
        for datagram in receiver.datagrams() {
            let (from, bytes) = (datagram.from, &*datagram.bytes);
            if canonical_addr(from).ip() != client_ip {
                continue;
            }
            let Ok((header, used)) = socks5::parse_udp_header(bytes) else { continue };
            if header.frag != 0 {
                continue;
            }
            {
                let mut client = client.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match *client {
                    None => *client = Some(from),
                    Some(first) if first == from => {}
                    Some(_) => {
                        debug!(%from, "UDP datagram from another port of the client dropped");
                        continue;
                    }
                }
            }
            let payload = bytes.get(used..).unwrap_or_default();
            if let Some(direct) = direct {
                if direct.send_if_bypassed(&header.target, payload).await {
                    continue;
                }
            }
            if let Err(error) = sender.push(server, (), |out| codec.seal(&header.target, payload, out)) {
                debug!(%error, "UDP datagram not sealed; dropped");
            }
        }
        // Failures are logged by the sender; UDP has no one to tell.
        sender.send(upstream).await.for_each(drop);
    }
}

/// Server → application.
async fn downlink(
    relay: &UdpSocket,
    upstream: &UdpSocket,
    client: &Mutex<Option<SocketAddr>>,
    codec: &Codec,
) -> io::Result<()> {
    let mut receiver = BatchReceiver::new(BATCH)?;
    let mut sender = BatchSender::<()>::new();
    loop {
        match receiver.recv(upstream).await {
            Ok(_) => {}
            // ICMP port unreachable from an earlier send surfaces here; the association stays up.
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(error) => return Err(error),
        }
        let Some(to) = *client.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) else { continue };
        for datagram in receiver.datagrams() {
            let packet = datagram.bytes;
            let Some((source, payload)) = codec.open(packet) else { continue };
            let Some(payload) = packet.get(payload) else { continue };
            let pushed = sender.push(to, (), |out| {
                socks5::write_udp_header(&source, out);
                out.extend_from_slice(payload);
                Ok::<_, std::convert::Infallible>(())
            });
            pushed.unwrap_or_else(|never| match never {});
        }
        sender.send(relay).await.for_each(drop);
    }
}

/// The client half of the datagram protocol for one association (also the tunnel's and redir's, in
/// `nat.rs`).
pub(crate) enum Codec {
    Classic(UdpClassic),
    Aead2022(Box<Session2022>),
}

pub(crate) struct Session2022 {
    cipher: Udp2022,
    session_id: u64,
    state: Mutex<SessionState>,
}

struct SessionState {
    next_packet_id: u64,
    /// The server sessions answering this one, each with its packet window.
    servers: ServerSessions,
}

/// How long a server session's window outlives its last packet: a copy of one of its packets passes the
/// timestamp check for at most 2 x 30 s + the last whole second.
const SERVER_SESSION_RETENTION: Duration = Duration::from_secs(2 * ss_crypto::tcp::MAX_TIME_SKEW + 1);
/// Server sessions tracked at once; a server starts a new one only when it loses the old association, so
/// more than two at a time is already unusual.
const MAX_SERVER_SESSIONS: usize = 8;

/// Packet windows of the server sessions seen recently, so that packets of an old session mixed with
/// those of a new one are each checked against their own window (instead of a session switch restarting
/// the window, which let every old packet through again).
#[derive(Default)]
struct ServerSessions {
    sessions: Vec<ServerSession>,
}

struct ServerSession {
    id: u64,
    window: PacketWindow,
    last_seen: Instant,
}

impl ServerSessions {
    /// Records `packet_id` of server session `id` at `now`; false for a duplicate or too old a packet.
    fn accept(&mut self, id: u64, packet_id: u64, now: Instant) -> bool {
        self.sessions
            .retain(|session| now.saturating_duration_since(session.last_seen) < SERVER_SESSION_RETENTION);
        let index = match self.sessions.iter().position(|session| session.id == id) {
            Some(index) => index,
            None => {
                if self.sessions.len() >= MAX_SERVER_SESSIONS {
                    let quietest =
                        self.sessions.iter().enumerate().min_by_key(|(_, session)| session.last_seen);
                    if let Some((index, _)) = quietest {
                        self.sessions.swap_remove(index);
                    }
                }
                self.sessions.push(ServerSession { id, window: PacketWindow::default(), last_seen: now });
                self.sessions.len() - 1
            }
        };
        let Some(session) = self.sessions.get_mut(index) else { return false };
        if !session.window.accept(packet_id) {
            return false;
        }
        session.last_seen = now;
        true
    }
}

/// A new association's socket to `server` (bound to the unspecified address of the server's family and
/// connected to it) and its codec; shared by SOCKS5 UDP ASSOCIATE and the tunnel/redir NAT.
pub(crate) async fn open_upstream(server: &Server) -> io::Result<(UdpSocket, Codec)> {
    let codec = Codec::new(server.method, &server.identity_keys, &server.key)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the key does not fit the method"))?;
    let server_addr = server.udp_address().await?;
    let unspecified = if server_addr.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let upstream = UdpSocket::bind((unspecified, 0)).await?;
    upstream.connect(server_addr).await?;
    Ok((upstream, codec))
}

impl Codec {
    /// `None` only if the key does not fit the method. `identity_keys`: a multi-user server's iPSK
    /// chain (SIP023; `key` is then the uPSK).
    pub(crate) fn new(method: Method, identity_keys: &[Key], key: &Key) -> Option<Codec> {
        let Some(cipher) = Udp2022::with_identity(method, identity_keys, key) else {
            return UdpClassic::new(method, key).map(Codec::Classic);
        };
        Some(Codec::Aead2022(Box::new(Session2022 {
            cipher,
            session_id: OsRng.next_u64(),
            state: Mutex::new(SessionState { next_packet_id: 1, servers: ServerSessions::default() }),
        })))
    }

    pub(crate) fn seal(&self, target: &Address, payload: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        match self {
            Codec::Classic(cipher) => {
                cipher.seal(Salt::random(cipher.method(), &mut OsRng), target, payload, out)
            }
            Codec::Aead2022(session) => {
                let packet_id = {
                    let mut state = session.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    state.next_packet_id += 1;
                    state.next_packet_id - 1
                };
                let header = Header2022 {
                    session_id: session.session_id,
                    packet_id,
                    sender: Sender::Client,
                    timestamp: unix_now(),
                };
                let mut nonce = [0u8; XNONCE_LEN];
                OsRng.fill_bytes(&mut nonce);
                session.cipher.seal(&header, &[], target, payload, &nonce, out)
            }
        }
    }

    /// Opens a server datagram; `None` drops it (bad tag, another session's reply, replayed packet).
    pub(crate) fn open(&self, packet: &mut [u8]) -> Option<(Address, Range<usize>)> {
        match self {
            Codec::Classic(cipher) => cipher.open(packet).ok(),
            Codec::Aead2022(session) => {
                let opened = session.cipher.open(packet, unix_now(), Origin::Server).ok()?;
                if opened.header.sender != (Sender::Server { client_session_id: session.session_id }) {
                    return None;
                }
                let mut state = session.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let (id, packet_id) = (opened.header.session_id, opened.header.packet_id);
                state
                    .servers
                    .accept(id, packet_id, Instant::now())
                    .then_some((opened.address, opened.payload))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_old_server_session_keeps_its_window_while_a_new_one_runs() {
        let mut sessions = ServerSessions::default();
        assert!(sessions.accept(1, 10, Instant::now()));
        assert!(sessions.accept(2, 1, Instant::now()), "the server restarted its session");
        assert!(!sessions.accept(1, 10, Instant::now()), "an old packet replayed after the switch");
        assert!(sessions.accept(1, 11, Instant::now()), "the old session's late packets still arrive");
        assert!(!sessions.accept(2, 1, Instant::now()), "and switching back does not reset the new one");
        assert!(!sessions.accept(1, 11, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_session_is_forgotten_once_its_packets_are_stale() {
        let mut sessions = ServerSessions::default();
        assert!(sessions.accept(1, 10, Instant::now()));
        tokio::time::advance(SERVER_SESSION_RETENTION - Duration::from_millis(1)).await;
        assert!(!sessions.accept(1, 10, Instant::now()), "kept until no copy can pass the timestamp check");
        tokio::time::advance(SERVER_SESSION_RETENTION).await;
        assert!(sessions.accept(3, 1, Instant::now()));
        assert_eq!(sessions.sessions.len(), 1, "the stale one is gone");
        for id in 10..100 {
            assert!(sessions.accept(id, 1, Instant::now()));
            assert!(sessions.sessions.len() <= MAX_SERVER_SESSIONS);
        }
    }
}
