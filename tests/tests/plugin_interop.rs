//! SIP003 plugins across implementations: our ss-local and ss-server (built binaries) against
//! shadowsocks-libev's and shadowsocks-rust's, each side starting its own plugin, with simple-obfs http
//! and v2ray-plugin websocket. Each pairing carries a page and 64 MiB hashed (`plugins::check_traffic`).
//!
//! A missing peer or plugin fails the test when `CI` is set and skips it otherwise.

use std::path::Path;

use ss_tests::peers::{Implementation, LIBEV, SHADOWSOCKS_RUST};
use ss_tests::plugins::*;
use ss_tests::subprocess::{Launch, Subprocess};
use ss_tests::test_password;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_local_to_libev_server_with_plugins() {
    our_local_to_their_server(LIBEV).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libev_local_to_our_server_with_plugins() {
    their_local_to_our_server(LIBEV).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_local_to_rust_server_with_plugins() {
    our_local_to_their_server(SHADOWSOCKS_RUST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_local_to_our_server_with_plugins() {
    their_local_to_our_server(SHADOWSOCKS_RUST).await;
}

fn pairs() -> Option<[PluginPair; 2]> {
    let pairs = [PluginPair::obfs_http(), PluginPair::v2ray_websocket()];
    pairs.iter().all(PluginPair::installed).then_some(pairs)
}

async fn our_local_to_their_server(implementation: Implementation) {
    let (Some(binary), Some(pairs)) = (implementation.server_binary().await, pairs()) else {
        return;
    };
    let targets = Targets::start().await;
    for pair in pairs {
        let dir = tempfile::tempdir().expect("temp dir");
        let theirs = PeerWithPlugin(
            Subprocess::start_on_free_port(|port| {
                their_launch(&binary, dir.path(), port, None, pair.server, &pair.server_opts)
            })
            .await,
        );
        theirs.wait_for_plugin().await;
        let theirs = &theirs.0;
        let ours = our_local(theirs.addr, pair.client, &pair.client_opts).await;
        if let Err(why) = check_traffic(ours.addr, &targets).await {
            panic!("{} with {}: {why}\n{}\n{}", implementation.server, pair.label, ours.log(), theirs.log());
        }
    }
}

async fn their_local_to_our_server(implementation: Implementation) {
    let (Some(binary), Some(pairs)) = (implementation.local_binary().await, pairs()) else {
        return;
    };
    let targets = Targets::start().await;
    for pair in pairs {
        let dir = tempfile::tempdir().expect("temp dir");
        let ours = our_server(pair.server, &pair.server_opts, &[]).await;
        let theirs = PeerWithPlugin(
            Subprocess::start_on_free_port(|port| {
                their_launch(
                    &binary,
                    dir.path(),
                    ours.addr.port(),
                    Some(port),
                    pair.client,
                    &pair.client_opts,
                )
            })
            .await,
        );
        theirs.wait_for_plugin().await;
        let theirs = &theirs.0;
        if let Err(why) = check_traffic(theirs.addr, &targets).await {
            panic!("{} with {}: {why}\n{}\n{}", implementation.local, pair.label, theirs.log(), ours.log());
        }
    }
}

/// A peer with `-c CONFIG`: a config in the keys libev and shadowsocks-rust share, written into `dir`.
/// A server listens on `server_port`; a local (with `local_port`) uses the server there.
fn their_launch(
    binary: &Path,
    dir: &Path,
    server_port: u16,
    local_port: Option<u16>,
    plugin: &str,
    plugin_opts: &str,
) -> Launch {
    let local = match local_port {
        Some(port) => format!(r#""local_address":"127.0.0.1","local_port":{port},"#),
        None => String::new(),
    };
    let config = format!(
        r#"{{"server":"127.0.0.1","server_port":{server_port},{local}"password":"{}","method":"{}",
            "mode":"tcp_only","timeout":60,"plugin":"{plugin}","plugin_opts":"{plugin_opts}"}}"#,
        test_password(METHOD),
        METHOD.name()
    );
    let path = dir.join(format!("config-{server_port}-{}.json", local_port.unwrap_or(0)));
    std::fs::write(&path, config).expect("write peer config");
    Launch::new(binary).args(["-c".to_string(), path.display().to_string()])
}
