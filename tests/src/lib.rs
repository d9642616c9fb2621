//! Test support: start our server and local in-process on 127.0.0.1 port 0, local target servers, and a
//! minimal SOCKS5 client. Every address used here is loopback.

pub mod chromium;
pub mod dns;
pub mod plugins;
pub mod skip;
pub mod subprocess;
pub mod udp;
pub mod web;

use std::net::SocketAddr;
use std::time::Duration;

use ss_crypto::{Address, Key, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Upper bound for any single step of a test.
pub const STEP: Duration = Duration::from_secs(20);

/// A key for `method`: a password for classic methods, a fixed PSK for 2022 ones.
pub fn test_key(method: Method) -> Key {
    if method.is_2022() {
        Key::from_bytes(method, &[0x5c; 32][..method.key_len()]).expect("key length")
    } else {
        Key::from_password(method, "test password for end-to-end runs").expect("classic method")
    }
}

/// The base64 form of [`test_key`] for 2022 methods, the password for classic ones.
pub fn test_password(method: Method) -> String {
    if method.is_2022() {
        test_key(method).to_base64()
    } else {
        "test password for end-to-end runs".to_owned()
    }
}

/// An in-process ss-server; stops when dropped.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Sends the binaries' logs to the test output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Starts ss-server on 127.0.0.1:0 with `settings`.
pub async fn start_server(settings: ss_server::Settings) -> RunningServer {
    init_logs();
    // TCP and UDP on the same port number, as a real server listens.
    let (listener, socket) = loop {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind server");
        let port = listener.local_addr().expect("server address").port();
        if let Ok(socket) = tokio::net::UdpSocket::bind(("127.0.0.1", port)).await {
            break (listener, socket);
        }
    };
    let addr = listener.local_addr().expect("server address");
    let shutdown = CancellationToken::new();
    let listeners = ss_server::Listeners { tcp: vec![listener], udp: vec![socket] };
    tokio::spawn(ss_server::run(settings, listeners, shutdown.clone()));
    RunningServer { addr, shutdown }
}

/// Server settings for tests: loopback targets allowed, short handshake deadline.
pub fn server_settings(method: Method) -> ss_server::Settings {
    let mut settings = ss_server::Settings::new(method, test_key(method));
    settings.policy = ss_server::TargetPolicy::AllowAll;
    settings.handshake_timeout = Duration::from_secs(3);
    settings
}

/// Starts ss-local on 127.0.0.1:0 for the given servers.
pub async fn start_local(settings: ss_local::Settings) -> RunningServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind local");
    let addr = listener.local_addr().expect("local address");
    let shutdown = CancellationToken::new();
    tokio::spawn(ss_local::run(settings, vec![listener], shutdown.clone()));
    RunningServer { addr, shutdown }
}

/// Local settings pointing at one server on 127.0.0.1.
pub fn local_settings(method: Method, server: SocketAddr) -> ss_local::Settings {
    ss_local::Settings::new(vec![ss_local::Server::new(
        server.ip().to_string(),
        server.port(),
        method,
        test_key(method),
    )])
}

/// A TCP echo server on `bind` (a loopback address); echoes until EOF, then closes its side.
pub async fn echo_server(bind: &str) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.expect("bind echo");
    let addr = listener.local_addr().expect("echo address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP server on `bind` (a loopback address) that sends an endless stream of bytes to every
/// connection until it goes away: a download as fast as the path allows.
pub async fn source_server(bind: &str) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.expect("bind source");
    let addr = listener.local_addr().expect("source address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![0x5a; 64 * 1024];
                while stream.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

/// One "ping" round trip on `stream` through an echoing target; false when it was closed instead.
pub async fn echo_round_trip(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut echoed = [0u8; 4];
    tokio::time::timeout(STEP, stream.read_exact(&mut echoed)).await.expect("no answer, no close").is_ok()
        && &echoed == b"ping"
}

/// Opens a SOCKS5 CONNECT through `proxy` to `target`; returns the stream after a successful reply.
pub async fn socks5_connect(proxy: SocketAddr, target: &Address) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await?;
    let mut request = vec![5, 1, 0, 5, 1, 0];
    target.write_to(&mut request);
    stream.write_all(&request).await?;
    let mut method_reply = [0u8; 2];
    stream.read_exact(&mut method_reply).await?;
    if method_reply != [5, 0] {
        return Err(std::io::Error::other(format!("method reply {method_reply:?}")));
    }
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        _ => return Err(std::io::Error::other(format!("reply {head:?}"))),
    };
    let mut bound = vec![0u8; rest];
    stream.read_exact(&mut bound).await?;
    if head[1] != 0 {
        return Err(std::io::Error::other(format!("SOCKS5 reply code {}", head[1])));
    }
    Ok(stream)
}

// ---------------------------------------------------------------------------------------------------------
// Real peers (shadowsocks-libev, shadowsocks-rust) as subprocesses, for the interop tests.
// ---------------------------------------------------------------------------------------------------------

/// Real Shadowsocks peers run as subprocesses: finding their binaries, writing their JSON config, starting
/// them on a free loopback port and killing them on drop.
pub mod peers {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use ss_crypto::Method;
    use tokio::process::Command;

    use crate::subprocess::{free_port, Launch, Subprocess};

    /// A peer implementation: the names of its binaries, how to tell them from other programs of the
    /// same name, and whether it speaks AEAD-2022.
    #[derive(Clone, Copy, Debug)]
    pub struct Implementation {
        /// Server binary, found with [`Implementation::server_binary`].
        pub server: &'static str,
        /// Local binary, found with [`Implementation::local_binary`].
        pub local: &'static str,
        /// The methods this peer is tested with (every one it supports that we do).
        methods: &'static [Method],
        /// The flag that makes the binary print its name and version, and how that line starts.
        identity: (&'static str, &'static str),
        /// How to install it, for the skip notice.
        install: &'static str,
    }

    /// shadowsocks-libev 3.3.5 (Debian): the five classic methods (its `-h` lists `aes-192-gcm` and
    /// `xchacha20-ietf-poly1305` beside the common three), no AEAD-2022. Its binaries are called `ss-server` and
    /// `ss-local` like ours, so a candidate must print `shadowsocks-libev VERSION` for `-h` (ours print
    /// `ss-server 0.1.0`): after `cargo install` of this project, ~/.cargo/bin holds our own
    /// binaries under those names.
    pub const LIBEV: Implementation = Implementation {
        server: "ss-server",
        local: "ss-local",
        methods: &[
            Method::Aes128Gcm,
            Method::Aes192Gcm,
            Method::Aes256Gcm,
            Method::ChaCha20IetfPoly1305,
            Method::XChaCha20IetfPoly1305,
        ],
        identity: ("-h", "shadowsocks-libev "),
        install: "apt-get install shadowsocks-libev",
    };
    /// shadowsocks-rust 1.25.0 as `cargo install` builds it: the common three classic methods and the
    /// three AEAD-2022 ones. `aes-192-gcm` and `xchacha20-ietf-poly1305` need its non-default
    /// `aead-cipher-extra` feature (its `--help` does not list them), so they are not tested against it.
    pub const SHADOWSOCKS_RUST: Implementation = Implementation {
        server: "ssserver",
        local: "sslocal",
        methods: &[
            Method::Aes128Gcm,
            Method::Aes256Gcm,
            Method::ChaCha20IetfPoly1305,
            Method::Blake3Aes128Gcm,
            Method::Blake3Aes256Gcm,
            Method::Blake3ChaCha20Poly1305,
        ],
        identity: ("--version", "shadowsocks "),
        install: "cargo install shadowsocks-rust --version 1.25.0 --locked",
    };

    impl Implementation {
        /// The methods this peer is tested with.
        pub fn methods(self) -> impl Iterator<Item = Method> {
            self.methods.iter().copied()
        }

        /// The peer's server binary, or `None` after [`skip`](crate::skip::skip) (a failure with `CI`).
        pub async fn server_binary(self) -> Option<PathBuf> {
            self.binary(self.server).await
        }

        /// The peer's local binary, or `None` after [`skip`](crate::skip::skip) (a failure with `CI`).
        pub async fn local_binary(self) -> Option<PathBuf> {
            self.binary(self.local).await
        }

        /// The first program called `name` (on `PATH`, in /usr/bin where Debian's package puts it, in
        /// cargo's bin directory) whose version line says it is this implementation.
        async fn binary(self, name: &str) -> Option<PathBuf> {
            let (flag, prefix) = self.identity;
            let candidates = candidates(name);
            if let Some(found) = self.first_identified(&candidates).await {
                return Some(found);
            }
            let rejected: Vec<String> = candidates.iter().map(|path| path.display().to_string()).collect();
            let reason = match rejected.as_slice() {
                [] => format!("{name} is not installed (searched PATH, /usr/bin and ~/.cargo/bin)"),
                found => format!(
                    "no {name} found prints \"{prefix}VERSION\" for {flag} (tried {})",
                    found.join(", ")
                ),
            };
            crate::skip::skip(&reason, &format!("`{}` to run this interop test", self.install));
            None
        }
    }

    impl Implementation {
        /// The first of `candidates` whose version line names this implementation.
        pub async fn first_identified(self, candidates: &[PathBuf]) -> Option<PathBuf> {
            let (flag, prefix) = self.identity;
            for candidate in candidates {
                if version_line(candidate, flag, prefix).await.is_some() {
                    return Some(candidate.clone());
                }
            }
            None
        }
    }

    /// Runs `binary flag` and returns the line of its output that starts with `prefix` followed by a
    /// version number, if any; a binary that does not answer within a few seconds has none.
    async fn version_line(binary: &Path, flag: &str, prefix: &str) -> Option<String> {
        let output = Command::new(binary)
            .arg(flag)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(10), output).await.ok()?.ok()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        text.lines()
            .map(str::trim)
            .find(|line| {
                line.strip_prefix(prefix).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .map(str::to_owned)
    }

    use crate::test_password;

    /// Finds a helper program (curl) on `PATH`, or returns `None` after [`skip`](crate::skip::skip)
    /// (a failure with `CI`).
    pub fn program(name: &str, install: &str) -> Option<PathBuf> {
        let found = candidates(name).into_iter().next();
        if found.is_none() {
            crate::skip::skip(&format!("{name} is not installed (searched PATH)"), &format!("`{install}`"));
        }
        found
    }

    /// What the peer is asked to be.
    #[derive(Clone, Copy, Debug)]
    pub enum PeerRole {
        /// A server (`ss-server`, `ssserver`) listening for Shadowsocks connections.
        Server,
        /// A client (`ss-local`, `sslocal`) offering SOCKS5 and connecting to `server`.
        Local {
            /// The Shadowsocks server it uses (on 127.0.0.1).
            server: SocketAddr,
        },
    }

    /// Which relays the peer runs (its config's `"mode"`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PeerMode {
        /// TCP only (`"tcp_only"`), what [`start_peer`] uses.
        TcpOnly,
        /// TCP and UDP on the same port number (`"tcp_and_udp"`): UDP relay for a server, SOCKS5 UDP
        /// ASSOCIATE for a local.
        TcpAndUdp,
    }

    impl PeerMode {
        fn config_name(self) -> &'static str {
            match self {
                PeerMode::TcpOnly => "tcp_only",
                PeerMode::TcpAndUdp => "tcp_and_udp",
            }
        }
    }

    /// A running peer; killed (and its temp directory removed) when dropped.
    #[derive(Debug)]
    pub struct PeerProcess {
        /// Where it listens: the Shadowsocks port of a server, the SOCKS5 port of a local.
        pub addr: SocketAddr,
        process: Subprocess,
        dir: PathBuf,
    }

    impl PeerProcess {
        /// What the peer wrote to stdout and stderr so far, for failure messages.
        pub fn log(&self) -> String {
            self.process.log()
        }
    }

    impl Drop for PeerProcess {
        fn drop(&mut self) {
            // The process itself is killed when `process` is dropped.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Starts `binary -c CONFIG` as `role` for `method` on a free 127.0.0.1 port and waits until that
    /// port accepts connections. A peer that exits first (say, another process took the port between
    /// our probe and its bind) is retried on a fresh port a few times.
    pub async fn start_peer(binary: &Path, method: Method, role: PeerRole) -> PeerProcess {
        start_peer_with_mode(binary, method, role, PeerMode::TcpOnly).await
    }

    /// [`start_peer`] with the relays `mode` asks for. Readiness is still judged by the TCP port; with
    /// UDP the peer binds its UDP socket on the same port number during the same start-up.
    pub async fn start_peer_with_mode(
        binary: &Path,
        method: Method,
        role: PeerRole,
        mode: PeerMode,
    ) -> PeerProcess {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let dir = temp_dir();
            let config = match role {
                PeerRole::Server => config_json(method, mode, port, None),
                PeerRole::Local { server } => config_json(method, mode, server.port(), Some(port)),
            };
            let config_path = dir.join("config.json");
            std::fs::write(&config_path, &config).expect("write peer config");
            let launch = Launch::new(binary).args(["-c", &config_path.to_string_lossy()]);
            match Subprocess::start(&launch, addr).await {
                Ok(process) => return PeerProcess { addr, process, dir },
                Err(failure) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    failures.push(format!("{failure}\nconfig: {config}"));
                }
            }
        }
        panic!("{} did not start:\n{}", binary.display(), failures.join("\n"));
    }

    /// [`start_peer`] with a config of the caller's: `config(port)` is the JSON of a peer that listens
    /// (server port, or local port for a local) on 127.0.0.1 `port`.
    pub async fn start_peer_with_config(binary: &Path, config: impl Fn(u16) -> String) -> PeerProcess {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let dir = temp_dir();
            let config = config(port);
            let config_path = dir.join("config.json");
            std::fs::write(&config_path, &config).expect("write peer config");
            let launch = Launch::new(binary).args(["-c", &config_path.to_string_lossy()]);
            match Subprocess::start(&launch, addr).await {
                Ok(process) => return PeerProcess { addr, process, dir },
                Err(failure) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    failures.push(format!("{failure}\nconfig: {config}"));
                }
            }
        }
        panic!("{} did not start:\n{}", binary.display(), failures.join("\n"));
    }

    /// The peer's config in the key names both shadowsocks-libev and shadowsocks-rust accept.
    fn config_json(method: Method, mode: PeerMode, server_port: u16, local_port: Option<u16>) -> String {
        let local = match local_port {
            Some(port) => format!(r#""local_address":"127.0.0.1","local_port":{port},"#),
            None => String::new(),
        };
        let password = test_password(method).replace('\\', "\\\\").replace('"', "\\\"");
        format!(
            r#"{{"server":"127.0.0.1","server_port":{server_port},{local}"password":"{password}","method":"{}","mode":"{}","timeout":60}}"#,
            method.name(),
            mode.config_name()
        )
    }

    fn temp_dir() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("ss-interop-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    /// Every existing file called `name` in a `PATH` directory, /usr/bin or cargo's bin directory, in
    /// that order.
    fn candidates(name: &str) -> Vec<PathBuf> {
        let path_dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
        let mut found: Vec<PathBuf> = Vec::new();
        let dirs = path_dirs.into_iter().flatten().chain([PathBuf::from("/usr/bin")]);
        for candidate in dirs.chain(cargo_home.map(|home| home.join("bin"))).map(|dir| dir.join(name)) {
            if candidate.is_file() && !found.contains(&candidate) {
                found.push(candidate);
            }
        }
        found
    }
}

// ---------------------------------------------------------------------------------------------------------
// Probe-resistance and target-policy support (tests/probes.rs, tests/policy.rs): hand-made client flights
// and canary listeners, in their own file so that edits here and there do not collide.
// ---------------------------------------------------------------------------------------------------------

pub mod probing;

// ---------------------------------------------------------------------------------------------------------
// A loopback HTTP page server and client, for the tests that fetch a page through the proxy (binaries,
// interop, browser).
// ---------------------------------------------------------------------------------------------------------

mod page;
pub use page::{http_get, page_server, PageServer};
