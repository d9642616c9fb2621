//! Interop with real peers run as subprocesses: shadowsocks-libev 3.3.5 (classic methods) and
//! shadowsocks-rust 1.25.0 (every method).
//!
//! ```text
//! our ss-local (in-process)   -> their server (subprocess)  -> loopback echo / HTTP target
//! their local (subprocess)    -> our ss-server (in-process) -> loopback echo / HTTP target
//! ```
//!
//! Each direction is driven twice: by the test's own SOCKS5 client with a few hundred KB checked byte for
//! byte, and by curl fetching a page from a loopback HTTP server. libev has no TCP half-close, so the
//! payload check reads exactly as many bytes as it wrote instead of shutting down and reading to EOF.
//! A missing peer binary skips the test locally and fails it in CI (see `ss_tests::skip`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_tests::peers::{program, start_peer, Implementation, PeerProcess, PeerRole, LIBEV, SHADOWSOCKS_RUST};
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::time::timeout;

/// Bytes sent through the tunnel by the SOCKS5 client check.
const PAYLOAD_LEN: usize = 384 * 1024;

/// The page the loopback HTTP target serves at `/`.
const HTTP_BODY: &str = "hello through a real Shadowsocks peer\n";

/// Upper bound for one method's whole round of checks.
const ROUND: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_local_to_libev_server() {
    our_local_to_their_server(LIBEV).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libev_local_to_our_server() {
    their_local_to_our_server(LIBEV).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_local_to_rust_server() {
    our_local_to_their_server(SHADOWSOCKS_RUST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_local_to_our_server() {
    their_local_to_our_server(SHADOWSOCKS_RUST).await;
}

/// Our binaries are called `ss-server` and `ss-local` like libev's, and `cargo install` puts them on
/// `PATH`: the lookup must pass over ours and take libev's.
#[tokio::test]
async fn libev_lookup_passes_over_our_binaries_of_the_same_name() {
    let Some(libev) = LIBEV.server_binary().await else { return };
    let ours = &ss_tests::subprocess::binaries().await.server;
    let found = LIBEV.first_identified(&[ours.clone(), libev.clone()]).await;
    assert_eq!(found.as_ref(), Some(&libev), "our {} was taken for libev's", ours.display());
    assert_eq!(LIBEV.first_identified(std::slice::from_ref(ours)).await, None);
}

async fn our_local_to_their_server(implementation: Implementation) {
    let (Some(server_binary), Some(curl)) = (implementation.server_binary().await, curl()) else {
        return;
    };
    let targets = Targets::start().await;
    for method in implementation.methods() {
        let theirs = start_peer(&server_binary, method, PeerRole::Server).await;
        let ours = start_local(local_settings(method, theirs.addr)).await;
        check_round(ours.addr, &targets, &curl, method, &theirs).await;
    }
}

async fn their_local_to_our_server(implementation: Implementation) {
    let (Some(local_binary), Some(curl)) = (implementation.local_binary().await, curl()) else {
        return;
    };
    let targets = Targets::start().await;
    for method in implementation.methods() {
        let ours = start_server(server_settings(method)).await;
        let theirs = start_peer(&local_binary, method, PeerRole::Local { server: ours.addr }).await;
        check_round(theirs.addr, &targets, &curl, method, &theirs).await;
    }
}

/// curl from Debian's package, for the page fetch.
fn curl() -> Option<PathBuf> {
    program("curl", "apt-get install curl")
}

/// Both checks through the SOCKS5 proxy at `socks`; a failure names the method and shows the peer's log.
async fn check_round(socks: SocketAddr, targets: &Targets, curl: &Path, method: Method, peer: &PeerProcess) {
    let round = async {
        echo_payload(socks, targets.echo).await.map_err(|e| format!("SOCKS5 payload: {e}"))?;
        fetch_page(curl, socks, targets.page.addr.port()).await.map_err(|e| format!("curl: {e}"))
    };
    let outcome = timeout(ROUND, round).await.unwrap_or_else(|_| Err(format!("round took over {ROUND:?}")));
    if let Err(why) = outcome {
        panic!("{method}, peer at {}: {why}\n{}", peer.addr, peer.log());
    }
}

/// The loopback servers the tunnel leads to.
struct Targets {
    echo: SocketAddr,
    page: PageServer,
}

impl Targets {
    async fn start() -> Targets {
        Targets { echo: echo_server("127.0.0.1:0").await, page: page_server(HTTP_BODY).await }
    }
}

/// Sends a few hundred KB through the tunnel to the echo target while reading the echo back, and
/// compares byte for byte. Writing and reading run together so neither side's buffers fill up.
async fn echo_payload(socks: SocketAddr, echo: SocketAddr) -> Result<(), String> {
    let payload = payload();
    let mut stream = timeout(STEP, socks5_connect(socks, &Address::Ip(echo)))
        .await
        .map_err(|_| "SOCKS5 handshake timed out".to_owned())?
        .map_err(|e| format!("SOCKS5 handshake: {e}"))?;
    let (mut read, mut write) = stream.split();
    let mut echoed = vec![0u8; payload.len()];
    let transfer = async { tokio::join!(write.write_all(&payload), read.read_exact(&mut echoed)) };
    let (written, received) =
        timeout(STEP, transfer).await.map_err(|_| format!("echo of {} bytes timed out", payload.len()))?;
    written.map_err(|e| format!("write: {e}"))?;
    received.map_err(|e| format!("read: {e}"))?;
    match payload.iter().zip(&echoed).position(|(sent, back)| sent != back) {
        None => Ok(()),
        Some(at) => Err(format!("echo differs from the payload at byte {at} of {}", payload.len())),
    }
}

/// `PAYLOAD_LEN` pseudo-random bytes, the same every run.
fn payload() -> Vec<u8> {
    let mut bytes = vec![0u8; PAYLOAD_LEN];
    blake3::Hasher::new().update(b"interop payload").finalize_xof().fill(&mut bytes);
    bytes
}

/// Runs curl through the SOCKS5 proxy (the proxy resolves `localhost`) and checks the page body.
async fn fetch_page(curl: &Path, socks: SocketAddr, http_port: u16) -> Result<(), String> {
    let url = format!("http://localhost:{http_port}/");
    let output = Command::new(curl)
        .args(["--silent", "--show-error", "--max-time", "20", "--noproxy", ""])
        .arg("--socks5-hostname")
        .arg(socks.to_string())
        .arg(&url)
        .kill_on_drop(true)
        .output();
    let output = timeout(STEP, output)
        .await
        .map_err(|_| format!("{url} timed out"))?
        .map_err(|e| format!("running {}: {e}", curl.display()))?;
    if !output.status.success() {
        return Err(format!("{url}: {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()));
    }
    if output.stdout != HTTP_BODY.as_bytes() {
        return Err(format!("{url} returned {:?}", String::from_utf8_lossy(&output.stdout)));
    }
    Ok(())
}
