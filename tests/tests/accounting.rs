//! Per-user accounting with the real `ss-server`: two users transfer, the server is stopped with
//! SIGTERM and its usage store read back; a restart on the same state directory counts on from the saved
//! totals. A second server on the same state directory, and a corrupt store, stop at start with a clear
//! error.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use ss_crypto::{Address, Key, Method};
use ss_server::accounting::Counts;
use ss_server::usage_store::UsageStore;
use ss_tests::subprocess::{binaries, free_port, Launch, Subprocess};
use ss_tests::{echo_server, local_settings, socks5_connect, start_local, test_key, RunningServer, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const METHOD: Method = Method::Blake3Aes128Gcm;

fn user_key(n: u8) -> Key {
    Key::from_bytes(METHOD, &[n; 16]).expect("key")
}

/// A config with users `user1` and `user2`, keeping its state in `state_dir`.
fn write_config(dir: &Path, state_dir: &Path) -> String {
    let users: Vec<String> = (1..=2)
        .map(|n| format!(r#"{{"name":"user{n}","password":"{}"}}"#, user_key(n).to_base64()))
        .collect();
    let config = format!(
        r#"{{"method":"{METHOD}","password":"{}","users":[{}],"state_dir":{:?},"allow_private_targets":true}}"#,
        test_key(METHOD).to_base64(),
        users.join(","),
        state_dir.to_str().expect("UTF-8 path")
    );
    let path = dir.join("config.json");
    std::fs::write(&path, config).expect("write config");
    path.to_str().expect("UTF-8 path").to_owned()
}

async fn start(config: &str, port: u16) -> Result<Subprocess, String> {
    let launch = Launch::new(&binaries().await.server).args([
        "-c",
        config,
        "-s",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]);
    Subprocess::start(&launch, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
}

async fn local_for(server: &Subprocess, n: u8) -> RunningServer {
    let mut settings = local_settings(METHOD, server.addr);
    settings.servers[0].key = user_key(n);
    settings.servers[0].identity_keys = vec![test_key(METHOD)];
    start_local(settings).await
}

/// Sends `len` bytes through user `n`'s ss-local to the echo server, reads them back, and closes.
async fn transfer(server: &Subprocess, n: u8, echo: &Address, len: usize) {
    let local = local_for(server, n).await;
    let mut stream =
        timeout(STEP, socks5_connect(local.addr, echo)).await.expect("timed out").expect("SOCKS5");
    let data = vec![n; len];
    let (mut read, mut write) = stream.split();
    let sending = async {
        write.write_all(&data).await.expect("send");
        write.shutdown().await.expect("half-close");
    };
    let mut back = Vec::new();
    let (_, received) = timeout(STEP, async { tokio::join!(sending, read.read_to_end(&mut back)) })
        .await
        .expect("echo timed out");
    received.expect("echo");
    assert_eq!(back.len(), len);
}

fn usage(state_dir: &Path, port: u16) -> (Vec<(String, Counts)>, Counts) {
    let store = UsageStore::open_in(state_dir).expect("open the store after the server stopped");
    let (mut users, total) = store.load(&format!("127.0.0.1:{port}")).expect("load");
    users.sort_by(|a, b| a.0.cmp(&b.0));
    (users, total)
}

fn bytes(counts: &Counts) -> [u64; 4] {
    [counts.client_to_proxy, counts.proxy_to_target, counts.target_to_proxy, counts.proxy_to_client]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state_dir = dir.path().join("state");
    let config = write_config(dir.path(), &state_dir);
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let port = free_port();

    let server = start(&config, port).await.expect("start");
    transfer(&server, 1, &echo, 100_000).await;
    transfer(&server, 2, &echo, 1_000).await;
    transfer(&server, 2, &echo, 1_000).await;
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
    let (users, total) = usage(&state_dir, port);
    assert_eq!(users.len(), 2, "{users:?}");
    let (alice, bob) = (&users[0].1, &users[1].1);
    assert_eq!(bytes(alice), [100_000; 4]);
    assert_eq!((alice.tcp_opened, alice.tcp_closed), (1, 1));
    assert_eq!(bytes(bob), [2_000; 4]);
    assert_eq!((bob.tcp_opened, bob.tcp_closed), (2, 2));
    assert_eq!(bytes(&total), [102_000; 4]);
    assert!(alice.last_seen > 0);

    // The same state directory and port: counting goes on from the saved totals.
    let server = start(&config, port).await.expect("restart");
    transfer(&server, 1, &echo, 50_000).await;
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
    let (users, total) = usage(&state_dir, port);
    assert_eq!(bytes(&users[0].1), [150_000; 4]);
    assert_eq!(users[0].1.tcp_opened, 2);
    assert_eq!(bytes(&users[1].1), [2_000; 4], "bob's saved usage is kept");
    assert_eq!(bytes(&total), [152_000; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_or_corrupt_store_stops_the_server_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state_dir = dir.path().join("state");
    let config = write_config(dir.path(), &state_dir);
    let first = start(&config, free_port()).await.expect("start");
    let second = start(&config, free_port()).await.expect_err("a second server on the same state_dir");
    assert!(second.contains("locked by another process"), "{second}");
    drop(first);

    let other = tempfile::tempdir().expect("temp dir");
    let state_dir = other.path().join("state");
    std::fs::create_dir(&state_dir).expect("state dir");
    std::fs::write(state_dir.join(ss_server::usage_store::FILE_NAME), vec![0x55; 8192]).expect("garbage");
    let config = write_config(other.path(), &state_dir);
    let failed = start(&config, free_port()).await.expect_err("a corrupt store");
    assert!(failed.contains("usage.sqlite3") && failed.contains("not a database"), "{failed}");
}
