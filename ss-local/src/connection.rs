//! One SOCKS5 client connection, start to end:
//!
//! ```text
//! accept ─▶ SOCKS5 greeting + request (handshake timeout) ─▶ connect to a server (next one on failure)
//!        ─▶ reply "succeeded" ─▶ wait briefly for the application's first bytes
//!        ─▶ salt + header + first bytes in one write ─▶ relay both ways (half-close, idle timeout)
//! ```
//!
//! With an ACL the route step comes first: a bypassed target is connected to directly and relayed in
//! plain text, the same reply and relay otherwise.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rand_core::{OsRng, RngCore};
use ss_crypto::{Address, Decryptor, Encryptor, Salt};
use ss_net::buffer::{self, Buffer};
use ss_net::stream::{DecryptReader, EncryptWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tracing::{debug, Instrument};

use crate::route::{Decision, Router};
use crate::socks5::{self, Command, Reply};
use crate::{Server, Settings};

/// Serves one accepted SOCKS5 connection; every outcome is logged here.
///
/// A plain function returning the instrumented future: an outer `async fn` awaiting `run_connection` would keep
/// its own copies of its arguments beside the inner future's.
pub(crate) fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    settings: Arc<Settings>,
    router: Option<Arc<Router>>,
    slot: ss_net::Slot,
) -> impl std::future::Future<Output = ()> + Send {
    let span = tracing::debug_span!("socks", %peer, target = tracing::field::Empty);
    run_connection(stream, settings, router, slot).instrument(span)
}

async fn run_connection(
    client: TcpStream,
    settings: Arc<Settings>,
    router: Option<Arc<Router>>,
    _slot: ss_net::Slot,
) {
    let started = Instant::now();
    // Everything before the relay lives in `open`'s future, boxed so that it is freed by the time the relay
    // (the long part) runs: the handshake, routing, server connect, first payload and padding are not kept
    // for the connection's life. Inline, the connection's future would be as large as the largest of them.
    // The server list as it is now: a later replacement (online config) does not touch this connection.
    let servers = settings.current_servers();
    let Established { client, mut writer, mut reader, server, first_len } =
        match Box::pin(open(client, &settings, &servers, router.as_deref())).await {
            Ok(Some(Opened::Proxied(established))) => established,
            Ok(Some(Opened::Direct { client, upstream })) => {
                return relay_direct(client, upstream, &settings, started).await
            }
            Ok(None) => return,
            Err(error) => {
                debug!(%error, "connection ended");
                return;
            }
        };
    let (client_read, mut client_write) = client.into_split();
    let mut client_read = ss_net::PooledReader::new(client_read);
    let outcome = ss_net::relay(
        (&mut client_read, &mut client_write),
        (&mut reader, &mut writer),
        settings.idle_timeout,
    )
    .await;
    let failed = outcome.end.is_failure();
    debug!(
        server = %format_args!("{}:{}", server.host, server.port),
        up = outcome.a_to_b + first_len,
        down = outcome.b_to_a,
        duration_ms = started.elapsed().as_millis() as u64,
        end = %outcome.end,
        "connection closed"
    );
    if failed {
        ss_net::abort(client_write);
        ss_net::abort(writer.into_inner());
    }
}

/// Plain relay between the client and a bypassed target.
async fn relay_direct(client: TcpStream, upstream: TcpStream, settings: &Settings, started: Instant) {
    let (client_read, mut client_write) = client.into_split();
    let (upstream_read, mut upstream_write) = upstream.into_split();
    let mut client_read = ss_net::PooledReader::new(client_read);
    let mut upstream_read = ss_net::PooledReader::new(upstream_read);
    let outcome = ss_net::relay(
        (&mut client_read, &mut client_write),
        (&mut upstream_read, &mut upstream_write),
        settings.idle_timeout,
    )
    .await;
    debug!(
        route = "direct",
        up = outcome.a_to_b,
        down = outcome.b_to_a,
        duration_ms = started.elapsed().as_millis() as u64,
        end = %outcome.end,
        "connection closed"
    );
    if outcome.end.is_failure() {
        ss_net::abort(client_write);
        ss_net::abort(upstream_write);
    }
}

/// What `open` hands to the relay.
// Not boxed: `open` returned the large `Established` by value before the ACL existed; the direct
// variant only makes the (short-lived) return value no larger.
#[allow(clippy::large_enum_variant)]
enum Opened<'a> {
    /// Through a server.
    Proxied(Established<'a>),
    /// Bypassed by the ACL: connected directly, the client's early bytes already sent.
    Direct { client: TcpStream, upstream: TcpStream },
}

/// A connection ready to relay: the request has gone out with the first payload.
struct Established<'a> {
    client: TcpStream,
    writer: EncryptWriter<OwnedWriteHalf>,
    reader: DecryptReader<OwnedReadHalf>,
    server: &'a Server,
    first_len: u64,
}

/// SOCKS5 handshake, route, connect to a server (or the bypassed target), reply, first payload and
/// request header. `None` when the connection was answered and is done (UDP ASSOCIATE, refused commands).
async fn open<'a>(
    mut client: TcpStream,
    settings: &'a Settings,
    servers: &'a [Server],
    router: Option<&Router>,
) -> io::Result<Option<Opened<'a>>> {
    settings.socket.accepted(&client);
    let handshake = timeout(settings.handshake_timeout, socks5::handshake(&mut client))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "SOCKS5 handshake timed out"))?
        .map_err(io::Error::other)?;
    let target = handshake.request.target;
    tracing::Span::current().record("target", tracing::field::display(&target));
    match handshake.request.command {
        Command::Connect if settings.tcp => {}
        Command::UdpAssociate if settings.udp => {
            let Some(server) = servers.first() else {
                socks5::send_reply(&mut client, Reply::GeneralFailure, &socks5::UNSPECIFIED_ADDRESS).await?;
                return Ok(None);
            };
            // Boxed: UDP associations are rare, and inline its future would make every TCP connection's
            // future ~1 KB bigger.
            return Box::pin(crate::udp::associate(client, server, router)).await.map(|()| None);
        }
        Command::Connect | Command::UdpAssociate => {
            socks5::send_reply(&mut client, Reply::NotAllowed, &socks5::UNSPECIFIED_ADDRESS).await?;
            return Ok(None);
        }
        Command::Bind | Command::Other(_) => {
            socks5::send_reply(&mut client, Reply::CommandNotSupported, &socks5::UNSPECIFIED_ADDRESS).await?;
            return Ok(None);
        }
    }

    // Boxed: the ACL's decision may resolve a name (a resolver future of a few KiB) and connect directly;
    // inline, that would make every connection's future bigger for its whole life, ACL or not.
    let direct = match router {
        Some(router) => Box::pin(bypass(router, &target, settings)).await,
        None => None,
    };
    match direct {
        None => {}
        Some(Err(error)) => {
            socks5::send_reply(&mut client, Reply::HostUnreachable, &socks5::UNSPECIFIED_ADDRESS).await?;
            return Err(error);
        }
        Some(Ok(mut upstream)) => {
            socks5::send_reply(&mut client, Reply::Succeeded, &socks5::UNSPECIFIED_ADDRESS).await?;
            upstream.write_all(&handshake.early).await?;
            return Ok(Some(Opened::Direct { client, upstream }));
        }
    }

    let (upstream, server) = match connect_any(servers, settings).await {
        Ok(connected) => connected,
        Err(error) => {
            // A plugin between restarts is our failure, not the network's.
            let reply = match error.kind() {
                io::ErrorKind::NotConnected => Reply::GeneralFailure,
                _ => Reply::HostUnreachable,
            };
            socks5::send_reply(&mut client, reply, &socks5::UNSPECIFIED_ADDRESS).await?;
            return Err(error);
        }
    };
    socks5::send_reply(&mut client, Reply::Succeeded, &socks5::UNSPECIFIED_ADDRESS).await?;

    let mut first = handshake.early;
    if first.is_empty() {
        first = read_first_payload(&mut client, settings).await?;
    }

    let (upstream_read, upstream_write) = upstream.into_split();
    let salt = Salt::random(server.method, &mut OsRng);
    let padding = padding(first.is_empty());
    let encryptor = Encryptor::request(server.method, &server.key, salt, &target, &padding);
    let mut writer = EncryptWriter::new(upstream_write, encryptor);
    writer.write_all(&first).await?;
    writer.flush().await?;
    let decryptor = Decryptor::response(server.method, &server.key, salt);
    let reader = DecryptReader::new(upstream_read, decryptor);
    Ok(Some(Opened::Proxied(Established { client, writer, reader, server, first_len: first.len() as u64 })))
}

/// The ACL's decision for `target`: `None` to go through a server, else the outcome of connecting to the
/// bypassed target directly.
async fn bypass(router: &Router, target: &Address, settings: &Settings) -> Option<io::Result<TcpStream>> {
    match router.decide(target).await {
        Ok(Decision::Proxy) => None,
        Ok(Decision::Direct(addresses)) => {
            let ordered = ss_net::happy_eyeballs::interleave(&addresses, settings.resolve.ipv6_first);
            let race = ss_net::happy_eyeballs::race(&ordered, |addr| settings.socket.connect(addr));
            Some(match timeout(settings.connect_timeout, race).await {
                Ok(connected) => connected.map(|(stream, _)| stream),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connecting to the bypassed target timed out",
                )),
            })
        }
        Err(error) => Some(Err(error)),
    }
}

/// Connects to the first server that answers, in configured order.
async fn connect_any<'a>(servers: &'a [Server], settings: &Settings) -> io::Result<(TcpStream, &'a Server)> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no server configured");
    for server in servers {
        let attempt = timeout(settings.connect_timeout, server.connect_tcp(&settings.socket));
        match attempt.await {
            Ok(Ok(stream)) => return Ok((stream, server)),
            Ok(Err(error)) => {
                debug!(server = %server.host, port = server.port, %error, "server unreachable, trying the next");
                last_error = error;
            }
            Err(_) => {
                debug!(server = %server.host, port = server.port, "server connect timed out, trying the next");
                last_error = io::Error::new(io::ErrorKind::TimedOut, "connecting to the server timed out");
            }
        }
    }
    Err(last_error)
}

/// The application's first bytes if it sends any within the wait, so they share the header's write.
async fn read_first_payload(client: &mut TcpStream, settings: &Settings) -> io::Result<Vec<u8>> {
    let mut buf = Buffer::take(buffer::START);
    match timeout(settings.first_payload_wait, client.read(&mut buf)).await {
        Ok(read) => Ok(buf[..read?].to_vec()),
        Err(_) => Ok(Vec::new()),
    }
}

/// AEAD-2022 padding for the request header: required when there is no payload (1..=900 bytes), a little
/// otherwise so that header lengths do not repeat. Classic methods ignore it.
fn padding(without_payload: bool) -> Vec<u8> {
    let range = if without_payload { 900 } else { 64 };
    let len = (OsRng.next_u32() % range) as usize + usize::from(without_payload);
    vec![0u8; len]
}
