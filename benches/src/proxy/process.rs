//! The implementations under test as subprocesses: finding their binaries, writing a config file, starting
//! a server and a local on free loopback ports, and reading their CPU time and RSS from `/proc`.
//!
//! ```text
//! load generator ──SOCKS5──▶ local (subprocess) ──Shadowsocks──▶ server (subprocess) ──▶ loopback target
//! ```
//!
//! All three implementations read the same shadowsocks-libev style JSON (`-c FILE`); ours alone gets
//! `allow_private_targets`, without which our server refuses loopback targets. Every process is killed
//! (and reaped) when its [`Pair`] is dropped.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use ss_crypto::{Key, Method};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Which implementation a pair of binaries is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flavour {
    /// This workspace's `ss-server` and `ss-local`.
    Ours,
    /// shadowsocks-rust's `ssserver` and `sslocal`.
    Rust,
    /// shadowsocks-libev's `ss-server` and `ss-local`.
    Libev,
}

impl Flavour {
    /// Every flavour, in table column order.
    pub const ALL: [Flavour; 3] = [Flavour::Ours, Flavour::Rust, Flavour::Libev];

    /// The short name used in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Ours => "ours",
            Flavour::Rust => "rust",
            Flavour::Libev => "libev",
        }
    }

    /// Whether this implementation speaks `method`: shadowsocks-libev has no AEAD-2022, and
    /// shadowsocks-rust as `cargo install` builds it (without `aead-cipher-extra`) has neither
    /// `aes-192-gcm` nor `xchacha20-ietf-poly1305`.
    pub fn supports(self, method: Method) -> bool {
        match self {
            Flavour::Ours => true,
            Flavour::Libev => !method.is_2022(),
            Flavour::Rust => !matches!(method, Method::Aes192Gcm | Method::XChaCha20IetfPoly1305),
        }
    }
}

impl FromStr for Flavour {
    type Err = String;

    fn from_str(name: &str) -> Result<Flavour, String> {
        Flavour::ALL
            .into_iter()
            .find(|flavour| flavour.name() == name)
            .ok_or_else(|| format!("unknown implementation {name:?} (valid: ours, rust, libev)"))
    }
}

/// A server and a local binary of one flavour, found and identified.
#[derive(Clone, Debug)]
pub struct Implementation {
    /// Which implementation this is.
    pub flavour: Flavour,
    /// The server binary.
    pub server: PathBuf,
    /// The local (SOCKS5) binary.
    pub local: PathBuf,
    /// What the server says its version is.
    pub version: String,
}

impl Implementation {
    /// Ours, from `dir` (normally the directory `proxy-bench` itself was built into).
    pub fn ours(dir: &Path) -> Result<Implementation> {
        let server = dir.join("ss-server");
        let local = dir.join("ss-local");
        for binary in [&server, &local] {
            if !binary.is_file() {
                bail!(
                    "{} not found: build it with `cargo build --release -p ss-server -p ss-local`, or pass \
                     --ours-dir",
                    binary.display()
                );
            }
        }
        let version = first_line(&server, "--version").unwrap_or_else(|| "unknown version".to_owned());
        Ok(Implementation { flavour: Flavour::Ours, server, local, version })
    }

    /// shadowsocks-rust from `dir`, or else from `PATH` and cargo's bin directory; `None` if missing.
    pub fn rust(dir: Option<&Path>) -> Option<Implementation> {
        let server = candidates("ssserver", dir).into_iter().find(|path| {
            first_line(path, "--version").is_some_and(|version| version.starts_with("shadowsocks "))
        })?;
        let local = server.with_file_name("sslocal");
        let version = first_line(&server, "--version")?;
        local.is_file().then_some(Implementation { flavour: Flavour::Rust, server, local, version })
    }

    /// shadowsocks-libev from `dir`, or else the first `ss-server` on `PATH` (or in /usr/bin) whose help
    /// says it is shadowsocks-libev: ours has the same binary names.
    pub fn libev(dir: Option<&Path>) -> Option<Implementation> {
        let (server, version) = candidates("ss-server", dir).into_iter().find_map(|path| {
            let banner = help_banner(&path)?;
            banner.starts_with("shadowsocks-libev").then_some((path, banner))
        })?;
        let local = server.with_file_name("ss-local");
        local.is_file().then_some(Implementation { flavour: Flavour::Libev, server, local, version })
    }
}

/// A running server and local of one implementation for one method, on free 127.0.0.1 ports.
#[derive(Debug)]
pub struct Pair {
    server: Process,
    local: Process,
    /// The local's SOCKS5 address (UDP ASSOCIATE is served on the same port).
    pub socks: SocketAddr,
    /// Holds the configs and logs; declared last so it is removed after both processes are dead.
    _dir: TempDir,
}

impl Pair {
    /// Starts `implementation`'s server, waits until it accepts connections, then its local likewise. A
    /// process that exits first (another program took the port between our probe and its bind, say) is
    /// retried on fresh ports twice.
    pub async fn start(implementation: &Implementation, method: Method) -> Result<Pair> {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Pair::try_start(implementation, method).await {
                Ok(pair) => return Ok(pair),
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        bail!("{} did not start for {method}:\n{}", implementation.flavour.name(), failures.join("\n"))
    }

    async fn try_start(implementation: &Implementation, method: Method) -> Result<Pair> {
        let dir = TempDir::new()?;
        let server_port = unused_port(None)?;
        let local_port = unused_port(Some(server_port))?;
        let password = password(method)?;
        let server_config = config(implementation.flavour, method, &password, server_port, None);
        let mut server = Process::spawn(&implementation.server, &dir.path, "server", &server_config)?;
        wait_until_listening(&mut server, SocketAddr::from((Ipv4Addr::LOCALHOST, server_port))).await?;
        let local_config = config(implementation.flavour, method, &password, server_port, Some(local_port));
        let mut local = Process::spawn(&implementation.local, &dir.path, "local", &local_config)?;
        let socks = SocketAddr::from((Ipv4Addr::LOCALHOST, local_port));
        wait_until_listening(&mut local, socks).await?;
        Ok(Pair { server, local, socks, _dir: dir })
    }

    /// User plus system CPU time of both processes so far, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        Ok(cpu_ticks(self.server.pid())? + cpu_ticks(self.local.pid())?)
    }

    /// Resident set size of both processes now, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        Ok(rss_kib(self.server.pid())? + rss_kib(self.local.pid())?)
    }

    /// An error (with the end of both logs) if either process has exited: it is then a zombie (state Z),
    /// reaped only when the pair is dropped.
    pub fn check_alive(&self) -> Result<()> {
        for process in [&self.server, &self.local] {
            let state = process_state(process.pid());
            if state.is_none_or(|state| state == 'Z' || state == 'X') {
                bail!("{} has exited\n{}", process.role, process.log_tail());
            }
        }
        Ok(())
    }

    /// The last lines of both logs, for failure messages.
    pub fn log_tail(&self) -> String {
        format!("{}\n{}", self.server.log_tail(), self.local.log_tail())
    }
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`; 100 if that fails).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks: &u64| ticks > 0)
        .unwrap_or(100)
}

/// One child process, killed and reaped on drop; its stdout and stderr go to `<role>.log`.
#[derive(Debug)]
struct Process {
    child: Child,
    role: &'static str,
    log: PathBuf,
}

impl Process {
    fn spawn(binary: &Path, dir: &Path, role: &'static str, config: &str) -> Result<Process> {
        let config_path = dir.join(format!("{role}.json"));
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let log = dir.join(format!("{role}.log"));
        let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Process { child, role, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("--- {} log (last lines) ---\n{tail}", self.role)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<TempDir> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("proxy-bench-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The port Debian's shadowsocks-libev service may hold after install.
const LIBEV_SERVICE_PORT: u16 = 8388;

/// A 127.0.0.1 port free for both TCP and UDP a moment ago (the proxies bind both), other than `not`.
fn unused_port(not: Option<u16>) -> Result<u16> {
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if port == LIBEV_SERVICE_PORT || Some(port) == not {
            continue;
        }
        if std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("found no loopback port free for both TCP and UDP")
}

/// A password both ends accept: a long phrase for classic methods, a fixed base64 PSK for 2022 ones.
fn password(method: Method) -> Result<String> {
    if !method.is_2022() {
        return Ok("proxy-bench: a long benchmark passphrase, 7c1e9a4b2f".to_owned());
    }
    let key = Key::from_bytes(method, &[0x42; 32][..method.key_len()])
        .map_err(|error| anyhow!("building a {method} key: {error}"))?;
    Ok(key.to_base64())
}

/// The JSON config in the key names all three implementations read.
fn config(
    flavour: Flavour,
    method: Method,
    password: &str,
    server_port: u16,
    local_port: Option<u16>,
) -> String {
    let local = match local_port {
        Some(port) => format!(r#""local_address":"127.0.0.1","local_port":{port},"#),
        None => String::new(),
    };
    let ours = if flavour == Flavour::Ours { r#","allow_private_targets":true"# } else { "" };
    format!(
        r#"{{"server":"127.0.0.1","server_port":{server_port},{local}"password":"{password}","method":"{}","mode":"tcp_and_udp","timeout":300{ours}}}"#,
        method.name()
    )
}

/// Polls `addr` until it accepts a TCP connection: an external process's readiness cannot be awaited any
/// other way. Bounded at 10 s; fails at once if the process exits.
async fn wait_until_listening(process: &mut Process, addr: SocketAddr) -> Result<()> {
    const LIMIT: Duration = Duration::from_secs(10);
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = process.exited() {
            bail!("{} exited early with {status}\n{}", process.role, process.log_tail());
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} not listening on {addr} after {LIMIT:?}\n{}", process.role, process.log_tail());
        }
        // The interval between probes, not a guess at readiness.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// utime + stime of a process (all its threads) from `/proc/PID/stat`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parentheses; the fields after its last ')' start
    // at field 3 (state), so utime (14) and stime (15) are the 12th and 13th of them.
    let fields = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let mut fields = fields.split_whitespace().skip(11);
    let mut next = || -> Result<u64> {
        fields
            .next()
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat: {stat}"))
    };
    Ok(next()? + next()?)
}

/// The state letter of a process from `/proc/PID/stat` (R, S, Z, ...), `None` if it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// VmRSS of a process from `/proc/PID/status`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Where to look for `name`: `dir` alone if given, else `PATH`, cargo's bin directory and /usr/bin.
fn candidates(name: &str, dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = dir {
        return vec![dir.join(name)];
    }
    let path_dirs = std::env::var_os("PATH").map(|path| std::env::split_paths(&path).collect::<Vec<_>>());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let mut found: Vec<PathBuf> = Vec::new();
    let dirs = path_dirs.into_iter().flatten().chain(cargo_home.map(|home| home.join("bin")));
    for candidate in dirs.chain([PathBuf::from("/usr/bin")]).map(|dir| dir.join(name)) {
        if candidate.is_file() && !found.contains(&candidate) {
            found.push(candidate);
        }
    }
    found
}

/// The first non-empty line `binary flag` prints on stdout.
fn first_line(binary: &Path, flag: &str) -> Option<String> {
    let output = Command::new(binary).arg(flag).stdin(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines().map(str::trim).find(|line| !line.is_empty()).map(str::to_owned)
}

/// The first non-empty line of `binary -h` on stdout or stderr (shadowsocks-libev prints its name and
/// version there and has no `--version`).
fn help_banner(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("-h").stdin(Stdio::null()).output().ok()?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text.lines().map(str::trim).find(|line| !line.is_empty()).map(str::to_owned)
}
