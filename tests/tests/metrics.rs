//! The metrics endpoints end to end: ss-server and ss-local in-process on 127.0.0.1:0 with metrics on,
//! known traffic through them, garbage at the server, and `/metrics` scraped over HTTP and read back
//! with a real Prometheus text parser (prometheus-parse); then the built binaries with `--metrics` on
//! unix sockets, scraped the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use ss_config::users::UserEntry;
use ss_config::MetricsAddress;
use ss_crypto::{Address, Key, Method};
use ss_net::metrics_http::{self, MetricsListener};
use ss_server::metrics::ServerMetrics;
use ss_server::users::Users;
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const METHOD: Method = Method::Aes256Gcm;
const UP: usize = 7000;
const PROBES: usize = 3;
const PROBE_BYTES: usize = 60;
const UDP_BYTES: usize = 300;

/// Serves `registry` on a fresh loopback port; its address.
async fn serve_metrics(
    registry: prometheus_client::registry::Registry,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let addr = MetricsAddress::Tcp("127.0.0.1:0".parse().unwrap());
    let listener = MetricsListener::bind(&addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(metrics_http::serve(listener, Arc::new(registry), shutdown.clone()));
    addr
}

/// GET /metrics over a plain TCP connection, parsed.
async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    scrape_stream(TcpStream::connect(addr).await.unwrap()).await
}

/// GET /metrics on `stream`, parsed.
async fn scrape_stream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
) -> Vec<Sample> {
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).unwrap().samples
}

fn value(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let sample = samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        _ => None,
    }
}

/// Scrapes until `done` holds (connections fold their counts in as they end); the last scrape.
async fn scrape_until(addr: SocketAddr, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let waited = timeout(STEP * 4, async {
        loop {
            let samples = scrape(addr).await;
            if done(&samples) {
                return samples;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    match waited.await {
        Ok(samples) => samples,
        Err(_) => panic!("metrics never got there: {:#?}", scrape(addr).await),
    }
}

/// Sends `up` bytes through ss-local to an echo server and reads them back: c>p = p>t = t>p = p>c.
async fn echo_through(local: SocketAddr, target: SocketAddr, up: usize) {
    let mut stream = timeout(STEP, socks5_connect(local, &Address::Ip(target))).await.unwrap().unwrap();
    stream.write_all(&vec![0x42; up]).await.unwrap();
    let mut back = vec![0; up];
    timeout(STEP, stream.read_exact(&mut back)).await.unwrap().unwrap();
}

/// A client that sends `PROBE_BYTES` of garbage and closes: refused as a failed authentication.
async fn probe(server: SocketAddr) {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_all(&[0x17; PROBE_BYTES]).await.unwrap();
    stream.shutdown().await.unwrap();
    // The server reads until its handshake deadline, then closes: nothing comes back.
    let mut rest = Vec::new();
    let _ = timeout(STEP * 2, stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_the_traffic_sent_and_the_probes() {
    let shutdown = CancellationToken::new();
    let echo = echo_server("127.0.0.1:0").await;
    let server_metrics = ServerMetrics::new();
    let mut settings = server_settings(METHOD);
    settings.handshake_timeout = Duration::from_secs(1);
    settings.count_as("main");
    settings.metrics = Some(server_metrics.entry("127.0.0.1", 8388));
    let server = start_server(settings).await;
    let server_scrape = serve_metrics(server_metrics.registry(), &shutdown).await;

    let local_metrics = ss_local::metrics::LocalMetrics::new();
    let mut local_settings = ss_tests::udp::local_settings_udp(METHOD, server.addr);
    local_settings.metrics = Some(local_metrics.clone());
    let local = start_local(local_settings).await;
    let local_scrape = serve_metrics(local_metrics.registry(), &shutdown).await;

    echo_through(local.addr, echo, UP).await;
    echo_through(local.addr, echo, UP).await;
    for _ in 0..PROBES {
        probe(server.addr).await;
    }
    // Two datagrams of UDP_BYTES out and back through one association.
    let udp_echo = ss_tests::udp::udp_echo_server("127.0.0.1:0").await;
    let association = timeout(STEP, ss_tests::udp::socks5_udp_associate(local.addr)).await.unwrap().unwrap();
    for _ in 0..2 {
        association.send(&Address::Ip(udp_echo), &[9; UDP_BYTES]).await;
        let (_, payload) = timeout(STEP, association.recv()).await.unwrap();
        assert_eq!(payload.len(), UDP_BYTES);
    }

    let bytes = |samples: &[Sample], dir: &str| {
        value(samples, "shadowsocks_data_bytes", &[("dir", dir), ("proto", "tcp"), ("access_key", "main")])
    };
    let udp_bytes = |samples: &[Sample], dir: &str| {
        value(samples, "shadowsocks_data_bytes", &[("dir", dir), ("proto", "udp"), ("access_key", "main")])
    };
    let samples = scrape_until(server_scrape, |samples| {
        ["c>p", "p>t", "p<t", "c<p"].iter().all(|dir| {
            bytes(samples, dir) == Some(2.0 * UP as f64)
                && udp_bytes(samples, dir) == Some(2.0 * UDP_BYTES as f64)
        })
    })
    .await;
    for dir in ["c>p", "p>t", "p<t", "c<p"] {
        assert_eq!(bytes(&samples, dir), Some(2.0 * UP as f64), "{dir}: TCP");
        assert_eq!(udp_bytes(&samples, dir), Some(2.0 * UDP_BYTES as f64), "{dir}: UDP");
    }
    assert_eq!(value(&samples, "shadowsocks_udp_nat_entries_added", &[]), Some(1.0));
    assert_eq!(value(&samples, "shadowsocks_udp_nat_entries_removed", &[]), Some(0.0));
    assert_eq!(value(&samples, "shadowsocks_udp_associations", &[]), Some(1.0));
    assert_eq!(value(&samples, "shadowsocks_keys", &[]), Some(1.0));
    let auth = [("server", "127.0.0.1:8388"), ("reason", "authentication")];
    assert_eq!(value(&samples, "shadowsocks_refusals_total", &auth), Some(PROBES as f64));
    let relaying = [("server", "127.0.0.1:8388"), ("state", "relaying")];
    let now_relaying = |samples: &[Sample]| value(samples, "shadowsocks_tcp_connections", &relaying);
    let samples = scrape_until(server_scrape, |samples| now_relaying(samples) == Some(0.0)).await;
    // A connection held open is one relaying.
    let mut open = timeout(STEP, socks5_connect(local.addr, &Address::Ip(echo))).await.unwrap().unwrap();
    assert!(echo_round_trip(&mut open).await);
    assert_eq!(now_relaying(&scrape(server_scrape).await), Some(1.0), "the open one");
    drop(open);
    assert!(value(&samples, "shadowsocks_replay_filter_salts", &[]).unwrap() >= 2.0, "two requests");
    assert!(value(&samples, "process_open_fds", &[]).unwrap() > 0.0);
    assert!(value(&samples, "process_max_fds", &[]).unwrap() > 0.0);
    assert_eq!(
        value(&samples, "shadowsocks_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );

    // Every probe sent PROBE_BYTES (60): above the 51 bucket, within the 73 one.
    let probes = samples.iter().find(|s| s.metric == "shadowsocks_tcp_probes").expect("probe histogram");
    assert_eq!(probes.labels.get("status"), Some("authentication"));
    let Value::Histogram(buckets) = &probes.value else { panic!("{probes:?}") };
    let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
    assert_eq!(
        (at(51.0), at(73.0), at(f64::INFINITY)),
        (Some(0.0), Some(PROBES as f64), Some(PROBES as f64))
    );
    assert_eq!(value(&samples, "shadowsocks_tcp_probes_count", &[]), Some(PROBES as f64));
    assert_eq!(value(&samples, "shadowsocks_tcp_probes_sum", &[]), Some((PROBES * PROBE_BYTES) as f64));

    let server_label = format!("127.0.0.1:{}", server.addr.port());
    let at_server = |samples: &[Sample], metric: &str, dir: Option<&str>| {
        let mut labels = vec![("server", server_label.as_str())];
        labels.extend(dir.map(|dir| ("dir", dir)));
        value(samples, metric, &labels)
    };
    // The open connection's round trip (4 bytes each way) counts once it ends.
    let (up, down) = (2.0 * UP as f64 + 4.0, 2.0 * UP as f64 + 4.0);
    let samples = scrape_until(local_scrape, |samples| {
        at_server(samples, "shadowsocks_local_bytes_total", Some("down")) == Some(down)
    })
    .await;
    assert_eq!(at_server(&samples, "shadowsocks_local_bytes_total", Some("up")), Some(up));
    assert_eq!(at_server(&samples, "shadowsocks_local_connections_total", None), Some(3.0));
    assert_eq!(at_server(&samples, "shadowsocks_local_server_chosen_total", None), Some(3.0));
    assert_eq!(at_server(&samples, "shadowsocks_local_connect_failures_total", None), Some(0.0));
    assert_eq!(at_server(&samples, "shadowsocks_local_server_down", None), Some(0.0));
    assert!(at_server(&samples, "shadowsocks_local_server_score_ms", None).is_some(), "answered, so scored");
    let connect =
        samples.iter().find(|s| s.metric == "shadowsocks_local_connect_time_ms").expect("histogram");
    let Value::Histogram(buckets) = &connect.value else { panic!("{connect:?}") };
    assert_eq!(buckets.last().map(|b| (b.less_than, b.count)), Some((f64::INFINITY, 3.0)));
    assert_eq!(value(&samples, "shadowsocks_build_info", &[("program", "ss-local")]), Some(1.0));

    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_user_server_reports_each_user_and_its_key_search() {
    let shutdown = CancellationToken::new();
    let echo = echo_server("127.0.0.1:0").await;
    let key = |n: u8| Key::from_password(METHOD, &format!("password of metrics user {n}")).unwrap();
    let entries: Vec<UserEntry> = (1..=3).map(|n| UserEntry::new(format!("user{n}"), key(n))).collect();
    let metrics = ServerMetrics::new();
    let mut settings = server_settings(METHOD);
    settings.users = Some(Arc::new(Users::new(METHOD, &entries)));
    settings.metrics = Some(metrics.entry("::1", 8389));
    let server = start_server(settings).await;
    let scrape_at = serve_metrics(metrics.registry(), &shutdown).await;

    let mut local_settings = local_settings(METHOD, server.addr);
    local_settings.servers[0].key = key(2);
    let local = start_local(local_settings).await;
    echo_through(local.addr, echo, 1234).await;

    let up = |samples: &[Sample], user: &str| {
        value(samples, "shadowsocks_data_bytes", &[("dir", "c>p"), ("proto", "tcp"), ("access_key", user)])
    };
    let samples = scrape_until(scrape_at, |samples| up(samples, "user2") == Some(1234.0)).await;
    assert_eq!((up(&samples, "user1"), up(&samples, "user3")), (Some(0.0), Some(0.0)));
    assert_eq!(value(&samples, "shadowsocks_keys", &[]), Some(3.0));
    let search = samples
        .iter()
        .find(|s| s.metric == "shadowsocks_time_to_cipher_ms" && s.labels.get("found_key") == Some("true"))
        .expect("a search that found the user");
    assert_eq!(search.labels.get("proto"), Some("tcp"));
    let Value::Histogram(buckets) = &search.value else { panic!("{search:?}") };
    assert_eq!(buckets.len(), 6, "0.1, 1, 10, 100, 1000 and +Inf: {buckets:?}");
    assert_eq!(buckets.last().map(|b| b.count), Some(1.0));
    let connections = [("server", "[::1]:8389"), ("state", "handshake")];
    assert_eq!(value(&samples, "shadowsocks_tcp_connections", &connections), Some(0.0));

    shutdown.cancel();
}

/// Scrapes the unix socket at `path` until `done` holds; waits for the socket to appear first.
async fn scrape_unix_until(path: &std::path::Path, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let waited = timeout(STEP * 2, async {
        loop {
            if let Ok(stream) = tokio::net::UnixStream::connect(path).await {
                let samples = scrape_stream(stream).await;
                if done(&samples) {
                    return samples;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("{} never reported what was expected", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_serve_their_metrics_on_the_flags_address() {
    use ss_tests::subprocess::{binaries, Launch, Subprocess};
    let binaries = binaries().await;
    let dir = tempfile::tempdir().unwrap();
    let (server_socket, local_socket) = (dir.path().join("server.sock"), dir.path().join("local.sock"));
    let common = |port: u16| -> Vec<String> {
        let args =
            ["-s", "127.0.0.1", "-p", &port.to_string(), "-k", "a long password 1234", "-m", "aes-256-gcm"];
        args.iter().map(|arg| arg.to_string()).collect()
    };
    let server = Subprocess::start_on_free_port(|port| {
        let mut args = common(port);
        args.extend([
            "--allow-private-targets".into(),
            "--metrics".into(),
            server_socket.display().to_string(),
        ]);
        Launch::new(&binaries.server).args(args)
    })
    .await;
    let server_port = server.addr.port();
    let local = Subprocess::start_on_free_port(|port| {
        let mut args = common(server_port);
        args.extend(["-l".into(), port.to_string(), "--metrics".into(), local_socket.display().to_string()]);
        Launch::new(&binaries.local).args(args)
    })
    .await;
    let echo = echo_server("127.0.0.1:0").await;
    echo_through(local.addr, echo, UP).await;

    let entry = format!("127.0.0.1:{server_port}");
    let samples = scrape_unix_until(&server_socket, |samples| {
        ["c>p", "p>t", "p<t", "c<p"].iter().all(|dir| {
            let labels = [("dir", *dir), ("proto", "tcp"), ("access_key", entry.as_str())];
            value(samples, "shadowsocks_data_bytes", &labels) == Some(UP as f64)
        })
    })
    .await;
    assert_eq!(value(&samples, "shadowsocks_build_info", &[("program", "ss-server")]), Some(1.0));
    assert_eq!(value(&samples, "shadowsocks_keys", &[]), Some(1.0));
    let samples = scrape_unix_until(&local_socket, |samples| {
        value(samples, "shadowsocks_local_bytes_total", &[("server", entry.as_str()), ("dir", "down")])
            == Some(UP as f64)
    })
    .await;
    let up = value(&samples, "shadowsocks_local_bytes_total", &[("server", entry.as_str()), ("dir", "up")]);
    assert_eq!(up, Some(UP as f64));

    for process in [server, local] {
        let (status, log) = process.terminate().await;
        assert!(status.success(), "{status}\n{log}");
        assert!(log.contains("serving metrics on GET /metrics"), "{log}");
    }
    assert!(!server_socket.exists() && !local_socket.exists(), "the sockets are removed at exit");
}
