//! What the real plugins cannot show, with the test plugin `sip003-relay` (src/bin/sip003-relay.rs), a
//! plain TCP and UDP relay: UDP bypasses a `tcp_only` plugin (to the server's own port), `plugin_mode`
//! `tcp_and_udp` carries UDP through the plugin on both sides (SIP003u), `udp_only` carries UDP through
//! it and TCP past it, and a plugin deaf to SIGTERM is
//! killed after the grace period. Also, in-process: while a plugin is down ss-local answers SOCKS5 0x01 at
//! once.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ss_crypto::Address;
use ss_tests::plugins::*;
use ss_tests::subprocess::{binaries, Launch, Subprocess};
use ss_tests::udp::{socks5_udp_associate, udp_echo_server};
use ss_tests::{echo_server, socks5_connect, test_password, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Our binary (`server` or `local`) from a config file in `dir` with the relay plugin in `plugin_mode`.
fn launch(
    binary: &Path,
    dir: &Path,
    port: u16,
    server_port: Option<u16>,
    opts: &str,
    plugin_mode: &str,
    relay: &Path,
) -> Launch {
    let (role, ports) = match server_port {
        Some(server_port) => ("local", format!(r#""server_port":{server_port},"local_port":{port}"#)),
        None => ("server", format!(r#""server_port":{port},"allow_private_targets":true"#)),
    };
    let config = format!(
        r#"{{"server":"127.0.0.1",{ports},"password":"{}","method":"{}","mode":"tcp_and_udp",
            "plugin":"{}","plugin_opts":"{opts}","plugin_mode":"{plugin_mode}"}}"#,
        test_password(METHOD),
        METHOD.name(),
        relay.display()
    );
    let path = dir.join(format!("{role}-{port}.json"));
    std::fs::write(&path, config).expect("write config");
    Launch::new(binary).args(["-c".to_string(), path.display().to_string()])
}

/// Our server and local in mode tcp_and_udp with the relay plugin in `plugin_mode`.
async fn pair(dir: &Path, plugin_mode: &str) -> (Subprocess, Subprocess) {
    let (binaries, relay) = (binaries().await, relay_plugin().await);
    // The relay binds UDP only when asked: in tcp_only mode ss-server holds the public UDP port itself.
    let (server_opts, local_opts) = match plugin_mode {
        "tcp_only" => ("server", ""),
        "udp_only" => ("server;udp;no_tcp", "udp;no_tcp"),
        _ => ("server;udp", "udp"),
    };
    let server = Subprocess::start_on_free_port(|port| {
        launch(&binaries.server, dir, port, None, server_opts, plugin_mode, relay)
    })
    .await;
    let local = Subprocess::start_on_free_port(|port| {
        launch(&binaries.local, dir, port, Some(server.addr.port()), local_opts, plugin_mode, relay)
    })
    .await;
    (server, local)
}

/// One TCP echo and one UDP echo through ss-local's SOCKS5 port.
async fn tcp_and_udp_echo(local: &Subprocess, server: &Subprocess) {
    let (tcp_echo, udp_echo) = (echo_server("127.0.0.1:0").await, udp_echo_server("127.0.0.1:0").await);
    let round = async {
        let mut stream = socks5_connect(local.addr, &Address::Ip(tcp_echo)).await.expect("SOCKS5 CONNECT");
        stream.write_all(b"tcp through the plugin").await.expect("write");
        let mut back = [0u8; 22];
        stream.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"tcp through the plugin");
        let association = socks5_udp_associate(local.addr).await.expect("UDP ASSOCIATE");
        association.send(&Address::Ip(udp_echo), b"udp datagram").await;
        let (source, payload) = association.recv().await;
        assert_eq!((source, payload.as_slice()), (Address::Ip(udp_echo), &b"udp datagram"[..]));
    };
    if timeout(STEP, round).await.is_err() {
        panic!("echo timed out\n{}\n{}", local.log(), server.log());
    }
}

/// Both relays logged one UDP peer (waiting for the lines to come through the stderr pipes).
async fn assert_udp_went_through_the_relays(local: &Subprocess, server: &Subprocess) {
    for process in [local, server] {
        assert!(process.wait_for_line("sip003-relay: UDP from", STEP).await, "{}", process.log());
        assert_eq!(process.lines_containing("sip003-relay: UDP from"), 1, "{}", process.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_bypasses_a_tcp_only_plugin_and_goes_to_the_servers_own_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, local) = pair(dir.path(), "tcp_only").await;
    tcp_and_udp_echo(&local, &server).await;
    // The relays saw TCP only: UDP went from ss-local straight to ss-server's UDP socket on server_port.
    assert_eq!(server.lines_containing("sip003-relay: UDP from"), 0, "{}", server.log());
    assert_eq!(local.lines_containing("sip003-relay: UDP from"), 0, "{}", local.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_mode_tcp_and_udp_carries_udp_through_both_plugins() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, local) = pair(dir.path(), "tcp_and_udp").await;
    tcp_and_udp_echo(&local, &server).await;
    assert_udp_went_through_the_relays(&local, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_mode_udp_only_carries_udp_through_the_plugins_and_tcp_past_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, local) = pair(dir.path(), "udp_only").await;
    tcp_and_udp_echo(&local, &server).await;
    assert_udp_went_through_the_relays(&local, &server).await;
    assert!(local.wait_for_line("(UDP only)", STEP).await, "{}", local.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_deaf_to_sigterm_is_killed_after_the_grace_period() {
    let (binaries, relay) = (binaries().await, relay_plugin().await);
    let dir = tempfile::tempdir().expect("temp dir");
    let server_port = ss_tests::subprocess::free_port();
    let mut local = Subprocess::start_on_free_port(|port| {
        launch(&binaries.local, dir.path(), port, Some(server_port), "ignore_sigterm", "tcp_only", relay)
    })
    .await;
    let children = children_of(local.pid());
    assert_eq!(children.len(), 1, "{}", local.log());
    let pid = Pid::from_raw(i32::try_from(local.pid()).expect("pid"));
    let begun = Instant::now();
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let status = local.wait_exit(STEP).await.expect("ss-local exits despite its plugin");
    let took = begun.elapsed();
    assert!(status.success(), "{status}\n{}", local.log());
    assert!(wait_ended(children[0]).await, "the plugin survived\n{}", local.log());
    // The plugin ignored SIGTERM, so the exit waited for the 3 s grace period, then SIGKILL.
    assert!(
        took >= Duration::from_millis(2500),
        "exited after {took:?}: was the plugin asked to stop at all?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_plugin_is_down_ss_local_answers_general_failure_at_once() {
    let server = ss_tests::start_server(ss_tests::server_settings(METHOD)).await;
    let mut settings = ss_tests::local_settings(METHOD, server.addr);
    settings.servers[0].plugin = Some(ss_local::PluginRoute {
        endpoint: ss_net::plugin::Endpoint::fixed(None),
        tcp: true,
        udp: false,
    });
    let local = ss_tests::start_local(settings).await;
    let echo = echo_server("127.0.0.1:0").await;
    let begun = Instant::now();
    let outcome = timeout(STEP, socks5_connect(local.addr, &Address::Ip(echo))).await.expect("no hang");
    let error = outcome.expect_err("no plugin, no connection");
    assert_eq!(error.to_string(), "SOCKS5 reply code 1");
    assert!(begun.elapsed() < Duration::from_secs(2), "{:?}", begun.elapsed());
}
