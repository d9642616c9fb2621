//! Load: many connections at once, descriptor exhaustion, slowloris, and clients that announce the
//! largest record and stall. Every address is loopback and every wait is bounded.
//!
//! The tests of this file run one at a time (they take a lock): each wants most of the machine's
//! descriptors or its CPU time to itself, and the CI machine has two cores.
//!
//! Descriptor budget. A proxied connection holds six sockets: the client's and the target's ends (the
//! test process), ss-local's two and ss-server's two; 10,000 connections in one process would take
//! 60,000 descriptors. The ten-thousand test therefore runs both binaries as child processes, so each
//! of the three processes holds two per connection, and it raises the test's soft RLIMIT_NOFILE to the
//! hard limit, which the children inherit. It asks for 10,000 connections and takes the largest count
//! the hard limit allows. Where that limit is 20,000 (the CI machine's, which lacks CAP_SYS_RESOURCE to
//! raise it), 10,000 cannot fit through one ss-server: it needs 20,000 sockets plus its listener, epoll
//! and waker descriptors and standard streams, so the count there is a little under 10,000 (9,971).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use ss_crypto::{Address, Method};
use ss_tests::probing::{
    address_bytes, connect_from, first_flight, loopback_host, random_bytes, random_salt, round_trip,
    sealed_first_flight,
};
use ss_tests::subprocess::{binaries, cpu_time, open_fds, resident_bytes, unread_bytes, Launch, Subprocess};
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// One test at a time in this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Connections the ten-thousand test asks for.
const WANTED: usize = 10_000;

/// Descriptors each process keeps beyond two per connection: standard streams, epoll and its waker,
/// listeners, the readiness probe's connection, the test harness's own.
const RESERVE: u64 = 40;

/// Most an open, idle proxied connection may add to ss-server's or ss-local's resident memory: a
/// regression guard far above what they use (a few KiB: buffers are held only while bytes are in flight).
const MAX_RSS_PER_IDLE_CONNECTION: u64 = 64 * 1024;

/// Connection attempts in flight at once while opening: well inside the listeners' backlog of 1,024,
/// so no SYN is dropped and retried a second later.
const OPENING_AT_ONCE: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_connections_all_still_work() {
    let _serial = SERIAL.lock().await;
    let limit = raise_fd_limit();
    let binaries = binaries().await;
    let method = Method::Blake3Aes256Gcm;
    let password = test_password(method);
    // Idle timeouts well past the test's length: the first connections wait while the others open.
    let server = Subprocess::start_on_free_port(|port| {
        Launch::new(&binaries.server)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-m", method.name()])
            .args(["-k", &password, "--allow-private-targets", "-t", "600"])
    })
    .await;
    let local = Subprocess::start_on_free_port(|port| {
        let server_port = server.addr.port().to_string();
        Launch::new(&binaries.local)
            .args(["-s", "127.0.0.1", "-p", &server_port, "-l", &port.to_string(), "-m", method.name()])
            .args(["-k", &password, "-t", "600"])
    })
    .await;
    let target = CountingEcho::start().await;

    let me = std::process::id();
    let pids = [("ss-server", server.pid()), ("ss-local", local.pid()), ("test process", me)];
    let count = pids
        .iter()
        .map(|(_, pid)| {
            let in_use = open_fds(*pid).expect("open descriptors").len() as u64;
            usize::try_from(limit.saturating_sub(in_use + RESERVE) / 2).unwrap_or(usize::MAX)
        })
        // Nor more than the server fits to its descriptor limit (ss_net::process::fit_to_descriptors):
        // beyond that, connections wait in its backlog.
        .fold(ss_net::process::fit_to_descriptors(limit, 1, WANTED, 0).0, usize::min);
    let before: Vec<u64> = pids.iter().map(|(_, pid)| resident_bytes(*pid).expect("RSS")).collect();

    let opening = Instant::now();
    let streams = open_through(local.addr, target.addr, count).await;
    let opened = streams.len();
    assert_eq!(
        opened,
        count,
        "{} of {count} connections failed to open\n{}\n{}",
        count - opened,
        server.log(),
        local.log()
    );
    if timeout(STEP, target.accepted(count)).await.is_err() {
        panic!(
            "the target saw {} of {count} connections\n{}\n{}",
            *target.accepted.borrow(),
            server.log(),
            local.log()
        );
    }
    let open_time = opening.elapsed();
    let open_rss: Vec<u64> = pids.iter().map(|(_, pid)| resident_bytes(*pid).expect("RSS")).collect();
    let fds: Vec<usize> =
        pids.iter().map(|(_, pid)| open_fds(*pid).expect("open descriptors").len()).collect();

    // Every connection, all of them open, does one round trip with bytes of its own.
    let exchanging = Instant::now();
    let mut exchanges = JoinSet::new();
    for (index, mut stream) in streams.into_iter().enumerate() {
        exchanges.spawn(async move {
            let message = format!("connection {index:>5} of the crowd").into_bytes();
            stream.write_all(&message).await?;
            let mut back = vec![0u8; message.len()];
            stream.read_exact(&mut back).await?;
            if back != message {
                return Err(std::io::Error::other(format!("connection {index}: echo corrupted")));
            }
            Ok(stream)
        });
    }
    let mut held = Vec::with_capacity(count);
    let mut failures = Vec::new();
    while let Some(exchange) = timeout(STEP, exchanges.join_next()).await.expect("a round trip timed out") {
        match exchange.expect("round-trip task") {
            Ok(stream) => held.push(stream),
            Err(error) => failures.push(error.to_string()),
        }
    }
    let exchange_time = exchanging.elapsed();
    assert!(
        failures.is_empty(),
        "{} round trips failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(held.len(), count);
    assert_eq!(target.open(), count, "the target lost connections during the round trips");
    let after: Vec<u64> = pids.iter().map(|(_, pid)| resident_bytes(*pid).expect("RSS")).collect();
    let per_connection: Vec<u64> = before
        .iter()
        .zip(&after)
        .map(|(before, after)| after.saturating_sub(*before) / count as u64)
        .collect();

    eprintln!(
        "{count} concurrent connections (asked for {WANTED}, descriptor limit {limit}): opened in {open_time:.1?}, \
         every one round-tripped in {exchange_time:.1?}"
    );
    for (index, (name, _)) in pids.iter().enumerate() {
        eprintln!(
            "  {name:<12} {:>6} descriptors; RSS {:>7.1} MiB before, {:>7.1} MiB open, {:>7.1} MiB after the \
             round trips: {:>5.1} KiB per connection",
            fds[index],
            mib(before[index]),
            mib(open_rss[index]),
            mib(after[index]),
            per_connection[index] as f64 / 1024.0,
        );
    }
    for (index, (name, _)) in pids.iter().enumerate().take(2) {
        assert!(
            per_connection[index] < MAX_RSS_PER_IDLE_CONNECTION,
            "{name} grew by {} bytes per open connection",
            per_connection[index]
        );
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_descriptor_limit_the_server_queues_connections_and_never_fails_an_accept() {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    let binaries = binaries().await;
    let method = Method::Aes128Gcm;
    let password = test_password(method);
    const NOFILE: u64 = 128;
    const HANDSHAKE: Duration = Duration::from_secs(2);
    let server = Subprocess::start_on_free_port(|port| {
        Launch::new(&binaries.server)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-m", method.name(), "-k", &password])
            .args(["--allow-private-targets", "--handshake-timeout", "2", "-v"])
            .nofile(NOFILE)
    })
    .await;
    let ready = Instant::now();
    let echo = echo_server("127.0.0.1:0").await;
    let target = Address::Ip(echo);
    let pid = server.pid();
    // The connection cap the server fits to its limit (two descriptors per relayed connection).
    let (cap, _) = ss_net::process::fit_to_descriptors(NOFILE, 1, 10_000, 0);
    let fitted = format!("max_connections={cap}");
    assert_eq!(server.lines_containing(&fitted), 1, "the cap is logged\n{}", server.log());
    // The readiness probe's connection is held until its handshake deadline; let it go first.
    sleep_until(ready + HANDSHAKE + Duration::from_millis(300)).await;

    // More idle connections (each from a host of its own, so no per-source budget applies) than the
    // server has descriptors: beyond the cap they wait in the backlog instead of failing accept.
    let pressure = NOFILE as usize + cap;
    let mut idle = Vec::with_capacity(pressure);
    for index in 0..pressure {
        idle.push(
            timeout(STEP, connect_from(loopback_host(index), server.addr))
                .await
                .expect("connect timed out")
                .expect("connect"),
        );
    }
    let (cpu_start, window_start) = (cpu_time(pid).expect("CPU time"), Instant::now());
    sleep(HANDSHAKE / 2).await;
    let open = open_fds(pid).expect("open descriptors").len();
    let cpu = cpu_time(pid).expect("CPU time").saturating_sub(cpu_start);
    let window = window_start.elapsed();
    assert!((open as u64) < NOFILE, "{open} descriptors open at a limit of {NOFILE}\n{}", server.log());
    assert_eq!(
        server.lines_containing("accept failed"),
        0,
        "accept ran out of descriptors\n{}",
        server.log()
    );
    assert!(cpu < window / 5, "{cpu:?} of CPU time in {window:?} at the cap: the accept loop spins");

    // Once they close, the server still takes each queued one in turn and holds it to its (shrunk)
    // handshake deadline, `cap` at a time: a few rounds of at most HANDSHAKE each.
    drop(idle);
    let pressure_ended = Instant::now();
    let rounds = (pressure / cap + 2) as u32;
    let back = timeout(rounds * HANDSHAKE, round_trip(server.addr, method, &target, b"served again"))
        .await
        .unwrap_or_else(|_| panic!("not served within {rounds} handshake timeouts\n{}", server.log()))
        .unwrap_or_else(|error| panic!("round trip after the pressure: {error}\n{}", server.log()));
    assert_eq!(back, b"served again");
    eprintln!(
        "{pressure} idle connections, limit {NOFILE}, cap {cap}: {open} descriptors open, {cpu:?} CPU in \
         {window:.2?}; a client served {:.2?} after the pressure ended",
        pressure_ended.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_connections_are_closed_at_the_handshake_deadline() {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    const ATTACKERS: usize = 1000;
    let method = Method::Blake3Aes128Gcm;
    let mut settings = server_settings(method);
    // Room on a loaded machine for all the attackers to connect and send a byte before the first
    // deadline.
    settings.handshake_timeout = Duration::from_secs(5);
    let handshake = settings.handshake_timeout;
    let server = start_server(settings).await;
    let echo = echo_server("127.0.0.1:0").await;
    let target = Address::Ip(echo);

    // Half trickle a valid request, half random bytes; neither gets past the deadline.
    let valid = first_flight(method, random_salt(method), &target, b"too slow", ss_net::unix_now());
    let garbage = random_bytes(valid.len());
    let (connected, all_connected) = watch::channel(0usize);
    let connected = Arc::new(connected);
    // Attackers that have sent their first byte, and attackers the server has closed.
    let (trickled, mut all_trickled) = watch::channel(0usize);
    let trickled = Arc::new(trickled);
    let closed = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut attackers = JoinSet::new();
    let attack_began = Instant::now();
    for index in 0..ATTACKERS {
        let bytes = if index % 2 == 0 { valid.clone() } else { garbage.clone() };
        let (permits, connected, addr) = (permits.clone(), connected.clone(), server.addr);
        let (trickled, closed) = (trickled.clone(), closed.clone());
        attackers.spawn(async move {
            let permit = permits.acquire_owned().await.expect("semaphore");
            let dialled = Instant::now();
            // Each attacker from a host of its own: this test is about the deadline, not the per-source
            // budget (tests/flood.rs).
            let stream = connect_from(loopback_host(index), addr).await?;
            let connected_at = Instant::now();
            drop(permit);
            connected.send_modify(|count| *count += 1);
            let ended = slowloris(stream, &bytes, &trickled).await;
            closed.fetch_add(1, Ordering::SeqCst);
            let ended = ended?;
            std::io::Result::Ok((ended - dialled, ended - connected_at))
        });
    }
    let mut all_connected = all_connected;
    timeout(STEP, all_connected.wait_for(|count| *count == ATTACKERS))
        .await
        .expect("connecting timed out")
        .expect("watch");

    // Once every attacker has sent a byte, a real client is served while all of them are still held.
    timeout(STEP, all_trickled.wait_for(|started| *started == ATTACKERS))
        .await
        .expect("trickling timed out")
        .expect("watch");
    let asked = Instant::now();
    let back = timeout(STEP, round_trip(server.addr, method, &target, b"served during the attack"))
        .await
        .expect("round trip timed out")
        .expect("round trip during the attack");
    let served_in = asked.elapsed();
    assert_eq!(back, b"served during the attack");
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "the client was served only as attackers were closed, {:?} after the attack began",
        attack_began.elapsed()
    );
    // Promptness is the behaviour here: generous for two loaded cores, well under the deadline.
    assert!(served_in < handshake / 2, "a client waited {served_in:?} during the attack");

    // The deadline counts from accept, which comes after the client dials (so a close is never sooner
    // than the deadline after dialling) and may come a little after its connect completes.
    let (mut first, mut last) = (Duration::MAX, Duration::ZERO);
    while let Some(attacker) =
        timeout(handshake + STEP, attackers.join_next()).await.expect("an attacker was never closed")
    {
        let (since_dialled, since_connected) = attacker.expect("attacker task").expect("attacker");
        first = first.min(since_dialled);
        last = last.max(since_connected);
    }
    assert!(
        first >= handshake - Duration::from_millis(10),
        "closed {first:?} after dialling, before the deadline"
    );
    assert!(last <= handshake + Duration::from_secs(2), "one was closed only {last:?} after connecting");
    eprintln!(
        "{ATTACKERS} slowloris connections closed {first:.2?} (after dialling) to {last:.2?} (after connecting) \
         (handshake timeout {handshake:?}); a client was served in {served_in:.1?} meanwhile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_clients_stalled_in_a_maximum_length_chunk_cost_bounded_memory() {
    stalled_in_the_largest_record(Method::Aes256Gcm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aead_2022_clients_stalled_in_a_maximum_length_header_cost_bounded_memory() {
    stalled_in_the_largest_record(Method::Blake3Aes256Gcm).await;
}

/// Connections of the stalled-record tests.
const STALLED: usize = 500;

/// Most a stalled connection may add to the server's resident memory.
const MAX_GROWTH_PER_CONNECTION: u64 = 200 * 1024;

/// `STALLED` valid clients each announce the largest record the method allows (a classic length field
/// of 0x3FFF, a 2022 header length of 0xFFFF) and send all of it but its last byte. The server, a child
/// process so that its memory is its own, must hold them all without its memory growing by more than
/// [`MAX_GROWTH_PER_CONNECTION`] each.
async fn stalled_in_the_largest_record(method: Method) {
    let _serial = SERIAL.lock().await;
    raise_fd_limit();
    let binaries = binaries().await;
    let password = test_password(method);
    let server = Subprocess::start_on_free_port(|port| {
        Launch::new(&binaries.server)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-m", method.name(), "-k", &password])
            .args(["--allow-private-targets", "--handshake-timeout", "60"])
    })
    .await;
    let echo = echo_server("127.0.0.1:0").await;
    let raw_address = address_bytes(&Address::Ip(echo));
    // The first record holds the address (and for 2022 the padding length) and then the payload.
    let header = raw_address.len() + if method.is_2022() { 2 } else { 0 };
    let announced = method.max_chunk_payload();
    let payload = random_bytes(announced - header);
    let flight = sealed_first_flight(method, random_salt(method), &raw_address, &payload, ss_net::unix_now());
    let stalled = Arc::new(flight[..flight.len() - 1].to_vec());
    let pid = server.pid();
    let before = resident_bytes(pid).expect("RSS");

    let permits = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut opening = JoinSet::new();
    for index in 0..STALLED {
        let (permits, stalled, addr) = (permits.clone(), stalled.clone(), server.addr);
        opening.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            // A host per client, as in the slowloris test.
            let mut stream = connect_from(loopback_host(index), addr).await?;
            stream.write_all(&stalled).await?;
            std::io::Result::Ok(stream)
        });
    }
    let mut streams = Vec::with_capacity(STALLED);
    while let Some(opened) = timeout(STEP, opening.join_next()).await.expect("opening timed out") {
        streams.push(opened.expect("opening task").expect("open and send"));
    }

    // Wait until the server has read what it will read of every connection.
    let settle_deadline = Instant::now() + STEP;
    let unread = loop {
        let unread = unread_bytes(server.addr.port()).expect("read /proc/net/tcp");
        if unread.len() == STALLED && unread.iter().all(|&bytes| bytes == 0) {
            break unread;
        }
        assert!(Instant::now() < settle_deadline, "the server did not read the stalled records: {unread:?}");
        sleep(Duration::from_millis(50)).await;
    };
    let after = resident_bytes(pid).expect("RSS");
    for stream in &streams {
        let mut probe = [0u8; 1];
        match stream.try_read(&mut probe) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a stalled connection was answered or closed: {other:?}\n{}", server.log()),
        }
    }
    let growth = after.saturating_sub(before) / STALLED as u64;
    eprintln!(
        "{method}: {STALLED} connections stalled one byte short of a {announced}-byte record \
         ({} bytes sent each, {} unread in the kernel): RSS {:.1} -> {:.1} MiB, {:.1} KiB per connection",
        stalled.len(),
        unread.iter().sum::<u64>(),
        mib(before),
        mib(after),
        growth as f64 / 1024.0
    );
    assert!(
        growth < MAX_GROWTH_PER_CONNECTION,
        "{method}: {growth} bytes of server memory per stalled connection"
    );
}

/// The connection of a slowloris attacker: sends one byte of `bytes` a second (counted in `trickled` once,
/// after the first) and waits to be closed; when it was closed. Receiving any byte is an error.
async fn slowloris(
    stream: TcpStream,
    bytes: &[u8],
    trickled: &watch::Sender<usize>,
) -> std::io::Result<Instant> {
    let connected = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let mut next = connected + Duration::from_millis(500);
    let mut sent = 0;
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            read = read.read(&mut buf) => return match read {
                Ok(0) | Err(_) => Ok(Instant::now()),
                Ok(n) => Err(std::io::Error::other(format!("the server sent {n} bytes"))),
            },
            () = sleep_until(next), if sent < bytes.len() => {
                // A write after the server closed may fail; the read above reports the close.
                let _ = write.write_all(&bytes[sent..=sent]).await;
                sent += 1;
                if sent == 1 {
                    trickled.send_modify(|count| *count += 1);
                }
                next += Duration::from_secs(1);
            }
        }
    }
}

/// Rounds an RSS in bytes to MiB.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Raises this process's soft descriptor limit to its hard limit (children inherit it); the limit.
fn raise_fd_limit() -> u64 {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    hard
}

/// Opens `count` SOCKS5 connections through `local` to `target`, a bounded number at a time; returns
/// those that opened.
async fn open_through(local: SocketAddr, target: SocketAddr, count: usize) -> Vec<TcpStream> {
    let permits = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut opening = JoinSet::new();
    for _ in 0..count {
        let permits = permits.clone();
        opening.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            timeout(STEP, socks5_connect(local, &Address::Ip(target))).await
        });
    }
    let mut streams = Vec::with_capacity(count);
    let mut failures = Vec::new();
    while let Some(opened) = opening.join_next().await {
        match opened.expect("opening task") {
            Ok(Ok(stream)) => streams.push(stream),
            Ok(Err(error)) => failures.push(error.to_string()),
            Err(_) => failures.push("timed out".to_owned()),
        }
    }
    if !failures.is_empty() {
        eprintln!(
            "{} connections failed to open, first: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
    streams
}

/// An echo target that counts the connections it accepted and those still open.
struct CountingEcho {
    addr: SocketAddr,
    accepted: watch::Receiver<usize>,
    open: Arc<AtomicUsize>,
}

impl CountingEcho {
    async fn start() -> CountingEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
        let addr = listener.local_addr().expect("target address");
        let (record, accepted) = watch::channel(0);
        let open = Arc::new(AtomicUsize::new(0));
        let still_open = open.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                still_open.fetch_add(1, Ordering::SeqCst);
                record.send_modify(|count| *count += 1);
                let still_open = still_open.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    still_open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CountingEcho { addr, accepted, open }
    }

    /// Waits until `count` connections have been accepted.
    async fn accepted(&self, count: usize) {
        let mut accepted = self.accepted.clone();
        let _ = accepted.wait_for(|accepted| *accepted >= count).await;
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}
