use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

fn registry() -> Arc<Registry> {
    let mut registry = Registry::default();
    let counter: Counter = Counter::default();
    counter.inc_by(7);
    registry.register("probe_things", "Things", counter);
    Arc::new(registry)
}

async fn start(bounds: Bounds) -> (SocketAddr, CancellationToken) {
    let addr = MetricsAddress::Tcp("127.0.0.1:0".parse().unwrap());
    let listener = MetricsListener::bind(&addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_with(listener, registry(), bounds, shutdown.clone()));
    (addr, shutdown)
}

/// Sends `request` and reads the whole answer (the server closes after one).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

#[tokio::test]
async fn get_metrics_answers_prometheus_text_and_anything_else_404() {
    let (addr, shutdown) = start(Bounds::default()).await;
    let scrape = async {
        let answer = exchange(TcpStream::connect(addr).await.unwrap(), &get("/metrics")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{answer}");
        assert!(answer.contains("\r\n\r\n# HELP probe_things_total Things.\n"), "{answer}");
        assert!(answer.ends_with("probe_things_total 7\n"), "{answer}");
        for request in [
            get("/"),
            get("/metrics/x"),
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".into(),
        ] {
            let answer = exchange(TcpStream::connect(addr).await.unwrap(), &request).await;
            assert!(answer.starts_with("HTTP/1.1 404"), "{request:?}: {answer}");
        }
        let garbage = exchange(TcpStream::connect(addr).await.unwrap(), "\x16\x03\x01garbage\r\n\r\n").await;
        assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    };
    tokio::time::timeout(Duration::from_secs(20), scrape).await.unwrap();
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn silent_clients_are_dropped_and_do_not_stall_a_scrape() {
    let bounds = Bounds { max_connections: 2, ..Bounds::default() };
    let (addr, shutdown) = start(bounds).await;
    let scrape = async {
        // Both places taken by clients that never send a request.
        let mut silent = Vec::new();
        for _ in 0..bounds.max_connections {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let answer = exchange(TcpStream::connect(addr).await.unwrap(), &get("/metrics")).await;
        assert!(answer.contains("probe_things_total 7"), "{answer}");
        for mut stream in silent {
            let mut rest = Vec::new();
            let read = stream.read_to_end(&mut rest).await;
            assert!(read.is_err() || rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"), "closed");
        }
    };
    // Within the header timeout (plus its scheduling) the silent clients are gone and the scrape served.
    tokio::time::timeout(bounds.header_timeout * 3, scrape).await.unwrap();
    shutdown.cancel();
}

#[cfg(unix)]
#[tokio::test]
async fn a_unix_socket_replaces_a_stale_one_and_is_removed_at_shutdown() {
    let path = std::env::temp_dir().join(format!("ss-metrics-test-{}.sock", std::process::id()));
    // A socket file left by an earlier run (its listener gone).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let listener = MetricsListener::bind(&MetricsAddress::Unix(path.clone())).await.unwrap();
    assert_eq!(listener.local_addr(), None);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, registry(), shutdown.clone()));
    let scrape = async {
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        exchange(stream, &get("/metrics")).await
    };
    let answer = tokio::time::timeout(Duration::from_secs(20), scrape).await.unwrap();
    assert!(answer.contains("probe_things_total 7"), "{answer}");
    // A second instance does not take over a socket that is being served.
    let second = MetricsListener::bind(&MetricsAddress::Unix(path.clone())).await;
    assert_eq!(second.map(|_| ()).map_err(|error| error.kind()), Err(io::ErrorKind::AddrInUse));
    let again = tokio::net::UnixStream::connect(&path).await.unwrap();
    let answer =
        tokio::time::timeout(Duration::from_secs(20), exchange(again, &get("/metrics"))).await.unwrap();
    assert!(answer.contains("probe_things_total 7"), "still served: {answer}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), server).await.unwrap().unwrap();
    assert!(!path.exists(), "removed at shutdown");
    // Anything but a socket at the path is left alone, and bind refuses it.
    std::fs::write(&path, b"not a socket").unwrap();
    assert!(MetricsListener::bind(&MetricsAddress::Unix(path.clone())).await.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn check_binds_a_tcp_address_and_leaves_a_unix_path_alone() {
    let held = check_address(&MetricsAddress::Tcp("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let taken = held.as_ref().and_then(|listener| listener.local_addr().ok()).unwrap();
    let clash = check_address(&MetricsAddress::Tcp(taken)).await.map(|_| ()).map_err(|error| error.kind());
    assert_eq!(clash, Err(io::ErrorKind::AddrInUse));
    let path = std::env::temp_dir().join(format!("ss-metrics-check-{}.sock", std::process::id()));
    assert!(check_address(&MetricsAddress::Unix(path.clone())).await.unwrap().is_none());
    assert!(!path.exists(), "nothing created");
    let missing = MetricsAddress::Unix("/nonexistent-ss-dir/metrics.sock".into());
    assert_eq!(
        check_address(&missing).await.map(|_| ()).map_err(|error| error.kind()),
        Err(io::ErrorKind::NotFound)
    );
}
