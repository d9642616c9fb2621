//! Headless Chromium on ss-local's one port as an HTTP proxy (`--proxy-server=http://...`) and from
//! the port's PAC file (`--proxy-pac-url=http://.../proxy.pac`, which says SOCKS5 first), loading a
//! page through ss-local -> ss-server (in-process, loopback).
//!
//! Proof that the page came through the chain: its host name ([`NAME`], dotless so the bypass rule
//! below leaves it to the proxy) is known only to the test's DNS server, which only ss-server asks, and
//! the page carries a token unique to the run, seen by the target in its request line.
//!
//! No test traffic leaves the machine: with `--proxy-server`, every dotted name (Chromium's own
//! background calls) is sent direct and fails in the browser's resolver rules; with the PAC everything
//! goes to ss-server, whose resolver is the test DNS server, which knows only [`NAME`].
//!
//! Chromium comes from the Debian package `chromium`: with `CI` set a missing browser fails the test.

use std::path::Path;

use rand_core::{OsRng, RngCore};
use ss_crypto::Method;
use ss_tests::chromium::{chromium, BrowserRun};
use ss_tests::dns::ResolvingChain;
use ss_tests::web::WebTarget;
use ss_tests::*;

const NAME: &str = "sspage";
const METHOD: Method = Method::Blake3Aes256Gcm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_through_the_http_proxy_and_through_the_pac_file() {
    let Some(chromium) = chromium() else { return };
    let chain = ResolvingChain::start(METHOD, &[NAME]).await;
    let (dns, local) = (&chain.dns, &chain.local);
    let target = WebTarget::start(None).await;

    let http_proxy = [
        format!("--proxy-server=http://{}", local.addr),
        // Loopback and dotless names through the proxy, every dotted name direct (and failed below).
        "--proxy-bypass-list=<-loopback>;*.*".to_owned(),
    ];
    let pac = [format!("--proxy-pac-url=http://{}/proxy.pac", local.addr)];
    for (mode, flags) in [("HTTP proxy", &http_proxy[..]), ("PAC", &pac[..])] {
        let token = format!("tok{:016x}", OsRng.next_u64());
        let url = format!("http://{NAME}:{}/{token}", target.addr.port());
        let run = dump_dom(&chromium, flags, &url).await;
        assert!(run.dom.contains(&format!("path=/{token}")), "{mode}: the page did not load\n{run}");
        assert_eq!(target.seen_with(&token).len(), 1, "{mode}: {:?}", target.seen());
    }
    assert!(dns.queries(NAME) > 0, "ss-server never resolved {NAME}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_follows_the_acl_written_into_the_pac_file() {
    let Some(chromium) = chromium() else { return };
    // Its ss-local is not used: each round below starts its own, with or without the ACL.
    let names = [NAME, "bypassed.test", "www.bypassed.test", "rx7.test"];
    let chain = ResolvingChain::start(METHOD, &names).await;
    let (dns, server) = (&chain.dns, &chain.server);
    let dir = tempfile::tempdir().unwrap();
    let acl_path = dir.path().join("local.acl");
    // A domain with its subdomains, a regex, and a net (which makes the PAC resolve unlisted names).
    std::fs::write(&acl_path, "[proxy_all]\n[bypass_list]\n||bypassed.test\n^rx[0-9]+\\.test$\n10.0.0.0/8\n")
        .unwrap();
    let target = WebTarget::start(None).await;

    for with_acl in [true, false] {
        let mut settings = local_settings(METHOD, server.addr);
        settings.resolve.nameservers = vec![dns.addr];
        if with_acl {
            settings.acl = Some(ss_net::SharedAcl::load(&acl_path).unwrap());
        }
        let local = start_local(settings).await;
        let pac = [format!("--proxy-pac-url=http://{}/proxy.pac", local.addr)];
        for name in names {
            let token = format!("tok{:016x}", OsRng.next_u64());
            let run =
                dump_dom(&chromium, &pac, &format!("http://{name}:{}/{token}", target.addr.port())).await;
            let loaded = run.dom.contains(&format!("path=/{token}"));
            // With the ACL, bypassed names go DIRECT, where the browser's resolver rules fail them.
            let proxied = !with_acl || name == NAME;
            assert_eq!(loaded, proxied, "{name}, ACL {with_acl}\n{run}");
            assert_eq!(target.seen_with(&token).len(), usize::from(proxied), "{name}, ACL {with_acl}");
        }
    }
}

/// Runs headless Chromium with `proxy_flags` and returns the DOM it dumps for `url`; every name but
/// 127.0.0.1 fails in the browser's own resolver.
async fn dump_dom(chromium: &Path, proxy_flags: &[String], url: &str) -> BrowserRun {
    let mut flags = proxy_flags.to_vec();
    flags.push("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_owned());
    ss_tests::chromium::dump_dom(chromium, &flags, url).await
}
