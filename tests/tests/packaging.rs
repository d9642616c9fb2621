//! What the repository ships for installing: the systemd units pass `systemd-analyze verify`; the
//! binaries tell systemd they are ready (READY=1, for `Type=notify`) once listening and frame a SIGHUP
//! reload with RELOADING=1 / READY=1 without dying of it; and the Debian package builds with cargo-deb,
//! installs with dpkg, lists its units and manual pages, and its installed binaries proxy a page; the
//! manual pages it ships are what the binaries print now (`--man-page`) and render without warnings.
//!
//! The package is installed into a dpkg root of the test's own (`dpkg --root`), not the machine's:
//! the machine has shadowsocks-libev (the interop tests' peer), which owns /usr/bin/ss-server and
//! /usr/bin/ss-local too, and the package declares the conflict. The package test needs root (dpkg),
//! cargo-deb and curl; the unit test needs systemd-analyze (Debian's `systemd`). With CI set, a missing
//! one fails the test; otherwise it is skipped with a SKIPPED line.
//!
//! Every address is loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ss_tests::page_server;
use ss_tests::skip::skip;
use ss_tests::subprocess::{binaries, free_port, quiet_command};
use tokio::net::{TcpStream, UnixDatagram};
use tokio::process::Command;
use tokio::time::timeout;

/// The units, as the package installs them (packaging/systemd).
const UNITS: [&str; 3] = ["ss-server@.service", "ss-local@.service", "ss-local-redir@.service"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `name` on PATH or in /usr/bin.
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[tokio::test]
async fn the_units_pass_systemd_analyze_verify() {
    let Some(analyze) = program("systemd-analyze") else {
        return skip("systemd-analyze not found", "apt-get install systemd");
    };
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut instances = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(repo().join("packaging/systemd").join(unit)).expect("read unit");
        // As shipped: the packaged binaries, the instance's config, the hardening asked for.
        let binary = if unit.starts_with("ss-server") { "/usr/bin/ss-server" } else { "/usr/bin/ss-local" };
        assert!(text.contains("\nLoadCredential=config.json:/etc/ss-rs/%i.json\n"), "{unit}");
        assert!(
            text.contains(&format!("\nExecStart={binary} -c ${{CREDENTIALS_DIRECTORY}}/config.json\n")),
            "{unit}"
        );
        for line in [
            "Type=notify",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "LimitNOFILE=1048576",
        ] {
            assert!(text.lines().any(|have| have == line), "{unit}: no {line:?}");
        }
        let capabilities = if unit.contains("redir") { "CAP_NET_ADMIN" } else { "" };
        assert!(text.contains(&format!("\nCapabilityBoundingSet={capabilities}\n")), "{unit}");
        // verify needs the executable to exist: these binaries, an instance of the template.
        let path = if unit.starts_with("ss-server") { &built.server } else { &built.local };
        let text = text.replace(binary, &path.to_string_lossy());
        let instance = dir.path().join(unit.replace("@.", "@check."));
        std::fs::write(&instance, text).expect("write unit");
        instances.push(instance);
    }
    let output =
        timeout(Duration::from_secs(120), Command::new(&analyze).arg("verify").args(&instances).output())
            .await
            .expect("systemd-analyze verify timed out")
            .expect("run systemd-analyze");
    // verify exits 0 on some mistakes (an unknown key or value is "ignoring"): any output is a failure.
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[tokio::test]
async fn the_shipped_manual_pages_are_current_and_render_cleanly() {
    let built = binaries().await;
    for (binary, name) in [(&built.server, "ss-server"), (&built.local, "ss-local")] {
        let printed = run(Command::new(binary).arg("--man-page")).await;
        let path = repo().join("packaging/man").join(format!("{name}.1"));
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            printed == shipped,
            "{} differs from `{name} --man-page`: run scripts/update-man-pages.sh",
            path.display()
        );
    }
    let Some(groff) = program("groff") else {
        return skip("groff not found", "apt-get install groff-base");
    };
    for name in ["ss-server", "ss-local"] {
        let page = repo().join("packaging/man").join(format!("{name}.1"));
        let output = Command::new(&groff).args(["-man", "-Tutf8", "-ww", "-z"]).arg(&page).output().await;
        let output = output.expect("run groff");
        let warnings = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && warnings.is_empty(), "groff on {name}.1:\n{warnings}");
    }
}

#[tokio::test]
async fn readiness_and_reload_are_notified_and_sighup_does_not_stop() {
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_port, local_port) = (free_port(), free_port());
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"server":"127.0.0.1","server_port":{server_port},"local_port":{local_port},"password":"a long and varied password 1234","method":"aes-256-gcm"}}"#
        ),
    )
    .expect("write config");
    for (binary, port) in [(&built.server, server_port), (&built.local, local_port)] {
        let socket_path = dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let notify = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
        let mut child = quiet_command(binary)
            .arg("-c")
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .stderr(Stdio::null())
            .spawn()
            .expect("start");
        let pid = Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid fits"));
        assert_eq!(message(&notify).await, "READY=1", "{binary:?}");
        // READY=1 comes after the bind: the port answers at once.
        TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .expect("listening when ready");
        kill(pid, Signal::SIGHUP).expect("SIGHUP");
        assert_eq!(message(&notify).await, "RELOADING=1", "{binary:?}");
        assert_eq!(message(&notify).await, "READY=1", "{binary:?}");
        assert!(child.try_wait().expect("wait").is_none(), "{binary:?} ended at SIGHUP");
        TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await.expect("still listening");
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        let status =
            timeout(Duration::from_secs(30), child.wait()).await.expect("exit after SIGTERM").expect("wait");
        assert!(status.success(), "{binary:?}: {status}");
    }
}

/// The next notification, bounded in time.
async fn message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let len = timeout(Duration::from_secs(30), socket.recv(&mut buf))
        .await
        .expect("no notification within 30 s")
        .expect("receive");
    String::from_utf8_lossy(&buf[..len]).trim().to_string()
}

#[tokio::test]
async fn the_debian_package_installs_and_its_binaries_proxy_a_page() {
    if !nix::unistd::geteuid().is_root() {
        return skip("dpkg -i needs root", "run the tests as root, as CI does");
    }
    let Some(cargo_deb) = program("cargo-deb").or_else(|| home_cargo_bin("cargo-deb")) else {
        return skip(
            "cargo-deb not found",
            "cargo install cargo-deb --locked --version 3.8.0 (.ci/run does)",
        );
    };
    let Some(curl) = program("curl") else {
        return skip("curl not found", "apt-get install curl");
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let deb = build_package(&cargo_deb, dir.path()).await;

    // A dpkg database of the test's own (see the module doc): the package's files land under `root`.
    let root = dir.path().join("root");
    for sub in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(sub)).expect("dpkg dirs");
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").expect("dpkg status");
    let root_arg = format!("--root={}", root.display());
    // The root has no libc6 registered: its dependencies are the machine's.
    run(Command::new("dpkg").args([&root_arg, "--force-depends", "-i"]).arg(&deb)).await;
    let listed = run(Command::new("dpkg").args([&root_arg, "-L", "ss-rs"])).await;
    for path in [
        "/usr/bin/ss-server",
        "/usr/bin/ss-local",
        "/lib/systemd/system/ss-server@.service",
        "/lib/systemd/system/ss-local@.service",
        "/lib/systemd/system/ss-local-redir@.service",
        "/usr/share/doc/ss-rs/examples/config.example.json",
        "/usr/share/man/man1/ss-server.1.gz",
        "/usr/share/man/man1/ss-local.1.gz",
    ] {
        assert!(listed.lines().any(|line| line == path), "dpkg -L ss-rs has no {path}:\n{listed}");
    }

    // The installed binaries, started by hand (no systemd here), one page through them with curl.
    let page = page_server("<html>installed</html>").await;
    let config = dir.path().join("config.json");
    let (server_port, local_port) = (free_port(), free_port());
    std::fs::write(
        &config,
        format!(
            r#"{{"server":"127.0.0.1","server_port":{server_port},"local_address":"127.0.0.1","local_port":{local_port},"password":"a long and varied password 1234","method":"chacha20-ietf-poly1305"}}"#
        ),
    )
    .expect("write config");
    let config = config.to_string_lossy().into_owned();
    let checked = run(Command::new(root.join("usr/bin/ss-server")).args(["--check", "-c", &config])).await;
    assert!(checked.contains("config OK"), "{checked}");
    let mut server = quiet_command(&root.join("usr/bin/ss-server"))
        .args(["-c", &config, "--allow-private-targets"])
        .spawn()
        .expect("start the installed ss-server");
    let mut local =
        quiet_command(&root.join("usr/bin/ss-local")).args(["-c", &config]).spawn().expect("start ss-local");
    for port in [server_port, local_port] {
        wait_listening(port).await;
    }
    let url = format!("http://{}/", page.addr);
    let proxy = format!("socks5h://127.0.0.1:{local_port}");
    let body = run(Command::new(&curl).args(["-sS", "--max-time", "30", "--proxy", &proxy, &url])).await;
    assert_eq!(body, "<html>installed</html>");
    assert_eq!(page.page_requests(), 1);
    for child in [&mut server, &mut local] {
        let _ = child.start_kill();
        let _ = timeout(Duration::from_secs(30), child.wait()).await;
    }
}

fn home_cargo_bin(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin").join(name);
    path.is_file().then_some(path)
}

/// `cargo deb -p ss-server --profile dev` into `out`; returns the .deb's path. The dev profile reuses what
/// the test suite already built (seconds, against minutes for an optimised build): this test is about the
/// package's contents and installation, not the binaries' speed.
async fn build_package(cargo_deb: &Path, out: &Path) -> PathBuf {
    let mut command = Command::new(cargo_deb);
    command
        .current_dir(repo())
        .args(["deb", "--locked", "-p", "ss-server", "--profile", "dev", "--output"])
        .arg(out);
    // As for the binaries (subprocess.rs): the test's per-package cargo variables would make the nested
    // build redo ring's build script.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|key| {
            key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || matches!(
                    key,
                    "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
                )
        }) {
            command.env_remove(key);
        }
    }
    // Generous: a cold build of both binaries on two cores.
    let output = timeout(Duration::from_secs(45 * 60), command.output())
        .await
        .expect("cargo deb did not finish within 45 minutes")
        .expect("run cargo deb");
    assert!(output.status.success(), "cargo deb: {}", String::from_utf8_lossy(&output.stderr));
    let deb = std::fs::read_dir(out)
        .expect("read the output directory")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"));
    deb.expect("cargo deb made no .deb")
}

/// Runs `command` to its end (bounded); its stdout, or a panic with its output when it fails.
async fn run(command: &mut Command) -> String {
    let output = timeout(Duration::from_secs(120), command.stdin(Stdio::null()).output())
        .await
        .expect("command timed out")
        .expect("run command");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Waits (bounded) until something accepts on loopback `port`.
async fn wait_listening(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "nothing listens on {port} after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
