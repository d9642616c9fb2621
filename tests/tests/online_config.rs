//! SIP008 online config end to end: ss-local (in-process) fetches its server list from an HTTPS server
//! the test runs on loopback, with a certificate from a CA made for the run and given as
//! `online_config.ca_file`.
//!
//! The HTTPS server answers one request at a time and only when the test allows it, and tells the test
//! when each request arrives, so every step waits on an event, not on time: the list is A, then an
//! HTTP 500 (A kept), then B, then garbage (B kept), then a list over 1 MiB (B kept), then a list whose
//! first server names a plugin that is not allowed (left out) and whose second is C. Each server sits
//! behind a counting forwarder, so
//! the test sees where each new connection went; a connection opened through A keeps working after the
//! list has moved on. The config file's own server (a closed port) stays first in every list.
//!
//! Another test leaves `ca_file` out: the certificate is then not trusted, and nothing is taken. One
//! starts an allowed plugin a document names, and one runs the ss-local binary with no server of its
//! own, all of them from the document.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use ss_config::{CliArgs, Config, RawConfig};
use ss_crypto::{Address, Method};
use ss_local::{OnlineSource, ServerList, Settings};
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};

const METHOD: Method = Method::Blake3Aes256Gcm;

#[tokio::test]
async fn the_list_follows_the_document_keeps_the_last_good_one_and_refuses_plugins() {
    let echo = echo_server("127.0.0.1:0").await;
    let (a, b, c) = (counted_server().await, counted_server().await, counted_server().await);
    let garbage = "<html>not json</html>".to_string();
    // A plugin that would work (the tests' relay, dialling A), but is not in allowed_plugins.
    let relay = ss_tests::plugins::relay_plugin().await.display().to_string();
    let plugin_and_c = format!(
        r#"{{"version":1,"servers":[{},{}]}}"#,
        sip008_server(a.addr, &format!(r#""plugin":"{relay}""#)),
        sip008_server(c.addr, r#""plugin":"""#),
    );
    let documents = vec![
        Reply::Ok(document(&[a.addr])),
        Reply::Status(500),
        Reply::Ok(document(&[b.addr])),
        Reply::Ok(garbage),
        // A valid list, but over the 1 MiB bound (padded with spaces, which JSON allows).
        Reply::Ok(format!("{}{}", document(&[c.addr]), " ".repeat(1 << 20))),
        Reply::Ok(plugin_and_c),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut https = HttpsServer::start(documents, dir.path()).await;
    let dead = closed_port().await;
    let (local, list, _stop) = start_online_local(&https, dead, true, &[]).await;
    let local = local.addr;
    let mut changes = list.changes();

    https.allow(); // A
    wait_generation(&mut changes, 1).await;
    assert_eq!(ports(&list), [dead.port(), a.addr.port()], "the config's server stays first");
    let mut through_a = round_trip(local, echo).await;
    assert_eq!(a.count(), 1);

    https.allow(); // HTTP 500
    https.wait_request(2).await; // the 500 has been handled: the next fetch has begun
    assert_eq!(*changes.borrow(), 1, "an HTTP error keeps the list");
    drop(round_trip(local, echo).await);
    assert_eq!(a.count(), 2);

    https.allow(); // B
    wait_generation(&mut changes, 2).await;
    drop(round_trip(local, echo).await);
    assert_eq!((a.count(), b.count()), (2, 1));
    // The connection opened through A still works: a new list does not touch open connections.
    through_a.write_all(b"still there").await.expect("write");
    let mut back = [0u8; 11];
    timeout(STEP, through_a.read_exact(&mut back)).await.expect("echo timed out").expect("echo");
    assert_eq!(&back, b"still there");

    https.allow(); // garbage
    https.wait_request(4).await;
    assert_eq!(*changes.borrow(), 2, "a broken document keeps the list");
    drop(round_trip(local, echo).await);
    assert_eq!(b.count(), 2);

    https.allow(); // too large
    https.wait_request(5).await;
    assert_eq!(*changes.borrow(), 2, "a document over the size bound keeps the list");

    https.allow(); // a plugin that is not allowed, and C
    wait_generation(&mut changes, 3).await;
    assert_eq!(ports(&list), [dead.port(), c.addr.port()], "the plugin's server is left out");
    drop(round_trip(local, echo).await);
    assert_eq!((a.count(), b.count(), c.count()), (2, 2, 1));
}

#[tokio::test]
async fn a_certificate_the_client_does_not_trust_gives_nothing() {
    let a = counted_server().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let documents = vec![Reply::Ok(document(&[a.addr])), Reply::Ok(document(&[a.addr]))];
    let mut https = HttpsServer::start(documents, dir.path()).await;
    let dead = closed_port().await;
    let (_local, list, _stop) = start_online_local(&https, dead, false, &[]).await;
    // Two failed handshakes: the first fetch and the retry after update_interval.
    https.wait_handshake_failures(2).await;
    assert_eq!(*list.changes().borrow(), 0);
    assert_eq!(ports(&list), [dead.port()]);
}

#[tokio::test]
async fn an_allowed_plugin_is_started_and_carries_the_connections() {
    let echo = echo_server("127.0.0.1:0").await;
    let a = counted_server().await;
    let relay = ss_tests::plugins::relay_plugin().await.display().to_string();
    let body = format!(
        r#"{{"version":1,"servers":[{}]}}"#,
        sip008_server(a.addr, &format!(r#""plugin":"{relay}""#))
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut https = HttpsServer::start(vec![Reply::Ok(body)], dir.path()).await;
    let dead = closed_port().await;
    let (local, list, _stop) = start_online_local(&https, dead, true, &[&relay]).await;
    let mut changes = list.changes();
    https.allow();
    wait_generation(&mut changes, 1).await;
    let current = list.current();
    let plugin = current[1].plugin.as_ref().expect("the plugin's route");
    let endpoint = plugin.endpoint.current().expect("the plugin is listening");
    assert!(endpoint.ip().is_loopback() && endpoint.port() != a.addr.port(), "{endpoint}");
    // The only other server is closed: the echo came through the plugin and A. (A's count also holds
    // the plugin's readiness probe, passed on at a time of the plugin's choosing.)
    drop(round_trip(local.addr, echo).await);
    assert!(plugin.tcp && a.count() >= 1, "through the plugin to A");
    https.wait_request(1).await;
}

#[tokio::test]
async fn the_binary_takes_its_servers_from_the_online_config_alone() {
    let binaries = ss_tests::subprocess::binaries().await;
    let echo = echo_server("127.0.0.1:0").await;
    let a = counted_server().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut https = HttpsServer::start(vec![Reply::Ok(document(&[a.addr]))], dir.path()).await;
    // No server of its own: every server comes from the document.
    let config = dir.path().join("local.json");
    let json = format!(
        r#"{{"online_config":{{"config_url":"https://127.0.0.1:{}/list.json","ca_file":"{}"}}}}"#,
        https.addr.port(),
        https.ca_file.display()
    );
    std::fs::write(&config, json).expect("write config");
    let config = config.display().to_string();
    let local = ss_tests::subprocess::Subprocess::start_on_free_port(|port| {
        ss_tests::subprocess::Launch::new(&binaries.local).args(["-c", &config, "-l", &port.to_string()])
    })
    .await;
    https.allow();
    https.wait_request(0).await;
    assert!(local.wait_for_line("server list updated", STEP).await, "{}", local.log());
    drop(round_trip(local.addr, echo).await);
    assert_eq!(a.count(), 1);
}

/// ss-local in-process with `dead` as the config's server and the HTTPS server's list online, every
/// second; with or without the test CA as `ca_file`.
async fn start_online_local(
    https: &HttpsServer,
    dead: SocketAddr,
    trust: bool,
    allowed_plugins: &[&str],
) -> (RunningServer, ServerList, DropGuard) {
    let ca_file = if trust { format!(r#","ca_file":"{}""#, https.ca_file.display()) } else { String::new() };
    let allowed: Vec<String> = allowed_plugins.iter().map(|name| format!("{name:?}")).collect();
    let allowed = format!(r#","allowed_plugins":[{}]"#, allowed.join(","));
    let json = format!(
        r#"{{"server":"127.0.0.1","server_port":{},"method":"{METHOD}","password":"{}",
            "online_config":{{"url":"https://127.0.0.1:{}/list.json","update_interval":1{ca_file}{allowed}}}}}"#,
        dead.port(),
        test_password(METHOD),
        https.addr.port()
    );
    let raw = RawConfig::from_json(&json, Path::new("local.json")).expect("config JSON");
    let config = Config::from_raw(raw, &CliArgs::default()).expect("config");
    let mut settings = Settings::from_config(&config, 4096);
    settings.threads = 1;
    let source =
        OnlineSource::from_config(&config, settings.servers.clone()).expect("set up").expect("online");
    let list = ServerList::updatable(settings.servers.clone());
    settings.server_list = Some(list.clone());
    let local = start_local(settings).await;
    let shutdown = CancellationToken::new();
    tokio::spawn(source.run(list.clone(), shutdown.clone()));
    (local, list, shutdown.drop_guard())
}

fn ports(list: &ServerList) -> Vec<u16> {
    list.current().iter().map(|server| server.port).collect()
}

async fn wait_generation(changes: &mut watch::Receiver<u64>, generation: u64) {
    timeout(STEP, changes.wait_for(|seen| *seen >= generation))
        .await
        .unwrap_or_else(|_| panic!("list not replaced {generation} time(s)"))
        .expect("list dropped");
    assert_eq!(*changes.borrow(), generation);
}

/// A SOCKS5 connection through `local` to the echo server that has echoed once; left open.
async fn round_trip(local: SocketAddr, echo: SocketAddr) -> TcpStream {
    let mut stream = timeout(STEP, socks5_connect(local, &Address::Ip(echo)))
        .await
        .expect("SOCKS5 connect timed out")
        .expect("SOCKS5 connect");
    stream.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    timeout(STEP, stream.read_exact(&mut back)).await.expect("echo timed out").expect("echo");
    assert_eq!(&back, b"ping");
    stream
}

/// A loopback port nothing listens on (bound, then released): connections to it are refused.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

fn document(servers: &[SocketAddr]) -> String {
    let servers: Vec<String> = servers.iter().map(|addr| sip008_server(*addr, r#""remarks":"x""#)).collect();
    format!(r#"{{"version":1,"servers":[{}],"bytes_used":0}}"#, servers.join(","))
}

fn sip008_server(addr: SocketAddr, extra: &str) -> String {
    format!(
        r#"{{"id":"27b8a625-4f4b-4428-9f0f-8a2317db7c79","server":"{}","server_port":{},"password":"{}",
            "method":"{METHOD}",{extra}}}"#,
        addr.ip(),
        addr.port(),
        test_password(METHOD)
    )
}

/// An in-process ss-server behind a forwarder that counts the connections it passes on.
struct Counted {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    _server: RunningServer,
}

impl Counted {
    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

async fn counted_server() -> Counted {
    let server = start_server(server_settings(METHOD)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind forwarder");
    let addr = listener.local_addr().expect("forwarder address");
    let count = Arc::new(AtomicUsize::new(0));
    let (counter, backend) = (count.clone(), server.addr);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut upstream) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    Counted { addr, count, _server: server }
}

/// One answer of the HTTPS server.
enum Reply {
    Ok(String),
    Status(u16),
}

/// HTTPS on 127.0.0.1 with a certificate for that address from a CA made here (`ca_file` holds it).
/// The n-th request gets the n-th reply (the last one again after the end), each only once allowed.
struct HttpsServer {
    addr: SocketAddr,
    ca_file: std::path::PathBuf,
    permits: mpsc::UnboundedSender<()>,
    requests: mpsc::UnboundedReceiver<usize>,
    handshake_failures: mpsc::UnboundedReceiver<()>,
}

impl HttpsServer {
    async fn start(replies: Vec<Reply>, dir: &Path) -> HttpsServer {
        let (acceptor, ca_pem) = tls_acceptor();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("write CA");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTPS");
        let addr = listener.local_addr().expect("HTTPS address");
        let (permits, mut allowed) = mpsc::unbounded_channel();
        let (arrived, requests) = mpsc::unbounded_channel();
        let (failed, handshake_failures) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut served = 0;
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    let _ = failed.send(());
                    continue;
                };
                if read_request(&mut tls).await.is_err() {
                    continue;
                }
                let _ = arrived.send(served);
                if allowed.recv().await.is_none() {
                    return;
                }
                let response = match &replies[served.min(replies.len() - 1)] {
                    Reply::Ok(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Reply::Status(code) => {
                        format!("HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    }
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
                served += 1;
            }
        });
        HttpsServer { addr, ca_file, permits, requests, handshake_failures }
    }

    /// Lets the next request be answered.
    fn allow(&self) {
        self.permits.send(()).expect("HTTPS server running");
    }

    /// Waits until request number `index` (from 0) has arrived.
    async fn wait_request(&mut self, index: usize) {
        loop {
            let seen = timeout(STEP, self.requests.recv()).await.expect("no request").expect("server gone");
            if seen >= index {
                return;
            }
        }
    }

    async fn wait_handshake_failures(&mut self, count: usize) {
        for _ in 0..count {
            timeout(STEP, self.handshake_failures.recv()).await.expect("no handshake").expect("server gone");
        }
    }
}

/// Reads a request's head (up to the blank line); the body, if any, is not needed.
async fn read_request(stream: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::other("no request"));
        }
        head.push(byte[0]);
    }
    Ok(())
}

/// A TLS acceptor with a certificate for 127.0.0.1 signed by a fresh CA, and the CA in PEM.
fn tls_acceptor() -> (TlsAcceptor, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf certificate");
    let chain = vec![CertificateDer::from(leaf.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    (TlsAcceptor::from(Arc::new(config)), ca.pem())
}
