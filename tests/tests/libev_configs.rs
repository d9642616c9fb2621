//! shadowsocks-libev's own example configs (tests/fixtures/libev, see its README for where each comes
//! from) run through our built binaries unchanged but for free ports, fetching a page through the pair;
//! no key of theirs may be warned about as ignored or unsupported. Also ss-local(1)'s example command
//! line, whose stream cipher we refuse in one clear line, and libev's `--reuse-port` letting two
//! ss-server processes share a port.
//!
//! The obfs configs need simple-obfs (`obfs-server`, `obfs-local`): without it the test fails when `CI`
//! is set and is reported as skipped otherwise.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ss_crypto::Address;
use ss_tests::subprocess::{binaries, free_port, quiet_command, Binaries, Launch, Subprocess};
use ss_tests::{http_get, page_server, socks5_connect, STEP};
use tokio::time::timeout;

/// Words of a warning that a key is not acted on; none may appear in the binaries' logs.
const IGNORED: [&str; 4] = ["ignored", "unsupported", "not supported", "unknown key"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_config_json_serves_through_both_binaries() {
    let dir = tempfile::tempdir().expect("temp dir");
    fetch_through(&dir, "config.json", "config.json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_config_obfs_json_serves_through_both_binaries() {
    let obfs = ["obfs-server", "obfs-local"]
        .iter()
        .all(|name| ss_tests::peers::program(name, "apt-get install simple-obfs").is_some());
    if !obfs {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    fetch_through(&dir, "config-obfs.json", "config-obfs-local.json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ss_local_man_page_example_is_refused_in_one_line_naming_the_cipher() {
    let binaries = binaries().await;
    let (server_port, local_port) = (free_port().to_string(), free_port().to_string());
    let args =
        ["-s", "127.0.0.1", "-p", &server_port, "-l", &local_port, "-k", "foobar", "-m", "aes-256-cfb"];
    let output = timeout(STEP, quiet_command(&binaries.local).args(args).output())
        .await
        .expect("ss-local exits within the step")
        .expect("run ss-local");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| line.contains("aes-256-cfb")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("stream cipher"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_lets_two_servers_share_a_port_and_without_it_the_second_says_why() {
    let binaries = binaries().await;
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let port = port.to_string();
    let args = |reuse: bool| {
        let mut args = vec!["-s", "127.0.0.1", "-p", &port, "-m", "aes-128-gcm", "-u"];
        args.extend(["-k", "a long and varied password 1234"]);
        if reuse {
            args.push("--reuse-port");
        }
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let first =
        Subprocess::start(&Launch::new(&binaries.server).args(args(true)), addr).await.expect("first");
    let second = Subprocess::start(&Launch::new(&binaries.server).args(args(true)), addr)
        .await
        .unwrap_or_else(|failure| panic!("a second --reuse-port server on one port: {failure}"));
    let refused = Subprocess::start(&Launch::new(&binaries.server).args(args(false)), addr).await;
    let Err(failure) = refused else {
        panic!("a third server without --reuse-port started on a shared port")
    };
    assert!(failure.contains(&format!("binding TCP 127.0.0.1:{port}")), "{failure}");
    assert!(failure.contains("reuse_port") && failure.contains("in use"), "{failure}");
    drop((first, second));
}

/// Starts ss-server with `server_file` and ss-local with `local_file` (copies with free ports) and
/// fetches a page through them; asserts neither logged a key as ignored.
async fn fetch_through(dir: &tempfile::TempDir, server_file: &str, local_file: &str) {
    let binaries = binaries().await;
    let (server, local) = start_pair(binaries, |server_port, local_port| {
        let server = copy_with_ports(dir, server_file, server_port, local_port);
        let local = copy_with_ports(dir, local_file, server_port, local_port);
        (vec!["-c".into(), server, "--allow-private-targets".into()], vec!["-c".into(), local])
    })
    .await;
    let page = page_server("<html>libev's example config</html>").await;
    let fetched = timeout(STEP, async {
        let stream = socks5_connect(local.addr, &Address::Ip(page.addr)).await?;
        http_get(stream, "page.test").await
    })
    .await
    .expect("page within the step");
    let body = fetched.unwrap_or_else(|error| panic!("{error}\n{}\n{}", server.log(), local.log()));
    assert_eq!(body, "<html>libev's example config</html>");
    for process in [&server, &local] {
        let log = process.log().to_lowercase();
        for word in IGNORED {
            assert!(!log.contains(word), "{word:?} in\n{}", process.log());
        }
    }
}

/// `name` from tests/fixtures/libev written to `dir` with libev's ports 8388 and 1080 replaced.
fn copy_with_ports(dir: &tempfile::TempDir, name: &str, server_port: u16, local_port: u16) -> String {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/libev").join(name);
    let text = std::fs::read_to_string(&fixture).expect("read the fixture");
    assert!(text.contains("8388") && text.contains("1080"), "{name}: the ports to rewrite are gone");
    let text = text.replace("8388", &server_port.to_string()).replace("1080", &local_port.to_string());
    let path: PathBuf = dir.path().join(format!("{server_port}-{name}"));
    std::fs::write(&path, text).expect("write the copy");
    path.display().to_string()
}

/// Starts the pair on free ports, retrying when a port was taken between its choice and the bind.
async fn start_pair(
    binaries: &Binaries,
    mut args: impl FnMut(u16, u16) -> (Vec<String>, Vec<String>),
) -> (Subprocess, Subprocess) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let (server_port, local_port) = (free_port(), free_port());
        let (server_args, local_args) = args(server_port, local_port);
        let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server_port));
        let server =
            match Subprocess::start(&Launch::new(&binaries.server).args(&server_args), server_addr).await {
                Ok(server) => server,
                Err(failure) => {
                    failures.push(failure);
                    continue;
                }
            };
        let local_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, local_port));
        match Subprocess::start(&Launch::new(&binaries.local).args(&local_args), local_addr).await {
            Ok(local) => return (server, local),
            Err(failure) => failures.push(failure),
        }
    }
    panic!("could not start ss-server and ss-local:\n{}", failures.join("\n"));
}
