//! One run of a plugin process: find the executable, start it with the SIP003 environment, tie its life
//! to ours, pass its output into our log, and stop it (SIGTERM, then SIGKILL after a grace period).
//!
//! Tying its life to ours: the plugin starts through util-linux's `setpriv --pdeathsig KILL`, which sets
//! the kernel's parent-death signal and then execs the plugin (same pid), so even a SIGKILL of our
//! process kills the plugin. The kernel sends that signal when the *thread* that started the child ends,
//! so plugins are started from the runtime's long-lived threads, never from `spawn_blocking`. Without
//! `setpriv` the plugin still runs, in its own process group that the shutdown path kills, and a warning
//! says that a SIGKILL of ours would leave it behind.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{PluginError, Spec};

/// How many of the plugin's last output lines are kept for the log line about its exit.
const TAIL_LINES: usize = 8;

/// Where the plugin is wired: the two address pairs of SIP003.
#[derive(Debug, Clone)]
pub(super) struct Wiring {
    /// `SS_REMOTE_HOST` / `SS_REMOTE_PORT`: the server (ss-local) or the public listen address (ss-server).
    pub remote_host: String,
    pub remote_port: u16,
    /// `SS_LOCAL_HOST` / `SS_LOCAL_PORT`: always loopback.
    pub local: SocketAddr,
}

/// A started plugin process.
#[derive(Debug)]
pub(super) struct Running {
    child: Child,
    pid: Option<Pid>,
    tail: Arc<Mutex<VecDeque<String>>>,
    forwarders: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts `executable` (found by [`find_executable`]) wired as `wiring`.
    pub fn start(
        spec: &Spec,
        executable: &Path,
        setpriv: Option<&Path>,
        wiring: &Wiring,
    ) -> Result<Running, PluginError> {
        let mut command = match setpriv {
            Some(setpriv) => {
                let mut command = Command::new(setpriv);
                command.args(["--pdeathsig", "KILL", "--"]).arg(executable);
                command
            }
            None => Command::new(executable),
        };
        command
            .args(&spec.args)
            .env("SS_REMOTE_HOST", &wiring.remote_host)
            .env("SS_REMOTE_PORT", wiring.remote_port.to_string())
            .env("SS_LOCAL_HOST", wiring.local.ip().to_string())
            .env("SS_LOCAL_PORT", wiring.local.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C in the terminal reaches only us, and we stop the plugin in
            // order, after our connections have drained.
            .process_group(0)
            .kill_on_drop(true);
        match &spec.options {
            Some(options) => command.env("SS_PLUGIN_OPTIONS", options),
            None => command.env_remove("SS_PLUGIN_OPTIONS"),
        };
        let mut child = command.spawn().map_err(|error| PluginError::Spawn {
            plugin: spec.name(),
            reason: format!("cannot run {}: {error}", executable.display()),
        })?;
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw);
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let mut forwarders = Vec::new();
        if let Some(stderr) = child.stderr.take() {
            forwarders.push(tokio::spawn(forward_lines(stderr, spec.name(), tail.clone())));
        }
        if let Some(stdout) = child.stdout.take() {
            forwarders.push(tokio::spawn(forward_lines(stdout, spec.name(), tail.clone())));
        }
        Ok(Running { child, pid, tail, forwarders })
    }

    /// Its exit status, if it has exited.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// After it exited: waits (briefly) until its last output has been read, so [`Running::tail`] has it.
    pub async fn output_done(&mut self) {
        for forwarder in self.forwarders.drain(..) {
            // A grandchild that inherited the pipes could keep them open; do not wait for it.
            let _ = tokio::time::timeout(Duration::from_secs(1), forwarder).await;
        }
    }

    /// Its last few output lines, oldest first, joined on one line.
    pub fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        if lines.is_empty() {
            return "(no output)".to_string();
        }
        lines.join(" | ")
    }

    /// SIGTERM to its process group; SIGKILL if it is still there after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if self.try_exited().is_some() {
            return;
        }
        if let Some(group) = self.pid {
            let _ = killpg(group, Signal::SIGTERM);
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
            let _ = killpg(group, Signal::SIGKILL);
        }
        let _ = self.child.kill().await;
    }
}

/// The plugin's executable: `command` itself if it names a path, else the first match on `PATH`.
pub(super) fn find_executable(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        let path = PathBuf::from(command);
        return is_executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(command)).find(|candidate| is_executable(candidate))
}

/// `setpriv` from util-linux, if installed.
pub(super) fn setpriv() -> Option<PathBuf> {
    find_executable("setpriv").or_else(|| {
        let usr_bin = PathBuf::from("/usr/bin/setpriv");
        is_executable(&usr_bin).then_some(usr_bin)
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Logs each line of the plugin's output with its name, and keeps the last few.
async fn forward_lines(output: impl AsyncRead + Unpin, name: String, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut output = BufReader::new(output);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // At most 4 KiB per line: a plugin that writes without newlines must not grow our memory; the
        // rest of an over-long line is logged as the next line.
        match (&mut output).take(4096).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        tracing::info!("{name}: {line}");
        let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
    }
}
