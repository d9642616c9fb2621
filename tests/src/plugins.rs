//! SIP003 plugin test support (tests/plugin.rs, tests/plugin_interop.rs, tests/browser.rs): the Debian
//! plugin binaries, our binaries started with a plugin, a self-signed certificate, the page and 64 MiB
//! checks through a SOCKS5 proxy, and the plugin processes a parent has.
//!
//! The plugins come from the Debian packages `simple-obfs` (`obfs-local`, `obfs-server`) and
//! `shadowsocks-v2ray-plugin` (`ss-v2ray-plugin`). Every address is loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ss_crypto::{Address, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

use crate::subprocess::{binaries, Launch, Subprocess};
use crate::{http_get, page_server, socks5_connect, test_password, STEP};

/// The method the plugin tests use: classic, so that shadowsocks-libev can take part too.
pub const METHOD: Method = Method::Aes256Gcm;

/// Bytes the big transfer check moves and hashes.
pub const BLOB_LEN: usize = 64 * 1024 * 1024;

/// One plugin as both sides run it: the executable and `SS_PLUGIN_OPTIONS` for each.
#[derive(Debug, Clone)]
pub struct PluginPair {
    /// What it is, for messages.
    pub label: &'static str,
    /// ss-local side: executable name.
    pub client: &'static str,
    /// ss-local side: options.
    pub client_opts: String,
    /// ss-server side: executable name.
    pub server: &'static str,
    /// ss-server side: options.
    pub server_opts: String,
}

impl PluginPair {
    /// simple-obfs, HTTP look-alike.
    pub fn obfs_http() -> PluginPair {
        PluginPair {
            label: "simple-obfs http",
            client: "obfs-local",
            client_opts: "obfs=http;obfs-host=www.example.com".into(),
            server: "obfs-server",
            server_opts: "obfs=http".into(),
        }
    }

    /// simple-obfs, TLS look-alike.
    pub fn obfs_tls() -> PluginPair {
        PluginPair {
            label: "simple-obfs tls",
            client: "obfs-local",
            client_opts: "obfs=tls;obfs-host=www.example.com".into(),
            server: "obfs-server",
            server_opts: "obfs=tls".into(),
        }
    }

    /// v2ray-plugin over WebSocket.
    pub fn v2ray_websocket() -> PluginPair {
        PluginPair {
            label: "v2ray-plugin websocket",
            client: "ss-v2ray-plugin",
            client_opts: "host=www.example.com;path=/ws".into(),
            server: "ss-v2ray-plugin",
            server_opts: "server;host=www.example.com;path=/ws".into(),
        }
    }

    /// v2ray-plugin over WebSocket in TLS with `cert`/`key` (see [`self_signed_certificate`]) issued
    /// for `localhost`; the client trusts that certificate.
    pub fn v2ray_websocket_tls(cert: &Path, key: &Path) -> PluginPair {
        PluginPair {
            label: "v2ray-plugin websocket+tls",
            client: "ss-v2ray-plugin",
            client_opts: format!("tls;host=localhost;path=/ws;cert={}", cert.display()),
            server: "ss-v2ray-plugin",
            server_opts: format!(
                "server;tls;host=localhost;path=/ws;cert={};key={}",
                cert.display(),
                key.display()
            ),
        }
    }

    /// Whether both executables are installed; see [`plugin_installed`].
    pub fn installed(&self) -> bool {
        plugin_installed(self.client) && plugin_installed(self.server)
    }
}

/// Whether plugin executable `name` is on `PATH`. Missing: a failure when `CI` is set (CI must install
/// it), otherwise a skip ([`crate::skip`]) and `false`.
pub fn plugin_installed(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .any(|dir| dir.join(name).is_file());
    if found {
        return true;
    }
    let package = if name.starts_with("obfs-") { "simple-obfs" } else { "shadowsocks-v2ray-plugin" };
    crate::skip::skip(
        &format!("{name} is not installed (searched PATH)"),
        &format!("apt-get install {package}; .ci/run installs it"),
    );
    false
}

/// The test plugin `sip003-relay` (src/bin/sip003-relay.rs), built on first use.
pub async fn relay_plugin() -> &'static Path {
    static RELAY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let build = tokio::task::spawn_blocking(|| {
        RELAY.get_or_init(|| crate::subprocess::build_bin("ss-tests", "sip003-relay"))
    });
    timeout(Duration::from_secs(900), build).await.expect("building sip003-relay timed out").expect("build")
}

/// Our ss-server binary with `plugin` on a free loopback port, ready (the plugin accepts there).
pub async fn our_server(plugin: &str, opts: &str, extra: &[&str]) -> Subprocess {
    let binary = &binaries().await.server;
    let password = test_password(METHOD);
    Subprocess::start_on_free_port(|port| {
        Launch::new(binary)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-k", &password, "-m", METHOD.name()])
            .args(["--allow-private-targets", "--plugin", plugin, "--plugin-opts", opts])
            .args(extra)
    })
    .await
}

/// Our ss-local binary with `plugin`, for the server at `server`, SOCKS5 on a free loopback port.
pub async fn our_local(server: SocketAddr, plugin: &str, opts: &str) -> Subprocess {
    let binary = &binaries().await.local;
    let password = test_password(METHOD);
    Subprocess::start_on_free_port(|port| {
        Launch::new(binary)
            .args(["-s", &server.ip().to_string(), "-p", &server.port().to_string(), "-l", &port.to_string()])
            .args(["-k", &password, "-m", METHOD.name(), "--plugin", plugin, "--plugin-opts", opts])
    })
    .await
}

/// Writes a self-signed certificate for `localhost` and its key into `dir` (openssl CLI); their paths.
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl (Debian package openssl)");
    assert!(status.success(), "openssl req failed: {status}");
    (cert, key)
}

/// Loopback targets for [`check_traffic`]: an HTTP page and a 64 MiB blob.
#[derive(Debug)]
pub struct Targets {
    page: crate::PageServer,
    blob: SocketAddr,
}

/// What the page says.
const PAGE: &str = "<!doctype html><p>through a SIP003 plugin</p>";

impl Targets {
    /// Starts both.
    pub async fn start() -> Targets {
        Targets { page: page_server(PAGE).await, blob: blob_server().await }
    }
}

/// Through the SOCKS5 proxy at `socks`: fetches the page, then reads the 64 MiB blob and compares its
/// BLAKE3 hash with the one sent.
pub async fn check_traffic(socks: SocketAddr, targets: &Targets) -> Result<(), String> {
    let page = async {
        let stream = socks5_connect(socks, &Address::Ip(targets.page.addr)).await?;
        http_get(stream, "localhost").await
    };
    let body = timeout(STEP, page).await.map_err(|_| "page fetch timed out".to_string())?;
    let body = body.map_err(|error| format!("page fetch: {error}"))?;
    if body != PAGE {
        return Err(format!("page body {body:?}"));
    }
    // Generous: 64 MiB through two debug-build binaries and two plugins on a loaded machine.
    let blob = timeout(Duration::from_secs(180), fetch_blob(socks, targets.blob)).await;
    blob.map_err(|_| "64 MiB transfer timed out".to_string())?
}

async fn fetch_blob(socks: SocketAddr, blob: SocketAddr) -> Result<(), String> {
    let mut stream =
        socks5_connect(socks, &Address::Ip(blob)).await.map_err(|e| format!("blob connect: {e}"))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| format!("blob read after {total} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n;
    }
    if total != BLOB_LEN {
        return Err(format!("blob: {total} bytes, expected {BLOB_LEN}"));
    }
    if hasher.finalize() != blob_hash() {
        return Err("blob: hash differs".to_string());
    }
    Ok(())
}

/// A loopback server that sends [`BLOB_LEN`] pseudo-random bytes to each connection, then closes.
async fn blob_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind blob server");
    let addr = listener.local_addr().expect("blob address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut xof = blake3::Hasher::new().update(b"plugin blob").finalize_xof();
                let mut chunk = vec![0u8; 256 * 1024];
                for _ in 0..BLOB_LEN / chunk.len() {
                    xof.fill(&mut chunk);
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

fn blob_hash() -> blake3::Hash {
    static HASH: std::sync::OnceLock<blake3::Hash> = std::sync::OnceLock::new();
    *HASH.get_or_init(|| {
        let mut xof = blake3::Hasher::new().update(b"plugin blob").finalize_xof();
        let mut chunk = vec![0u8; 256 * 1024];
        let mut hasher = blake3::Hasher::new();
        for _ in 0..BLOB_LEN / chunk.len() {
            xof.fill(&mut chunk);
            hasher.update(&chunk);
        }
        hasher.finalize()
    })
}

/// The processes whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat_field(*child, 1).is_some_and(|ppid| ppid == pid.to_string()))
        .collect()
}

/// A peer (shadowsocks-libev, shadowsocks-rust) that starts its own plugin. Killing a peer leaves its
/// plugin running (the orphans our plugin handling avoids), so dropping this kills the peer's
/// descendants along with it.
#[derive(Debug)]
pub struct PeerWithPlugin(pub Subprocess);

impl PeerWithPlugin {
    /// Waits (bounded by [`STEP`]) until both ends on the loopback side of the peer's plugin accept
    /// (`SS_LOCAL_HOST:SS_LOCAL_PORT` from the plugin's environment): the peers open their own port
    /// without waiting for their plugin, so a connection made at once may find nobody there.
    pub async fn wait_for_plugin(&self) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let local = children_of(self.0.pid()).into_iter().find_map(plugin_local_address);
            if let Some(addr) = local {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the peer's plugin never listened\n{}",
                self.0.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `SS_LOCAL_HOST:SS_LOCAL_PORT` from the environment of process `pid`, if it is a plugin.
fn plugin_local_address(pid: u32) -> Option<SocketAddr> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let var = |name: &str| {
        environ.split(|byte| *byte == 0).find_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            entry.strip_prefix(name)?.strip_prefix('=').map(str::to_owned)
        })
    };
    let (host, port) = (var("SS_LOCAL_HOST")?, var("SS_LOCAL_PORT")?);
    Some(SocketAddr::new(host.parse().ok()?, port.parse().ok()?))
}

impl Drop for PeerWithPlugin {
    fn drop(&mut self) {
        let mut tree = vec![self.0.pid()];
        let mut index = 0;
        while let Some(&pid) = tree.get(index) {
            tree.extend(children_of(pid));
            index += 1;
        }
        for pid in tree {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody has reaped yet).
pub fn has_ended(pid: u32) -> bool {
    stat_field(pid, 0).is_none_or(|state| state == "Z" || state == "X")
}

/// Field `index` after the command name of /proc/PID/stat (0: state, 1: parent pid).
fn stat_field(pid: u32, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(index).map(str::to_owned)
}

/// Waits (bounded by [`STEP`]) until process `pid` has ended; whether it did.
pub async fn wait_ended(pid: u32) -> bool {
    let deadline = tokio::time::Instant::now() + STEP;
    while !has_ended(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
