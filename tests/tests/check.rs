//! `ss-server --check` and `ss-local --check`, run as the real binaries: a good config (from a file or
//! from libev's flags alone) exits 0 with "config OK"; a port the test holds, a missing plugin, a
//! server name that cannot resolve and a missing ACL file each exit 1 with a line naming them, and
//! independent problems are all listed in one run.
//!
//! Every address is loopback. The one failing name is `bad..name`: glibc refuses a name with an empty
//! label before it builds a query, so nothing is sent to any name server (`localhost` resolves
//! without a query, RFC 6761).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use ss_tests::subprocess::{binaries, free_port, quiet_command};
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::timeout;

/// What a check printed and how it ended.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `binary --check ARGS` to its end (bounded).
async fn check(binary: &Path, args: &[&str]) -> Outcome {
    let mut command = quiet_command(binary);
    command.arg("--check").args(args).stdout(std::process::Stdio::piped());
    let output = timeout(Duration::from_secs(60), command.output())
        .await
        .expect("--check did not finish within 60 s")
        .expect("run the binary");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A config both binaries accept: the server on `server_port`, ss-local's SOCKS5 port on `local_port`,
/// with the extra keys `more` (`,"key":value...` or empty).
fn write_config(
    dir: &Path,
    name: &str,
    server: &str,
    server_port: u16,
    local_port: u16,
    more: &str,
) -> String {
    let path = dir.join(name);
    let json = format!(
        r#"{{"server":"{server}","server_port":{server_port},"local_address":"127.0.0.1","local_port":{local_port},"password":"a long and varied password 1234","method":"chacha20-ietf-poly1305","mode":"tcp_and_udp"{more}}}"#
    );
    std::fs::write(&path, json).expect("write config");
    // Only the owner may read a file with a password: no warning about it in the output.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn a_good_config_is_ok_for_both_binaries() {
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), "good.json", "127.0.0.1", free_port(), free_port(), "");
    for binary in [&built.server, &built.local] {
        let outcome = check(binary, &["-c", &config]).await;
        assert_eq!(outcome.code, Some(0), "{binary:?}: {outcome:?}");
        assert!(outcome.stdout.contains("config OK"), "{outcome:?}");
        assert!(outcome.stdout.contains("open-file limit: "), "{outcome:?}");
        assert!(outcome.stderr.is_empty(), "{outcome:?}");
    }
    // The server's summary names what it bound; ss-local's the address its server name resolved to.
    let server = check(&built.server, &["-c", &config]).await;
    assert!(server.stdout.contains(": TCP and UDP bind"), "{server:?}");
    let local = check(&built.local, &["-c", &config]).await;
    assert!(local.stdout.contains("SOCKS5, SOCKS4 and HTTP, binds"), "{local:?}");
}

#[tokio::test]
async fn libev_flags_instead_of_a_file_are_checked_the_same_way() {
    let built = binaries().await;
    let (port, local_port) = (free_port().to_string(), free_port().to_string());
    let common =
        ["-s", "localhost", "-p", &port, "-k", "a long and varied password 1234", "-m", "aes-256-gcm"];
    let server = check(&built.server, &common).await;
    assert_eq!(server.code, Some(0), "{server:?}");
    let mut local_args = common.to_vec();
    local_args.extend(["-l", &local_port]);
    let local = check(&built.local, &local_args).await;
    assert_eq!(local.code, Some(0), "{local:?}");
    // `localhost` resolved through the system resolver, as a connection resolves it.
    assert!(
        local.stdout.contains(&format!("127.0.0.1:{port}"))
            || local.stdout.contains(&format!("[::1]:{port}")),
        "{local:?}"
    );
    // A config that does not load is not checked further: the start's own one-line error, code 2.
    let broken = check(&built.server, &["-s", "127.0.0.1", "-p", &port, "-m", "aes-256-gcm"]).await;
    assert_eq!(broken.code, Some(2), "{broken:?}");
    assert!(broken.stderr.starts_with("ss-server: password"), "{broken:?}");
}

#[tokio::test]
async fn a_taken_port_and_a_missing_plugin_are_both_listed() {
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // The test holds TCP on one port and UDP on another.
    let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let tcp_port = tcp.local_addr().expect("addr").port();
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let udp_port = udp.local_addr().expect("addr").port();

    let taken = write_config(dir.path(), "taken.json", "127.0.0.1", tcp_port, tcp_port, "");
    let server = check(&built.server, &["-c", &taken]).await;
    assert_eq!(server.code, Some(1), "{server:?}");
    assert!(server.stderr.contains(&format!("binding TCP 127.0.0.1:{tcp_port}: ")), "{server:?}");
    assert!(server.stderr.contains("in use"), "{server:?}");
    let local = check(&built.local, &["-c", &taken]).await;
    assert_eq!(local.code, Some(1), "{local:?}");
    assert!(local.stderr.contains(&format!("binding 127.0.0.1:{tcp_port}: ")), "{local:?}");

    // Two independent problems in one config: both reported, with their count.
    let plugin = r#","plugin":"ss-rs-no-such-plugin""#;
    let both = write_config(dir.path(), "both.json", "127.0.0.1", udp_port, free_port(), plugin);
    let server = check(&built.server, &["-c", &both]).await;
    assert_eq!(server.code, Some(1), "{server:?}");
    assert!(server.stderr.starts_with("ss-server: 2 problems:"), "{server:?}");
    assert!(server.stderr.contains(&format!("binding UDP 127.0.0.1:{udp_port}: ")), "{server:?}");
    assert!(server.stderr.contains("plugin \"ss-rs-no-such-plugin\": not found"), "{server:?}");
    let local = check(&built.local, &["-c", &both]).await;
    assert_eq!(local.code, Some(1), "{local:?}");
    assert!(local.stderr.contains("plugin \"ss-rs-no-such-plugin\": not found"), "{local:?}");
    drop((tcp, udp));
}

#[tokio::test]
async fn the_metrics_address_is_bound_as_a_start_binds_it() {
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let free = format!(r#","metrics":"127.0.0.1:{}""#, free_port());
    let good = write_config(dir.path(), "metrics.json", "127.0.0.1", free_port(), free_port(), &free);
    let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let taken = held.local_addr().expect("addr");
    let more = format!(r#","metrics":"{taken}""#);
    let clash = write_config(dir.path(), "clash.json", "127.0.0.1", free_port(), free_port(), &more);
    for binary in [&built.server, &built.local] {
        let outcome = check(binary, &["-c", &good]).await;
        assert_eq!(outcome.code, Some(0), "{binary:?}: {outcome:?}");
        assert!(outcome.stdout.contains("metrics: GET /metrics on 127.0.0.1:"), "{outcome:?}");
        let outcome = check(binary, &["-c", &clash]).await;
        assert_eq!(outcome.code, Some(1), "{binary:?}: {outcome:?}");
        assert!(outcome.stderr.contains(&format!("metrics {taken}: ")), "{outcome:?}");
    }
    drop(held);
}

#[tokio::test]
async fn a_plugin_on_path_is_found_as_a_start_finds_it() {
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // `sh` is on every PATH; --check only looks it up, it does not start it.
    let config =
        write_config(dir.path(), "sh.json", "127.0.0.1", free_port(), free_port(), r#","plugin":"sh""#);
    for binary in [&built.server, &built.local] {
        let outcome = check(binary, &["-c", &config]).await;
        assert_eq!(outcome.code, Some(0), "{outcome:?}");
        assert!(outcome.stdout.contains("plugin sh: /"), "{outcome:?}");
    }
}

#[tokio::test]
async fn a_server_name_that_cannot_resolve_is_named() {
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), "name.json", "bad..name", free_port(), free_port(), "");
    let local = check(&built.local, &["-c", &config]).await;
    assert_eq!(local.code, Some(1), "{local:?}");
    assert!(local.stderr.contains("server bad..name:"), "{local:?}");
    assert!(local.stderr.contains("cannot resolve"), "{local:?}");
    // The listener still binds: the one problem is the name.
    assert!(local.stderr.starts_with("ss-local: 1 problem:"), "{local:?}");
    assert!(local.stdout.contains("binds"), "{local:?}");
}

#[tokio::test]
async fn a_file_the_start_loads_is_loaded_too() {
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.acl");
    let more = format!(r#","acl":"{}""#, missing.display());
    let config = write_config(dir.path(), "acl.json", "127.0.0.1", free_port(), free_port(), &more);
    for binary in [&built.server, &built.local] {
        let outcome = check(binary, &["-c", &config]).await;
        assert_eq!(outcome.code, Some(1), "{outcome:?}");
        assert!(outcome.stderr.contains(&format!("acl: {}: ", missing.display())), "{outcome:?}");
    }
    // Present and valid: loaded and named in the summary.
    std::fs::write(&missing, "[proxy_all]\n[bypass_list]\n10.0.0.0/8\n").expect("write acl");
    for binary in [&built.server, &built.local] {
        let outcome = check(binary, &["-c", &config]).await;
        assert_eq!(outcome.code, Some(0), "{outcome:?}");
        assert!(outcome.stdout.contains(&format!("acl: {}", missing.display())), "{outcome:?}");
    }
}
