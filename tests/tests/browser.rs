//! A real browser through the proxy: headless Chromium, with our ss-local as its SOCKS5 proxy, loads a
//! page from a loopback HTTP server by way of ss-local -> ss-server (both in-process, an AEAD-2022
//! method).
//!
//! How the test knows the page came through the proxy chain, and not straight from the loopback server:
//! Chromium never sends loopback URLs to a proxy unless told to (`--proxy-bypass-list=<-loopback>`), so a
//! test that only checked the page would also pass with a broken proxy. After the page loads, the test
//! stops ss-server, leaves ss-local and the page server running, and runs the very same browser command
//! again: now the page must not load and the page server must see no new request. The two runs differ
//! only in whether ss-server is there, so the first page travelled through it; the control run also
//! proves the bypass flag works, since a direct connection would still have reached the page server.
//!
//! A second test runs the same check through our built binaries with SIP003 plugins between them
//! (ss-local -> obfs-local -> obfs-server -> ss-server).
//!
//! Chromium comes from the Debian package `chromium`. When it is missing the test fails if `CI` is set
//! (CI must install it) and is reported as skipped otherwise (`ss_tests::skip`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use ss_crypto::Method;
use ss_tests::chromium::{chromium, BrowserRun};
use ss_tests::*;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Upper bound for one browser run (a page load takes about a second).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_loads_a_page_through_ss_local_and_ss_server() {
    let Some(chromium) = chromium() else {
        return;
    };
    let method = Method::Blake3Aes256Gcm;
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings(method, server.addr)).await;
    let marker = format!("ss-rs browser check {:016x}", OsRng.next_u64());
    let page = page_server(&format!(
        "<!doctype html><html><head><title>ss-rs</title></head><body><p id=\"marker\">{marker}</p></body></html>"
    ))
    .await;
    // A name, not an address: Chromium hands it to the SOCKS5 proxy and ss-server resolves it.
    let url = format!("http://localhost:{}/", page.addr.port());

    let through_proxy = dump_dom(&chromium, local.addr, &url).await;
    assert!(through_proxy.dom.contains(&marker), "the page did not load through the proxy\n{through_proxy}");
    assert_eq!(page.page_requests(), 1, "{through_proxy}");

    // Control: the same command with ss-server gone; ss-local still answers SOCKS5 on the same port.
    let server_addr = server.addr;
    drop(server);
    wait_until_refused(server_addr).await;
    let without_server = dump_dom(&chromium, local.addr, &url).await;
    assert!(
        !without_server.dom.contains(&marker),
        "the page loaded without ss-server, so it did not come through the proxy\n{without_server}"
    );
    assert_eq!(page.page_requests(), 1, "the page server was reached without ss-server\n{without_server}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_loads_a_page_through_sip003_plugins() {
    use ss_tests::plugins::{our_local, our_server, PluginPair};
    let pair = PluginPair::obfs_http();
    let Some(chromium) = chromium() else {
        return;
    };
    if !pair.installed() {
        return;
    }
    // Our binaries, each with its plugin: ss-local -> obfs-local -> obfs-server -> ss-server.
    let mut server = our_server(pair.server, &pair.server_opts, &[]).await;
    let local = our_local(server.addr, pair.client, &pair.client_opts).await;
    let marker = format!("ss-rs plugin browser check {:016x}", OsRng.next_u64());
    let page =
        page_server(&format!("<!doctype html><html><body><p id=\"marker\">{marker}</p></body></html>")).await;
    let url = format!("http://localhost:{}/", page.addr.port());

    let through_proxy = dump_dom(&chromium, local.addr, &url).await;
    assert!(
        through_proxy.dom.contains(&marker),
        "the page did not load through the plugins\n{through_proxy}\n{}\n{}",
        local.log(),
        server.log()
    );
    assert_eq!(page.page_requests(), 1, "{through_proxy}");

    // Control, as above: without ss-server (and so its plugin) the same run must not load the page.
    server.kill().await;
    wait_until_refused(server.addr).await;
    let without_server = dump_dom(&chromium, local.addr, &url).await;
    assert!(!without_server.dom.contains(&marker), "loaded without ss-server\n{without_server}");
    assert_eq!(page.page_requests(), 1, "the page server was reached without ss-server\n{without_server}");
}

/// Runs headless Chromium with `proxy` as its SOCKS5 proxy for every URL, loopback included, and returns
/// the DOM it dumps for `url`.
async fn dump_dom(chromium: &Path, proxy: SocketAddr, url: &str) -> BrowserRun {
    let flags = [
        format!("--proxy-server=socks5://{proxy}"),
        // Chromium bypasses the proxy for loopback hosts by default; "<-loopback>" removes that rule.
        // Whatever the flags above, Chromium still calls Google hosts in the background (update and
        // account checks); "*.*" sends every dotted host name direct, where the resolver rule fails it
        // inside the browser, so only the test's dotless `localhost` URL reaches the proxy and no test
        // traffic leaves the machine. The proxy's own address is exempt from the rule.
        "--proxy-bypass-list=<-loopback>;*.*".to_owned(),
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1".to_owned(),
    ];
    ss_tests::chromium::dump_dom(chromium, &flags, url).await
}

/// Polls `addr` until a connection is refused (a stopped in-process server closes its listener).
async fn wait_until_refused(addr: SocketAddr) {
    let deadline = Instant::now() + STEP;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "{addr} still accepts connections {STEP:?} after the stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
