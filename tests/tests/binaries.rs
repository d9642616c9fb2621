//! The real `ss-server` and `ss-local` executables, run the way a user runs them: config errors and their
//! exit code, each binary's own flags (and the other's refused by name), one set of worker threads for
//! all of ss-server's entries, the same warnings from both
//! for keys neither acts on, the shipped example config, shadowsocks-libev's README config end to end, `-d` (name
//! servers) against the test's DNS server, draining on SIGTERM, the classic replay filter saved at SIGTERM
//! and loaded at start, key generation, and ss-local's server table on SIGUSR1.
//!
//! The binaries are built once per run of this file by `ss_tests::subprocess::binaries` (escargot, with
//! the per-package cargo variables removed so the nested build does not rebuild ring).
//!
//! Every address is loopback. Ports for the binaries come from binding port 0 and releasing it; a start
//! that loses that race is retried on fresh ports. Readiness of a subprocess is observed by polling its
//! listening port in a bounded loop.

use ss_tests::subprocess::{binaries as built, free_port, quiet_command, Binaries, Launch, Subprocess};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use nix::sys::signal::Signal;
use ss_crypto::Address;
use ss_tests::dns::{Behaviour, TestDns};
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

/// What the binaries allow open connections at shutdown (their default drain time).
const DRAIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn bad_configs_exit_with_code_2_and_one_line_naming_the_field() {
    let binaries = built().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, local_port) = (free_port(), free_port());
    let ports = format!(r#""server":"127.0.0.1","server_port":{port},"local_port":{local_port}"#);
    let password = r#""password":"a long and varied password 1234""#;
    let both = [("ss-server", &binaries.server), ("ss-local", &binaries.local)];
    let cases = [
        Case::new("unknown-method", format!(r#"{{{ports},{password},"method":"rc5-poly"}}"#), "method")
            .containing(&["\"rc5-poly\"", "supported methods", "2022-blake3-aes-256-gcm"]),
        Case::new("rc4-md5", format!(r#"{{{ports},{password},"method":"rc4-md5"}}"#), "method")
            .containing(&["rc4-md5", "unauthenticated stream cipher"]),
        Case::new("no-password", format!(r#"{{{ports},"method":"aes-256-gcm"}}"#), "password")
            .containing(&["missing"]),
        Case::new(
            "port-abc",
            format!(r#"{{"server":"127.0.0.1","server_port":"abc",{password},"method":"aes-256-gcm"}}"#),
            "server_port",
        )
        .containing(&["\"abc\"", "is not a port number (1-65535)"]),
        Case::new(
            "port-70000",
            format!(r#"{{"server":"127.0.0.1","server_port":70000,{password},"method":"aes-256-gcm"}}"#),
            "server_port",
        )
        .containing(&["70000", "is not a port number (1-65535)"]),
        Case::new(
            "2022-not-base64",
            format!(r#"{{{ports},"password":"not base64, a password!","method":"2022-blake3-aes-128-gcm"}}"#),
            "password",
        )
        .containing(&["not valid base64", "--generate-key"]),
    ];
    for case in &cases {
        let path = dir.path().join(format!("{}.json", case.name));
        std::fs::write(&path, &case.json).expect("write config");
        for (name, binary) in both {
            let line = refused_config(name, binary, &path).await;
            let expected = format!("{name}: {}: ", case.field);
            assert!(line.starts_with(&expected), "{}: expected {expected:?}..., got {line:?}", case.name);
            for part in case.contains {
                assert!(line.contains(part), "{}: {part:?} missing from {line:?}", case.name);
            }
        }
    }

    // Invalid JSON: the file's line and column, as an editor wants them.
    let path = dir.path().join("invalid.json");
    std::fs::write(&path, format!("{{\n  {ports},\n  {password},,\n  \"method\": \"aes-256-gcm\"\n}}\n"))
        .expect("write config");
    for (name, binary) in both {
        let line = refused_config(name, binary, &path).await;
        let expected = format!("{name}: {}:3:", path.display());
        let rest =
            line.strip_prefix(&expected).unwrap_or_else(|| panic!("expected {expected:?}..., got {line:?}"));
        let (column, message) = rest.split_once(": ").unwrap_or_else(|| panic!("no column in {line:?}"));
        assert!(column.parse::<u32>().is_ok_and(|column| column > 1), "column {column:?} in {line:?}");
        assert!(!message.is_empty(), "{line:?}");
    }

    // ss-local needs a port to listen on; ss-server does not.
    let path = dir.path().join("no-local-port.json");
    let json = format!(r#"{{"server":"127.0.0.1","server_port":{port},{password},"method":"aes-256-gcm"}}"#);
    std::fs::write(&path, json).expect("write config");
    let line = refused_config("ss-local", &binaries.local, &path).await;
    assert!(line.starts_with("ss-local: local_port: missing"), "{line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_with_a_generated_key_serves_through_both_binaries() {
    let binaries = built().await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.json");
    let method = "2022-blake3-aes-256-gcm";
    let text = std::fs::read_to_string(&example).expect("read config.example.json");
    assert!(text.contains(&format!(r#""method": "{method}""#)), "the example's method changed:\n{text}");
    let key = generate_key(&binaries.server, method).await;
    let example = example.display().to_string();

    // The example's own ports (8388, 1080) are overridden on the command line, which wins over the file:
    // tests never take fixed ports (8388 is also where Debian's shadowsocks-libev service listens).
    let (server, local) = start_pair(binaries, |server_port, local_port| {
        let server = vec!["-c", &example, "--key", &key, "-p", &server_port, "--allow-private-targets"];
        let local = vec!["-c", &example, "--key", &key, "-p", &server_port, "-l", &local_port];
        (strings(&server), strings(&local))
    })
    .await;

    let echo = echo_server("127.0.0.1:0").await;
    let mut stream = timeout(STEP, socks5_connect(local.addr, &Address::Ip(echo)))
        .await
        .expect("SOCKS5 connect timed out")
        .unwrap_or_else(|error| panic!("SOCKS5 connect: {error}\n{}\n{}", server.log(), local.log()));
    stream.write_all(b"configured by the example").await.expect("write");
    let mut back = [0u8; 25];
    timeout(STEP, stream.read_exact(&mut back)).await.expect("echo timed out").expect("echo");
    assert_eq!(&back, b"configured by the example");
    drop(stream);

    for process in [server, local] {
        let (status, log) = process.terminate().await;
        assert!(status.success(), "{status}\n{log}");
        assert!(!log.contains("weak"), "a generated key is not weak:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nameserver_flag_makes_ss_server_resolve_with_that_server() {
    let binaries = built().await;
    let loopback = Behaviour::Answer { addrs: vec![Ipv4Addr::LOCALHOST.into()], ttl: 60 };
    let dns = TestDns::start(&[("echo.test", loopback)]).await;
    let dns_addr = dns.addr.to_string();
    let (server, local) = start_pair(binaries, |server_port, local_port| {
        let common = [
            "-s",
            "127.0.0.1",
            "-p",
            &server_port,
            "-m",
            "aes-128-gcm",
            "-k",
            "a long and varied password 1234",
        ];
        let server = [&common[..], &["--allow-private-targets", "-d", &dns_addr]].concat();
        let local = [&common[..], &["-l", &local_port]].concat();
        (strings(&server), strings(&local))
    })
    .await;

    let echo = echo_server("127.0.0.1:0").await;
    let target = Address::domain("echo.test", echo.port()).expect("domain");
    let mut stream = timeout(STEP, socks5_connect(local.addr, &target))
        .await
        .expect("SOCKS5 connect timed out")
        .unwrap_or_else(|error| panic!("SOCKS5 connect: {error}\n{}\n{}", server.log(), local.log()));
    stream.write_all(b"resolved by the test's DNS").await.expect("write");
    let mut back = [0u8; 26];
    timeout(STEP, stream.read_exact(&mut back)).await.expect("echo timed out").expect("echo");
    assert_eq!(&back, b"resolved by the test's DNS");
    assert!(dns.queries("echo.test") > 0);
    drop(stream);
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
    assert!(!log.contains("nameserver is not supported"), "{log}");
    local.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadowsocks_libev_readme_config_fetches_a_page_and_warns_about_the_password() {
    let binaries = built().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, local) = start_pair(binaries, |server_port, local_port| {
        // Verbatim from shadowsocks-libev's README, but for the ports.
        let json = format!(
            r#"{{"server":"127.0.0.1","server_port":{server_port},"local_port":{local_port},"password":"barfoo!","timeout":60,"method":"chacha20-ietf-poly1305"}}"#
        );
        let path = dir.path().join(format!("config-{server_port}.json"));
        std::fs::write(&path, json).expect("write config");
        let path = path.display().to_string();
        (strings(&["-c", &path, "--allow-private-targets"]), strings(&["-c", &path]))
    })
    .await;

    let page = page_server("<html><body>served through the libev README config</body></html>").await;
    let target = Address::domain("localhost", page.addr.port()).expect("domain");
    let stream = timeout(STEP, socks5_connect(local.addr, &target))
        .await
        .expect("SOCKS5 connect timed out")
        .unwrap_or_else(|error| panic!("SOCKS5 connect: {error}\n{}\n{}", server.log(), local.log()));
    let host = format!("localhost:{}", page.addr.port());
    let body = timeout(STEP, http_get(stream, &host)).await.expect("fetch timed out").expect("fetch");
    assert_eq!(body, "<html><body>served through the libev README config</body></html>");
    assert_eq!(page.page_requests(), 1);

    for process in [server, local] {
        let name = process.name().to_owned();
        let (status, log) = process.terminate().await;
        assert!(status.success(), "{name}: {status}\n{log}");
        assert!(log.contains("is weak"), "{name} did not warn about \"barfoo!\":\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_and_lets_an_open_transfer_finish() {
    let binaries = built().await;
    let method = "2022-blake3-chacha20-poly1305";
    let key = generate_key(&binaries.server, method).await;
    // Command line only, no config file. The readiness probes (and any probe of the refusal check that
    // lands before the signal) are connections that never send a request; the server holds those until
    // the handshake deadline whatever happens, so it is kept well inside the drain time.
    let (server, local) = start_pair(binaries, |server_port, local_port| {
        let common = ["-s", "127.0.0.1", "-p", &server_port, "-m", method, "-k", &key];
        let server = [&common[..], &["--allow-private-targets", "--handshake-timeout", "1"]].concat();
        let local = [&common[..], &["-l", &local_port]].concat();
        (strings(&server), strings(&local))
    })
    .await;

    // A target whose second half waits for the test's word: the transfer is slow exactly as long as the
    // test needs it to be.
    let first = pattern(0, 256 * 1024);
    let second = pattern(1, 256 * 1024);
    let target = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let target_addr = target.local_addr().expect("target address");
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (first_sent, second_sent) = (first.clone(), second.clone());
    let target_task = tokio::spawn(async move {
        let (mut stream, _) = target.accept().await?;
        stream.write_all(&first_sent).await?;
        let _ = released.await;
        stream.write_all(&second_sent).await?;
        stream.shutdown().await?;
        let mut from_client = Vec::new();
        stream.read_to_end(&mut from_client).await?;
        std::io::Result::Ok(from_client)
    });

    let mut stream = timeout(STEP, socks5_connect(local.addr, &Address::Ip(target_addr)))
        .await
        .expect("SOCKS5 connect timed out")
        .unwrap_or_else(|error| panic!("SOCKS5 connect: {error}\n{}\n{}", server.log(), local.log()));
    let mut received = vec![0u8; first.len()];
    timeout(STEP, stream.read_exact(&mut received)).await.expect("first half timed out").expect("first half");
    assert!(received == first, "first half corrupted");

    // Mid-transfer: SIGTERM to both.
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    local.signal(Signal::SIGTERM);
    for process in [&server, &local] {
        wait_until_refused(process).await;
    }
    // Both still run (they carry the second half below), so the refusals are the shutdown's doing.
    let elapsed = signalled.elapsed();
    assert!(elapsed < DRAIN, "refusals seen only after {elapsed:?}, past the drain time");

    release.send(()).expect("target gone");
    let mut rest = Vec::new();
    timeout(STEP, stream.read_to_end(&mut rest)).await.expect("second half timed out").expect("second half");
    assert!(rest == second, "second half: {} bytes, expected {}", rest.len(), second.len());
    stream.write_all(b"thanks, bye").await.expect("write after the signal");
    stream.shutdown().await.expect("shutdown");
    let from_client = timeout(STEP, target_task).await.expect("target timed out").expect("target task");
    assert_eq!(from_client.expect("target I/O"), b"thanks, bye");

    for process in [server, local] {
        let name = process.name().to_owned();
        let left = DRAIN.saturating_sub(signalled.elapsed());
        let (status, log) = timeout(left, process.wait())
            .await
            .unwrap_or_else(|_| panic!("{name} still running at the end of the drain time"));
        assert!(status.success(), "{name}: {status}\n{log}");
        assert!(!log.contains("still open after the drain time"), "{name} cut the connection:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_server_saves_its_replay_filter_at_sigterm_and_loads_it_at_start() {
    let binaries = built().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot = dir.path().join("state").join("replay.snapshot");
    let snapshot_arg = snapshot.display().to_string();
    let echo = echo_server("127.0.0.1:0").await;
    for run in ["first", "second"] {
        let (server, local) = start_pair(binaries, |server_port, local_port| {
            let common =
                ["-s", "127.0.0.1", "-p", &server_port, "-k", "a long test password", "-m", "aes-256-gcm"];
            let mut server: Vec<&str> = common.to_vec();
            server.extend(["--allow-private-targets", "--replay-snapshot", &snapshot_arg]);
            let mut local: Vec<&str> = common.to_vec();
            local.extend(["-l", &local_port]);
            (strings(&server), strings(&local))
        })
        .await;
        let mut stream = timeout(STEP, socks5_connect(local.addr, &Address::Ip(echo)))
            .await
            .expect("SOCKS5 connect timed out")
            .unwrap_or_else(|error| panic!("SOCKS5 connect: {error}\n{}", server.log()));
        stream.write_all(b"salt").await.expect("write");
        let mut back = [0u8; 4];
        timeout(STEP, stream.read_exact(&mut back)).await.expect("echo timed out").expect("echo");
        drop(stream);
        let (status, log) = server.terminate().await;
        assert!(status.success(), "{run}: {status}\n{log}");
        assert!(snapshot.exists(), "{run}: no snapshot at {snapshot:?} after SIGTERM\n{log}");
        assert!(!log.contains("snapshot ignored"), "{run}:\n{log}");
        if run == "second" {
            assert!(
                log.contains("replay filter snapshot loaded"),
                "the first run's file was not loaded:\n{log}"
            );
        }
        let _ = local.terminate().await;
    }
}

#[tokio::test]
async fn each_binary_lists_and_takes_only_its_own_flags_and_names_the_other() {
    let binaries = built().await;
    // (how to give it, its long name in --help)
    let local_only: &[(&[&str], &str)] =
        &[(&["-l", "1080"], "--local-port"), (&["-b", "::"], "--local-address")];
    let server_only: &[(&[&str], &str)] = &[
        (&["--allow-private-targets"], "--allow-private-targets"),
        (&["-d", "127.0.0.1"], "--nameserver"),
        (&["--replay-snapshot", "off"], "--replay-snapshot"),
        (&["--generate-key"], "--generate-key"),
    ];
    for (name, binary, own, foreign, other) in [
        ("ss-local", &binaries.local, local_only, server_only, "ss-server"),
        ("ss-server", &binaries.server, server_only, local_only, "ss-local"),
    ] {
        let output = timeout(STEP, quiet_command(binary).arg("--help").stdout(Stdio::piped()).output())
            .await
            .expect("--help did not exit")
            .expect("run --help");
        assert!(output.status.success(), "{name} --help: {}", output.status);
        let help = String::from_utf8_lossy(&output.stdout);
        for (_, long) in own {
            assert!(help.contains(long), "{name} --help lacks {long}:\n{help}");
        }
        for (args, long) in foreign {
            assert!(!help.contains(long), "{name} --help lists {other}'s {long}:\n{help}");
            let command = quiet_command(binary).args(["-s", "127.0.0.1", "-p", "1"]).args(*args).output();
            let output = timeout(STEP, command).await.expect("did not exit").expect("run");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{name} {args:?}: {}\n{stderr}", output.status);
            let expected = format!("is an {other} option, not one of {name}");
            assert!(stderr.contains(&expected), "{name} {args:?}:\n{stderr}");
        }
    }
}

#[tokio::test]
async fn both_binaries_take_the_socket_keys_without_a_warning() {
    let binaries = built().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // Both ports are taken, so each binary logs its warnings at start and then fails to bind (exit 1):
    // any warning would show without serving anything. (SO_REUSEPORT does not help: the port's owner
    // did not set it.)
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let json = format!(
        r#"{{"server":"127.0.0.1","server_port":{port},"local_port":{port},"method":"aes-256-gcm",
            "password":"a long and varied password 1234","fast_open":true,"reuse_port":true,"mptcp":true,
            "no_delay":false,"keep_alive":30}}"#
    );
    let path = dir.path().join("socket-keys.json");
    std::fs::write(&path, json).expect("write config");
    for (name, binary) in [("ss-server", &binaries.server), ("ss-local", &binaries.local)] {
        let command = quiet_command(binary).arg("-c").arg(&path).output();
        let output = timeout(STEP, command).await.expect("did not exit").expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {}\n{stderr}", output.status);
        assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{name}: not the bind error:\n{stderr}");
        for word in ["not supported", "ignored", "unknown"] {
            assert!(!stderr.contains(word), "{name} warned about a key:\n{stderr}");
        }
    }
    drop(taken);
}

#[tokio::test]
async fn server_entries_share_one_set_of_worker_threads() {
    let binaries = built().await;
    let mut failures = Vec::new();
    for _ in 0..3 {
        let (first, second) = (free_port(), free_port());
        let (first, second) = (format!("127.0.0.1:{first}"), format!("127.0.0.1:{second}"));
        let args =
            ["-s", &first, "-s", &second, "-m", "aes-128-gcm", "-k", "a long and varied password 1234"];
        let args = strings(&[&args[..], &["--threads", "3"]].concat());
        // Ready once the second entry listens: both are bound, and the workers start before either.
        let ready = second.parse().expect("address");
        let server = match Subprocess::start(&Launch::new(&binaries.server).args(&args), ready).await {
            Ok(server) => server,
            Err(failure) => {
                failures.push(failure);
                continue;
            }
        };
        let pid = server.pid();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
        let workers = tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("worker-"))
            .count();
        // --threads 3: the main thread and two workers, however many entries the process serves.
        assert_eq!(workers, 2, "{}", server.log());
        let _ = server.terminate().await;
        return;
    }
    panic!("could not start ss-server:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn generate_key_prints_base64_of_the_key_length() {
    let binaries = built().await;
    for (method, len) in [("2022-blake3-aes-128-gcm", 16), ("2022-blake3-aes-256-gcm", 32)] {
        let key = generate_key(&binaries.server, method).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&key)
            .unwrap_or_else(|error| panic!("{key:?} is not base64: {error}"));
        assert_eq!(bytes.len(), len, "{method}: {key}");
    }
    let first = generate_key(&binaries.server, "2022-blake3-aes-128-gcm").await;
    let second = generate_key(&binaries.server, "2022-blake3-aes-128-gcm").await;
    assert_ne!(first, second, "two generated keys are equal");
}

/// One refused config: its name, JSON, the field the error must name, and what the message must say.
struct Case {
    name: &'static str,
    json: String,
    field: &'static str,
    contains: &'static [&'static str],
}

impl Case {
    fn new(name: &'static str, json: String, field: &'static str) -> Case {
        Case { name, json, field, contains: &[] }
    }

    fn containing(self, contains: &'static [&'static str]) -> Case {
        Case { contains, ..self }
    }
}

/// Runs a binary on a config it must refuse; returns its one line of stderr.
async fn refused_config(name: &str, binary: &Path, config: &Path) -> String {
    let mut command = quiet_command(binary);
    command.arg("-c").arg(config).stdout(Stdio::piped());
    let output = timeout(STEP, command.output()).await.expect("did not exit").expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{name} -c {}: {}\n{stderr}", config.display(), output.status);
    assert!(
        output.stdout.is_empty(),
        "{name} printed to stdout: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    let line = stderr.strip_suffix('\n').unwrap_or_else(|| panic!("{name}: stderr not one line: {stderr:?}"));
    assert!(!line.contains('\n'), "{name}: stderr is more than one line:\n{stderr}");
    line.to_owned()
}

/// `ss-server --generate-key -m METHOD`: its one line of output.
async fn generate_key(server: &Path, method: &str) -> String {
    let mut command = quiet_command(server);
    command.args(["--generate-key", "-m", method]).stdout(Stdio::piped());
    let output = timeout(STEP, command.output()).await.expect("did not exit").expect("run");
    assert!(output.status.success(), "{}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 key");
    let key = stdout.strip_suffix('\n').expect("a line");
    assert!(!key.contains('\n') && !key.is_empty(), "{stdout:?}");
    key.to_owned()
}

/// Starts ss-server, then ss-local, on fresh loopback ports; `args(server_port, local_port)` gives each
/// one's arguments. Retries on new ports when a start fails (a port taken between probe and bind).
async fn start_pair(
    binaries: &Binaries,
    mut args: impl FnMut(String, String) -> (Vec<String>, Vec<String>),
) -> (Subprocess, Subprocess) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let (server_port, local_port) = (free_port(), free_port());
        let (server_args, local_args) = args(server_port.to_string(), local_port.to_string());
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

/// Polls `process`'s port until a connection is refused.
async fn wait_until_refused(process: &Subprocess) {
    let deadline = Instant::now() + DRAIN;
    loop {
        match TcpStream::connect(process.addr).await {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // Accepted before the signal took effect, or queued in the backlog and reset as the listener
            // closed: not refused yet.
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(error) => panic!("{}: connecting after SIGTERM: {error}", process.name()),
        }
        assert!(
            Instant::now() < deadline,
            "{} still takes connections {DRAIN:?} after SIGTERM",
            process.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// `len` bytes that differ between `seed`s and along the stream.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed.wrapping_mul(0x5b))
        .collect()
}

/// SIGUSR1 makes ss-local log its server table: every server with its state and failures in a row, here
/// after one connection found both servers dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_logs_the_server_table_with_each_server_state() {
    let binaries = built().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let dead = [free_port(), free_port()];
    let local = Subprocess::start_on_free_port(|local_port| {
        let servers = dead.map(|port| {
            format!(r#"{{"server":"127.0.0.1","server_port":{port},"password":"a long password 1234","method":"aes-256-gcm"}}"#)
        });
        let json = format!(
            r#"{{"servers":[{}],"local_port":{local_port},"balancer":{{"strategy":"failover"}}}}"#,
            servers.join(",")
        );
        let path = dir.path().join(format!("config-{local_port}.json"));
        std::fs::write(&path, json).expect("write config");
        Launch::new(&binaries.local).args(strings(&["-c", &path.display().to_string()]))
    })
    .await;

    // One connection: both servers refuse it, and each refusal is a failure in a row.
    let target = Address::domain("localhost", 9).expect("domain");
    let refused = timeout(STEP, socks5_connect(local.addr, &target)).await.expect("SOCKS5 timed out");
    assert!(refused.is_err(), "no server is up, yet the connect succeeded");

    local.signal(Signal::SIGUSR1);
    assert!(local.wait_for_line("server table", STEP).await, "no table after SIGUSR1:\n{}", local.log());
    for port in dead {
        let needle = format!("127.0.0.1:{port}");
        assert!(
            local.wait_for_line(&needle, STEP).await,
            "{needle} missing from the table:\n{}",
            local.log()
        );
    }
    let log = local.log();
    let rows: Vec<&str> = log.lines().filter(|line| line.contains("failures=1")).collect();
    assert_eq!(rows.len(), 2, "each server failed once:\n{log}");
    let (status, log) = local.terminate().await;
    assert!(status.success(), "{status}\n{log}");
}
