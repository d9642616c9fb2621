//! The real `ss-server` answering shadowsocks-libev's ss-manager protocol as a panel drives it: a port
//! added over the manager socket is served in-process (an echo round trip through ss-local), `ping`
//! shows its bytes, `list` shows it, `remove` ends its open connection and closes it (connect refused).
//! Over UDP with ports as strings (libev panels), over a unix datagram socket with numbers
//! (shadowsocks-rust). With metrics on, an added port's traffic shows under its name until it is removed.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;
use ss_crypto::{Address, Method};
use ss_tests::subprocess::{binaries, free_port, Launch, Subprocess};
use ss_tests::udp::{local_settings_udp, socks5_udp_associate, udp_echo_server};
use ss_tests::{echo_round_trip, echo_server, socks5_connect, start_local, test_password, STEP};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram};
use tokio::time::timeout;

/// A panel's side of the manager socket.
enum Panel {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

impl Panel {
    /// Sends `command` and returns the reply's text.
    async fn ask(&self, command: &str) -> String {
        let mut buf = vec![0u8; 65536];
        let len = match self {
            Panel::Udp(socket) => {
                socket.send(command.as_bytes()).await.expect("send");
                timeout(STEP, socket.recv(&mut buf)).await.expect("no reply").expect("recv")
            }
            Panel::Unix(socket) => {
                socket.send(command.as_bytes()).await.expect("send");
                timeout(STEP, socket.recv(&mut buf)).await.expect("no reply").expect("recv")
            }
        };
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    /// `ping`'s bytes for `port` (`None`: not listed).
    async fn traffic(&self, port: u16) -> Option<u64> {
        let reply = self.ask("ping").await;
        let json = reply.strip_prefix("stat: ").unwrap_or_else(|| panic!("ping answered {reply:?}"));
        let stat: Value = serde_json::from_str(json).expect("stat JSON");
        stat.get(port.to_string()).map(|bytes| bytes.as_u64().expect("a number of bytes"))
    }
}

/// ss-server with a configured port (its readiness) and the manager on `manager`.
async fn server_with_manager(dir: &Path, manager: &str) -> Subprocess {
    server_with_manager_and(dir, manager, "").await
}

/// [`server_with_manager`] with `more` config keys (a leading comma each).
async fn server_with_manager_and(dir: &Path, manager: &str, more: &str) -> Subprocess {
    let built = binaries().await;
    let config_path = dir.join("config.json");
    let config = format!(
        r#"{{"server":"127.0.0.1","method":"aes-256-gcm","password":"the configured port's password",
            "allow_private_targets":true,"manager_address":{manager:?}{more}}}"#
    );
    std::fs::write(&config_path, config).expect("write config");
    let config_arg = config_path.to_str().expect("UTF-8 path").to_owned();
    Subprocess::start_on_free_port(|port| {
        Launch::new(&built.server).args(["-c", &config_arg, "-p", &port.to_string()])
    })
    .await
}

/// Adds `port` with `add`, checks a round trip through it (and a UDP one if `udp`), `ping` and `list`,
/// then `remove`s it: the open connection ends and the port refuses connections (and frees its UDP port).
async fn add_use_and_remove(
    panel: &Panel,
    server: &Subprocess,
    (port, method, udp): (u16, Method, bool),
    [add, remove]: [&str; 2],
) {
    assert_eq!(panel.ask(add).await, "ok", "{}", server.log());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let local = start_local(local_settings_udp(method, addr)).await;
    if udp {
        let association = socks5_udp_associate(local.addr).await.expect("UDP ASSOCIATE");
        let echo = Address::Ip(udp_echo_server("127.0.0.1:0").await);
        association.send(&echo, b"datagram").await;
        let (_, reply) = timeout(STEP, association.recv()).await.expect("no UDP reply");
        assert_eq!(reply, b"datagram", "{}", server.log());
    }
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let mut stream =
        timeout(STEP, socks5_connect(local.addr, &echo)).await.expect("timed out").expect("SOCKS5");
    assert!(echo_round_trip(&mut stream).await, "{}", server.log());

    // Counts reach the port's total within a fold interval of the open connection.
    let deadline = tokio::time::Instant::now() + STEP;
    while panel.traffic(port).await.unwrap_or(0) < 8 {
        assert!(tokio::time::Instant::now() < deadline, "ping never showed the 8 bytes\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let list: Value = serde_json::from_str(&panel.ask("list").await).expect("list is JSON");
    let listed = list.as_array().expect("an array").iter().find(|entry| entry["server_port"] == port);
    let listed = listed.unwrap_or_else(|| panic!("{port} not in {list}"));
    assert_eq!(listed["password"], test_password(method));
    assert_eq!(listed["method"], method.to_string());

    assert_eq!(panel.ask(remove).await, "ok");
    let mut rest = Vec::new();
    let ended = timeout(STEP, stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the removed port's connection stayed open\n{}", server.log());
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the removed port still accepts connections");
    assert_eq!(panel.traffic(port).await, None, "a removed port leaves ping's answer");
    assert!(UdpSocket::bind(addr).await.is_ok(), "the removed port's UDP socket is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_on_udp_with_ports_as_strings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = server_with_manager(dir.path(), &manager.to_string()).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind panel");
    socket.connect(manager).await.expect("connect panel");
    let panel = Panel::Udp(socket);
    assert_eq!(panel.ask("ping").await, "stat: {}", "no ports yet\n{}", server.log());

    let port = free_port();
    let method = Method::Aes256Gcm;
    let add = format!(r#"add: {{"server_port": "{port}", "password": "{}"}}"#, test_password(method));
    let remove = format!(r#"remove: {{"server_port": "{port}"}}"#);
    add_use_and_remove(&panel, &server, (port, method, false), [&add, &remove]).await;

    // Malformed commands and an unknown method are refused; a port in use is not available.
    assert_eq!(panel.ask("add: {\"server_port\": \"x\"}").await, "err");
    assert_eq!(panel.ask("hello").await, "err");
    let bad_method = format!(r#"add: {{"server_port": "{port}", "password": "p", "method": "rot13"}}"#);
    assert_eq!(panel.ask(&bad_method).await, "err");
    let taken = server.addr.port();
    let busy = format!(r#"add: {{"server_port": "{taken}", "password": "a long password here"}}"#);
    assert_eq!(panel.ask(&busy).await, "port is not available", "{}", server.log());
    assert_eq!(panel.ask("list").await, "[]");
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_on_a_unix_socket_with_ports_as_numbers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = dir.path().join("manager.sock");
    let server = server_with_manager(dir.path(), manager.to_str().expect("UTF-8 path")).await;
    let mode = std::fs::metadata(&manager).expect("socket").permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600, "only our user may send");
    // The reply goes to the panel's own bound path.
    let socket = UnixDatagram::bind(dir.path().join("panel.sock")).expect("bind panel");
    socket.connect(&manager).expect("connect panel");
    let panel = Panel::Unix(socket);

    let port = free_port();
    let method = Method::Blake3Aes128Gcm;
    let add = format!(
        r#"add: {{"server_port": {port}, "password": "{}", "method": "{method}", "mode": "tcp_and_udp"}}"#,
        test_password(method)
    );
    let remove = format!(r#"remove: {{"server_port": {port}}}"#);
    add_use_and_remove(&panel, &server, (port, method, true), [&add, &remove]).await;
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
    assert!(!manager.exists(), "the socket file is removed at exit");
}

/// The `shadowsocks_data_bytes` samples (TCP, dir `c>p`) of the ss-server whose metrics socket is `path`, by
/// `access_key`.
async fn client_bytes_by_key(path: &Path) -> std::collections::HashMap<String, f64> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::UnixStream::connect(path).await.expect("metrics socket");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n").await.expect("request");
    let mut answer = String::new();
    timeout(STEP, stream.read_to_string(&mut answer)).await.expect("no answer").expect("read");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let scrape =
        prometheus_parse::Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("parse");
    let client_bytes = scrape.samples.into_iter().filter(|sample| {
        let labels = &sample.labels;
        sample.metric == "shadowsocks_data_bytes"
            && labels.get("dir") == Some("c>p")
            && labels.get("proto") == Some("tcp")
    });
    client_bytes
        .filter_map(|sample| match sample.value {
            prometheus_parse::Value::Untyped(value) | prometheus_parse::Value::Counter(value) => {
                Some((sample.labels.get("access_key")?.to_owned(), value))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_port_reports_its_traffic_in_the_metrics_until_it_is_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics = dir.path().join("metrics.sock");
    let more = format!(r#","metrics":{:?}"#, metrics.to_str().expect("UTF-8 path"));
    let server = server_with_manager_and(dir.path(), &manager.to_string(), &more).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind panel");
    socket.connect(manager).await.expect("connect panel");
    let panel = Panel::Udp(socket);

    let (port, method) = (free_port(), Method::Aes256Gcm);
    let add = format!(r#"add: {{"server_port": {port}, "password": "{}"}}"#, test_password(method));
    assert_eq!(panel.ask(&add).await, "ok", "{}", server.log());
    let local = start_local(local_settings_udp(method, SocketAddr::from(([127, 0, 0, 1], port)))).await;
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let mut stream =
        timeout(STEP, socks5_connect(local.addr, &echo)).await.expect("timed out").expect("SOCKS5");
    assert!(echo_round_trip(&mut stream).await, "{}", server.log());
    drop(stream);
    let key = format!("port {port}");
    let deadline = tokio::time::Instant::now() + STEP;
    while client_bytes_by_key(&metrics).await.get(&key) != Some(&4.0) {
        let seen = client_bytes_by_key(&metrics).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "no 4 bytes under {key:?}: {seen:?}\n{}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(panel.ask(&format!(r#"remove: {{"server_port": {port}}}"#)).await, "ok");
    let deadline = tokio::time::Instant::now() + STEP;
    while client_bytes_by_key(&metrics).await.contains_key(&key) {
        assert!(tokio::time::Instant::now() < deadline, "the removed port stayed in the metrics");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seen = client_bytes_by_key(&metrics).await;
    assert!(seen.contains_key(&format!("127.0.0.1:{}", server.addr.port())), "the configured port: {seen:?}");
}

#[tokio::test]
async fn check_refuses_a_manager_off_loopback_and_an_api_on_tcp_without_a_token() {
    let server = &binaries().await.server;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.json");
    let check = |json: String| {
        std::fs::write(&config, json).expect("write config");
        let run = tokio::process::Command::new(server).arg("-c").arg(&config).arg("--check").output();
        async move { timeout(STEP, run).await.expect("--check hung").expect("run ss-server") }
    };
    let base = r#""server":"127.0.0.1","method":"aes-256-gcm""#;
    let bad = check(format!(r#"{{{base},"manager_address":"0.0.0.0:6001","api":"127.0.0.1:9000"}}"#)).await;
    let output = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "{output}");
    assert!(output.contains("not a loopback address") && output.contains("needs api_token"), "{output}");
    let socket = dir.path().join("api.sock");
    let good = format!(r#"{{{base},"manager_address":"127.0.0.1:6001","api":{socket:?}}}"#);
    let good = check(good).await;
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(!socket.exists(), "--check binds neither (a running server may hold them)");
}
