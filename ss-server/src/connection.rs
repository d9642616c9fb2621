//! One client connection, start to end:
//!
//! ```text
//! accept ─▶ [users: find the user] ─▶ read salt + first record ─▶ replay check ─▶ rest of the header
//!        ─▶ target policy + resolve                              (all within the handshake deadline)
//!        ─▶ connect (timeout) ─▶ relay both ways (half-close, idle timeout)
//! ```
//!
//! Anything that fails before the target is known to be a real client's (bad tag, bad header, replayed
//! salt, stale timestamp, bad address type) gets the same silent treatment: nothing is written, nothing is
//! connected, the server reads and discards until the handshake deadline counted from accept, then closes
//! with a FIN. A prober learns the same thing whatever it sends: how long the deadline is.
//!
//! A multi-user server ([`crate::users`]) first reads a fixed number of bytes (salt and identity header,
//! or salt and first record) and finds the user whose key opens them; the stream and the response are then
//! keyed by that user, the connection carries its `Arc<User>`, and it ends when a reload removes the user.
//! No user, or a user over a limit ([`crate::limits`]: quota spent, too many connections or devices),
//! is an authentication failure like any other. Without users none of this runs.
//!
//! A client the ACL refuses (`[black_list]`, or not in the `[white_list]` under `[reject_all]`) gets the
//! same silent treatment from the start. Before any of that, [`crate::admission`] decides whether the connection's source may start another
//! handshake (one host cannot own every slot) and how long the handshake deadline is (shorter when most
//! slots are taken by connections still in their handshake). Refusals are logged at debug and counted
//! for the periodic summary ([`crate::rejections`]).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rand_core::OsRng;
use ss_crypto::{Address, DecryptError, Decryptor, Encryptor, Key, Salt};
use ss_net::stream::{DecryptReader, EncryptWriter};
use ss_net::{RelayOutcome, SealingReader};
use ss_net::{ResolveError, Resolver};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, Instrument};

use crate::limits::Refusal;
use crate::metered::{self, Ended};
use crate::policy::AddressGuard;
use crate::rejections::Reason;
use crate::users::{search, Admitted, Users};
use crate::Shared;

/// Serves one accepted connection; every outcome is logged here and nothing is returned.
///
/// A plain function returning the instrumented future rather than an `async fn` awaiting it: an outer
/// state machine would keep its own copies of `stream` and `peer` beside the inner one.
pub(crate) fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    slot: ss_net::Slot,
) -> impl std::future::Future<Output = ()> + Send {
    let span =
        tracing::debug_span!("tcp", %peer, user = tracing::field::Empty, target = tracing::field::Empty);
    run_connection(stream, peer, shared, slot).instrument(span)
}

async fn run_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, _slot: ss_net::Slot) {
    let accepted = Instant::now();
    // Boxed: the handshake's state (the request being read, a refusal's discard loop) is freed once the
    // request is in, so the relay's state alone sets the size of every connection's future.
    let Some(request) = Box::pin(accept_request(stream, peer, &shared, accepted)).await else { return };
    let Accepted { mut reader, mut write_half, salt: request_salt, target, user } = request;
    tracing::Span::current().record("target", tracing::field::display(&target));

    let settings = &shared.settings;
    let method = settings.method;
    let connected = connect(&target, &shared.resolver, &shared.guard, settings).await;
    drop(target);
    let upstream = match connected {
        Ok(upstream) => upstream,
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            tracing::info!(%error, "target refused by the address policy or the ACL");
            settings.stats.rejections.count(Reason::Policy);
            return close(write_half).await;
        }
        Err(error) => {
            debug!(%error, "cannot reach target");
            return close(write_half).await;
        }
    };
    let _relaying = crate::metrics::Relaying::new(&settings.stats);
    // Moved into the block and split there, as `stream` above, so the future holds only the halves.
    let (encryptor, upstream_read, mut upstream_write) = {
        let upstream = upstream;
        let response_salt = Salt::random(method, &mut OsRng);
        shared.replay.insert(&response_salt);
        let key = user.as_ref().map_or(&settings.key, |user| user.key());
        let encryptor = Encryptor::response(method, key, response_salt, request_salt);
        let (upstream_read, upstream_write) = upstream.into_split();
        (encryptor, upstream_read, upstream_write)
    };
    let outcome = match &user {
        None => {
            // The response is sealed in the upstream reader's buffer and written to the client as it is.
            let mut upstream_read = SealingReader::new(upstream_read, encryptor);
            let client = (&mut reader, &mut write_half);
            let upstream = (&mut upstream_read, &mut upstream_write);
            let outcome = ss_net::relay(client, upstream, settings.idle_timeout).await;
            reset_if_failed(&outcome, write_half, upstream_write);
            RelayOutcome { b_to_a: upstream_read.payload_sent(), ..outcome }
        }
        // Boxed: the counted relay's state is larger than the plain one's, and an async fn's future is as
        // large as its largest await point, so inline it would grow every connection of every server.
        Some(user) => {
            let relay =
                relay_metered(user, reader, write_half, upstream_read, upstream_write, encryptor, settings);
            let Some(outcome) = Box::pin(relay).await else { return };
            outcome
        }
    };
    debug!(
        up = outcome.a_to_b,
        down = outcome.b_to_a,
        duration_ms = accepted.elapsed().as_millis() as u64,
        end = %outcome.end,
        "connection closed"
    );
}

/// The relay of a multi-user connection, counted, paced and bounded ([`metered::relay_counted`]), sealed
/// by copying ([`EncryptWriter`]): the meters count payload bytes as the writer takes them. `None` when
/// it was ended from outside (the user removed, the quota spent), both sides closed as that asks.
async fn relay_metered(
    user: &crate::users::User,
    mut reader: DecryptReader<OwnedReadHalf>,
    mut write_half: OwnedWriteHalf,
    upstream_read: OwnedReadHalf,
    mut upstream_write: OwnedWriteHalf,
    encryptor: Encryptor,
    settings: &crate::Settings,
) -> Option<RelayOutcome> {
    let mut writer = EncryptWriter::new(&mut write_half, encryptor);
    let mut upstream_read = ss_net::PooledReader::new(upstream_read);
    let client = (&mut reader, &mut writer);
    let upstream = (&mut upstream_read, &mut upstream_write);
    match metered::relay_counted(user, client, upstream, settings.idle_timeout).await {
        Ok(outcome) => {
            drop(writer);
            reset_if_failed(&outcome, write_half, upstream_write);
            Some(outcome)
        }
        Err(Ended::Removed) => {
            debug!("user removed by a reload; connection ended");
            drop(writer);
            ss_net::abort(write_half);
            ss_net::abort(upstream_write);
            None
        }
        Err(Ended::QuotaSpent) => {
            // What was written within the quota is delivered, then a FIN: the client sees the transfer
            // end rather than lose its last bytes to a reset.
            debug!("the user's quota is spent; connection ended");
            ss_net::abort(upstream_write);
            let _ = timeout(settings.handshake_timeout, writer.shutdown()).await;
            None
        }
    }
}

/// Resets both sides of a relay that failed: a peer that reads until EOF must not take a broken
/// transfer for a complete one.
fn reset_if_failed(outcome: &RelayOutcome, client: OwnedWriteHalf, upstream: OwnedWriteHalf) {
    if outcome.end.is_failure() {
        ss_net::abort(client);
        ss_net::abort(upstream);
    }
}

/// A connection whose request has been read and checked.
struct Accepted {
    reader: DecryptReader<OwnedReadHalf>,
    write_half: OwnedWriteHalf,
    /// The client's salt (the response is bound to it).
    salt: Salt,
    target: Address,
    /// On a multi-user server, the user, admitted by their limits.
    user: Option<Admitted>,
}

/// Admits the connection, reads its request and checks it. Every refusal (the source's handshake
/// budget, the ACL, a probe, a replay, a timeout, shutdown) is handled here, silently as the protocol
/// asks; `None` then.
async fn accept_request(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    accepted: Instant,
) -> Option<Accepted> {
    let Some(in_handshake) = shared.admission.admit(peer) else {
        debug!("source has four times its budget of connections in their handshake; closed at once");
        shared.settings.stats.rejections.count(Reason::SourceBudget);
        return None;
    };
    let deadline = accepted + in_handshake.deadline(shared.settings.handshake_timeout);
    // `stream` is moved into the block and split there: an async fn keeps a parameter in its future for
    // the whole call unless it is moved out (rust-lang/rust#62958), which would hold a dead TcpStream.
    let (read_half, write_half) = {
        let stream = stream;
        stream.into_split()
    };
    if !shared.admits_client(peer.ip()) {
        debug!("client refused by the ACL");
        shared.settings.stats.rejections.count(Reason::Acl);
        tokio::select! {
            discarded = reject(read_half, write_half, deadline) => crate::metrics::observe_probe(shared, Some(Reason::Acl), discarded),
            () = shared.shutdown.cancelled() => {}
        };
        return None;
    }
    let method = shared.settings.method;
    let mut reader = DecryptReader::new(read_half, Decryptor::request(method, &shared.settings.key));

    // At shutdown a connection that has not authenticated yet is not worth waiting for.
    let handshake = tokio::select! {
        handshake = timeout_at(deadline, read_request(&mut reader, shared, peer)) => handshake,
        () = shared.shutdown.cancelled() => {
            close(write_half).await;
            return None;
        }
    };
    match handshake {
        Ok(Ok(Ok((salt, target, user)))) => Some(Accepted { reader, write_half, salt, target, user }),
        Ok(Ok(Err(Replayed))) => {
            debug!("replayed request refused");
            shared.settings.stats.rejections.count(Reason::Replay);
            let received = reader.received();
            let discarded = reject(reader.into_inner(), write_half, deadline).await;
            crate::metrics::observe_probe(shared, Some(Reason::Replay), received + discarded);
            None
        }
        Ok(Err(error)) => {
            let reason = log_probe(&error, shared, reader.peer_clock_skew());
            let received = reader.received();
            tokio::select! {
                discarded = reject(reader.into_inner(), write_half, deadline) => {
                    crate::metrics::observe_probe(shared, reason, received + discarded);
                }
                () = shared.shutdown.cancelled() => {}
            };
            None
        }
        Err(_) => {
            debug!("handshake timed out");
            close(write_half).await;
            None
        }
    }
}

/// A request whose salt the replay filter already holds.
struct Replayed;

/// What a handshake yields: the client's salt, its target, and on a multi-user server its user.
type Request = (Salt, Address, Option<Admitted>);

/// Reads the request: its salt goes into the replay filter the moment the first record authenticated
/// (for 2022 the fixed header, timestamp checked), before the rest of the header is waited for, so two
/// copies of one request racing through their handshakes cannot both pass. A multi-user server first
/// finds the user from a fixed number of bytes ([`crate::users::search`]); no user is an authentication failure.
async fn read_request<R>(
    reader: &mut DecryptReader<R>,
    shared: &Shared,
    peer: SocketAddr,
) -> io::Result<Result<Request, Replayed>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let user = match (&shared.settings.users, &shared.settings.owner) {
        (Some(users), _) => Some(
            identify(reader, users, &shared.settings.key, peer, shared.settings.metrics.as_deref()).await?,
        ),
        // A counted single-key server: its one key, counted as its owner.
        (None, Some(owner)) => {
            let refused = |refusal| io::Error::new(io::ErrorKind::InvalidData, refusal);
            Some(owner.admit(peer.ip(), true).map_err(refused)?)
        }
        (None, None) => None,
    };
    let salt = reader.read_salt().await?;
    if !shared.replay.insert(&salt) {
        return Ok(Err(Replayed));
    }
    shared.settings.stats.salts_recorded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Ok((salt, reader.read_target().await?, user)))
}

/// Finds the user of a multi-user server's stream, admits it if the user's limits allow, and sets the
/// reader up to open it with their key. A user over a limit is refused like a wrong key: a prober
/// learns nothing about which keys exist or are spent.
async fn identify<R>(
    reader: &mut DecryptReader<R>,
    users: &Users,
    ipsk: &Key,
    peer: SocketAddr,
    metrics: Option<&crate::metrics::EntryMetrics>,
) -> io::Result<Admitted>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let method = users.method();
    let head = reader.peek_ciphertext(search::head_len(method)).await?;
    let table = users.current();
    let searching = std::time::Instant::now();
    let found = search::find_user(&table, method, ipsk, peer.ip(), head);
    if let Some(metrics) = metrics {
        metrics.cipher_search(found.is_some(), searching.elapsed());
    }
    let Some(user) = found else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, DecryptError::AuthFailure));
    };
    tracing::Span::current().record("user", user.name());
    let refused = |refusal| io::Error::new(io::ErrorKind::InvalidData, refusal);
    let user = user.admit(peer.ip(), true).map_err(refused)?;
    let decryptor = if ss_crypto::identity::supports_identity_headers(method) {
        Decryptor::request_identified(method, user.key())
    } else {
        Decryptor::request(method, user.key())
    };
    reader.set_decryptor(decryptor);
    Ok(user)
}

/// Resolves `target` and connects to one of its allowed addresses, raced by Happy Eyeballs
/// ([`ss_net::happy_eyeballs`], `ipv6_first` choosing the family tried first) within the connect
/// timeout. A name the ACL blocks is not even resolved; every resolved address is checked against the
/// policy (ranges, own addresses, the ACL's IP rules) before any is dialled, so a refused one never is.
///
/// The lookup is bounded by the resolver: when all its slots are taken the connection waits for one
/// up to the lookup timeout, then the lookup itself gets the lookup timeout.
pub(crate) async fn connect(
    target: &Address,
    resolver: &Arc<Resolver>,
    guard: &AddressGuard,
    settings: &crate::Settings,
) -> io::Result<TcpStream> {
    let candidates: Vec<SocketAddr> = match target {
        Address::Ip(addr) => vec![*addr],
        Address::Domain(host, _) if !guard.allows_name(host) => {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the ACL blocks this name"));
        }
        Address::Domain(host, port) => {
            let addresses = resolver.resolve(host).await.map_err(lookup_error)?;
            addresses.iter().map(|&ip| SocketAddr::new(ip, *port)).collect()
        }
    };
    // Built only if no candidate is allowed: formatting it up front costs two allocations per connection.
    let refused = |candidates: &[SocketAddr]| match candidates {
        [] => io::Error::new(io::ErrorKind::NotFound, "name resolved to no address"),
        [only] => io::Error::new(io::ErrorKind::PermissionDenied, format!("{only} is not an allowed target")),
        all => {
            io::Error::new(io::ErrorKind::PermissionDenied, format!("none of {all:?} is an allowed target"))
        }
    };
    let mut allowed: Vec<SocketAddr> = guard.allowed_targets(candidates.iter().copied()).collect();
    let connecting = match allowed.as_slice() {
        [] => return Err(refused(&candidates)),
        // One address (every IP target): nothing to race, and no race state in this connection's future.
        [only] => timeout(settings.connect_timeout, settings.socket.connect(*only)).await,
        _ => {
            allowed = ss_net::happy_eyeballs::interleave(&allowed, settings.resolve.ipv6_first);
            // Boxed: the race's state lives on the heap only while a name's addresses are raced.
            let race = ss_net::happy_eyeballs::race(&allowed, |addr| settings.socket.connect(addr));
            timeout(settings.connect_timeout, Box::pin(race))
                .await
                .map(|raced| raced.map(|(stream, _)| stream))
        }
    };
    connecting.unwrap_or_else(|_| {
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {allowed:?} timed out")))
    })
}

fn lookup_error(error: ResolveError) -> io::Error {
    let kind = match error {
        ResolveError::Busy => io::ErrorKind::ResourceBusy,
        ResolveError::TimedOut => io::ErrorKind::TimedOut,
        ResolveError::NotFound => io::ErrorKind::NotFound,
        ResolveError::Failed(_) => io::ErrorKind::Other,
    };
    io::Error::new(kind, error)
}

/// The silent treatment: discard whatever arrives until `deadline`, then close with a FIN. Returns how
/// many bytes were discarded.
async fn reject(read_half: OwnedReadHalf, write_half: OwnedWriteHalf, deadline: Instant) -> u64 {
    let mut discarded = 0;
    let _ = timeout_at(deadline, discard(&read_half, &mut discarded)).await;
    close(write_half).await;
    discarded
}

thread_local! {
    /// Where rejected connections' bytes are read to and forgotten: one buffer per thread, large enough
    /// that a prober sending fast costs a read call per 16 KiB rather than per 256 bytes.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 16 * 1024]);
}

/// Reads and drops everything `read_half` receives; once the peer has closed, waits forever (the caller's
/// deadline decides when the connection ends).
async fn discard(read_half: &OwnedReadHalf, discarded: &mut u64) {
    loop {
        if read_half.readable().await.is_err() {
            break;
        }
        // No await while the thread's buffer is borrowed.
        match SCRATCH.with_borrow_mut(|scratch| read_half.try_read(scratch)) {
            Ok(0) => break,
            Ok(read) => *discarded += read as u64,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    std::future::pending::<()>().await;
}

async fn close(mut write_half: OwnedWriteHalf) {
    let _ = write_half.shutdown().await;
}

/// Logs and counts a failed handshake; `skew` is the request's clock skew if its header authenticated.
/// Returns the reason it was counted under, if any.
fn log_probe(error: &io::Error, shared: &Shared, skew: Option<i64>) -> Option<Reason> {
    if let Some(refusal) = error.get_ref().and_then(|inner| inner.downcast_ref::<Refusal>()) {
        debug!(%refusal, "refused like a probe");
        shared.settings.stats.rejections.count(Reason::UserLimit);
        return Some(Reason::UserLimit);
    }
    match error.get_ref().and_then(|inner| inner.downcast_ref::<DecryptError>()) {
        Some(DecryptError::BadTimestamp) => {
            debug!(skew_s = skew, "rejected a request with a timestamp outside the window");
            match skew {
                Some(skew) => shared.settings.stats.rejections.timestamp_refused(skew),
                None => shared.settings.stats.rejections.count(Reason::Timestamp),
            }
            Some(Reason::Timestamp)
        }
        Some(reason) => {
            debug!(%reason, "rejected a connection that failed the handshake");
            shared.settings.stats.rejections.count(Reason::of(reason));
            Some(Reason::of(reason))
        }
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            debug!("closed before sending a request");
            None
        }
        None => {
            debug!(%error, "handshake read failed");
            None
        }
    }
}
