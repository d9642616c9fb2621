//! Faults around the proxy: a target that resets, a server killed and restarted under a running
//! ss-local, clients that vanish without a FIN, a name that does not resolve, and a shutdown whose drain
//! time runs out. Every address is loopback (the unresolvable name is under the reserved `.invalid`
//! TLD) and every wait is bounded.
//!
//! The graceful half of SIGTERM (new connections refused, an open transfer allowed to finish, exit 0)
//! is tests/binaries.rs's; this file covers the transfer that outlasts the drain time.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;
use ss_crypto::{Address, Decryptor, Encryptor, Method};
use ss_net::stream::{DecryptReader, EncryptWriter};
use ss_tests::probing::random_salt;
use ss_tests::subprocess::{binaries, Launch, Subprocess};
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};

/// How soon a connection must end once its cause is gone, on a loaded two-core machine.
const PROMPTLY: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_reset_mid_transfer_ends_that_connection_promptly_and_no_other() {
    for method in [Method::Aes128Gcm, Method::Blake3Aes256Gcm] {
        let server = start_server(server_settings(method)).await;
        let local = start_local(local_settings(method, server.addr)).await;
        let echo = echo_server("127.0.0.1:0").await;
        let mut bystander = proxied(local.addr, &Address::Ip(echo)).await;
        echo_once(&mut bystander, b"before the reset").await;

        // The target sends a first part, waits for the client's word, sends more and resets (RST, by
        // SO_LINGER 0) while the client still expects bytes.
        let first = pattern(1, 64 * 1024);
        let burst = pattern(2, 256 * 1024);
        let target = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
        let target_addr = target.local_addr().expect("target address");
        let (first_sent, burst_sent) = (first.clone(), burst.clone());
        let (reset_tx, reset_rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = target.accept().await?;
            stream.write_all(&first_sent).await?;
            let mut word = [0u8; 3];
            stream.read_exact(&mut word).await?;
            stream.write_all(&burst_sent).await?;
            stream.set_zero_linger()?;
            drop(stream);
            let _ = reset_tx.send(Instant::now());
            std::io::Result::Ok(())
        });

        let mut stream = proxied(local.addr, &Address::Ip(target_addr)).await;
        let mut received = vec![0u8; first.len()];
        timeout(STEP, stream.read_exact(&mut received))
            .await
            .expect("first part timed out")
            .expect("first part");
        assert!(received == first, "{method}: first part corrupted");
        stream.write_all(b"go!").await.expect("write the word");
        let mut rest = Vec::new();
        let ended = timeout(STEP, stream.read_to_end(&mut rest)).await;
        let reset_at = timeout(STEP, reset_rx).await.expect("target timed out").expect("target failed");
        let lag = reset_at.elapsed();
        assert!(ended.is_ok(), "{method}: the client's connection hung after the target's reset");
        // The reset travels on: the target never sent a FIN, so however many bytes got through first, a
        // clean end of stream would make a cut-off transfer look complete.
        assert!(
            matches!(&ended, Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset),
            "{method}: the target's reset reached the client as {ended:?} after {} bytes",
            rest.len()
        );
        assert!(lag < PROMPTLY, "{method}: the client saw the end {lag:?} after the reset");
        assert!(
            rest.len() <= burst.len() && rest == burst[..rest.len()],
            "{method}: corrupted before the end"
        );

        eprintln!(
            "{method}: the client saw {} ({} bytes of the burst) {lag:.1?} after the target's reset",
            match &ended {
                Ok(Ok(_)) => "a clean end of stream".to_owned(),
                Ok(Err(error)) => format!("an error ({error})"),
                Err(_) => "nothing".to_owned(),
            },
            rest.len()
        );
        echo_once(&mut bystander, b"after the reset").await;
        let mut fresh = proxied(local.addr, &Address::Ip(echo)).await;
        echo_once(&mut fresh, b"a new connection").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ss_local_serves_again_once_a_killed_server_is_restarted_on_its_port() {
    let binaries = binaries().await;
    let method = Method::Blake3Aes128Gcm;
    let password = test_password(method);
    let launch = |port: u16| {
        Launch::new(&binaries.server)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-m", method.name(), "-k", &password])
            .args(["--allow-private-targets", "--handshake-timeout", "2"])
    };
    let mut server = Subprocess::start_on_free_port(launch).await;
    let server_addr = server.addr;
    let local = start_local(local_settings(method, server_addr)).await;
    let echo = echo_server("127.0.0.1:0").await;
    let target = Address::Ip(echo);
    let mut open = proxied(local.addr, &target).await;
    echo_once(&mut open, b"before the kill").await;

    server.kill().await;
    let killed = Instant::now();
    let mut rest = Vec::new();
    let ended = timeout(PROMPTLY, open.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "a connection through the killed server still hangs {PROMPTLY:?} later");
    assert!(rest.is_empty(), "{} bytes after the kill", rest.len());
    // With the server gone ss-local answers a new request with a failure reply, and promptly.
    let refused =
        timeout(PROMPTLY, socks5_connect(local.addr, &target)).await.expect("SOCKS5 reply timed out");
    assert!(refused.is_err(), "ss-local reported success with its server down");

    let restarted = Subprocess::start(&launch(server_addr.port()), server_addr)
        .await
        .unwrap_or_else(|failure| panic!("restart on port {}: {failure}", server_addr.port()));
    let mut again = proxied(local.addr, &target).await;
    echo_once(&mut again, b"after the restart").await;
    eprintln!(
        "killed, seen by the client after {:.1?}; the same ss-local served again after the restart",
        killed.elapsed()
    );
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_silent_without_fin_is_dropped_at_the_server_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(2);
    let method = Method::Blake3ChaCha20Poly1305;
    let mut settings = server_settings(method);
    settings.idle_timeout = IDLE;
    let server = start_server(settings).await;
    let target = WatchedTarget::start().await;

    // A Shadowsocks client that completes one exchange, then neither sends nor closes: what the server
    // sees of a peer whose machine or network went away (no FIN, no RST).
    let stream =
        timeout(STEP, TcpStream::connect(server.addr)).await.expect("connect timed out").expect("connect");
    let (read_half, write_half) = stream.into_split();
    let (key, salt) = (test_key(method), random_salt(method));
    let mut writer = EncryptWriter::new(
        write_half,
        Encryptor::request(method, &key, salt, &Address::Ip(target.addr), &[]),
    );
    let mut reader = DecryptReader::new(read_half, Decryptor::response(method, &key, salt));
    writer.write_all(b"last words").await.expect("write");
    writer.flush().await.expect("flush");
    let mut back = [0u8; 10];
    timeout(STEP, reader.read_exact(&mut back)).await.expect("echo timed out").expect("echo");
    assert_eq!(&back, b"last words");
    let silent_since = Instant::now();

    let closed_after = target.closed(silent_since, IDLE + STEP).await;
    assert!(
        closed_after >= IDLE - Duration::from_millis(100),
        "closed after {closed_after:?}, before the idle timeout"
    );
    assert!(closed_after < IDLE + PROMPTLY, "closed only {closed_after:?} after the client went silent");
    // The silent client's socket stays open until here.
    drop((reader, writer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_gone_silent_is_dropped_at_ss_local_idle_timeout_and_so_at_the_target() {
    const IDLE: Duration = Duration::from_secs(2);
    let method = Method::Aes256Gcm;
    let server = start_server(server_settings(method)).await;
    let mut settings = local_settings(method, server.addr);
    settings.idle_timeout = IDLE;
    let local = start_local(settings).await;
    let target = WatchedTarget::start().await;

    let mut app = proxied(local.addr, &Address::Ip(target.addr)).await;
    echo_once(&mut app, b"and then silence").await;
    let silent_since = Instant::now();
    let closed_after = target.closed(silent_since, IDLE + STEP).await;
    assert!(
        closed_after >= IDLE - Duration::from_millis(100),
        "closed after {closed_after:?}, before the idle timeout"
    );
    assert!(closed_after < IDLE + PROMPTLY, "closed only {closed_after:?} after the application went silent");
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_name_closes_the_client_promptly_and_the_server_keeps_serving() {
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    let method = Method::Blake3Aes256Gcm;
    let mut settings = server_settings(method);
    // The bound for a name server that does not answer at all; one that answers NXDOMAIN is faster (and
    // names under .invalid are answered NXDOMAIN by the resolver itself, RFC 6761).
    settings.resolve.timeout = CONNECT_TIMEOUT;
    let server = start_server(settings).await;
    let local = start_local(local_settings(method, server.addr)).await;
    let echo = echo_server("127.0.0.1:0").await;

    // A few at once, so that lookups in flight do not hold up one another or the server.
    let mut lookups = tokio::task::JoinSet::new();
    for index in 0..8 {
        let proxy = local.addr;
        lookups.spawn(async move {
            let name = Address::domain(&format!("host-{index}.nonexistent.invalid"), 80).expect("domain");
            let started = Instant::now();
            // ss-local answers before its server resolves the name; the end of the stream is the answer.
            let mut stream = timeout(STEP, socks5_connect(proxy, &name))
                .await
                .expect("SOCKS5 timed out")
                .expect("ss-local's SOCKS5 success reply");
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: nonexistent.invalid\r\n\r\n").await;
            let mut reply = Vec::new();
            let read =
                timeout(CONNECT_TIMEOUT + STEP, stream.read_to_end(&mut reply)).await.expect("never closed");
            // Nothing was relayed, so nothing is cut off: a plain close, as for a refused target.
            assert!(matches!(read, Ok(0)), "{name}: {read:?} after {} bytes", reply.len());
            (started.elapsed(), reply.len())
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(lookup) = lookups.join_next().await {
        let (took, bytes) = lookup.expect("lookup task");
        assert_eq!(bytes, 0, "the client received bytes for a name that does not resolve");
        slowest = slowest.max(took);
    }
    assert!(slowest < CONNECT_TIMEOUT + PROMPTLY, "a failed lookup kept its client for {slowest:?}");

    let mut served = proxied(local.addr, &Address::domain("localhost", echo.port()).expect("domain")).await;
    echo_once(&mut served, b"names that resolve still work").await;
    eprintln!("8 connections to names under .invalid closed with no data; the slowest after {slowest:.2?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_transfer_still_running_when_the_drain_time_ends() {
    // The binaries' default drain time; nothing on the command line changes it.
    const DRAIN: Duration = Duration::from_secs(5);
    let binaries = binaries().await;
    let method = Method::Aes128Gcm;
    let password = test_password(method);
    let mut server = Subprocess::start_on_free_port(|port| {
        Launch::new(&binaries.server)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-m", method.name(), "-k", &password])
            .args(["--allow-private-targets", "--handshake-timeout", "1"])
    })
    .await;
    let server_port = server.addr.port().to_string();
    let mut local = Subprocess::start_on_free_port(|port| {
        Launch::new(&binaries.local)
            .args(["-s", "127.0.0.1", "-p", &server_port, "-l", &port.to_string()])
            .args(["-m", method.name(), "-k", &password, "--handshake-timeout", "1"])
    })
    .await;

    // A target that sends a little and then nothing more, keeping the transfer open forever.
    let target = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let target_addr = target.local_addr().expect("target address");
    let (hold_tx, hold_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = target.accept().await?;
        stream.write_all(b"the first of many bytes").await?;
        let _ = hold_rx.await;
        std::io::Result::Ok(())
    });
    let mut stream = proxied(local.addr, &Address::Ip(target_addr)).await;
    let mut first = [0u8; 23];
    timeout(STEP, stream.read_exact(&mut first)).await.expect("first bytes timed out").expect("first bytes");

    let signalled = Instant::now();
    for process in [&server, &local] {
        process.signal(Signal::SIGTERM);
    }
    for (name, process) in [("ss-server", &mut server), ("ss-local", &mut local)] {
        let left = (DRAIN + PROMPTLY).saturating_sub(signalled.elapsed());
        let status = process.wait_exit(left).await;
        let status = status.unwrap_or_else(|| {
            panic!("{name} still runs {:?} after SIGTERM\n{}", DRAIN + PROMPTLY, process.log())
        });
        assert!(status.success(), "{name}: {status}\n{}", process.log());
        assert_eq!(
            process.lines_containing("still open after the drain time"),
            1,
            "{name}:\n{}",
            process.log()
        );
    }
    let exited_after = signalled.elapsed();
    assert!(
        exited_after >= DRAIN - Duration::from_millis(100),
        "exited after {exited_after:?}, before the drain time"
    );
    let mut rest = Vec::new();
    let ended = timeout(PROMPTLY, stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the client's connection outlived both processes");
    drop(hold_tx);
}

/// A SOCKS5 connection through `proxy` to `target`, bounded by [`STEP`].
async fn proxied(proxy: SocketAddr, target: &Address) -> TcpStream {
    timeout(STEP, socks5_connect(proxy, target))
        .await
        .expect("SOCKS5 connect timed out")
        .unwrap_or_else(|error| panic!("SOCKS5 connect to {target}: {error}"))
}

/// Sends `message` and reads it back (the target echoes).
async fn echo_once(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.expect("write");
    let mut back = vec![0u8; message.len()];
    timeout(STEP, stream.read_exact(&mut back)).await.expect("echo timed out").expect("echo");
    assert_eq!(back, message);
}

/// An echo target for one connection that reports when the proxy closed it.
struct WatchedTarget {
    addr: SocketAddr,
    closed: oneshot::Receiver<Instant>,
}

impl WatchedTarget {
    async fn start() -> WatchedTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
        let addr = listener.local_addr().expect("target address");
        let (closed_tx, closed) = oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await?;
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => stream.write_all(&buf[..n]).await?,
                }
            }
            let _ = closed_tx.send(Instant::now());
            std::io::Result::Ok(())
        });
        WatchedTarget { addr, closed }
    }

    /// Waits up to `within` for the proxy to close the target's connection; how long after `since`.
    async fn closed(self, since: Instant, within: Duration) -> Duration {
        let at = timeout(within, self.closed)
            .await
            .expect("the target's connection was never closed")
            .expect("target task failed");
        at.saturating_duration_since(since)
    }
}

/// `len` bytes that differ between `seed`s and along the stream.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed.wrapping_mul(0x5b))
        .collect()
}
