//! Per-user limits on a multi-user server, end to end through ss-local on loopback: a rate-limited user
//! gets their rate while another is unaffected, a quota ends a transfer at the quota and refuses the
//! user afterwards (TCP and UDP), and connection and device limits refuse the one too many until a place
//! is free. Limits are set as a config would set them ([`ss_config::limits::Limits`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand_core::OsRng;
use ss_config::limits::Limits;
use ss_config::quota::{Period, Quota};
use ss_config::users::UserEntry;
use ss_crypto::{Address, Decryptor, Encryptor, Key, Method, Salt};
use ss_net::stream::{DecryptReader, EncryptWriter};
use ss_server::users::Users;
use ss_tests::probing::connect_from;
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

const MIB: u64 = 1 << 20;

fn user_key(method: Method, n: u8) -> Key {
    if method.is_2022() {
        Key::from_bytes(method, &[n; 32][..method.key_len()]).unwrap()
    } else {
        Key::from_password(method, &format!("password of user number {n}")).unwrap()
    }
}

/// A server whose user `n` has `limits[n - 1]`.
async fn server_with_limits(method: Method, limits: &[Limits]) -> (RunningServer, Arc<Users>) {
    let entries: Vec<UserEntry> = (1..)
        .zip(limits)
        .map(|(n, limits)| UserEntry {
            limits: *limits,
            ..UserEntry::new(format!("user{n}"), user_key(method, n))
        })
        .collect();
    let users = Arc::new(Users::new(method, &entries));
    let settings = ss_server::Settings { users: Some(users.clone()), ..server_settings(method) };
    (start_server(settings).await, users)
}

async fn local_for(method: Method, server: SocketAddr, n: u8) -> RunningServer {
    let mut settings = ss_tests::udp::local_settings_udp(method, server);
    settings.servers[0].key = user_key(method, n);
    if ss_crypto::identity::supports_identity_headers(method) {
        settings.servers[0].identity_keys = vec![test_key(method)];
    }
    start_local(settings).await
}

/// A target that reads and counts everything sent to it (by all connections).
async fn sink_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(read @ 1..) = stream.read(&mut buf).await {
                    counter.fetch_add(read as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, received)
}

/// Bytes per second `stream` receives over `window`, counted from its first byte.
async fn download_rate(mut stream: TcpStream, window: Duration) -> f64 {
    let mut buf = vec![0u8; 64 * 1024];
    let first = timeout(STEP, stream.read(&mut buf)).await.expect("no first byte").expect("read");
    assert!(first > 0, "the download ended at once");
    let start = Instant::now();
    let mut received = 0u64;
    while let Ok(Ok(read @ 1..)) = tokio::time::timeout_at(start + window, stream.read(&mut buf)).await {
        received += read as u64;
    }
    assert!(start.elapsed() >= window, "the download ended early after {received} bytes");
    received as f64 / window.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_user_gets_its_rate_and_another_user_is_unaffected() {
    const RATE: u64 = 1_000_000;
    let method = Method::Blake3Aes128Gcm;
    let limited = Limits { rate_down: Some(RATE), rate_up: Some(RATE / 2), ..Limits::default() };
    let (server, _users) = server_with_limits(method, &[limited, Limits::default()]).await;
    let (one, two) = (local_for(method, server.addr, 1).await, local_for(method, server.addr, 2).await);
    let source = Address::Ip(source_server("127.0.0.1:0").await);
    let (slow, fast) = tokio::join!(socks5_connect(one.addr, &source), socks5_connect(two.addr, &source));
    let window = Duration::from_secs(10);
    let (slow, fast) =
        tokio::join!(download_rate(slow.unwrap(), window), download_rate(fast.unwrap(), window));
    eprintln!("down over {window:?}: limited user {slow:.0} B/s (limit {RATE}), other user {fast:.0} B/s");
    let error = (slow - RATE as f64).abs() / RATE as f64;
    assert!(error < 0.10, "the limited user measured {slow:.0} B/s for a limit of {RATE}");
    assert!(fast > 10.0 * RATE as f64, "the other user got only {fast:.0} B/s");

    // Up: what the sink receives from the limited user over three seconds.
    let (sink, received) = sink_server().await;
    let mut upload = socks5_connect(one.addr, &Address::Ip(sink)).await.unwrap();
    let chunk = vec![1u8; 16 * 1024];
    let window = Duration::from_secs(3);
    let sending = async {
        loop {
            upload.write_all(&chunk).await.unwrap();
        }
    };
    let measuring = async {
        while received.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        let (start, at_start) = (Instant::now(), received.load(Ordering::Relaxed));
        tokio::time::sleep(window).await;
        (received.load(Ordering::Relaxed) - at_start) as f64 / start.elapsed().as_secs_f64()
    };
    let up = tokio::select! {
        () = sending => unreachable!(),
        up = timeout(STEP, measuring) => up.unwrap(),
    };
    let limit = (RATE / 2) as f64;
    eprintln!("up over {window:?}: limited user {up:.0} B/s (limit {limit})");
    assert!((up - limit).abs() / limit < 0.10, "up measured {up:.0} B/s for a limit of {limit}");
}

/// Reads `stream` to its end (or reset), or until `limit` bytes came; how many bytes came.
async fn drain(mut stream: TcpStream, limit: u64) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while let Ok(Ok(read @ 1..)) = timeout(STEP, stream.read(&mut buf)).await {
        total += read as u64;
        if total >= limit {
            break;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_ends_the_transfer_at_the_quota_and_refuses_the_user_after() {
    let method = Method::Blake3Aes256Gcm;
    let quota = Limits { quota: Some(Quota { bytes: 10 * MIB, period: Period::Day }), ..Limits::default() };
    let (server, users) = server_with_limits(method, &[quota, Limits::default()]).await;
    let (one, two) = (local_for(method, server.addr, 1).await, local_for(method, server.addr, 2).await);
    let source = Address::Ip(source_server("127.0.0.1:0").await);
    let downloaded = drain(socks5_connect(one.addr, &source).await.unwrap(), 20 * MIB).await;
    // The server writes exactly the quota (the client sends nothing), then closes.
    assert_eq!(downloaded, 10 * MIB, "the bytes through a quota of 10 MiB");
    let account = users.current().users()[0].account().clone();
    assert_eq!(account.counts().period_used, 10 * MIB, "the whole quota is spent, every lease given back");

    let refused = socks5_connect(one.addr, &source).await.unwrap();
    assert_eq!(drain(refused, 1).await, 0, "a spent user gets nothing");
    let other = socks5_connect(two.addr, &source).await.unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut other = other;
    timeout(STEP, other.read_exact(&mut buf)).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_counts_datagrams_both_ways_and_refuses_new_associations() {
    let method = Method::Blake3Aes128Gcm;
    let quota = Limits { quota: Some(Quota { bytes: 3000, period: Period::Month }), ..Limits::default() };
    let (server, _users) = server_with_limits(method, &[quota]).await;
    let local = local_for(method, server.addr, 1).await;
    let echo = Address::Ip(ss_tests::udp::udp_echo_server("127.0.0.1:0").await);
    let association = timeout(STEP, ss_tests::udp::socks5_udp_associate(local.addr)).await.unwrap().unwrap();
    let datagram = vec![7u8; 1000];
    // 1000 bytes up and 1000 down: 2000 of 3000.
    association.send(&echo, &datagram).await;
    let (_, reply) =
        timeout(STEP, association.recv()).await.expect("the first round trip is within the quota");
    assert_eq!(reply.len(), 1000);
    // 1000 more up reach the target (3000), the reply does not fit.
    association.send(&echo, &datagram).await;
    let quiet = Duration::from_secs(1);
    assert!(timeout(quiet, association.recv()).await.is_err(), "a reply beyond the quota");
    let again = timeout(STEP, ss_tests::udp::socks5_udp_associate(local.addr)).await.unwrap().unwrap();
    again.send(&echo, b"small").await;
    assert!(timeout(quiet, again.recv()).await.is_err(), "a new association of a spent user");
}

/// One echo round trip over a fresh connection to `server` from `source` as user `n`, bypassing
/// ss-local (which always connects from 127.0.0.1); the connection stays open while the result lives.
async fn echo_from(
    source: IpAddr,
    server: SocketAddr,
    method: Method,
    n: u8,
    echo: &Address,
) -> Option<TcpStream> {
    let stream = timeout(STEP, connect_from(source, server)).await.unwrap().unwrap();
    let (read_half, write_half) = stream.into_split();
    let key = user_key(method, n);
    let salt = Salt::random(method, &mut OsRng);
    let mut writer = EncryptWriter::new(write_half, Encryptor::request(method, &key, salt, echo, &[]));
    let mut reader = DecryptReader::new(read_half, Decryptor::response(method, &key, salt));
    writer.write_all(b"hello").await.ok()?;
    writer.flush().await.ok()?;
    let mut back = [0u8; 5];
    timeout(STEP, reader.read_exact(&mut back)).await.unwrap().ok()?;
    let stream = reader.into_inner().reunite(writer.into_inner()).unwrap();
    Some(stream)
}

/// Waits until user `index`'s account has `expected` (connections, devices) present.
async fn settles(users: &Users, index: usize, expected: (u32, usize)) {
    let account = users.current().users()[index].account().clone();
    let settled = timeout(STEP, async {
        while account.present() != expected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(settled.await.is_ok(), "still {:?}, expected {expected:?}", account.present());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_device_limits_refuse_one_too_many_until_a_place_is_free() {
    // Classic AEAD: users found by trial decryption.
    let method = Method::Aes256Gcm;
    let limits = [
        Limits { max_connections: Some(2), ..Limits::default() },
        Limits { max_devices: Some(1), ..Limits::default() },
    ];
    let (server, users) = server_with_limits(method, &limits).await;
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let here: IpAddr = [127, 0, 0, 1].into();
    let there: IpAddr = [127, 0, 0, 2].into();

    let first = echo_from(here, server.addr, method, 1, &echo).await.expect("first connection");
    let second = echo_from(there, server.addr, method, 1, &echo).await.expect("second connection");
    assert!(echo_from(here, server.addr, method, 1, &echo).await.is_none(), "a third connection");
    drop(first);
    settles(&users, 0, (1, 1)).await;
    let third = echo_from(here, server.addr, method, 1, &echo).await;
    assert!(third.is_some(), "a place was free again");
    drop(second);

    let phone = echo_from(here, server.addr, method, 2, &echo).await.expect("the first device");
    let laptop = echo_from(here, server.addr, method, 2, &echo).await;
    assert!(laptop.is_some(), "more connections from the same address are the same device");
    assert!(echo_from(there, server.addr, method, 2, &echo).await.is_none(), "a second device");
    drop((phone, laptop));
    settles(&users, 1, (0, 0)).await;
    assert!(echo_from(there, server.addr, method, 2, &echo).await.is_some(), "the other device, once alone");
}
