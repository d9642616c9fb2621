//! Probe resistance (PROTOCOL.md, "What the server does with bad input"), against a server in-process on
//! loopback with real sockets and the real clock.
//!
//! Each test throws a storm of probes at one method's server, all at once:
//!
//! - random bytes of many lengths, in one write or trickled a few bytes at a time, with or without a FIN;
//! - a recorded valid first flight replayed (the original went through), whole or trickled;
//! - valid first flights with one byte flipped (salt, first ciphertext byte, first tag, last byte);
//! - valid first flights cut short, so that they stop right after an authenticated record or one byte
//!   before their end;
//! - requests that authenticate but carry an unknown address type or an empty name, and (2022) requests
//!   whose timestamp is two minutes off;
//! - the server's own response stream sent back to it as a request. With classic methods that stream
//!   decrypts as a request (both directions derive subkeys the same way), and we make its plaintext a
//!   well-formed request for the canary: only the replay filter stands in the way.
//!
//! Every probe must see the same thing: no byte from the server, then a FIN (`read` returns `Ok(0)`, not
//! a reset) at the handshake deadline counted from accept. The canary listener, target of every probe
//! that names a target, must see no connection, and a valid client keeps getting its echoes throughout.
//! Every probe sends all its bytes well before the deadline: data arriving after the server's FIN would
//! rightly be answered with a reset.

use std::net::SocketAddr;
use std::time::Duration;

use ss_crypto::stream::unix_now;
use ss_crypto::{Address, Method};
use ss_tests::probing::{
    address_bytes, first_flight, random_bytes, random_salt, record_response, round_trip, sealed_first_flight,
    Canary,
};
use ss_tests::{echo_server, server_settings, start_server, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};

/// The server's handshake deadline in these tests.
const HANDSHAKE: Duration = Duration::from_secs(2);
/// How far from the deadline a probe's close may be observed.
const TOLERANCE: Duration = Duration::from_millis(400);
/// Random probe lengths: around the salt sizes (16, 32), the first record (salt + 2 + 16 = 34 or 50 for
/// classic, salt + 11 + 16 = 43 or 59 for 2022), and well beyond.
const RANDOM_LENGTHS: [usize; 16] = [0, 1, 15, 16, 17, 31, 32, 33, 49, 50, 51, 100, 221, 500, 1000, 4000];
/// Pause between the pieces of a trickled probe.
const TRICKLE_PAUSE: Duration = Duration::from_millis(10);
/// How long after the last FIN the probes' sockets are checked for a reset. A server that closes with
/// unread data sends an RST right after its FIN. Once a FIN has arrived, Linux answers every later
/// `read` with `Ok(0)` even after an RST; the RST only shows as the socket's pending error (`EPIPE`
/// in CLOSE_WAIT), which `take_error` reads.
const RESET_WATCH: Duration = Duration::from_millis(200);

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

#[derive(Debug)]
struct Probe {
    name: String,
    bytes: Vec<u8>,
    sending: Sending,
    /// Half-close after sending.
    fin: bool,
}

impl Probe {
    fn new(name: impl Into<String>, bytes: Vec<u8>, sending: Sending, fin: bool) -> Probe {
        Probe { name: name.into(), bytes, sending, fin }
    }
}

async fn probe_storm(method: Method) {
    let mut settings = server_settings(method);
    settings.handshake_timeout = HANDSHAKE;
    let server = start_server(settings).await;
    let canary = Canary::bind("127.0.0.1:0").await.expect("bind canary");
    let replay_target = Canary::bind("127.0.0.1:0").await.expect("bind replay target");
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
    let (_, echoed) = record_response(server.addr, method, recorded_salt, &recorded, 16)
        .await
        .expect("the original of the recorded flight goes through");
    assert_eq!(echoed, b"recorded request");

    // The server's own response stream, whose plaintext is a well-formed request for the canary.
    let mut reflected_plaintext = address_bytes(&Address::Ip(canary.addr()));
    reflected_plaintext.extend_from_slice(b"reflected back");
    let salt = random_salt(method);
    let flight = first_flight(method, salt, &Address::Ip(echo), &reflected_plaintext, unix_now());
    let (response, first_chunk) =
        record_response(server.addr, method, salt, &flight, reflected_plaintext.len())
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
    let valid_client = tokio::spawn(keep_echoing(server.addr, method, echo, stopped));

    let storm: Vec<_> = probes.into_iter().map(|probe| tokio::spawn(run_probe(server.addr, probe))).collect();
    let mut failures = Vec::new();
    let mut closed_probes = Vec::new();
    for task in storm {
        match task.await.expect("probe task") {
            Ok(closed) => closed_probes.push(closed),
            Err(failure) => failures.push(failure),
        }
    }
    // Watching for something that must not come: there is no event to wait for instead.
    sleep(RESET_WATCH).await;
    let mut closes = Vec::new();
    for (name, closed, mut stream) in closed_probes {
        if let Ok(Some(error)) | Err(error) = stream.take_error() {
            failures.push(format!("{name}: reset after the FIN: {error} ({:?})", error.kind()));
            continue;
        }
        match timeout(STEP, stream.read(&mut [0u8; 64])).await {
            Ok(Ok(0)) => closes.push(closed),
            Ok(Ok(n)) => failures.push(format!("{name}: {n} bytes after the FIN")),
            Ok(Err(error)) => failures.push(format!("{name}: {error} ({:?}) after the FIN", error.kind())),
            Err(_) => failures.push(format!("{name}: second read after the FIN hangs")),
        }
    }
    stop.send_replace(true);
    let (echoes, client_errors) =
        timeout(STEP, valid_client).await.expect("valid client stops").expect("valid client task");

    assert!(
        failures.is_empty(),
        "{method}: {} of {probe_count} probes got a different reaction:\n{}",
        failures.len(),
        failures.join("\n")
    );
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

    let first = closes.iter().min().copied().unwrap_or_default();
    let last = closes.iter().max().copied().unwrap_or_default();
    println!(
        "{method}: {probe_count} probes closed with FIN between {first:?} and {last:?} after connect \
         (deadline {HANDSHAKE:?}); {echoes} valid echoes meanwhile"
    );
}

/// The probes for one method. `canary` is the target of every probe that names one.
fn probes(method: Method, canary: SocketAddr, recorded: &[u8], response: &[u8]) -> Vec<Probe> {
    let mut probes = Vec::new();
    for len in RANDOM_LENGTHS {
        for sending in [Sending::OneWrite, Sending::Trickle] {
            for fin in [false, true] {
                let name = format!("random {len} bytes ({sending:?}, FIN {fin})");
                probes.push(Probe::new(name, random_bytes(len), sending, fin));
            }
        }
    }

    probes.push(Probe::new("replayed first flight", recorded.to_vec(), Sending::OneWrite, false));
    probes.push(Probe::new("replayed first flight, FIN", recorded.to_vec(), Sending::OneWrite, true));
    probes.push(Probe::new("replayed first flight, trickled", recorded.to_vec(), Sending::Trickle, false));

    let target = Address::Ip(canary);
    let valid = || first_flight(method, random_salt(method), &target, b"GET / HTTP/1.1\r\n\r\n", unix_now());
    let salt_len = method.salt_len();
    let first_record_plain = if method.is_2022() { 1 + 8 + 2 } else { 2 };
    let first_record_end = salt_len + first_record_plain + method.tag_len();
    let flips = [
        ("first salt byte", 0),
        ("last salt byte", salt_len - 1),
        ("first ciphertext byte", salt_len),
        ("first tag", first_record_end - method.tag_len() / 2),
        ("last byte", usize::MAX),
    ];
    for (place, at) in flips {
        for fin in [false, true] {
            let mut bytes = valid();
            let at = at.min(bytes.len() - 1);
            bytes[at] ^= 0x01;
            let name = format!("valid flight with a flipped bit in the {place} (byte {at}, FIN {fin})");
            probes.push(Probe::new(name, bytes, Sending::OneWrite, fin));
        }
    }

    for fin in [false, true] {
        let mut bytes = valid();
        bytes.truncate(first_record_end);
        let name = format!("valid flight cut after its first (authenticated) record, FIN {fin}");
        probes.push(Probe::new(name, bytes, Sending::OneWrite, fin));
        let mut bytes = valid();
        bytes.pop();
        let name = format!("valid flight without its last byte, FIN {fin}");
        probes.push(Probe::new(name, bytes, Sending::OneWrite, fin));
    }

    let port = canary.port().to_be_bytes();
    let unknown_type = [&[0x05, 127, 0, 0, 1][..], &port].concat();
    let empty_name = [&[0x03, 0][..], &port].concat();
    for (what, raw) in [("an unknown address type", unknown_type), ("an empty domain name", empty_name)] {
        let bytes = sealed_first_flight(method, random_salt(method), &raw, b"payload", unix_now());
        probes.push(Probe::new(
            format!("authenticated request with {what}"),
            bytes,
            Sending::OneWrite,
            false,
        ));
    }

    if method.is_2022() {
        for (when, now) in [("stale", unix_now() - 120), ("future", unix_now() + 120)] {
            let bytes = first_flight(method, random_salt(method), &target, b"payload", now);
            probes.push(Probe::new(format!("{when} timestamp"), bytes, Sending::OneWrite, false));
        }
    }

    probes.push(Probe::new("the server's own response stream", response.to_vec(), Sending::OneWrite, false));
    probes.push(Probe::new(
        "the server's own response stream, FIN",
        response.to_vec(),
        Sending::OneWrite,
        true,
    ));
    probes
}

/// Sends one probe and watches the reaction; `Ok` carries the probe's name, when the FIN came (counted
/// from just before connecting) and the socket, for a later look for a reset.
async fn run_probe(server: SocketAddr, probe: Probe) -> Result<(String, Duration, TcpStream), String> {
    let name = &probe.name;
    let started = Instant::now();
    let mut stream = timeout(STEP, TcpStream::connect(server))
        .await
        .map_err(|_| format!("{name}: connect timed out"))?
        .map_err(|error| format!("{name}: connect: {error}"))?;
    stream.set_nodelay(true).map_err(|error| format!("{name}: nodelay: {error}"))?;
    let sent = async {
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
    timeout(STEP, sent)
        .await
        .map_err(|_| format!("{name}: sending timed out"))?
        .map_err(|error| format!("{name}: sending: {error}"))?;
    let sending_took = started.elapsed();
    if sending_took + TOLERANCE > HANDSHAKE {
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
    if closed + TOLERANCE < HANDSHAKE || closed > HANDSHAKE + TOLERANCE {
        return Err(format!("{name}: closed {closed:?} after connect, the deadline is {HANDSHAKE:?}"));
    }
    Ok((probe.name, closed, stream))
}

/// The pieces of a trickled probe: three bytes at a time over the first 96 bytes, where the server
/// makes its decisions (salt, first record), then at most 16 larger pieces, so that even 4000 bytes go
/// out in about half a second.
fn trickle(bytes: &[u8]) -> Vec<&[u8]> {
    let head_len = bytes.len().min(96);
    let (head, tail) = bytes.split_at(head_len);
    let tail_piece = tail.len().div_ceil(16).max(1);
    head.chunks(3).chain(tail.chunks(tail_piece)).collect()
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
        // Pacing, not synchronisation: a few dozen round trips spread over the storm.
        let _ = timeout(Duration::from_millis(50), stop.changed()).await;
    }
    (echoes, errors)
}
