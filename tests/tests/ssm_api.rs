//! The real `ss-server` serving the Shadowsocks Server Management API, driven by curl as a panel would:
//! a user added through the API gets in at once (ss-local with their uPSK), `/stats` shows their bytes,
//! `DELETE` ends their open connection, and a restart keeps what the API changed (it rewrote the users
//! file). On a unix socket without a token; on TCP only with the bearer token (401 without it, and no
//! start at all without one configured). Bad JSON is a 400, a duplicate a 409, an unknown user a 404.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use ss_crypto::{Address, Key, Method};
use ss_tests::skip::skip;
use ss_tests::subprocess::{binaries, free_port, Launch, Subprocess};
use ss_tests::{
    echo_round_trip, echo_server, local_settings, socks5_connect, start_local, test_key, RunningServer, STEP,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

const METHOD: Method = Method::Blake3Aes128Gcm;

fn user_key(n: u8) -> Key {
    Key::from_bytes(METHOD, &[n; 16]).expect("key")
}

/// How curl reaches the API.
enum Via {
    Unix(PathBuf),
    Tcp(u16, Option<&'static str>),
}

/// Runs curl: `(status, JSON body or Null)`.
async fn curl(via: &Via, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut command = tokio::process::Command::new("curl");
    command.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--max-time", "10"]);
    let url = match via {
        Via::Unix(socket) => {
            command.arg("--unix-socket").arg(socket);
            format!("http://localhost{path}")
        }
        Via::Tcp(port, token) => {
            if let Some(token) = token {
                command.args(["-H", &format!("Authorization: Bearer {token}")]);
            }
            format!("http://127.0.0.1:{port}{path}")
        }
    };
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "--data-binary", body]);
    }
    let output = timeout(STEP, command.arg(url).output()).await.expect("curl timed out").expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl printed {text:?}"));
    let status = status.trim().parse().unwrap_or_else(|_| panic!("curl printed {text:?}"));
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn curl_is_missing() -> bool {
    let missing = std::process::Command::new("curl").arg("--version").output().is_err();
    if missing {
        skip("curl is not installed", "apt-get install curl");
    }
    missing
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    users: PathBuf,
    launch: Launch,
    args: Vec<String>,
    addr: std::net::SocketAddr,
}

/// A multi-user server on a free port with alice in its users file and the API flags `api_args`.
async fn setup(api_args: impl Fn(&Path) -> Vec<String>) -> Setup {
    let built = binaries().await;
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().to_path_buf();
    let users = dir.join("users.json");
    let alice = json!([{"name": "alice", "password": user_key(1).to_base64()}]);
    std::fs::write(&users, alice.to_string()).expect("write users");
    let config = json!({
        "server": "127.0.0.1", "method": METHOD.to_string(), "password": test_key(METHOD).to_base64(),
        "users_file": users, "state_dir": dir.join("state"), "allow_private_targets": true,
    });
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_string()).expect("write config");
    let port = free_port();
    let mut args = vec!["-c".to_string(), config_path.display().to_string(), "-p".into(), port.to_string()];
    args.extend(api_args(&dir));
    let launch = Launch::new(&built.server).args(&args);
    Setup { _dir: temp, dir, users, launch, args, addr: ([127, 0, 0, 1], port).into() }
}

async fn start(setup: &Setup) -> Subprocess {
    let server = Subprocess::start(&setup.launch, setup.addr).await.expect("start");
    assert!(server.wait_for_line("management API listening", STEP).await, "{}", server.log());
    server
}

async fn local_for(server: &Subprocess, n: u8) -> RunningServer {
    let mut settings = local_settings(METHOD, server.addr);
    settings.servers[0].key = user_key(n);
    settings.servers[0].identity_keys = vec![test_key(METHOD)];
    start_local(settings).await
}

async fn connect(local: &RunningServer, echo: &Address) -> TcpStream {
    timeout(STEP, socks5_connect(local.addr, echo)).await.expect("timed out").expect("SOCKS5")
}

/// The `uplinkBytes` of `name` in `/stats`, polled until at least `least` (counts fold every few
/// seconds while a connection is open).
async fn wait_for_uplink(via: &Via, name: &str, least: u64) -> Value {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (status, stats) = curl(via, "GET", "/stats", None).await;
        assert_eq!(status, 200, "{stats}");
        let users = stats["users"].as_array().expect("users").clone();
        let user = users.into_iter().find(|user| user["username"] == name).expect("user in stats");
        if user["uplinkBytes"].as_u64().unwrap_or(0) >= least {
            return stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never showed {least} bytes: {stats}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_added_used_counted_deleted_and_kept_across_a_restart_over_a_unix_socket() {
    if curl_is_missing() {
        return;
    }
    let setup = setup(|dir| vec!["--api".into(), dir.join("api.sock").display().to_string()]).await;
    let via = Via::Unix(setup.dir.join("api.sock"));
    let server = start(&setup).await;
    let mode = std::fs::metadata(setup.dir.join("api.sock")).expect("socket").permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600, "only our user may connect");
    let (status, info) = curl(&via, "GET", "/", None).await;
    assert_eq!((status, &info["apiVersion"]), (200, &json!("v1")), "{}", server.log());
    assert_eq!(curl(&via, "GET", "/servers", None).await.1, json!([setup.addr.port().to_string()]));

    // carol is added and gets in at once.
    let carol = json!({"username": "carol", "uPSK": user_key(3).to_base64()}).to_string();
    let (status, added) = curl(&via, "POST", "/users", Some(&carol)).await;
    assert_eq!((status, added["username"].as_str()), (201, Some("carol")), "{}", server.log());
    assert_eq!(curl(&via, "POST", "/users", Some(&carol)).await.0, 409, "a duplicate name");
    assert_eq!(curl(&via, "POST", "/users", Some("{\"username\": ")).await.0, 400, "bad JSON");
    let same_key = json!({"username": "dave", "uPSK": user_key(1).to_base64()}).to_string();
    assert_eq!(curl(&via, "POST", "/users", Some(&same_key)).await.0, 400, "alice's key");
    assert_eq!(curl(&via, "GET", "/users/nobody", None).await.0, 404);
    assert_eq!(curl(&via, "DELETE", "/servers/1/users/alice", None).await.0, 404, "unknown server");

    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let local = local_for(&server, 3).await;
    let mut open = connect(&local, &echo).await;
    assert!(echo_round_trip(&mut open).await, "carol gets in\n{}", server.log());
    let stats = wait_for_uplink(&via, "carol", 4).await;
    assert!(stats["uplinkBytes"].as_u64() >= Some(4) && stats["tcpSessions"].as_u64() >= Some(1), "{stats}");
    let (status, user) = curl(&via, "GET", "/users/carol", None).await;
    assert_eq!((status, &user["uPSK"]), (200, &json!(user_key(3).to_base64())));

    // clear: what the API reports starts again; the totals the store keeps do not.
    assert_eq!(curl(&via, "GET", "/stats?clear=true", None).await.0, 200);
    let (_, cleared) = curl(&via, "GET", "/stats", None).await;
    assert_eq!(cleared["uplinkBytes"], 0, "{cleared}");

    // DELETE ends carol's open connection at once and takes her out of the file.
    assert_eq!(curl(&via, "DELETE", "/users/carol", None).await.0, 204);
    let mut rest = Vec::new();
    let ended = timeout(STEP, open.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "carol's connection stayed open\n{}", server.log());
    assert!(!echo_round_trip(&mut connect(&local, &echo).await).await, "carol is out");
    assert!(!std::fs::read_to_string(&setup.users).expect("users").contains("carol"));

    // erin is added, then re-keyed; a restart keeps her with her new key.
    let erin = json!({"username": "erin", "uPSK": user_key(5).to_base64()}).to_string();
    assert_eq!(curl(&via, "POST", "/users", Some(&erin)).await.0, 201);
    let new_key = json!({"uPSK": user_key(6).to_base64()}).to_string();
    assert_eq!(curl(&via, "PATCH", "/users/erin", Some(&new_key)).await.0, 204);
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
    let server = start(&setup).await;
    let (_, users) = curl(&via, "GET", "/users", None).await;
    let names: Vec<&str> =
        users["users"].as_array().expect("users").iter().filter_map(|u| u["username"].as_str()).collect();
    assert_eq!(names, ["alice", "erin"], "{users}");
    let erin_local = local_for(&server, 6).await;
    assert!(echo_round_trip(&mut connect(&erin_local, &echo).await).await, "erin's new key after a restart");
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tcp_the_bearer_token_is_required() {
    if curl_is_missing() {
        return;
    }
    let api_port = free_port();
    let without = setup(|_| vec!["--api".into(), format!("127.0.0.1:{api_port}")]).await;
    let run = tokio::process::Command::new(&binaries().await.server).args(&without.args).output();
    let refused = timeout(STEP, run).await.expect("no exit").expect("run ss-server");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("needs api_token"), "{stderr}");

    let setup = setup(|_| {
        vec!["--api".into(), format!("127.0.0.1:{api_port}"), "--api-token".into(), "s3cret".into()]
    })
    .await;
    let server = start(&setup).await;
    assert_eq!(curl(&Via::Tcp(api_port, None), "GET", "/users", None).await.0, 401);
    assert_eq!(curl(&Via::Tcp(api_port, Some("wrong")), "GET", "/users", None).await.0, 401);
    let via = Via::Tcp(api_port, Some("s3cret"));
    let (status, users) = curl(&via, "GET", "/users", None).await;
    assert_eq!(status, 200, "{users}");
    assert_eq!(users["users"][0]["username"], "alice");
    let bob = json!({"username": "bob", "uPSK": user_key(2).to_base64()}).to_string();
    assert_eq!(curl(&via, "POST", "/users", Some(&bob)).await.0, 201);
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let local = local_for(&server, 2).await;
    assert!(echo_round_trip(&mut connect(&local, &echo).await).await, "bob gets in\n{}", server.log());
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
}
