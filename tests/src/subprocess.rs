//! Child processes for every test that runs one: our own binaries (tests/binaries.rs, load.rs, faults.rs,
//! flood.rs) and the interop peers (`crate::peers`), each on a port from [`free_port`]; and what the
//! kernel says about a process: resident memory, CPU time and open descriptors from /proc,
//! and how many received bytes a server has not read yet from its sockets (/proc/net/tcp).
//!
//! A child has its own descriptor table, so a test can put more connections through a server than one
//! process could hold, give the server a lower descriptor limit than the test's (`prlimit`, from
//! util-linux, which Debian always installs), kill it outright, or weigh its memory alone.
//!
//! Every address is loopback; readiness is observed by polling the child's port in a bounded loop.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use crate::STEP;

/// Where cargo put our two binaries.
#[derive(Debug)]
pub struct Binaries {
    /// The ss-server executable.
    pub server: PathBuf,
    /// The ss-local executable.
    pub local: PathBuf,
}

/// Builds ss-server and ss-local on first use (once per test binary, whichever test asks first) and
/// returns where cargo put them.
///
/// `escargot` runs `cargo build --message-format=json -p NAME --bin NAME` with the cargo that runs the
/// tests and takes the path from cargo's report: it follows `CARGO_TARGET_DIR`, `build.target-dir` and
/// `cargo test --release`, and never runs a stale binary, since the build always runs (a no-op when
/// nothing changed). Cargo releases its build lock before it runs test binaries, so this does not
/// deadlock; if another cargo is building, it waits its turn.
pub async fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    // Generous: a cold debug build on two cores, possibly waiting for another cargo's lock.
    let build = tokio::task::spawn_blocking(|| {
        BINARIES.get_or_init(|| Binaries { server: build("ss-server"), local: build("ss-local") })
    });
    timeout(Duration::from_secs(900), build).await.expect("building the binaries timed out").expect("build")
}

fn build(name: &str) -> PathBuf {
    build_bin(name, name)
}

/// Builds binary `bin` of workspace package `package` (see [`binaries`] for how) and returns its path.
pub fn build_bin(package: &str, bin: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut build =
        escargot::CargoBuild::new().manifest_path(workspace).package(package).bin(bin).current_release();
    // Cargo gives the test process the variables of the package under test (CARGO_MANIFEST_DIR,
    // CARGO_PKG_NAME, ...). ring's build script declares those as inputs (rerun-if-env-changed), so a
    // nested cargo that inherited them would rebuild ring and everything above it, and the next plain
    // `cargo test` would rebuild them back.
    for (key, _) in std::env::vars_os() {
        let per_package = key.to_str().is_some_and(|key| {
            key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || matches!(
                    key,
                    "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
                )
        });
        if per_package {
            build = build.env_remove(key);
        }
    }
    let built = build.run().unwrap_or_else(|error| panic!("cargo build -p {package} --bin {bin}: {error}"));
    built.path().to_owned()
}

/// How to start a binary: its path, its arguments, and optionally a descriptor limit of its own.
#[derive(Debug, Clone)]
pub struct Launch {
    binary: PathBuf,
    args: Vec<String>,
    nofile: Option<u64>,
    env: Vec<(String, String)>,
}

impl Launch {
    /// `binary` with no arguments yet.
    pub fn new(binary: &Path) -> Launch {
        Launch { binary: binary.to_owned(), args: Vec::new(), nofile: None, env: Vec::new() }
    }

    /// Appends arguments.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Launch {
        self.args.extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable of the child.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs the binary with its wall clock `offset` (libfaketime's syntax: "+40s", "-1h") from the
    /// real one, through libfaketime preloaded (`library`: [`faketime_library`]); the monotonic clock
    /// stays true.
    pub fn clock_offset(self, library: &Path, offset: &str) -> Launch {
        let library = library.to_string_lossy().into_owned();
        self.env("LD_PRELOAD", &library).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    }

    /// Runs the binary with RLIMIT_NOFILE set to `limit` (soft and hard), through `prlimit`, which
    /// execs it: the child's pid is the binary's own.
    pub fn nofile(mut self, limit: u64) -> Launch {
        self.nofile = Some(limit);
        self
    }

    fn command(&self) -> Command {
        let mut command = match self.nofile {
            Some(limit) => {
                let mut command = quiet_command(Path::new("prlimit"));
                command.arg(format!("--nofile={limit}:{limit}")).arg("--").arg(&self.binary);
                command
            }
            None => quiet_command(&self.binary),
        };
        // Peers (shadowsocks-libev, shadowsocks-rust) log to stdout: kept with stderr.
        command.args(&self.args).stdout(Stdio::piped());
        command.envs(self.env.iter().map(|(key, value)| (key, value)));
        command
    }
}

/// libfaketime's preload library (Debian's `faketime` package), if installed.
pub fn faketime_library() -> Option<PathBuf> {
    let lib = std::fs::read_dir("/usr/lib").ok()?;
    lib.filter_map(Result::ok)
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .chain(std::iter::once(PathBuf::from("/usr/lib/faketime/libfaketime.so.1")))
        .find(|path| path.is_file())
}

/// A command for a binary under test: no stdin, stderr captured, logs at the binary's default level
/// whatever `RUST_LOG` the test run has, killed if the test drops it.
pub fn quiet_command(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .env_remove("RUST_LOG")
        .env("STATE_DIRECTORY", state_directory())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A state directory of its own for each command: ss-server saves its classic replay filter under
/// `$STATE_DIRECTORY` by port, and a directory shared between tests would hand one test's snapshot to a
/// later server on the same port with another key (which then logs that it ignored it). Under the temp
/// dir, not the tester's home; one directory per test process, created with a unique name.
fn state_directory() -> PathBuf {
    static PROCESS_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    static SPAWNED: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir().join("ss-tests-state");
    let process_dir = PROCESS_DIR.get_or_init(|| {
        std::fs::create_dir_all(&base).ok()?;
        tempfile::Builder::new().prefix("run-").tempdir_in(&base).ok().map(tempfile::TempDir::keep)
    });
    let dir = process_dir.clone().unwrap_or(base);
    dir.join(SPAWNED.fetch_add(1, Ordering::Relaxed).to_string())
}

/// A running child (our binaries, or a peer's): its stderr and stdout collected line by line as they come;
/// killed when dropped.
#[derive(Debug)]
pub struct Subprocess {
    /// Where it listens.
    pub addr: SocketAddr,
    pid: u32,
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

impl Subprocess {
    /// Starts `launch` and waits (up to [`STEP`]) until it accepts connections on `addr`. The readiness
    /// probe is one connection that sends nothing and closes, and it counts only once the listening
    /// socket on `addr`'s port belongs to the child or one of its descendants (a plugin): a free port can
    /// be taken by another process between the choice and the child's bind, and a probe answered by that
    /// process must not pass for the child's readiness.
    pub async fn start(launch: &Launch, addr: SocketAddr) -> Result<Subprocess, String> {
        let name = launch.binary.file_name().map_or_else(String::new, |name| name.to_string_lossy().into());
        let mut child = launch.command().spawn().map_err(|error| match launch.nofile {
            Some(_) => format!("spawn prlimit (util-linux) for {name}: {error}"),
            None => format!("spawn {name}: {error}"),
        })?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().ok_or("stderr is not piped")?;
        let stdout = child.stdout.take();
        let sink = lines.clone();
        let reader = tokio::spawn(async move {
            let collect = |output| {
                let sink = sink.clone();
                async move {
                    let mut output = BufReader::new(output).lines();
                    while let Ok(Some(line)) = output.next_line().await {
                        sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(line);
                    }
                }
            };
            match stdout {
                Some(stdout) => {
                    tokio::join!(
                        collect(Box::new(stderr) as Box<dyn AsyncRead + Send + Unpin>),
                        collect(Box::new(stdout))
                    );
                }
                None => collect(Box::new(stderr)).await,
            }
        });
        let mut process = Subprocess { addr, pid, name, child, lines, reader };
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                let _ = timeout(STEP, &mut process.reader).await;
                return Err(format!("{} exited with {status}:\n{}", process.name, process.log()));
            }
            if TcpStream::connect(addr).await.is_ok() && listens_in_tree(pid, addr.port()) {
                return Ok(process);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not listening on {addr} after {STEP:?}:\n{}",
                    process.name,
                    process.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts `launch(port)` on a loopback port that was free a moment ago; a start that loses the port
    /// to another process is retried on a fresh one.
    pub async fn start_on_free_port(launch: impl Fn(u16) -> Launch) -> Subprocess {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            match Subprocess::start(&launch(port), SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
                Ok(process) => return process,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("could not start:\n{}", failures.join("\n"));
    }

    /// Its process id (the binary's own, also when started through `prlimit`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The binary's file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.pid).expect("a pid fits i32"));
        kill(pid, signal).unwrap_or_else(|error| panic!("kill({pid}, {signal}): {error}"));
    }

    /// Waits (up to [`STEP`]) for it to exit: its status and all of its output.
    pub async fn wait(mut self) -> (ExitStatus, String) {
        let status = self.wait_exit(STEP).await;
        let status =
            status.unwrap_or_else(|| panic!("{} did not exit within {STEP:?}\n{}", self.name, self.log()));
        (status, self.log())
    }

    /// SIGTERM, then [`Subprocess::wait`].
    pub async fn terminate(self) -> (ExitStatus, String) {
        self.signal(Signal::SIGTERM);
        self.wait().await
    }

    /// Its output so far, for failure messages.
    pub fn log(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        format!("--- {} output ---\n{}\n--- end ---", self.name, lines.join("\n"))
    }

    /// How many lines of its output so far contain `needle`.
    pub fn lines_containing(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.iter().filter(|line| line.contains(needle)).count()
    }

    /// Waits up to `within` for a line of output containing `needle`; whether one came.
    pub async fn wait_for_line(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.lines_containing(needle) == 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Sends SIGHUP and waits (up to [`STEP`]) for the `count`-th line of output containing `needle`.
    pub async fn hang_up(&self, needle: &str, count: usize) {
        self.signal(Signal::SIGHUP);
        let deadline = Instant::now() + STEP;
        while self.lines_containing(needle) < count {
            assert!(Instant::now() < deadline, "no {needle:?} after SIGHUP:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits up to `within` for it to exit; its status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let status = timeout(within, self.child.wait()).await.ok()?.ok()?;
        let _ = timeout(STEP, &mut self.reader).await;
        Some(status)
    }

    /// SIGKILL, then waits for it to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.wait_exit(STEP).await;
    }
}

/// Whether a socket listening on TCP `port` (IPv4 or IPv6) is held by process `root` or a descendant.
/// Reads /proc: the listening sockets' inodes from /proc/net/tcp{,6}, then which processes hold them.
fn listens_in_tree(root: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&"0A"), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let listens_here = local
                .rsplit_once(':')
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
                .is_some_and(|local_port| local_port == port);
            if listens_here {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else { return false };
    processes
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| holds_any(pid, &inodes))
        .any(|pid| descends_from(pid, root))
}

/// Whether process `pid` has one of `sockets` (`socket:[inode]`) among its descriptors.
fn holds_any(pid: u32, sockets: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| sockets.iter().any(|socket| target.as_os_str() == socket.as_str()))
}

/// Whether `pid` is `root` or one of its descendants (following parent ids in /proc/PID/stat).
fn descends_from(mut pid: u32, root: u32) -> bool {
    for _ in 0..64 {
        if pid == root {
            return true;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
        // The command name (field 2) is in parentheses and may contain spaces; the parent id follows.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        match parent {
            Some(parent) if parent > 1 => pid = parent,
            _ => return false,
        }
    }
    false
}

/// The port Debian's shadowsocks-libev service listens on after install; never handed out.
pub const LIBEV_SERVICE_PORT: u16 = 8388;

/// A loopback port that was free a moment ago for both TCP and UDP (bound to port 0, then released;
/// servers listen on one port number for both); never [`LIBEV_SERVICE_PORT`]. The one source of ports for
/// every process a test starts.
pub fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let udp_free = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        if port != LIBEV_SERVICE_PORT && udp_free {
            return port;
        }
    }
}

/// Resident memory of process `pid` (VmRSS).
pub fn resident_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))?;
    Ok(kib * 1024)
}

/// CPU time process `pid` has used so far, user plus system, all threads.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: count fields after it.
    // utime and stime are fields 14 and 15, in USER_HZ ticks, which Linux fixes at 100 per second for
    // everything it reports to user space.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let tick = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => Ok(Duration::from_millis((user + system) * 10)),
        _ => Err(io::Error::other(format!("unexpected /proc/{pid}/stat: {stat}"))),
    }
}

/// The descriptors process `pid` has open, by number. A child may have inherited a few above its own
/// descriptor limit from whatever started the test (a shell's job control, say).
pub fn open_fds(pid: u32) -> io::Result<Vec<u64>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        if let Some(fd) = entry?.file_name().to_str().and_then(|name| name.parse().ok()) {
            fds.push(fd);
        }
    }
    Ok(fds)
}

/// For every established IPv4 connection whose local end is 127.0.0.1:`port` (the server side of the
/// connections to a server listening there), the bytes received that the server has not read yet.
pub fn unread_bytes(port: u16) -> io::Result<Vec<u64>> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let local = format!("0100007F:{port:04X}");
    let mut unread = Vec::new();
    for line in table.lines().skip(1) {
        // sl local_address rem_address st tx_queue:rx_queue ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(&address), Some(&state), Some(&queues)) = (fields.get(1), fields.get(3), fields.get(4))
        else {
            continue;
        };
        if address != local || state != "01" {
            continue;
        }
        let rx = queues.split_once(':').and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok());
        unread.push(rx.ok_or_else(|| io::Error::other(format!("unexpected /proc/net/tcp line: {line}")))?);
    }
    Ok(unread)
}
