//! Real clients on ss-local's one port (SOCKS5, SOCKS4a, HTTP proxy, CONNECT, PAC): curl, Python's urllib,
//! git over dumb HTTP, against ss-local -> ss-server in-process on loopback.
//!
//! How each test knows the request went through the proxy chain: the target's host name is
//! [`NAME`], which only the test's DNS server knows, and only ss-server asks it (its `nameserver`); the
//! clients hand the name to the proxy. So the target answering at all, with the request's unique token
//! in the path, and the DNS server having been asked, means ss-server resolved and connected.
//!
//! curl, python3, git and openssl come from Debian; with `CI` set a missing one fails the test.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use ss_crypto::Method;
use ss_tests::dns::ResolvingChain;
use ss_tests::peers::program;
use ss_tests::web::WebTarget;
use ss_tests::*;
use tokio::process::Command;
use tokio::time::timeout;

/// The target's name: only the test DNS server (ss-server's nameserver) knows it.
const NAME: &str = "target.ss-front.test";
const METHOD: Method = Method::Blake3Aes128Gcm;
/// Upper bound for one client run.
const CLIENT_RUN: Duration = Duration::from_secs(60);

/// ss-server resolving [`NAME`] with the test DNS, ss-local in front of it.
async fn chain() -> ResolvingChain {
    ResolvingChain::start(METHOD, &[NAME]).await
}

fn token() -> String {
    format!("tok{:016x}", OsRng.next_u64())
}

/// A command for `program` with the proxy variables of our environment cleared: each test says which
/// proxy to use.
fn client(program: &Path) -> Command {
    let mut command = Command::new(program);
    for name in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "no_proxy",
        "NO_PROXY",
    ] {
        command.env_remove(name);
    }
    command
}

/// Runs `command` and returns its stdout; panics with its stderr when it fails.
async fn run(command: &mut Command) -> String {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let output =
        timeout(CLIENT_RUN, command.output()).await.expect("client timed out").expect("spawn client");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn curl() -> Option<Command> {
    let curl = program("curl", "apt-get install curl")?;
    let mut command = client(&curl);
    command.args(["-sS", "--fail", "--max-time", "30"]);
    Some(command)
}

/// Asserts the target saw exactly one request for `token`, in origin form, and ss-server asked for the name.
fn assert_through_chain(chain: &ResolvingChain, target: &WebTarget, token: &str, output: &str) {
    assert!(output.contains(&format!("path=/{token}")), "client output: {output}");
    let seen = target.seen_with(token);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].head.starts_with(&format!("GET /{token} HTTP/1.1\r\n")), "{}", seen[0].head);
    assert!(chain.dns.queries(NAME) > 0, "ss-server never resolved {NAME}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_socks5_hostname_socks4a_and_http_proxy() {
    let chain = chain().await;
    let target = WebTarget::start(None).await;
    let proxy = chain.local.addr;
    let port = target.addr.port();
    for (flag, value) in [
        ("--socks5-hostname", proxy.to_string()),
        ("--socks4a", proxy.to_string()),
        ("-x", format!("http://{proxy}")),
        // CONNECT for a plain-HTTP URL: the tunnel path without TLS.
        ("-px", format!("http://{proxy}")),
    ] {
        let Some(mut curl) = curl() else { return };
        let token = token();
        let output = run(curl.arg(flag).arg(&value).arg(format!("http://{NAME}:{port}/{token}"))).await;
        assert_through_chain(&chain, &target, &token, &output);
        if flag == "-x" {
            let head = target.seen_with(&token)[0].head.to_ascii_lowercase();
            assert!(!head.contains("proxy-connection") && !head.contains("proxy-authorization"), "{head}");
            assert!(head.contains(&format!("\r\nhost: {NAME}:{port}")), "{head}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_keeps_the_client_connection_across_hosts_and_strips_hop_by_hop_headers() {
    let chain = chain().await;
    let (first, second) = (WebTarget::start(None).await, WebTarget::start(None).await);
    let Some(mut curl) = curl() else { return };
    let (a, b, c) = (token(), token(), token());
    let output = run(curl
        .args(["-x", &format!("http://{}", chain.local.addr), "-w", "\nconnects=%{num_connects}\n"])
        .args(["-H", "Connection: X-Private", "-H", "X-Private: secret", "-H", "TE: trailers"])
        .arg(format!("http://{NAME}:{}/{a}", first.addr.port()))
        .arg(format!("http://127.0.0.1:{}/{b}chunked", second.addr.port()))
        .arg(format!("http://{NAME}:{}/{c}", first.addr.port())))
    .await;
    assert!(output.contains(&format!("path=/{b}chunked")), "chunked response relayed: {output}");
    let connects: Vec<&str> = output.lines().filter(|line| line.starts_with("connects=")).collect();
    assert_eq!(
        connects,
        ["connects=1", "connects=0", "connects=0"],
        "curl reused its proxy connection\n{output}"
    );
    assert_eq!(first.connections(), 1, "one upstream connection per target, reused");
    assert_eq!((first.seen().len(), second.seen().len()), (2, 1));
    for seen in first.seen().iter().chain(&second.seen()) {
        let head = seen.head.to_ascii_lowercase();
        for hop in ["x-private", "\r\nte:", "proxy-connection", "connection: x-private"] {
            assert!(!head.contains(hop), "{hop} reached the target:\n{}", seen.head);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_bodies_arrive_whole() {
    let chain = chain().await;
    let target = WebTarget::start(None).await;
    let Some(mut curl) = curl() else { return };
    let token = token();
    let body: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    let path = std::env::temp_dir().join(format!("ss-front-body-{token}"));
    std::fs::write(&path, &body).unwrap();
    let output = run(curl
        .args(["-x", &format!("http://{}", chain.local.addr), "-H", "Transfer-Encoding: chunked"])
        .arg("--data-binary")
        .arg(format!("@{}", path.display()))
        .arg(format!("http://{NAME}:{}/{token}", target.addr.port())))
    .await;
    let _ = std::fs::remove_file(&path);
    assert!(output.contains(&token), "{output}");
    let seen = target.seen_with(&token);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].head.starts_with(&format!("POST /{token} HTTP/1.1")), "{}", seen[0].head);
    assert_eq!(String::from_utf8_lossy(&seen[0].body), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_urllib_through_the_http_proxy() {
    let Some(python) = program("python3", "apt-get install python3") else { return };
    let chain = chain().await;
    let target = WebTarget::start(None).await;
    let token = token();
    let script = "import sys, urllib.request\n\
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({'http': sys.argv[1]}))\n\
        print(opener.open(sys.argv[2], timeout=30).read().decode())\n";
    let output = run(client(&python)
        .args(["-c", script, &format!("http://{}", chain.local.addr)])
        .arg(format!("http://{NAME}:{}/{token}", target.addr.port())))
    .await;
    assert_through_chain(&chain, &target, &token, &output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clones_over_dumb_http_through_the_proxy() {
    let Some(git) = program("git", "apt-get install git") else { return };
    let chain = chain().await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let marker = token();
    let git_in = |cwd: &Path| {
        let mut command = client(&git);
        command.current_dir(cwd).env("GIT_CONFIG_NOSYSTEM", "1").env("HOME", dir.path());
        command
    };
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("README"), &marker).unwrap();
    run(git_in(&work).args(["init", "-q", "-b", "main"])).await;
    run(git_in(&work).args(["add", "README"])).await;
    run(git_in(&work).args(["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"])).await;
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    run(git_in(dir.path()).args(["clone", "-q", "--bare", "work", "served/repo.git"])).await;
    run(git_in(&served.join("repo.git")).args(["update-server-info"])).await;
    let target = WebTarget::start(Some(served)).await;

    let url = format!("http://{NAME}:{}/repo.git", target.addr.port());
    run(git_in(dir.path()).args([
        "-c",
        &format!("http.proxy=http://{}", chain.local.addr),
        "clone",
        "-q",
        &url,
        "clone",
    ]))
    .await;
    assert_eq!(std::fs::read_to_string(dir.path().join("clone/README")).unwrap(), marker);
    assert!(!target.seen_with("/repo.git/info/refs").is_empty());
    assert!(chain.dns.queries(NAME) > 0);
}

/// A self-signed certificate for `NAME` and an `openssl s_server -WWW` serving `dir`'s files on a free
/// loopback port. Killed on drop.
struct TlsTarget {
    port: u16,
    _child: tokio::process::Child,
}

async fn tls_target(openssl: &Path, dir: &Path) -> TlsTarget {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run(Command::new(openssl)
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={NAME}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert))
    .await;
    let port = ss_tests::subprocess::free_port();
    let child = Command::new(openssl)
        .current_dir(dir)
        .args(["s_server", "-quiet", "-WWW", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn openssl s_server");
    let deadline = tokio::time::Instant::now() + STEP;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "openssl s_server did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    TlsTarget { port, _child: child }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_through_connect_with_x_and_with_https_proxy() {
    let Some(openssl) = program("openssl", "apt-get install openssl") else { return };
    let chain = chain().await;
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_target(&openssl, dir.path()).await;
    for via_env in [false, true] {
        let Some(mut curl) = curl() else { return };
        let token = token();
        std::fs::write(dir.path().join(&token), format!("secret page {token}")).unwrap();
        let proxy = format!("http://{}", chain.local.addr);
        if via_env {
            curl.env("https_proxy", &proxy);
        } else {
            curl.args(["-x", &proxy]);
        }
        let output = run(curl.arg("-k").arg(format!("https://{NAME}:{}/{token}", tls.port))).await;
        assert_eq!(output, format!("secret page {token}"));
    }
    assert!(chain.dns.queries(NAME) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_users_from_socks5_auth_config_path_and_warns_about_an_open_address() {
    use ss_tests::subprocess::{binaries, Launch, Subprocess};
    let Some(curl_path) = program("curl", "apt-get install curl") else { return };
    let built = binaries().await;
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.json");
    std::fs::write(&users, r#"{"password":{"users":[{"user_name":"alice","password":"s3cret pass"}]}}"#)
        .unwrap();
    let server = Subprocess::start_on_free_port(|port| {
        let port = port.to_string();
        Launch::new(&built.server)
            .args(["-s", "127.0.0.1", "-p", &port, "-k", "a long test password 1234"])
            .args(["-m", "aes-256-gcm", "--allow-private-targets"])
    })
    .await;
    let server_port = server.addr.port().to_string();
    // The users file from the config file's key; listening on every address (reached here on loopback).
    let config = dir.path().join("local.json");
    std::fs::write(&config, format!(r#"{{"socks5_auth_config_path": "{}"}}"#, users.display())).unwrap();
    let local = Subprocess::start_on_free_port(|port| {
        Launch::new(&built.local)
            .args(["-c", &config.display().to_string(), "-s", "127.0.0.1", "-p", &server_port])
            .args([
                "-k",
                "a long test password 1234",
                "-m",
                "aes-256-gcm",
                "-b",
                "0.0.0.0",
                "-l",
                &port.to_string(),
            ])
    })
    .await;
    let target = WebTarget::start(None).await;
    let proxy = format!("127.0.0.1:{}", local.addr.port());
    let url = |token: &str| format!("http://127.0.0.1:{}/{token}", target.addr.port());

    for scheme in ["http", "socks5h"] {
        let good = token();
        let mut curl = client(&curl_path);
        curl.args([
            "-sS",
            "--fail",
            "--max-time",
            "30",
            "-x",
            &format!("{scheme}://alice:s3cret%20pass@{proxy}"),
        ]);
        let output = run(curl.arg(url(&good))).await;
        assert!(output.contains(&good), "{scheme}: {output}\n{}", local.log());
        for wrong in [format!("{scheme}://{proxy}"), format!("{scheme}://alice:wrong@{proxy}")] {
            let refused = token();
            let mut curl = client(&curl_path);
            curl.args(["-sS", "--fail", "--max-time", "30", "-x", &wrong]).arg(url(&refused));
            curl.stdout(Stdio::null()).stderr(Stdio::null());
            let status = timeout(CLIENT_RUN, curl.status()).await.unwrap().unwrap();
            assert!(!status.success(), "{wrong} got through");
            assert!(target.seen_with(&refused).is_empty(), "{wrong} reached the target");
        }
    }
    let warning = "NON-LOOPBACK ADDRESS WITHOUT AUTHENTICATION";
    assert!(!local.log().contains(warning), "warned although users are set:\n{}", local.log());

    // The same on every address without users: a loud warning at start.
    let open = Subprocess::start_on_free_port(|port| {
        Launch::new(&built.local)
            .args(["-s", "127.0.0.1", "-p", &server_port, "-k", "a long test password 1234"])
            .args(["-m", "aes-256-gcm", "-b", "0.0.0.0", "-l", &port.to_string()])
    })
    .await;
    assert!(open.wait_for_line(warning, STEP).await, "no warning:\n{}", open.log());
    drop((server, local, open));
}
