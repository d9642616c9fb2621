//! The real `ss-server` with a `users_file` re-reads its users on SIGHUP: users that stay keep their
//! open connections, a removed user's connections end, a new user gets in, and a broken file keeps the
//! users in force and logs one line why.

use ss_crypto::{Address, Key, Method};
use ss_tests::subprocess::{binaries, Launch, Subprocess};
use ss_tests::{
    echo_round_trip, echo_server, local_settings, socks5_connect, source_server, start_local, test_key,
    RunningServer, STEP,
};
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

const METHOD: Method = Method::Blake3Aes128Gcm;

fn user_key(n: u8) -> Key {
    Key::from_bytes(METHOD, &[n; 16]).expect("key")
}

/// A users file of `names` (user n is named `user{n}` with key `[n; 16]`).
fn users_json(numbers: &[u8]) -> String {
    let users: Vec<String> = numbers
        .iter()
        .map(|&n| format!(r#"{{"name":"user{n}","password":"{}"}}"#, user_key(n).to_base64()))
        .collect();
    format!("[{}]", users.join(","))
}

async fn local_for(server: &Subprocess, n: u8) -> RunningServer {
    let mut settings = local_settings(METHOD, server.addr);
    settings.servers[0].key = user_key(n);
    settings.servers[0].identity_keys = vec![test_key(METHOD)];
    start_local(settings).await
}

#[tokio::test]
async fn sighup_rereads_the_users_file() {
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let users_path = dir.path().join("users.json");
    std::fs::write(&users_path, users_json(&[1, 2])).expect("write users");
    let config_path = dir.path().join("config.json");
    let config = format!(
        r#"{{"method":"{METHOD}","password":"{}","users_file":{:?},"state_dir":{:?},"allow_private_targets":true}}"#,
        test_key(METHOD).to_base64(),
        users_path.to_str().expect("UTF-8 path"),
        dir.path().to_str().expect("UTF-8 path"),
    );
    std::fs::write(&config_path, config).expect("write config");
    let config_arg = config_path.to_str().expect("UTF-8 path").to_owned();
    let server = Subprocess::start_on_free_port(|port| {
        Launch::new(&built.server).args(["-c", &config_arg, "-s", "127.0.0.1", "-p", &port.to_string()])
    })
    .await;
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let (alice, bob) = (local_for(&server, 1).await, local_for(&server, 2).await);
    let connect = |local: &RunningServer| {
        let addr = local.addr;
        let echo = echo.clone();
        async move { timeout(STEP, socks5_connect(addr, &echo)).await.expect("timed out").expect("SOCKS5") }
    };
    let mut stays = connect(&alice).await;
    let mut goes = connect(&bob).await;
    assert!(echo_round_trip(&mut stays).await && echo_round_trip(&mut goes).await, "{}", server.log());

    std::fs::write(&users_path, users_json(&[1, 3])).expect("rewrite users");
    server.hang_up("users reloaded", 1).await;
    let mut rest = Vec::new();
    let ended = timeout(STEP, goes.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the removed user's connection stayed open\n{}", server.log());
    assert!(echo_round_trip(&mut stays).await, "the remaining user's connection was dropped");
    let carol = local_for(&server, 3).await;
    assert!(echo_round_trip(&mut connect(&carol).await).await, "the new user gets in\n{}", server.log());

    std::fs::write(&users_path, "[{\"name\": ").expect("break users");
    server.hang_up("users reload failed", 1).await;
    assert!(echo_round_trip(&mut connect(&carol).await).await, "a broken file keeps the users in force");
    assert!(echo_round_trip(&mut stays).await);
    assert_eq!(server.lines_containing("users reload failed"), 1, "one line says why\n{}", server.log());
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
}

/// A users file where user n has the JSON `limits[n - 1]` (its keys spliced into the user's object).
fn users_with_limits(limits: &[&str]) -> String {
    let users: Vec<String> = (1..)
        .zip(limits)
        .map(|(n, limits)| {
            let comma = if limits.is_empty() { "" } else { "," };
            format!(r#"{{"name":"user{n}","password":"{}"{comma}{limits}}}"#, user_key(n).to_base64())
        })
        .collect();
    format!("[{}]", users.join(","))
}

/// Downloads from `source` through `local` until the server ends it (or 8 MiB came): how many bytes.
async fn download(local: &RunningServer, source: &Address) -> u64 {
    let mut stream =
        timeout(STEP, socks5_connect(local.addr, source)).await.expect("timed out").expect("SOCKS5");
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while let Ok(Ok(read @ 1..)) = timeout(STEP, stream.read(&mut buf)).await {
        total += read as u64;
        if total >= 8 << 20 {
            break;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_come_from_the_users_file_a_spent_quota_survives_a_restart_and_sighup_changes_them() {
    const MIB: u64 = 1 << 20;
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let users_path = dir.path().join("users.json");
    let quota = |mib: u64| format!(r#""quota":{{"bytes":"{mib} MiB","period":"day"}}"#);
    std::fs::write(&users_path, users_with_limits(&[&quota(1), ""])).expect("write users");
    let config_path = dir.path().join("config.json");
    let config = format!(
        r#"{{"method":"{METHOD}","password":"{}","users_file":{:?},"state_dir":{:?},"allow_private_targets":true,"handshake_timeout":2}}"#,
        test_key(METHOD).to_base64(),
        users_path.to_str().expect("UTF-8 path"),
        dir.path().join("state").to_str().expect("UTF-8 path"),
    );
    std::fs::write(&config_path, config).expect("write config");
    let config_arg = config_path.to_str().expect("UTF-8 path").to_owned();
    let port = ss_tests::subprocess::free_port();
    let launch =
        Launch::new(&built.server).args(["-c", &config_arg, "-s", "127.0.0.1", "-p", &port.to_string()]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let source = Address::Ip(source_server("127.0.0.1:0").await);

    let server = Subprocess::start(&launch, addr).await.expect("start");
    let downloaded = download(&local_for(&server, 1).await, &source).await;
    assert_eq!(downloaded, MIB, "the bytes through a quota of 1 MiB\n{}", server.log());
    assert_eq!(download(&local_for(&server, 1).await, &source).await, 0, "spent");
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");

    let server = Subprocess::start(&launch, addr).await.expect("restart");
    let (one, two) = (local_for(&server, 1).await, local_for(&server, 2).await);
    assert_eq!(download(&one, &source).await, 0, "still spent after a restart\n{}", server.log());

    // A larger quota for user1, a connection limit for user2.
    std::fs::write(&users_path, users_with_limits(&[&quota(2), r#""max_connections":1"#])).expect("rewrite");
    server.hang_up("users reloaded", 1).await;
    let more = download(&one, &source).await;
    assert_eq!(more, MIB, "the second MiB\n{}", server.log());
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let connect = || async {
        timeout(STEP, socks5_connect(two.addr, &echo)).await.expect("timed out").expect("SOCKS5")
    };
    let mut held = connect().await;
    assert!(echo_round_trip(&mut held).await);
    assert!(!echo_round_trip(&mut connect().await).await, "a second connection over max_connections");

    // A broken limit keeps the limits in force and says why in one line.
    std::fs::write(&users_path, users_with_limits(&["", r#""rate_limit":{"up":"fast"}"#])).expect("break");
    server.hang_up("users reload failed", 1).await;
    assert!(server.log().contains("rate_limit.up"), "the line names the key\n{}", server.log());
    assert!(!echo_round_trip(&mut connect().await).await, "the old limit stays in force");
    assert!(echo_round_trip(&mut held).await, "and the held connection goes on");
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
}
