//! Firefox ESR (Debian `firefox-esr`, headless, a fresh profile each run) loading a page through
//! ss-local's one port the three ways its connection settings dialog offers: SOCKS5 with "Proxy DNS when
//! using SOCKS v5", an HTTP proxy (also for HTTPS), and the PAC URL. The profile's `user.js` sets the
//! prefs the dialog sets (`network.proxy.type`, `socks`, `socks_port`, `socks_version`, `socks_remote_dns`
//! and its newer name `socks5_remote_dns`, `http`, `http_port`, `ssl`, `ssl_port`, `autoconfig_url`) and
//! turns off Firefox's own background calls.
//!
//! Proof that each load came through the chain: the page's host name is known only to the test's DNS
//! server, which only ss-server asks (so with SOCKS5 the name was resolved remotely), and the target sees
//! a request carrying a token unique to the run. Firefox is stopped as soon as the target has seen it.
//! Its background calls, if any, also go to ss-server, whose resolver knows no other name: nothing leaves
//! the machine.
//!
//! With `CI` set a missing firefox-esr fails the test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rand_core::{OsRng, RngCore};
use ss_crypto::Method;
use ss_tests::dns::ResolvingChain;
use ss_tests::web::WebTarget;
use tokio::process::Command;
use tokio::time::{sleep, Instant};

const NAME: &str = "page.ss-firefox.test";
const METHOD: Method = Method::ChaCha20IetfPoly1305;
/// Upper bound for one Firefox run to reach the target (a cold headless start takes a few seconds).
const FIREFOX_RUN: Duration = Duration::from_secs(90);

/// Prefs every run shares: no first-run pages, updates, telemetry, safe browsing, captive-portal or
/// connectivity checks, DNS over HTTPS, prefetching; nothing bypasses the proxy.
const QUIET: &str = r#"
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("browser.startup.page", 0);
user_pref("browser.startup.homepage", "about:blank");
user_pref("browser.aboutwelcome.enabled", false);
user_pref("browser.newtabpage.enabled", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("datareporting.healthreport.uploadEnabled", false);
user_pref("toolkit.telemetry.enabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.auto", false);
user_pref("app.update.enabled", false);
user_pref("app.normandy.enabled", false);
user_pref("extensions.update.enabled", false);
user_pref("extensions.getAddons.cache.enabled", false);
user_pref("browser.safebrowsing.malware.enabled", false);
user_pref("browser.safebrowsing.phishing.enabled", false);
user_pref("browser.safebrowsing.downloads.enabled", false);
user_pref("browser.region.update.enabled", false);
user_pref("browser.search.update", false);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
user_pref("network.trr.mode", 5);
user_pref("network.dns.disablePrefetch", true);
user_pref("network.prefetch-next", false);
user_pref("network.http.speculative-parallel-limit", 0);
user_pref("network.proxy.no_proxies_on", "");
user_pref("network.proxy.failover_direct", false);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_through_socks5_with_remote_dns_as_http_proxy_and_from_the_pac_url() {
    let Some(firefox) = ss_tests::peers::program("firefox-esr", "apt-get install firefox-esr") else {
        return;
    };
    let chain = ResolvingChain::start(METHOD, &[NAME]).await;
    let (dns, local) = (&chain.dns, &chain.local);
    let target = WebTarget::start(None).await;
    let (host, port) = (local.addr.ip().to_string(), local.addr.port());

    let modes = [
        (
            "SOCKS5, remote DNS",
            format!(
                "user_pref(\"network.proxy.type\", 1);\nuser_pref(\"network.proxy.socks\", \"{host}\");\n\
                 user_pref(\"network.proxy.socks_port\", {port});\nuser_pref(\"network.proxy.socks_version\", 5);\n\
                 user_pref(\"network.proxy.socks_remote_dns\", true);\n\
                 user_pref(\"network.proxy.socks5_remote_dns\", true);\n"
            ),
        ),
        (
            "HTTP proxy",
            format!(
                "user_pref(\"network.proxy.type\", 1);\nuser_pref(\"network.proxy.http\", \"{host}\");\n\
                 user_pref(\"network.proxy.http_port\", {port});\nuser_pref(\"network.proxy.ssl\", \"{host}\");\n\
                 user_pref(\"network.proxy.ssl_port\", {port});\n"
            ),
        ),
        (
            "PAC",
            format!(
                "user_pref(\"network.proxy.type\", 2);\n\
                 user_pref(\"network.proxy.autoconfig_url\", \"http://{}/proxy.pac\");\n",
                local.addr
            ),
        ),
    ];
    for (mode, prefs) in modes {
        let token = format!("tok{:016x}", OsRng.next_u64());
        let url = format!("http://{NAME}:{}/{token}", target.addr.port());
        let loaded = load(&firefox, &prefs, &url, || !target.seen_with(&token).is_empty()).await;
        assert!(loaded.is_ok(), "{mode}: the target never saw the page request\n{}", loaded.unwrap_err());
        let seen = target.seen_with(&token);
        assert!(seen[0].head.starts_with(&format!("GET /{token} HTTP/1.1\r\n")), "{mode}: {}", seen[0].head);
    }
    assert!(dns.queries(NAME) > 0, "ss-server never resolved {NAME}");
}

/// Starts Firefox on `url` with a fresh profile holding `prefs`, waits until `arrived` says the request
/// reached the target (Ok) or the run's time is up (Err with Firefox's output), and stops Firefox.
async fn load(firefox: &Path, prefs: &str, url: &str, arrived: impl Fn() -> bool) -> Result<(), String> {
    let profile = tempfile::tempdir().expect("profile dir");
    std::fs::write(profile.path().join("user.js"), format!("{QUIET}{prefs}")).expect("user.js");
    let log = profile.path().join("firefox.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(firefox)
        .args(["--headless", "--no-remote", "--profile"])
        .arg(profile.path())
        .arg(url)
        .env("HOME", profile.path())
        .env("MOZ_CRASHREPORTER_DISABLE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone().expect("log")))
        .stderr(Stdio::from(log_file))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {}: {error}", firefox.display()));
    let group = child.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw);
    let deadline = Instant::now() + FIREFOX_RUN;
    let mut outcome = Err(String::new());
    // Polling the target's record: Firefox gives no event when a page has been requested.
    while Instant::now() < deadline {
        if arrived() {
            outcome = Ok(());
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            outcome = Err(format!("firefox exited early: {status}"));
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.wait().await;
    outcome.map_err(|reason| format!("{reason}\n--- firefox output ---\n{}", read_log(&log)))
}

fn read_log(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
