//! Many users on one port, in-process: ss-local (one per user; an `iPSK:uPSK` chain for the AES 2022
//! methods) -> ss-server with `users` -> loopback echo. A stranger's key gets the probe treatment, and a
//! reload ends the connections of removed users only.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ss_config::users::UserEntry;
use ss_crypto::identity::supports_identity_headers;
use ss_crypto::{Address, Key, Method};
use ss_server::users::Users;
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The key of user `n` for `method`: a distinct PSK or password.
fn user_key(method: Method, n: u8) -> Key {
    if method.is_2022() {
        Key::from_bytes(method, &[n; 32][..method.key_len()]).unwrap()
    } else {
        Key::from_password(method, &format!("password of user number {n}")).unwrap()
    }
}

fn entries(method: Method, numbers: &[u8]) -> Vec<UserEntry> {
    numbers.iter().map(|&n| UserEntry::new(format!("user{n}"), user_key(method, n))).collect()
}

/// A server whose users are `numbers`; its `Users` handle for reloads.
async fn multi_user_server(method: Method, numbers: &[u8]) -> (RunningServer, Arc<Users>) {
    let users = Arc::new(Users::new(method, &entries(method, numbers)));
    let settings = ss_server::Settings { users: Some(users.clone()), ..server_settings(method) };
    (start_server(settings).await, users)
}

/// [`multi_user_server`] with its live counters.
async fn multi_user_server_with_stats(
    method: Method,
    numbers: &[u8],
) -> (RunningServer, Arc<Users>, Arc<ss_server::Stats>) {
    let users = Arc::new(Users::new(method, &entries(method, numbers)));
    let settings = ss_server::Settings { users: Some(users.clone()), ..server_settings(method) };
    let stats = settings.stats.clone();
    (start_server(settings).await, users, stats)
}

/// An ss-local for user `n` of a multi-user server at `server`.
async fn local_for(method: Method, server: SocketAddr, n: u8) -> RunningServer {
    let mut settings = ss_tests::udp::local_settings_udp(method, server);
    settings.servers[0].key = user_key(method, n);
    if supports_identity_headers(method) {
        settings.servers[0].identity_keys = vec![test_key(method)];
    }
    start_local(settings).await
}

async fn echo_once(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(message).await?;
    let mut back = vec![0; message.len()];
    timeout(STEP, stream.read_exact(&mut back)).await??;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_reaches_the_target_and_a_stranger_gets_nothing() {
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    for method in Method::ALL {
        let (server, _users) = multi_user_server(method, &[1, 2, 3]).await;
        for n in [3, 1] {
            let local = local_for(method, server.addr, n).await;
            let mut stream = timeout(STEP, socks5_connect(local.addr, &echo)).await.unwrap().unwrap();
            let back = echo_once(&mut stream, b"hello from a user").await;
            assert_eq!(back.unwrap(), b"hello from a user", "{method} user{n}");
        }
        // A key that is no user's: nothing comes back, the server closes at its handshake deadline.
        let stranger = local_for(method, server.addr, 9).await;
        let mut stream = timeout(STEP, socks5_connect(stranger.addr, &echo)).await.unwrap().unwrap();
        stream.write_all(b"let me in").await.unwrap();
        let mut back = Vec::new();
        let read = timeout(STEP, stream.read_to_end(&mut back)).await.unwrap();
        assert!(back.is_empty(), "{method}: a stranger got {read:?} {back:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_ends_removed_users_connections_and_keeps_the_others() {
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    for method in [Method::Blake3Aes128Gcm, Method::Aes256Gcm, Method::Blake3ChaCha20Poly1305] {
        let (server, users) = multi_user_server(method, &[1, 2]).await;
        let (alice, bob) = (local_for(method, server.addr, 1).await, local_for(method, server.addr, 2).await);
        let mut stays = socks5_connect(alice.addr, &echo).await.unwrap();
        let mut goes = socks5_connect(bob.addr, &echo).await.unwrap();
        assert_eq!(echo_once(&mut stays, b"one").await.unwrap(), b"one");
        assert_eq!(echo_once(&mut goes, b"one").await.unwrap(), b"one");

        assert_eq!(users.replace(&entries(method, &[1, 3])), (1, 1, 1), "{method}");

        let mut rest = Vec::new();
        let ended = timeout(STEP, goes.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "{method}: the removed user's connection stayed open");
        assert_eq!(echo_once(&mut stays, b"two").await.unwrap(), b"two", "{method}: the kept user goes on");
        // The removed user cannot come back, the new one can.
        let mut again = socks5_connect(bob.addr, &echo).await.unwrap();
        assert!(echo_once(&mut again, b"three").await.is_err(), "{method}");
        let carol = local_for(method, server.addr, 3).await;
        let mut new = socks5_connect(carol.addr, &echo).await.unwrap();
        assert_eq!(echo_once(&mut new, b"four").await.unwrap(), b"four", "{method}");
    }
}

/// One datagram through `local` to `echo`; the reply's payload, or `None` if none came within `wait`.
async fn udp_echo(local: &RunningServer, echo: SocketAddr, wait: std::time::Duration) -> Option<Vec<u8>> {
    let association = timeout(STEP, ss_tests::udp::socks5_udp_associate(local.addr)).await.unwrap().unwrap();
    association.send(&Address::Ip(echo), b"datagram of a user").await;
    timeout(wait, association.recv()).await.ok().map(|(_, payload)| payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_relays_datagrams_and_a_removed_or_unknown_key_gets_none() {
    let echo = ss_tests::udp::udp_echo_server("127.0.0.1:0").await;
    // Long enough for a reply on a loaded machine; only waited out where no reply must come.
    let quiet = std::time::Duration::from_secs(1);
    for method in Method::ALL {
        let (server, users, stats) = multi_user_server_with_stats(method, &[1, 2, 3]).await;
        for n in [3, 1, 2] {
            let local = local_for(method, server.addr, n).await;
            let back = udp_echo(&local, echo, STEP).await;
            assert_eq!(back.as_deref(), Some(&b"datagram of a user"[..]), "{method} user{n}");
        }
        let stranger = local_for(method, server.addr, 9).await;
        assert_eq!(udp_echo(&stranger, echo, quiet).await, None, "{method}: a stranger's datagram");
        assert_eq!(stats.udp_associations.load(Ordering::Relaxed), 3, "{method}: one per user");
        users.replace(&entries(method, &[1, 3]));
        // The removed user's association ends at once (its reply task sees the removal).
        let ended = timeout(STEP, async {
            while stats.udp_associations.load(Ordering::Relaxed) != 2 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        assert!(ended.await.is_ok(), "{method}: the removed user's association stayed");
        let removed = local_for(method, server.addr, 2).await;
        assert_eq!(udp_echo(&removed, echo, quiet).await, None, "{method}: a removed user's datagram");
        let kept = local_for(method, server.addr, 1).await;
        assert!(udp_echo(&kept, echo, STEP).await.is_some(), "{method}: a kept user");
    }
}

/// How the server reacted to one probe: bytes it sent, whether it closed with a FIN (not a reset), and
/// when, counted from our connect.
async fn probe_reaction(server: SocketAddr, probe: &[u8]) -> (usize, bool, std::time::Duration) {
    let started = tokio::time::Instant::now();
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_all(probe).await.unwrap();
    let mut back = Vec::new();
    let read = timeout(STEP, stream.read_to_end(&mut back)).await.expect("the server never closed");
    (back.len(), read.is_ok(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_over_a_thousand_keys_looks_like_a_miss_over_one() {
    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);
    // Generous: the deadline is the behaviour under test, on a loaded two-core machine.
    const TOLERANCE: std::time::Duration = std::time::Duration::from_millis(1000);
    for method in [Method::Aes256Gcm, Method::Blake3ChaCha20Poly1305, Method::Blake3Aes256Gcm] {
        for count in [1u16, 1000] {
            let entries: Vec<UserEntry> = (0..count)
                .map(|n| {
                    let mut bytes = [7u8; 32];
                    bytes[..2].copy_from_slice(&n.to_le_bytes());
                    UserEntry::new(
                        format!("user{n}"),
                        Key::from_bytes(method, &bytes[..method.key_len()]).unwrap(),
                    )
                })
                .collect();
            let users = Arc::new(Users::new(method, &entries));
            let mut settings = ss_server::Settings { users: Some(users), ..server_settings(method) };
            settings.handshake_timeout = DEADLINE;
            let server = start_server(settings).await;
            let server = &server;
            let probes = [1, 60, 300].map(|len| async move {
                (len, probe_reaction(server.addr, &ss_tests::probing::random_bytes(len)).await)
            });
            let [one, two, three] = probes;
            let (one, two, three) = tokio::join!(one, two, three);
            for (len, (sent, fin, after)) in [one, two, three] {
                let what = format!("{method}, {count} users, {len}-byte probe");
                assert_eq!(sent, 0, "{what}: the server answered");
                assert!(fin, "{what}: reset instead of a FIN");
                assert!(
                    after + std::time::Duration::from_millis(20) >= DEADLINE,
                    "{what}: closed early, {after:?}"
                );
                assert!(after <= DEADLINE + TOLERANCE, "{what}: closed late, {after:?}");
            }
        }
    }
}
