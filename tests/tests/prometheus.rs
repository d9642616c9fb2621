//! A real Prometheus (Debian's `prometheus`) scrapes the real binaries with the README's scrape config shape,
//! and answers for them: the traffic sent through ss-local and ss-server and the probes sent at the server
//! arrive as the counts they are, and every example query of the README's "Operations" table is accepted
//! by Prometheus's query engine (so the documented queries are valid PromQL over our metric names).
//!
//! Everything listens on 127.0.0.1; Prometheus keeps its data in a temporary directory.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use ss_crypto::{Address, Method};
use ss_tests::peers::program;
use ss_tests::subprocess::{binaries, free_port, quiet_command, Launch, Subprocess};
use ss_tests::{echo_server, socks5_connect, test_password, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{timeout, Instant};

const METHOD: Method = Method::ChaCha20IetfPoly1305;
/// Payload bytes each way through the proxy.
const BYTES: usize = 3000;
const PROBES: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_both_binaries_and_the_readme_queries_run() {
    let Some(prometheus) = program("prometheus", "apt-get install prometheus") else { return };
    let Some(curl) = program("curl", "apt-get install curl") else { return };
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_metrics, local_metrics) = (free_port(), free_port());
    let password = test_password(METHOD);

    let server = Subprocess::start_on_free_port(|port| {
        Launch::new(&built.server)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-k", &password, "-m", METHOD.name()])
            .args(["--allow-private-targets", "--handshake-timeout", "1"])
            .args(["--metrics", &format!("127.0.0.1:{server_metrics}")])
    })
    .await;
    let server_port = server.addr.port().to_string();
    let local = Subprocess::start_on_free_port(|port| {
        Launch::new(&built.local)
            .args(["-s", "127.0.0.1", "-p", &server_port, "-k", &password, "-m", METHOD.name()])
            .args(["-b", "127.0.0.1", "-l", &port.to_string()])
            .args(["--metrics", &format!("127.0.0.1:{local_metrics}")])
    })
    .await;

    // Known traffic, then probes.
    let echo = echo_server("127.0.0.1:0").await;
    let mut stream = timeout(STEP, socks5_connect(local.addr, &Address::Ip(echo))).await.unwrap().unwrap();
    stream.write_all(&vec![0x33; BYTES]).await.unwrap();
    let mut back = vec![0; BYTES];
    timeout(STEP, stream.read_exact(&mut back)).await.unwrap().unwrap();
    drop(stream);
    for _ in 0..PROBES {
        probe(server.addr).await;
    }

    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ss-server\n    static_configs:\n      \
             - targets: [\"127.0.0.1:{server_metrics}\"]\n  - job_name: ss-local\n    static_configs:\n      \
             - targets: [\"127.0.0.1:{local_metrics}\"]\n"
        ),
    )
    .expect("write prometheus.yml");
    let mut child = quiet_command(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .arg("--log.level=warn")
        .spawn()
        .expect("start prometheus");
    let api = Api { curl: curl.clone(), web };

    let key = format!("127.0.0.1:{server_port}");
    let up_bytes = format!(r#"sum(shadowsocks_data_bytes{{access_key="{key}",dir="c>p",proto="tcp"}})"#);
    api.until(&up_bytes, BYTES as f64).await;
    let down_bytes = format!(r#"sum(shadowsocks_data_bytes{{access_key="{key}",dir="c<p",proto="tcp"}})"#);
    assert_eq!(api.scalar(&down_bytes).await, Some(BYTES as f64));
    api.until("sum(shadowsocks_tcp_probes_count)", PROBES as f64).await;
    assert_eq!(
        api.scalar(r#"sum(shadowsocks_refusals_total{reason="authentication"})"#).await,
        Some(PROBES as f64)
    );
    api.until(r#"sum(shadowsocks_local_bytes_total{dir="up"})"#, BYTES as f64).await;
    assert_eq!(api.scalar(r#"sum(shadowsocks_local_bytes_total{dir="down"})"#).await, Some(BYTES as f64));
    assert_eq!(api.scalar(r#"up{job="ss-server"}"#).await, Some(1.0));
    assert_eq!(api.scalar(r#"up{job="ss-local"}"#).await, Some(1.0));

    let queries = readme_queries(&std::fs::read_to_string(repo().join("README.md")).expect("README"));
    assert!(queries.len() >= 10, "the README's example queries: {queries:?}");
    for query in &queries {
        let answer = api.query(query).await;
        assert_eq!(answer["status"], "success", "{query}: {answer}");
    }

    let _ = child.start_kill();
    let _ = timeout(STEP, child.wait()).await;
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The queries of the README's example table ("Example queries (PromQL)"): each backticked span of a
/// row's second cell, with the table's `\|` escapes undone.
fn readme_queries(readme: &str) -> Vec<String> {
    let table = readme.split("Example queries (PromQL):").nth(1).unwrap_or_default();
    let rows =
        table.lines().skip_while(|line| !line.starts_with('|')).take_while(|line| line.starts_with('|'));
    let mut queries = Vec::new();
    for row in rows.skip(2) {
        let row = row.replace("\\|", "\u{1}");
        let Some(cell) = row.split('|').nth(2) else { continue };
        queries.extend(cell.split('`').skip(1).step_by(2).map(|query| query.replace('\u{1}', "|")));
    }
    queries
}

/// A TCP client sending garbage, then waiting for the server to close (its handshake deadline).
async fn probe(server: SocketAddr) {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_all(&[0x17; 64]).await.unwrap();
    let mut rest = Vec::new();
    let _ = timeout(STEP, stream.read_to_end(&mut rest)).await.expect("the probe was not closed");
    assert!(rest.is_empty());
}

/// Prometheus's HTTP API, through curl.
struct Api {
    curl: std::path::PathBuf,
    web: SocketAddr,
}

impl Api {
    /// `GET /api/v1/query?query=...`, parsed (a JSON `null` if Prometheus is not answering yet).
    async fn query(&self, query: &str) -> Value {
        let url = format!("http://{}/api/v1/query", self.web);
        let output = Command::new(&self.curl)
            .args(["-sS", "--max-time", "10", "-G", &url, "--data-urlencode"])
            .arg(format!("query={query}"))
            .output()
            .await
            .expect("run curl");
        serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
    }

    /// The value of a query that yields one sample, if it does.
    async fn scalar(&self, query: &str) -> Option<f64> {
        let answer = self.query(query).await;
        let value = answer["data"]["result"].get(0)?["value"].get(1)?.as_str()?.parse().ok()?;
        Some(value)
    }

    /// Waits (bounded) until `query` yields `expected`: scrapes come every second.
    async fn until(&self, query: &str, expected: f64) {
        let deadline = Instant::now() + STEP * 2;
        loop {
            let value = self.scalar(query).await;
            if value == Some(expected) {
                return;
            }
            assert!(Instant::now() < deadline, "{query} stayed at {value:?}, not {expected}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
