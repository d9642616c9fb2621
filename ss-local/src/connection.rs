//! One client connection on the local port, start to end:
//!
//! ```text
//! accept ─▶ request: SOCKS5, SOCKS4/4a or HTTP CONNECT (inbound/, handshake timeout)
//!        ─▶ connect to a server (next one on failure)
//!        ─▶ reply "succeeded" in the client's protocol ─▶ wait briefly for the application's first bytes
//!        ─▶ salt + header + first bytes in one write ─▶ relay both ways (half-close, idle timeout)
//! ```
//!
//! With several servers the balancer (`balance.rs`) orders them for each connection; each server that
//! cannot be reached is reported to it, and so is the first byte back (or the silence instead).
//!
//! With an ACL the route step comes first: a bypassed target is connected to directly and relayed in
//! plain text, the same reply and relay otherwise. Plain HTTP proxy requests (`GET http://...`) leave
//! this path for `inbound/forward.rs` once their first head is read.
//!
//! Tunnels and redir listeners know the target without a handshake ([`handle_fixed`]): the same route,
//! connect, first-payload wait and relay, with no client request and no reply.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rand_core::{OsRng, RngCore};
use ss_crypto::{Address, Decryptor, Encryptor, Salt};
use ss_net::buffer::{self, Buffer};
use ss_net::stream::{DecryptReader, EncryptWriter};
use ss_net::{RelayOutcome, SealingReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tracing::{debug, Instrument};

use crate::balance::passive::{FirstByte, Watch};
use crate::balance::{Kind, Outcome, ServerId};
use crate::clock_skew;
use crate::inbound::{self, Answer};
use crate::route::{Decision, Router};
use crate::socks5::{self, Command, Reply};
use crate::{Server, Settings};

/// Serves one accepted connection on a local port speaking `protocols`; every outcome is logged here.
/// The entry point of every listener that takes SOCKS or HTTP clients.
///
/// A plain function returning the instrumented future: an outer `async fn` awaiting `run_connection` would keep
/// its own copies of its arguments beside the inner future's.
pub(crate) fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    settings: Arc<Settings>,
    router: Option<Arc<Router>>,
    slot: ss_net::Slot,
    protocols: inbound::Protocols,
) -> impl std::future::Future<Output = ()> + Send {
    let span = tracing::debug_span!("local", %peer, target = tracing::field::Empty);
    run_connection(stream, settings, router, Start::Request(protocols), slot).instrument(span)
}

/// Serves one accepted connection whose target is known without a handshake: a tunnel's fixed target,
/// or the destination a redir listener read from the socket. Routed (ACL) and relayed as a SOCKS5
/// CONNECT would be; a failure closes the client's connection.
pub(crate) fn handle_fixed(
    stream: TcpStream,
    peer: SocketAddr,
    target: Address,
    settings: Arc<Settings>,
    router: Option<Arc<Router>>,
    slot: ss_net::Slot,
) -> impl std::future::Future<Output = ()> + Send {
    let span = tracing::debug_span!("forward", %peer, %target);
    run_connection(stream, settings, router, Start::Fixed(target), slot).instrument(span)
}

/// How a connection learns its target.
enum Start {
    /// From the client's request, in one of these protocols.
    Request(inbound::Protocols),
    /// Known from the listener (tunnel) or the socket (redir).
    Fixed(Address),
}

async fn run_connection(
    client: TcpStream,
    settings: Arc<Settings>,
    router: Option<Arc<Router>>,
    start: Start,
    _slot: ss_net::Slot,
) {
    let started = Instant::now();
    // The server list as it is now: a later replacement (online config) does not touch this connection.
    let servers = settings.current_servers();
    // Everything before the relay lives in this boxed future, freed by the time the relay (the long part)
    // runs: the handshake, routing, server connect, first payload and padding are not kept for the
    // connection's life. Inline, the connection's future would be as large as the largest of them (and
    // the compiler kept a place for `open`'s 1.6 KB result beside the relay's state).
    let opening = open_or_serve(client, &settings, &servers, &router, start, started);
    let Some(Established { client, writer, mut reader, server, first_len }) = Box::pin(opening).await else {
        return;
    };
    let (client_read, mut client_write) = client.into_split();
    // The header went out with the first payload; from here the client's bytes are sealed in the
    // reader's buffer and written to the server as they are.
    let (mut upstream_write, encryptor) = writer.into_parts();
    let mut client_read = SealingReader::new(client_read, encryptor);
    let outcome = ss_net::relay(
        (&mut client_read, &mut client_write),
        (&mut reader, &mut upstream_write),
        settings.idle_timeout,
    )
    .await;
    let outcome = RelayOutcome { a_to_b: client_read.payload_sent(), ..outcome };
    if let Some(metrics) = &settings.metrics {
        metrics.relayed(server, outcome.a_to_b + first_len, outcome.b_to_a);
    }
    let failed = outcome.end.is_failure();
    // Nothing back from the server at all, though we sent a request with data or the relay failed:
    // the server (or the path to it) is not answering. A byte back was reported as it came.
    let silent = reader.get_ref().silent().filter(|_| failed || outcome.a_to_b + first_len > 0);
    if let Some(watch) = silent {
        watch.report_failure();
    }
    if server.method.is_2022() {
        let ending = match reader.peer_clock_skew() {
            Some(skew) => Some(clock_skew::Ending::Answered(skew)),
            None => silent.map(|_| clock_skew::Ending::Silent),
        };
        if let Some(ending) = ending {
            clock_skew::watch().ended(&server.host, server.port, ending);
        }
    }
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
        ss_net::abort(upstream_write);
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
// Not boxed: `open` returned the large `Established` by value before the ACL existed; the other
// variant only makes the (short-lived) return value no larger.
#[allow(clippy::large_enum_variant)]
enum Opened<'a> {
    /// Through a server.
    Proxied(Established<'a>),
    /// Not through a server.
    Unproxied(Unproxied),
}

/// A connection that does not go through a server.
enum Unproxied {
    /// Bypassed by the ACL: connected directly, the client's early bytes already sent.
    Direct { client: TcpStream, upstream: TcpStream },
    /// A plain HTTP proxy client, its bytes read so far in `head`.
    Forward { client: TcpStream, head: Vec<u8> },
}

/// Opens the connection ([`open`], [`open_fixed`]): `Some` when it goes through a server, to be relayed;
/// `None` when it was served here (bypassed by the ACL, a plain HTTP proxy client) or is done.
async fn open_or_serve<'a>(
    client: TcpStream,
    settings: &'a Arc<Settings>,
    servers: &'a [Server],
    router: &Option<Arc<Router>>,
    start: Start,
    started: Instant,
) -> Option<Established<'a>> {
    let opened = match start {
        Start::Request(protocols) => open(client, settings, servers, router.as_deref(), protocols).await,
        Start::Fixed(target) => open_fixed(client, target, settings, servers, router.as_deref()).await,
    };
    match opened {
        Ok(Some(Opened::Proxied(established))) => Some(established),
        Ok(Some(Opened::Unproxied(unproxied))) => {
            serve_unproxied(unproxied, settings.clone(), router.clone(), started).await;
            None
        }
        Ok(None) => None,
        Err(error) => {
            debug!(%error, "connection ended");
            None
        }
    }
}

/// Relays a bypassed connection or serves a plain HTTP proxy client.
async fn serve_unproxied(
    unproxied: Unproxied,
    settings: Arc<Settings>,
    router: Option<Arc<Router>>,
    started: Instant,
) {
    match unproxied {
        Unproxied::Direct { client, upstream } => relay_direct(client, upstream, &settings, started).await,
        // Boxed: hyper's connection state exists only for HTTP proxy clients.
        Unproxied::Forward { client, head } => {
            Box::pin(inbound::forward::serve(client, head, settings, router)).await
        }
    }
}

/// A connection ready to relay: the request has gone out with the first payload.
struct Established<'a> {
    client: TcpStream,
    writer: EncryptWriter<OwnedWriteHalf>,
    reader: DecryptReader<FirstByte<OwnedReadHalf>>,
    server: &'a Server,
    first_len: u64,
}

/// Client request (any protocol), route, connect to a server (or the bypassed target), reply, first
/// payload and request header. `None` when the connection was answered and is done (UDP ASSOCIATE,
/// refused commands, bad requests).
async fn open<'a>(
    mut client: TcpStream,
    settings: &'a Settings,
    servers: &'a [Server],
    router: Option<&Router>,
    protocols: inbound::Protocols,
) -> io::Result<Option<Opened<'a>>> {
    let request = timeout(settings.handshake_timeout, inbound::accept(&mut client, settings, protocols))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client handshake timed out"))??;
    let (target, early, answer) = match request {
        inbound::Request::Socks5(handshake) => {
            let target = handshake.request.target;
            tracing::Span::current().record("target", tracing::field::display(&target));
            match handshake.request.command {
                Command::Connect if settings.tcp => {}
                Command::UdpAssociate if settings.udp => {
                    let Some(&server) = settings.balancer.order(Kind::Udp, servers).first() else {
                        socks5::send_reply(&mut client, Reply::GeneralFailure, &socks5::UNSPECIFIED_ADDRESS)
                            .await?;
                        return Ok(None);
                    };
                    // Boxed: UDP associations are rare, and inline its future would make every TCP
                    // connection's future ~1 KB bigger.
                    return Box::pin(crate::udp::associate(client, server, router)).await.map(|()| None);
                }
                Command::Connect | Command::UdpAssociate => {
                    socks5::send_reply(&mut client, Reply::NotAllowed, &socks5::UNSPECIFIED_ADDRESS).await?;
                    return Ok(None);
                }
                Command::Bind | Command::Other(_) => {
                    socks5::send_reply(&mut client, Reply::CommandNotSupported, &socks5::UNSPECIFIED_ADDRESS)
                        .await?;
                    return Ok(None);
                }
            }
            (target, handshake.early, Answer::Socks5)
        }
        inbound::Request::Connect { target, early, answer } => (target, early, answer),
        inbound::Request::Forward { head } => {
            return Ok(Some(Opened::Unproxied(Unproxied::Forward { client, head })))
        }
    };

    // Boxed: the ACL's decision may resolve a name (a resolver future of a few KiB) and connect directly;
    // inline, that would make every connection's future bigger for its whole life, ACL or not.
    let direct = match router {
        Some(router) => Box::pin(bypass(router, &target, settings)).await,
        None => None,
    };
    match direct {
        None => {}
        Some(Err(error)) => {
            answer.failed(&mut client, &error).await?;
            return Err(error);
        }
        Some(Ok(mut upstream)) => {
            answer.succeeded(&mut client).await?;
            upstream.write_all(&early).await?;
            return Ok(Some(Opened::Unproxied(Unproxied::Direct { client, upstream })));
        }
    }

    let (upstream, server, watch) = match connect_any(servers, settings).await {
        Ok(connected) => connected,
        Err(error) => {
            answer.failed(&mut client, &error).await?;
            return Err(error);
        }
    };
    answer.succeeded(&mut client).await?;

    let mut first = early;
    if first.is_empty() {
        first = read_first_payload(&mut client, settings).await?;
    }

    proxied(client, upstream, server, watch, &target, first)
        .await
        .map(|established| Some(Opened::Proxied(established)))
}

/// [`open`] for a connection whose target is known: route, connect, first payload and request header,
/// with no request and no reply.
async fn open_fixed<'a>(
    mut client: TcpStream,
    target: Address,
    settings: &'a Settings,
    servers: &'a [Server],
    router: Option<&Router>,
) -> io::Result<Option<Opened<'a>>> {
    let direct = match router {
        Some(router) => Box::pin(bypass(router, &target, settings)).await,
        None => None,
    };
    if let Some(upstream) = direct {
        let upstream = upstream?;
        return Ok(Some(Opened::Unproxied(Unproxied::Direct { client, upstream })));
    }
    let (upstream, server, watch) = connect_any(servers, settings).await?;
    let first = read_first_payload(&mut client, settings).await?;
    proxied(client, upstream, server, watch, &target, first)
        .await
        .map(|established| Some(Opened::Proxied(established)))
}

/// Sends the request header for `target` with the first payload to `server` and sets up both directions.
/// `watch` (the connect time) reports the server's first byte back to the balancer.
async fn proxied<'a>(
    client: TcpStream,
    upstream: TcpStream,
    server: &'a Server,
    watch: Connected,
    target: &Address,
    first: Vec<u8>,
) -> io::Result<Established<'a>> {
    let (upstream_read, upstream_write) = upstream.into_split();
    let (encryptor, decryptor) = request_ciphers(server, target, first.is_empty());
    let mut writer = EncryptWriter::new(upstream_write, encryptor);
    writer.write_all(&first).await?;
    writer.flush().await?;
    let (balancer, connect, deadline) = watch;
    let watch = Watch::new(balancer, ServerId::of(server), connect);
    let deadline = (!first.is_empty()).then_some(deadline);
    let reader = DecryptReader::new(FirstByte::new(upstream_read, watch, deadline), decryptor);
    Ok(Established { client, writer, reader, server, first_len: first.len() as u64 })
}

/// The ACL's decision for `target`: `None` to go through a server, else the outcome of connecting to the
/// bypassed target directly.
pub(crate) async fn bypass(
    router: &Router,
    target: &Address,
    settings: &Settings,
) -> Option<io::Result<TcpStream>> {
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

/// The balancer, how long the server's connect took and how long the server may stay silent after a
/// request with data: what the first byte's report needs.
pub(crate) type Connected = (Arc<crate::balance::Balancer>, std::time::Duration, std::time::Duration);

/// Connects to the first server that answers, in the balancer's order; servers that cannot be reached
/// are reported to it.
pub(crate) async fn connect_any<'a>(
    servers: &'a [Server],
    settings: &Settings,
) -> io::Result<(TcpStream, &'a Server, Connected)> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no server configured");
    for (index, server) in settings.balancer.order(Kind::Tcp, servers).into_iter().enumerate() {
        let metrics = settings.metrics.as_deref();
        if let (0, Some(metrics)) = (index, metrics) {
            metrics.chosen(server);
        }
        let started = Instant::now();
        let attempt = timeout(settings.connect_timeout, server.connect_tcp(&settings.socket));
        let attempt = attempt.await;
        if let Some(metrics) = metrics {
            match &attempt {
                Ok(Ok(_)) => metrics.connected(server, started.elapsed()),
                _ => metrics.connect_failed(server),
            }
        }
        match attempt {
            Ok(Ok(stream)) => {
                let watch = (settings.balancer.clone(), started.elapsed(), settings.connect_timeout);
                return Ok((stream, server, watch));
            }
            Ok(Err(error)) => {
                debug!(server = %server.host, port = server.port, %error, "server unreachable, trying the next");
                // A plugin between restarts is our own failure, not the server's.
                if error.kind() != io::ErrorKind::NotConnected {
                    settings.balancer.report(&ServerId::of(server), Outcome::Failed);
                }
                last_error = error;
            }
            Err(_) => {
                debug!(server = %server.host, port = server.port, "server connect timed out, trying the next");
                settings.balancer.report(&ServerId::of(server), Outcome::Failed);
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

/// The two directions' ciphers of a new request to `server` for `target`: a fresh salt, the identity
/// chain of a multi-user server, and the header's padding (more of it when the request has no payload).
pub(crate) fn request_ciphers(
    server: &Server,
    target: &Address,
    without_payload: bool,
) -> (Encryptor, Decryptor) {
    let salt = Salt::random(server.method, &mut OsRng);
    let padding = padding(without_payload);
    let encryptor = Encryptor::request_with_identity(
        server.method,
        &server.identity_keys,
        &server.key,
        salt,
        target,
        &padding,
    );
    (encryptor, Decryptor::response(server.method, &server.key, salt))
}

/// AEAD-2022 padding for the request header: required when there is no payload (1..=900 bytes), a little
/// otherwise so that header lengths do not repeat. Classic methods ignore it.
pub(crate) fn padding(without_payload: bool) -> Vec<u8> {
    let range = if without_payload { 900 } else { 64 };
    let len = (OsRng.next_u32() % range) as usize + usize::from(without_payload);
    vec![0u8; len]
}
