//! SIP003 plugins: a child process between ss-local and ss-server that disguises the Shadowsocks stream
//! (simple-obfs, v2ray-plugin), started, watched, restarted and stopped by us.
//!
//! ```text
//!   app ─▶ ss-local ─▶ 127.0.0.1:P (plugin, client mode) ═══▶ host:port (plugin, server mode) ─▶ 127.0.0.1:Q ss-server
//!                      SS_LOCAL = 127.0.0.1:P                   SS_REMOTE = host:port (public)
//!                      SS_REMOTE = server host:port             SS_LOCAL = 127.0.0.1:Q
//! ```
//!
//! The plugin gets `SS_REMOTE_HOST`, `SS_REMOTE_PORT`, `SS_LOCAL_HOST`, `SS_LOCAL_PORT` and
//! `SS_PLUGIN_OPTIONS` ([`options`]) in its environment, and `plugin_args` on its command line.
//!
//! What we do beyond the peers:
//! - **Readiness.** [`Plugin::start_local`] picks a free loopback port, starts the plugin and waits
//!   (bounded) until it accepts there before returning; if the plugin exits because another process
//!   took the port meanwhile, it tries another port. [`Plugin::start_server`] first checks the public
//!   port is free, then waits until the plugin accepts on it.
//! - **Restart.** A plugin that exits is started again after 0.5 s, doubling up to 30 s (back to 0.5 s
//!   once a run lasted 30 s), with an error line giving its exit status and last output lines. Meanwhile
//!   [`Endpoint::current`] is `None`, so ss-local fails new connections at once instead of hanging.
//! - **Life tied to ours.** See `child.rs`: parent-death signal, so a SIGKILL of ours kills the plugin;
//!   [`Plugin::stop`] sends SIGTERM, then SIGKILL after a grace period.
//! - **Logs.** Every line the plugin writes goes into our log with the plugin's name.

pub mod options;

mod child;
mod supervise;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use child::Wiring;

/// What to run: the config's `plugin`, `plugin_opts` and `plugin_args`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The executable: a name looked up on `PATH`, or a path.
    pub command: String,
    /// `SS_PLUGIN_OPTIONS`, passed as written.
    pub options: Option<String>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Whether the plugin carries TCP, so that readiness is "accepts on its TCP port". A UDP-only plugin
    /// (SIP003u `udp_only`) counts as ready once it has stayed up for [`Timing::udp_settle`].
    pub tcp: bool,
    /// Whether the plugin carries UDP (SIP003u): on the server side its public UDP port must be free.
    pub udp: bool,
}

impl Spec {
    /// The name it is logged under: the executable's file name.
    pub fn name(&self) -> String {
        Path::new(&self.command)
            .file_name()
            .map_or_else(|| self.command.clone(), |name| name.to_string_lossy().into_owned())
    }

    /// The executable a start would run: `command` if it names a path, else the first match on `PATH`
    /// (`--check` reports what a start would meet, through this same lookup).
    pub fn executable(&self) -> Result<std::path::PathBuf, PluginError> {
        child::find_executable(&self.command)
            .ok_or_else(|| PluginError::NotFound { command: self.command.clone() })
    }
}

/// Time limits of the lifecycle; [`Timing::default`] is what the binaries use.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a starting plugin may take to accept connections.
    pub ready_timeout: Duration,
    /// How long a UDP-only plugin must stay up to count as started.
    pub udp_settle: Duration,
    /// Between SIGTERM and SIGKILL at [`Plugin::stop`].
    pub grace: Duration,
    /// The first restart delay; it doubles after each failed or short run.
    pub first_backoff: Duration,
    /// The longest restart delay.
    pub max_backoff: Duration,
    /// A run at least this long resets the delay to `first_backoff`.
    pub stable_run: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            ready_timeout: Duration::from_secs(10),
            udp_settle: Duration::from_secs(1),
            grace: Duration::from_secs(3),
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            stable_run: Duration::from_secs(30),
        }
    }
}

/// Why a plugin could not be started. Each message is one line naming the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The executable is not there.
    #[error("plugin {command:?}: not found (not an executable file, and not on PATH)")]
    NotFound {
        /// As configured.
        command: String,
    },
    /// The OS refused to start it.
    #[error("plugin {plugin}: {reason}")]
    Spawn {
        /// Its name.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
    /// It exited before it was ready.
    #[error("plugin {plugin} exited during start-up ({status}); its last output: {output}")]
    Exited {
        /// Its name.
        plugin: String,
        /// How it ended.
        status: String,
        /// Its last lines of output, joined with ` | `.
        output: String,
    },
    /// It kept running but never accepted connections.
    #[error(
        "plugin {plugin} did not accept connections on {addr} within {waited:?}; its last output: {output}"
    )]
    NotReady {
        /// Its name.
        plugin: String,
        /// Where it should have listened.
        addr: SocketAddr,
        /// How long we waited.
        waited: Duration,
        /// Its last lines of output.
        output: String,
    },
    /// The public address (ss-server side) is taken or cannot be bound.
    #[error("plugin {plugin}: cannot listen on {host}:{port}: {reason}")]
    Address {
        /// Its name.
        plugin: String,
        /// The configured host.
        host: String,
        /// The configured port.
        port: u16,
        /// What binding it said.
        reason: String,
    },
}

/// Where ss-local should connect to reach the server through a plugin; cheap to clone.
#[derive(Debug, Clone)]
pub struct Endpoint(watch::Receiver<Option<SocketAddr>>);

impl Endpoint {
    /// An endpoint that never changes: a plugin someone else runs at `addr`, or (`None`) one that is down.
    pub fn fixed(addr: Option<SocketAddr>) -> Endpoint {
        Endpoint(watch::channel(addr).1)
    }

    /// The plugin's loopback address, or `None` while it is down (between a crash and its restart).
    pub fn current(&self) -> Option<SocketAddr> {
        *self.0.borrow()
    }
}

/// A running, supervised plugin. Call [`Plugin::stop`] at shutdown; dropping it kills the plugin too.
#[derive(Debug)]
pub struct Plugin {
    name: String,
    endpoint: Endpoint,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Times the plugin was restarted after exiting (for the metrics).
    restarts: Arc<AtomicU64>,
}

impl Plugin {
    /// ss-local side: starts the plugin listening on a loopback port we choose (`::1` when the server's
    /// host is an IPv6 address, else `127.0.0.1`) and dialling `server_host:server_port`; returns once it
    /// accepts connections there.
    pub async fn start_local(
        spec: Spec,
        server_host: &str,
        server_port: u16,
        timing: Timing,
    ) -> Result<Plugin, PluginError> {
        let loopback = match server_host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let site = supervise::Site::Local { loopback };
        let wiring = Wiring {
            remote_host: server_host.to_string(),
            remote_port: server_port,
            local: SocketAddr::new(loopback, 0),
        };
        Plugin::start(spec, site, wiring, timing).await
    }

    /// ss-server side: starts the plugin listening on the public `host:port` and forwarding to `ours`,
    /// the loopback listener the server already has; returns once it accepts on the public port.
    pub async fn start_server(
        spec: Spec,
        host: &str,
        port: u16,
        ours: SocketAddr,
        timing: Timing,
    ) -> Result<Plugin, PluginError> {
        let wiring = Wiring { remote_host: host.to_string(), remote_port: port, local: ours };
        Plugin::start(spec, supervise::Site::Server, wiring, timing).await
    }

    async fn start(
        spec: Spec,
        site: supervise::Site,
        wiring: Wiring,
        timing: Timing,
    ) -> Result<Plugin, PluginError> {
        let name = spec.name();
        let executable = spec.executable()?;
        let setpriv = child::setpriv();
        if setpriv.is_none() {
            tracing::warn!(
                plugin = %name,
                "setpriv (util-linux) not found: the plugin is stopped when we stop, but would outlive a SIGKILL of ours"
            );
        }
        let mut launcher = supervise::Launcher { spec, executable, setpriv, site, wiring, timing };
        let (running, addr) = launcher.launch().await?;
        tracing::info!(plugin = %name, %addr, "plugin started");
        let (publish, endpoint) = watch::channel(Some(addr));
        let stop = CancellationToken::new();
        let restarts = Arc::new(AtomicU64::new(0));
        let task =
            tokio::spawn(supervise::supervise(launcher, running, publish, stop.clone(), restarts.clone()));
        Ok(Plugin { name, endpoint: Endpoint(endpoint), stop, task, restarts })
    }

    /// Where to connect to reach the plugin (ss-local side; on the server side the public address).
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    /// How many times it has been restarted so far; the count keeps going after this call.
    pub fn restarts(&self) -> Arc<AtomicU64> {
        self.restarts.clone()
    }

    /// Its name in the log.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the plugin: SIGTERM, SIGKILL after the grace period; returns when it is gone.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // A plugin dropped without `stop` (an error path) is killed with its supervisor (kill_on_drop).
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Spec {
        Spec {
            command: "sh".into(),
            options: Some("a=b\\;c".into()),
            args: vec!["-c".into(), script.into()],
            tcp: true,
            udp: false,
        }
    }

    #[tokio::test]
    async fn a_plugin_that_exits_at_start_is_one_error_with_its_status_and_output() {
        let script = r#"echo "$SS_REMOTE_HOST $SS_REMOTE_PORT $SS_LOCAL_HOST $SS_LOCAL_PORT $SS_PLUGIN_OPTIONS" >&2; exit 3"#;
        let start = Plugin::start_local(shell(script), "example.invalid", 8388, Timing::default());
        let error = tokio::time::timeout(Duration::from_secs(20), start).await.unwrap().unwrap_err();
        let text = error.to_string();
        let expected =
            "plugin sh exited during start-up (exit status: 3); its last output: example.invalid 8388 127.0.0.1 ";
        assert!(text.starts_with(expected), "{text}");
        assert!(text.ends_with(" a=b\\;c"), "{text}");
        assert!(!text.contains('\n'), "{text}");

        let start = Plugin::start_local(shell(script), "::1", 8388, Timing::default());
        let error = tokio::time::timeout(Duration::from_secs(20), start).await.unwrap().unwrap_err();
        assert!(error.to_string().contains("::1 8388 ::1 "), "IPv6 server, IPv6 loopback: {error}");
    }

    #[tokio::test]
    async fn an_exited_plugin_is_restarted_and_has_no_endpoint_meanwhile() {
        // UDP-only readiness (up for `udp_settle`), so `sh` can stand in for a plugin.
        let timing = Timing {
            udp_settle: Duration::from_millis(50),
            first_backoff: Duration::from_millis(300),
            ..Timing::default()
        };
        let spec = Spec {
            command: "sh".into(),
            options: None,
            args: vec!["-c".into(), "sleep 0.3; exit 7".into()],
            tcp: false,
            udp: true,
        };
        let plugin = Plugin::start_local(spec, "127.0.0.1", 1, timing).await.unwrap();
        let endpoint = plugin.endpoint();
        let first = endpoint.current().expect("published once ready");
        let mut seen = vec![Some(first)];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while seen.len() < 3 && std::time::Instant::now() < deadline {
            let now = endpoint.current();
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            seen,
            [Some(first), None, Some(first)],
            "up, down during the backoff, up on the same port"
        );
        let restarts = plugin.restarts();
        assert!(restarts.load(std::sync::atomic::Ordering::Relaxed) >= 1, "the restart is counted");
        plugin.stop().await;
        assert_eq!(endpoint.current(), None);
    }

    #[tokio::test]
    async fn a_missing_plugin_is_named() {
        let spec = Spec {
            command: "no-such-plugin-x".into(),
            options: None,
            args: Vec::new(),
            tcp: true,
            udp: false,
        };
        let error = Plugin::start_local(spec, "127.0.0.1", 1, Timing::default()).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "plugin \"no-such-plugin-x\": not found (not an executable file, and not on PATH)"
        );
        assert!(child::find_executable("/nonexistent/plugin").is_none());
        assert!(child::find_executable("sh").is_some() && child::find_executable("/bin/sh").is_some());
    }

    #[tokio::test]
    async fn a_plugin_that_never_listens_is_stopped_after_the_ready_timeout() {
        let timing = Timing { ready_timeout: Duration::from_millis(300), ..Timing::default() };
        let start = Plugin::start_local(shell("echo waiting >&2; exec sleep 30"), "127.0.0.1", 1, timing);
        let begun = std::time::Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(20), start).await.unwrap().unwrap_err();
        assert!(matches!(error, PluginError::NotReady { .. }), "{error}");
        assert!(error.to_string().ends_with("its last output: waiting"), "{error}");
        // SIGTERM ends `sleep` at once: no wait for the grace period.
        assert!(begun.elapsed() < Duration::from_secs(3), "{:?}", begun.elapsed());
    }
}
