//! Probe resistance (README, "What the server does": "Probes get nothing"), against a server in-process on
//! loopback with real sockets and the real clock, for all six methods.
//!
//! The probes are modelled on what censors send (GFW Report, IMC 2020; Frolov et al., NDSS 2020):
//!
//! - random bytes of every length from 0 to 300 and of 512, 1000, 1500, 2048 and 4096 bytes, each in one
//!   write and trickled (three bytes at a time over the first 64, see [`trickle`]), with and without a
//!   FIN afterwards;
//! - a recorded valid first flight (its original went through) replayed: once (one write, with a FIN,
//!   trickled); 20 times one after another; 20 copies at once (released together by a barrier); and
//!   after a flood of 500 random-salt probes of the same length (a bounded replay filter must not be
//!   flushed by them: unauthenticated salts are never recorded);
//! - valid first flights with each byte flipped in turn, every position: fresh flights (one salt per
//!   position, so that a flip behind the first record, which authenticates and records its salt, does
//!   not shield the next one) and the recorded flight (modified replays); FIN on alternate positions;
//! - valid first flights cut short right after their first (authenticated) record or one byte before
//!   their end; requests that authenticate but name an unknown address type or an empty name; (2022)
//!   timestamps two minutes off;
//! - the server's own response stream sent back to it. With classic methods that stream decrypts as a
//!   request (both directions derive subkeys the same way), and we make its plaintext a well-formed
//!   request for the canary: only the replay filter stands in the way.
//!
//! Every probe must see the same thing: no byte from the server, then a FIN (`read` returns `Ok(0)`, not
//! a reset, and no reset follows) between the handshake deadline and [`TOLERANCE`] after it, counted from
//! just before connecting (the server counts from accept, a little later). The canary listener, target
//! of every probe that names a target, sees no connection; the recorded flight's target sees exactly
//! one (the original); a valid client keeps getting its echoes throughout. Every probe sends all its
//! bytes well before the deadline: data arriving after the server's FIN would rightly draw a reset.
//!
//! Besides the probes: 20 copies of a flight never sent before, at once: exactly one is served and
//! reaches its target, the other 19 get the probe treatment (the replay filter has no race).
//!
//! Resources: a probe holds a connection (two descriptors, both in this process) until the 2 s deadline.
//! About 2,000 probes per method would exhaust descriptors and both cores if all ran at once, so every
//! probe first takes a slot of [`PROBE_SLOTS`], shared by the tests running in parallel in this binary:
//! at most [`MAX_OPEN_PROBES`] probes are open at a time (under 2,000 descriptors, well below the
//! 20,000 limit). Slots are handed out in order, so a test's stages (flood before the replays that
//! follow it) keep their order. The servers listen with a backlog of [`BACKLOG`] (see
//! [`start_probe_server`]). All six methods run the full matrix, about 2,000 probes each; the file takes
//! about 40 s on two cores.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_net::unix_now;
use ss_tests::probing::{
    address_bytes, first_flight, random_bytes, random_salt, record_response, round_trip, sealed_first_flight,
    Canary,
};
use ss_tests::{echo_server, init_logs, server_settings, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Barrier, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The server's handshake deadline in these tests.
const HANDSHAKE: Duration = Duration::from_secs(2);
/// How long after the deadline a probe's close may be observed. The close at the deadline is the
/// behaviour under test, so this stays a wall-clock bound, but a generous one: hundreds of probes and
/// the server share two busy cores with other builds. Half the deadline still tells a close at the
/// deadline from one at the idle timeout (60 s) or never.
const TOLERANCE: Duration = Duration::from_millis(1000);
/// How long before the deadline a close may be observed: clock granularity only, since the server's
/// deadline starts after our connect began.
const EARLY: Duration = Duration::from_millis(20);
/// Random probes of every length up to this.
const MAX_SMALL_LENGTH: usize = 300;
/// And these larger ones.
const LARGE_LENGTHS: [usize; 5] = [512, 1000, 1500, 2048, 4096];
/// Replays of the recorded flight one after another, and copies sent at once.
const REPLAYS_IN_A_ROW: usize = 20;
const REPLAYS_AT_ONCE: usize = 20;
/// Random-salt probes sent before the last replays.
const FLOOD: usize = 500;
/// Pause between the pieces of a trickled probe.
const TRICKLE_PAUSE: Duration = Duration::from_millis(5);
/// A probe must have sent everything this long before the deadline, or the test (not the server) was
/// too slow: bytes arriving after the server's FIN would rightly draw a reset.
const SEND_MARGIN: Duration = Duration::from_millis(300);
/// How long after its FIN a probe's socket is checked for a reset. A server that closes with unread
/// data sends an RST right after its FIN. Once a FIN has arrived, Linux answers every later `read` with
/// `Ok(0)` even after an RST; the RST only shows as the socket's pending error (`EPIPE` in CLOSE_WAIT),
/// which `take_error` reads.
const RESET_WATCH: Duration = Duration::from_millis(200);
/// Probes open at once in this test binary, all tests together.
const MAX_OPEN_PROBES: usize = 600;
/// The listen backlog of the servers under test: room for every probe at once.
const BACKLOG: u32 = 1024;
/// The slots probes take before connecting (see the module documentation).
static PROBE_SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_OPEN_PROBES)));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_128_gcm_server_gives_probes_nothing() {
    probe_storm(Method::Aes128Gcm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_256_gcm_server_gives_probes_nothing() {
    probe_storm(Method::Aes256Gcm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chacha20_ietf_poly1305_server_gives_probes_nothing() {
    probe_storm(Method::ChaCha20IetfPoly1305).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_aes_128_gcm_server_gives_probes_nothing() {
    probe_storm(Method::Blake3Aes128Gcm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_aes_256_gcm_server_gives_probes_nothing() {
    probe_storm(Method::Blake3Aes256Gcm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_chacha20_poly1305_server_gives_probes_nothing() {
    probe_storm(Method::Blake3ChaCha20Poly1305).await;
}

/// How a probe's bytes go out.
#[derive(Debug, Clone, Copy)]
enum Sending {
    /// One `write_all`.
    OneWrite,
    /// A few bytes per write with pauses (see [`trickle`]).
    Trickle,
}

/// When a probe may connect, once it holds its slot.
#[derive(Debug, Clone)]
enum Start {
    Now,
    /// With the other holders of this barrier.
    Together(Arc<Barrier>),
    /// Once the counter reaches the number: so many other probes have sent their bytes.
    AfterSent(watch::Receiver<usize>, usize),
}

#[derive(Debug)]
struct Probe {
    /// Which family it belongs to, for the summary.
    family: &'static str,
    name: String,
    bytes: Vec<u8>,
    sending: Sending,
    /// Half-close after sending.
    fin: bool,
    start: Start,
    /// Counted up once the bytes are out (or sending failed), for probes that wait on this one.
    sent: Option<watch::Sender<usize>>,
}

impl Probe {
    fn new(
        family: &'static str,
        name: impl Into<String>,
        bytes: Vec<u8>,
        sending: Sending,
        fin: bool,
    ) -> Probe {
        Probe { family, name: name.into(), bytes, sending, fin, start: Start::Now, sent: None }
    }

    fn starting(mut self, start: Start) -> Probe {
        self.start = start;
        self
    }

    fn counted_by(mut self, sent: &watch::Sender<usize>) -> Probe {
        self.sent = Some(sent.clone());
        self
    }
}

async fn probe_storm(method: Method) {
    let began = Instant::now();
    let mut settings = server_settings(method);
    settings.handshake_timeout = HANDSHAKE;
    let (server, _stop_server) = start_probe_server(settings).await;
    let canary = Canary::bind("127.0.0.1:0").await.expect("bind canary");
    let replay_target = Canary::bind("127.0.0.1:0").await.expect("bind replay target");
    let race_target = Canary::bind("127.0.0.1:0").await.expect("bind race target");
    let echo = echo_server("127.0.0.1:0").await;

    // A valid client's first flight, recorded on its way: the original goes through.
    let recorded_salt = random_salt(method);
    let recorded = first_flight(
        method,
        recorded_salt,
        &Address::Ip(replay_target.addr()),
        b"recorded request",
        unix_now(),
    );
    let (_, echoed) = record_response(server, method, recorded_salt, &recorded, 16)
        .await
        .expect("the original of the recorded flight goes through");
    assert_eq!(echoed, b"recorded request");

    // The server's own response stream, whose plaintext is a well-formed request for the canary.
    let mut reflected_plaintext = address_bytes(&Address::Ip(canary.addr()));
    reflected_plaintext.extend_from_slice(b"reflected back");
    let salt = random_salt(method);
    let flight = first_flight(method, salt, &Address::Ip(echo), &reflected_plaintext, unix_now());
    let (response, first_chunk) = record_response(server, method, salt, &flight, reflected_plaintext.len())
        .await
        .expect("echo through the server");
    assert_eq!(
        first_chunk, reflected_plaintext,
        "the echo came back in one chunk, so the response stream's first chunk reads as a request"
    );

    let probes = probes(method, canary.addr(), &recorded, &response);
    let probe_count = probes.len();

    // A valid client keeps working during the storm.
    let (stop, stopped) = watch::channel(false);
    let valid_client = tokio::spawn(keep_echoing(server, method, echo, stopped));
    let race = tokio::spawn(copies_at_once(server, method, race_target.addr()));

    let mut storm = Vec::with_capacity(probe_count);
    for probe in probes {
        let slot = PROBE_SLOTS.clone().acquire_owned().await.expect("probe slots never close");
        let family = probe.family;
        storm.push((family, tokio::spawn(run_probe(server, probe, slot))));
    }
    let mut failures = Vec::new();
    let mut closes: Vec<(&'static str, Duration)> = Vec::new();
    let mut slowest_send = Duration::ZERO;
    for (family, task) in storm {
        match task.await.expect("probe task") {
            Ok((closed, sent)) => {
                closes.push((family, closed));
                slowest_send = slowest_send.max(sent);
            }
            Err(failure) => failures.push(failure),
        }
    }
    let race_failures = race.await.expect("race task");
    stop.send_replace(true);
    let (echoes, client_errors) =
        timeout(STEP, valid_client).await.expect("valid client stops").expect("valid client task");

    assert!(
        failures.is_empty(),
        "{method}: {} of {probe_count} probes got a different reaction:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(race_failures.is_empty(), "{method}: copies sent at once:\n{}", race_failures.join("\n"));
    assert!(client_errors.is_empty(), "{method}: the valid client failed:\n{}", client_errors.join("\n"));
    assert!(echoes >= 5, "{method}: only {echoes} echoes during the storm");
    let reached = canary.connections().await;
    assert!(reached.is_empty(), "{method}: probes made the server connect to the canary: {reached:?}");
    let replayed = replay_target.connections().await;
    assert_eq!(
        replayed.len(),
        1,
        "{method}: the recorded flight reached its target {} times",
        replayed.len()
    );
    let raced = race_target.connections().await;
    assert_eq!(raced.len(), 1, "{method}: copies sent at once reached their target {} times", raced.len());

    let (first, last) = spread(closes.iter().map(|(_, closed)| *closed));
    println!(
        "{method}: {probe_count} probes closed with FIN between {first:?} and {last:?} after connect \
         (deadline {HANDSHAKE:?}); slowest send {slowest_send:?}; {echoes} valid echoes meanwhile; {:.1?} in all",
        began.elapsed()
    );
    let mut families: Vec<&str> = closes.iter().map(|(family, _)| *family).collect();
    families.dedup();
    for family in families {
        let of_family = closes.iter().filter(|(f, _)| *f == family).map(|(_, closed)| *closed);
        let count = of_family.clone().count();
        let (first, last) = spread(of_family);
        println!("  {family}: {count} probes, FIN between {first:?} and {last:?}");
    }
}

/// Starts ss-server (TCP only) on 127.0.0.1:0 with a listen backlog of [`BACKLOG`]; it stops when the
/// guard is dropped. `ss_tests::start_server` binds with the standard library's backlog of 128, which
/// the first burst of probes overflows: the kernel then drops handshakes, answers with SYN cookies and
/// resets, and the server accepts a second late. That would measure the kernel, not the server.
async fn start_probe_server(settings: ss_server::Settings) -> (SocketAddr, DropGuard) {
    init_logs();
    let socket = TcpSocket::new_v4().expect("TCP socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind server");
    let listener = socket.listen(BACKLOG).expect("listen");
    let addr = listener.local_addr().expect("server address");
    let shutdown = CancellationToken::new();
    let listeners = ss_server::Listeners { tcp: vec![listener], udp: Vec::new() };
    tokio::spawn(ss_server::run(settings, listeners, shutdown.clone()));
    (addr, shutdown.drop_guard())
}

/// The probes for one method, in the order they take their slots. `canary` is the target of every
/// probe that names one.
fn probes(method: Method, canary: SocketAddr, recorded: &[u8], response: &[u8]) -> Vec<Probe> {
    let mut probes = Vec::new();

    // A flood of random salts (random bytes as long as a first flight), then the recorded flight
    // again: the replay filter still knows it.
    let (flood_sent, flooded) = watch::channel(0usize);
    for i in 0..FLOOD {
        let name = format!("random-salt flood probe {i}");
        let probe = Probe::new(
            "random-salt flood",
            name,
            random_bytes(recorded.len()),
            Sending::OneWrite,
            i % 2 == 1,
        );
        probes.push(probe.counted_by(&flood_sent));
    }
    for (sending, fin) in [(Sending::OneWrite, false), (Sending::OneWrite, true), (Sending::Trickle, false)] {
        let name = format!("replay after the flood ({sending:?}, FIN {fin})");
        let probe = Probe::new("replay after the flood", name, recorded.to_vec(), sending, fin);
        probes.push(probe.starting(Start::AfterSent(flooded.clone(), FLOOD)));
    }

    for len in (0..=MAX_SMALL_LENGTH).chain(LARGE_LENGTHS) {
        for sending in [Sending::OneWrite, Sending::Trickle] {
            for fin in [false, true] {
                let name = format!("random {len} bytes ({sending:?}, FIN {fin})");
                probes.push(Probe::new("random bytes", name, random_bytes(len), sending, fin));
            }
        }
    }

    for (sending, fin) in [(Sending::OneWrite, false), (Sending::OneWrite, true), (Sending::Trickle, false)] {
        let name = format!("replay ({sending:?}, FIN {fin})");
        probes.push(Probe::new("replay once", name, recorded.to_vec(), sending, fin));
    }
    let (row_sent, row) = watch::channel(0usize);
    for i in 0..REPLAYS_IN_A_ROW {
        let name = format!("replay {} of {REPLAYS_IN_A_ROW} in a row", i + 1);
        let probe = Probe::new("replays in a row", name, recorded.to_vec(), Sending::OneWrite, false);
        probes.push(probe.starting(Start::AfterSent(row.clone(), i)).counted_by(&row_sent));
    }
    let together = Arc::new(Barrier::new(REPLAYS_AT_ONCE));
    for i in 0..REPLAYS_AT_ONCE {
        let name = format!("replay {} of {REPLAYS_AT_ONCE} at once", i + 1);
        let probe = Probe::new("replays at once", name, recorded.to_vec(), Sending::OneWrite, i % 2 == 1);
        probes.push(probe.starting(Start::Together(together.clone())));
    }

    let target = Address::Ip(canary);
    let valid = || first_flight(method, random_salt(method), &target, b"GET / HTTP/1.1\r\n\r\n", unix_now());
    let flight_len = valid().len();
    for at in 0..flight_len {
        let fin = at % 2 == 1;
        let mut bytes = valid();
        bytes[at] ^= 0x01;
        let name = format!("fresh flight with byte {at} of {flight_len} flipped (FIN {fin})");
        probes.push(Probe::new("flipped byte, fresh flight", name, bytes, Sending::OneWrite, fin));
    }
    for at in 0..recorded.len() {
        let fin = at % 2 == 0;
        let mut bytes = recorded.to_vec();
        bytes[at] ^= 0x80;
        let name = format!("recorded flight with byte {at} of {} flipped (FIN {fin})", recorded.len());
        probes.push(Probe::new("flipped byte, recorded flight", name, bytes, Sending::OneWrite, fin));
    }

    let first_record_plain = if method.is_2022() { 1 + 8 + 2 } else { 2 };
    let first_record_end = method.salt_len() + first_record_plain + method.tag_len();
    for fin in [false, true] {
        let mut bytes = valid();
        bytes.truncate(first_record_end);
        let name = format!("valid flight cut after its first (authenticated) record, FIN {fin}");
        probes.push(Probe::new("cut short", name, bytes, Sending::OneWrite, fin));
        let mut bytes = valid();
        bytes.pop();
        let name = format!("valid flight without its last byte, FIN {fin}");
        probes.push(Probe::new("cut short", name, bytes, Sending::OneWrite, fin));
    }

    let port = canary.port().to_be_bytes();
    let unknown_type = [&[0x05, 127, 0, 0, 1][..], &port].concat();
    let empty_name = [&[0x03, 0][..], &port].concat();
    for (what, raw) in [("an unknown address type", unknown_type), ("an empty domain name", empty_name)] {
        let bytes = sealed_first_flight(method, random_salt(method), &raw, b"payload", unix_now());
        let name = format!("authenticated request with {what}");
        probes.push(Probe::new("bad request", name, bytes, Sending::OneWrite, false));
    }
    if method.is_2022() {
        for (when, now) in [("stale", unix_now() - 120), ("future", unix_now() + 120)] {
            let bytes = first_flight(method, random_salt(method), &target, b"payload", now);
            probes.push(Probe::new(
                "bad request",
                format!("{when} timestamp"),
                bytes,
                Sending::OneWrite,
                false,
            ));
        }
    }

    for fin in [false, true] {
        let name = format!("the server's own response stream, FIN {fin}");
        probes.push(Probe::new("reflected response", name, response.to_vec(), Sending::OneWrite, fin));
    }
    probes
}

/// Sends one probe and watches the reaction; `Ok` carries when the FIN came, counted from just before
/// connecting, and how long sending took. `slot` is given back once the server closed; the socket is
/// then watched a little longer for a reset.
async fn run_probe(
    server: SocketAddr,
    probe: Probe,
    slot: OwnedSemaphorePermit,
) -> Result<(Duration, Duration), String> {
    let name = &probe.name;
    let gate = async {
        match &probe.start {
            Start::Now => {}
            Start::Together(barrier) => {
                barrier.wait().await;
            }
            Start::AfterSent(sent, count) => {
                let _ = sent.clone().wait_for(|sent| sent >= count).await;
            }
        }
    };
    timeout(STEP, gate).await.map_err(|_| format!("{name}: the probes it waits for never came"))?;

    let started = Instant::now();
    let sent = send(server, &probe).await;
    if let Some(counter) = &probe.sent {
        counter.send_modify(|sent| *sent += 1);
    }
    let mut stream = sent.map_err(|error| format!("{name}: {error}"))?;
    let sending_took = started.elapsed();
    if sending_took + SEND_MARGIN > HANDSHAKE {
        return Err(format!("{name}: the test took {sending_took:?} to send, too close to the deadline"));
    }

    let mut received = 0usize;
    let mut buf = [0u8; 1024];
    let end = timeout(HANDSHAKE + TOLERANCE + Duration::from_secs(2), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => received += n,
                Err(error) => return Err(error),
            }
        }
    })
    .await;
    let closed = started.elapsed();
    drop(slot);
    match end {
        Err(_) => return Err(format!("{name}: still open {closed:?} after connect")),
        Ok(Err(error)) => {
            return Err(format!(
                "{name}: {error} ({:?}) after {closed:?} and {received} bytes: not a FIN",
                error.kind()
            ))
        }
        Ok(Ok(())) => {}
    }
    if received > 0 {
        return Err(format!("{name}: the server sent {received} bytes"));
    }
    if closed + EARLY < HANDSHAKE || closed > HANDSHAKE + TOLERANCE {
        return Err(format!("{name}: closed {closed:?} after connect, the deadline is {HANDSHAKE:?}"));
    }

    // Watching for something that must not come: there is no event to wait for instead.
    sleep(RESET_WATCH).await;
    if let Ok(Some(error)) | Err(error) = stream.take_error() {
        return Err(format!("{name}: reset after the FIN: {error} ({:?})", error.kind()));
    }
    match timeout(STEP, stream.read(&mut buf)).await {
        Ok(Ok(0)) => Ok((closed, sending_took)),
        Ok(Ok(n)) => Err(format!("{name}: {n} bytes after the FIN")),
        Ok(Err(error)) => Err(format!("{name}: {error} ({:?}) after the FIN", error.kind())),
        Err(_) => Err(format!("{name}: second read after the FIN hangs")),
    }
}

/// Connects and sends the probe's bytes as it asks, each step bounded by [`STEP`].
async fn send(server: SocketAddr, probe: &Probe) -> Result<TcpStream, String> {
    let mut stream = timeout(STEP, TcpStream::connect(server))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|error| format!("connect: {error}"))?;
    stream.set_nodelay(true).map_err(|error| format!("nodelay: {error}"))?;
    let sending = async {
        match probe.sending {
            Sending::OneWrite => stream.write_all(&probe.bytes).await?,
            Sending::Trickle => {
                for piece in trickle(&probe.bytes) {
                    stream.write_all(piece).await?;
                    sleep(TRICKLE_PAUSE).await;
                }
            }
        }
        if probe.fin {
            stream.shutdown().await?;
        }
        std::io::Result::Ok(())
    };
    timeout(STEP, sending)
        .await
        .map_err(|_| "sending timed out".to_owned())?
        .map_err(|error| format!("sending: {error}"))?;
    Ok(stream)
}

/// The pieces of a trickled probe: three bytes at a time over the first 64 bytes, where the server
/// makes its decisions (salt and first record: at most 32 + 11 + 16 = 59 bytes), then at most 8 larger
/// pieces: 30 pieces at most, out in under 200 ms on an idle machine, so that even on two busy cores
/// every probe has sent everything long before the deadline.
fn trickle(bytes: &[u8]) -> Vec<&[u8]> {
    let head_len = bytes.len().min(64);
    let (head, tail) = bytes.split_at(head_len);
    let tail_piece = tail.len().div_ceil(8).max(1);
    head.chunks(3).chain(tail.chunks(tail_piece)).collect()
}

/// Sends [`REPLAYS_AT_ONCE`] copies of a flight never sent before, all at once, to `target` (a canary
/// that echoes). Exactly one copy must be served (its echo comes back); every other one must see no
/// byte and a FIN at the deadline. Returns what went wrong.
async fn copies_at_once(server: SocketAddr, method: Method, target: SocketAddr) -> Vec<String> {
    const PAYLOAD: &[u8] = b"one of many copies";
    let flight =
        Arc::new(first_flight(method, random_salt(method), &Address::Ip(target), PAYLOAD, unix_now()));
    let together = Arc::new(Barrier::new(REPLAYS_AT_ONCE));
    let copies: Vec<_> = (0..REPLAYS_AT_ONCE)
        .map(|i| {
            let (flight, together) = (flight.clone(), together.clone());
            tokio::spawn(async move {
                together.wait().await;
                let started = Instant::now();
                let mut stream =
                    TcpStream::connect(server).await.map_err(|e| format!("copy {i}: connect: {e}"))?;
                stream.write_all(&flight).await.map_err(|e| format!("copy {i}: write: {e}"))?;
                let mut buf = [0u8; 256];
                let patience = HANDSHAKE + TOLERANCE + Duration::from_secs(2);
                match timeout(patience, stream.read(&mut buf)).await {
                    Ok(Ok(0)) => Ok(Some(started.elapsed())),
                    Ok(Ok(_)) => Ok(None),
                    Ok(Err(error)) => Err(format!("copy {i}: {error}")),
                    Err(_) => Err(format!("copy {i}: neither served nor closed after {patience:?}")),
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut served = 0;
    for copy in copies {
        match copy.await.expect("copy task") {
            Ok(None) => served += 1,
            Ok(Some(closed)) if closed + EARLY < HANDSHAKE || closed > HANDSHAKE + TOLERANCE => {
                failures.push(format!("a refused copy closed {closed:?} after connect"));
            }
            Ok(Some(_)) => {}
            Err(failure) => failures.push(failure),
        }
    }
    if served != 1 {
        failures.push(format!("{served} of {REPLAYS_AT_ONCE} copies were served, not 1"));
    }
    failures
}

/// Echo round trips through the server, one after another, until told to stop; returns how many
/// succeeded and what went wrong.
async fn keep_echoing(
    server: SocketAddr,
    method: Method,
    echo: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> (usize, Vec<String>) {
    let mut echoes = 0;
    let mut errors = Vec::new();
    while !*stop.borrow() {
        let payload = format!("valid round trip {echoes}");
        match round_trip(server, method, &Address::Ip(echo), payload.as_bytes()).await {
            Ok(back) if back == payload.as_bytes() => echoes += 1,
            Ok(back) => errors.push(format!("echo {echoes} came back as {back:?}")),
            Err(error) => errors.push(format!("echo {echoes}: {error}")),
        }
        // Pacing, not synchronisation: a few round trips a second over the storm.
        let _ = timeout(Duration::from_millis(100), stop.changed()).await;
    }
    (echoes, errors)
}

/// The earliest and latest of some durations (zero for none).
fn spread(durations: impl Iterator<Item = Duration> + Clone) -> (Duration, Duration) {
    (durations.clone().min().unwrap_or_default(), durations.max().unwrap_or_default())
}
