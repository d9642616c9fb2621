//! SIP003 plugins between our ss-local and our ss-server, both run as built binaries with the real
//! plugins from Debian (simple-obfs, v2ray-plugin): traffic (a page and 64 MiB hashed) for each plugin
//! mode, and the lifecycle: kill -9 of either binary takes its plugin along, SIGTERM stops it, a killed
//! plugin is restarted and traffic flows again, and a plugin that cannot start is one error line and a
//! non-zero exit.
//!
//! A missing plugin fails the test when `CI` is set and skips it otherwise (see `plugins::plugin_installed`).

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ss_crypto::Address;
use ss_tests::plugins::*;
use ss_tests::subprocess::{binaries, Launch, Subprocess};
use ss_tests::{socks5_connect, test_password, STEP};
use tokio::time::{timeout, Instant};

/// Starts our server and local with `pair` and checks traffic through them.
async fn ours_to_ours(pair: PluginPair) {
    if !pair.installed() {
        return;
    }
    let targets = Targets::start().await;
    let server = our_server(pair.server, &pair.server_opts, &[]).await;
    let local = our_local(server.addr, pair.client, &pair.client_opts).await;
    if let Err(why) = check_traffic(local.addr, &targets).await {
        panic!("{}: {why}\n{}\n{}", pair.label, local.log(), server.log());
    }
    // Each side logs its plugin's output under the plugin's name.
    assert!(server.wait_for_line(&format!("{}: ", pair.server), STEP).await, "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obfs_http_between_our_binaries() {
    ours_to_ours(PluginPair::obfs_http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obfs_tls_between_our_binaries() {
    ours_to_ours(PluginPair::obfs_tls()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2ray_websocket_between_our_binaries() {
    ours_to_ours(PluginPair::v2ray_websocket()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2ray_websocket_tls_with_a_self_signed_certificate_between_our_binaries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed_certificate(dir.path());
    ours_to_ours(PluginPair::v2ray_websocket_tls(&cert, &key)).await;
}

/// The one plugin process of `parent`, waited for (it is started before the parent is ready, so it is
/// there at once).
fn plugin_of(parent: &Subprocess) -> u32 {
    let children = children_of(parent.pid());
    assert_eq!(children.len(), 1, "children of {}: {children:?}\n{}", parent.pid(), parent.log());
    children[0]
}

fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
    kill(pid, signal).expect("kill(2)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_ss_local_or_ss_server_leaves_no_plugin_behind() {
    // v2ray-plugin: simple-obfs notices its parent is gone by itself, v2ray-plugin does not.
    let pair = PluginPair::v2ray_websocket();
    if !pair.installed() {
        return;
    }
    let mut server = our_server(pair.server, &pair.server_opts, &[]).await;
    let mut local = our_local(server.addr, pair.client, &pair.client_opts).await;
    let (server_plugin, local_plugin) = (plugin_of(&server), plugin_of(&local));
    local.kill().await;
    assert!(wait_ended(local_plugin).await, "v2ray-plugin {local_plugin} outlived kill -9 of ss-local");
    server.kill().await;
    assert!(wait_ended(server_plugin).await, "v2ray-plugin {server_plugin} outlived kill -9 of ss-server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_plugin_and_the_binary_exits_cleanly() {
    let pair = PluginPair::v2ray_websocket();
    if !pair.installed() {
        return;
    }
    let mut server = our_server(pair.server, &pair.server_opts, &[]).await;
    let plugin = plugin_of(&server);
    signal(server.pid(), Signal::SIGTERM);
    let status = server.wait_exit(STEP).await.expect("ss-server exits after SIGTERM");
    assert!(status.success(), "{status}\n{}", server.log());
    assert!(has_ended(plugin) || wait_ended(plugin).await, "v2ray-plugin {plugin} outlived ss-server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_plugin_is_restarted_and_traffic_flows_again() {
    let pair = PluginPair::obfs_http();
    if !pair.installed() {
        return;
    }
    let targets = Targets::start().await;
    let server = our_server(pair.server, &pair.server_opts, &[]).await;
    let local = our_local(server.addr, pair.client, &pair.client_opts).await;
    let echo = ss_tests::echo_server("127.0.0.1:0").await;
    for (side, process) in [("ss-local", &local), ("ss-server", &server)] {
        let plugin = plugin_of(process);
        signal(plugin, Signal::SIGKILL);
        assert!(wait_ended(plugin).await);
        // Until the restart, every connection ends promptly: a SOCKS5 failure or a closed connection,
        // never a hang. The first restart comes after 0.5 s, so traffic flows again well within STEP.
        let deadline = Instant::now() + STEP;
        loop {
            let attempt = timeout(Duration::from_secs(5), echo_once(local.addr, echo)).await;
            match attempt {
                Ok(Ok(())) => break,
                Ok(Err(_)) => {}
                Err(_) => panic!("a connection hung while the {side} plugin was down\n{}", process.log()),
            }
            assert!(Instant::now() < deadline, "no traffic after the restart\n{}", process.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Traffic can flow a moment before the log line has come through the stderr pipe.
        for line in ["plugin exited (signal: 9 (SIGKILL))", "plugin restarted"] {
            assert!(process.wait_for_line(line, STEP).await, "no {line:?}\n{}", process.log());
            assert_eq!(process.lines_containing(line), 1, "{}", process.log());
        }
        assert_ne!(plugin_of(process), plugin);
    }
    if let Err(why) = check_traffic(local.addr, &targets).await {
        panic!("after the restarts: {why}\n{}\n{}", local.log(), server.log());
    }
}

/// One small echo round trip through the proxy.
async fn echo_once(socks: std::net::SocketAddr, echo: std::net::SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = socks5_connect(socks, &Address::Ip(echo)).await?;
    stream.write_all(b"ping through the plugin").await?;
    let mut back = [0u8; 23];
    stream.read_exact(&mut back).await?;
    if &back != b"ping through the plugin" {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

/// Runs `binary args` to its exit (bounded) and returns its status and stderr lines.
async fn run_to_exit(launch: Launch) -> (std::process::ExitStatus, Vec<String>) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ss_tests::subprocess::free_port()));
    let mut process = match Subprocess::start(&launch, addr).await {
        Err(failure) => return (exit_status_of(&failure), failure.lines().map(str::to_owned).collect()),
        Ok(process) => process,
    };
    let log = process.log();
    process.kill().await;
    panic!("started although its plugin cannot:\n{log}");
}

/// The exit status `Subprocess::start` reports in its failure text ("NAME exited with exit status: N").
fn exit_status_of(failure: &str) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt as _;
    let code = failure
        .lines()
        .next()
        .and_then(|line| line.rsplit_once("exit status: "))
        .and_then(|(_, code)| code.trim_end_matches(':').parse::<i32>().ok())
        .unwrap_or_else(|| panic!("not an exit: {failure}"));
    std::process::ExitStatus::from_raw(code << 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_cannot_start_is_one_error_line_and_a_failed_exit() {
    if !plugin_installed("ss-v2ray-plugin") {
        return;
    }
    let binaries = binaries().await;
    let password = test_password(METHOD);
    let port = ss_tests::subprocess::free_port().to_string();
    let common = ["-s", "127.0.0.1", "-p", &port, "-k", &password, "-m", METHOD.name()];
    for (binary, plugin, opts, expected) in [
        (&binaries.local, "no-such-plugin", "", "plugin \"no-such-plugin\": not found"),
        (
            &binaries.server,
            "/nonexistent/obfs-server",
            "obfs=http",
            "plugin \"/nonexistent/obfs-server\": not found",
        ),
        (
            &binaries.local,
            "ss-v2ray-plugin",
            "mode=bogus",
            "plugin ss-v2ray-plugin exited during start-up (exit status: 23)",
        ),
        (
            &binaries.server,
            "ss-v2ray-plugin",
            "server;mode=bogus",
            "plugin ss-v2ray-plugin exited during start-up (exit status: 23)",
        ),
    ] {
        let mut launch = Launch::new(binary).args(common).args(["--plugin", plugin, "--plugin-opts", opts]);
        if binary == &binaries.local {
            launch = launch.args(["-l", &ss_tests::subprocess::free_port().to_string()]);
        }
        let (status, lines) = run_to_exit(launch).await;
        assert_eq!(status.code(), Some(1), "{plugin} {opts}: {lines:?}");
        let errors: Vec<&String> = lines.iter().filter(|line| line.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{plugin} {opts}: {lines:#?}");
        assert!(errors[0].contains(expected), "{plugin} {opts}: {}", errors[0]);
    }
    // The plugin's own complaint is in that line.
    let opts = "mode=bogus";
    let launch = Launch::new(&binaries.local)
        .args(common)
        .args(["-l", &ss_tests::subprocess::free_port().to_string(), "--plugin", "ss-v2ray-plugin"])
        .args(["--plugin-opts", opts]);
    let (_, lines) = run_to_exit(launch).await;
    assert!(
        lines.iter().any(|line| line.contains("ERROR") && line.contains("unsupported mode:bogus")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_servers_entry_gets_its_own_plugin() {
    let (obfs, v2ray) = (PluginPair::obfs_http(), PluginPair::v2ray_websocket());
    if !obfs.installed() || !v2ray.installed() {
        return;
    }
    let binary = &binaries().await.server;
    let dir = tempfile::tempdir().expect("temp dir");
    let obfs_port = ss_tests::subprocess::free_port();
    // The v2ray entry comes last: the server is ready when its port accepts, and entries start in order.
    let server = Subprocess::start_on_free_port(|v2ray_port| {
        let config = format!(
            r#"{{"password":"{}","method":"{}","allow_private_targets":true,"servers":[
                {{"server":"127.0.0.1","server_port":{obfs_port},"plugin":"{}","plugin_opts":"{}"}},
                {{"server":"127.0.0.1","server_port":{v2ray_port},"plugin":"{}","plugin_opts":"{}"}}]}}"#,
            test_password(METHOD),
            METHOD.name(),
            obfs.server,
            obfs.server_opts,
            v2ray.server,
            v2ray.server_opts
        );
        let path = dir.path().join(format!("server-{v2ray_port}.json"));
        std::fs::write(&path, config).expect("write config");
        Launch::new(binary).args(["-c".to_string(), path.display().to_string()])
    })
    .await;
    let mut names: Vec<String> = children_of(server.pid())
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["obfs-server", "ss-v2ray-plugin"], "{}", server.log());
    let targets = Targets::start().await;
    let obfs_addr = std::net::SocketAddr::from(([127, 0, 0, 1], obfs_port));
    for (pair, addr) in [(&obfs, obfs_addr), (&v2ray, server.addr)] {
        let local = our_local(addr, pair.client, &pair.client_opts).await;
        if let Err(why) = check_traffic(local.addr, &targets).await {
            panic!("{}: {why}\n{}\n{}", pair.label, local.log(), server.log());
        }
    }
}
