//! Starting a plugin until it is ready, and keeping it running: the restart loop with its backoff.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::child::{Running, Wiring};
use super::{PluginError, Spec, Timing};

/// Which side the plugin is on, which decides the port we choose and where readiness is probed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Site {
    /// ss-local: the plugin listens on a loopback port we choose anew when it is taken.
    Local {
        /// `127.0.0.1` or `::1`.
        loopback: IpAddr,
    },
    /// ss-server: the plugin listens on the configured public address.
    Server,
}

/// Everything needed to start the plugin again.
#[derive(Debug)]
pub(super) struct Launcher {
    pub spec: Spec,
    pub executable: PathBuf,
    pub setpriv: Option<PathBuf>,
    pub site: Site,
    /// For the local side, `local` holds the port of the last successful start (0 before the first).
    pub wiring: Wiring,
    pub timing: Timing,
}

/// How many loopback ports ss-local tries when the chosen one turns out taken.
const PORT_ATTEMPTS: usize = 3;

/// How long one readiness probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Launcher {
    /// Starts the plugin and waits until it is ready; the address clients use to reach it (the
    /// loopback one on the local side, the public one on the server side).
    pub async fn launch(&mut self) -> Result<(Running, SocketAddr), PluginError> {
        match self.site {
            Site::Local { loopback } => self.launch_local(loopback).await,
            Site::Server => self.launch_server().await,
        }
    }

    async fn launch_local(&mut self, loopback: IpAddr) -> Result<(Running, SocketAddr), PluginError> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            // Keep the port across restarts while it is free, so the log keeps naming one address.
            let port = match self.wiring.local.port() {
                0 => free_port(loopback).map_err(|error| self.spawn_error(error))?,
                port if port_is_free(SocketAddr::new(loopback, port)) => port,
                _ => free_port(loopback).map_err(|error| self.spawn_error(error))?,
            };
            let addr = SocketAddr::new(loopback, port);
            self.wiring.local = addr;
            match self.start_and_wait(addr).await {
                Ok(running) => return Ok((running, addr)),
                // Exited, and someone else holds the port now: the race every port choice has; next port.
                Err(error @ PluginError::Exited { .. }) if !port_is_free(addr) => {
                    tracing::warn!(plugin = %self.spec.name(), %addr, "loopback port taken meanwhile; trying another");
                    self.wiring.local = SocketAddr::new(loopback, 0);
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| self.spawn_error(std::io::Error::other("no free port"))))
    }

    async fn launch_server(&mut self) -> Result<(Running, SocketAddr), PluginError> {
        let (host, port) = (self.wiring.remote_host.clone(), self.wiring.remote_port);
        let address_error = |reason: String| PluginError::Address {
            plugin: self.spec.name(),
            host: host.clone(),
            port,
            reason,
        };
        let public = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|error| address_error(error.to_string()))?
            .next()
            .ok_or_else(|| address_error("the name has no address".to_string()))?;
        // Taken by another process: the plugin would fail, or worse, our readiness probe would reach
        // the other process. Say so instead. Only what the plugin carries: we may hold the other.
        if self.spec.tcp {
            std::net::TcpListener::bind(public).map_err(|error| address_error(error.to_string()))?;
        }
        if self.spec.udp {
            std::net::UdpSocket::bind(public).map_err(|error| address_error(format!("UDP: {error}")))?;
        }
        let running = self.start_and_wait(probe_address(public)).await?;
        Ok((running, public))
    }

    /// Starts the plugin, then polls until it accepts on `probe` (its readiness cannot be awaited any
    /// other way), exits, or runs out of time.
    async fn start_and_wait(&self, probe: SocketAddr) -> Result<Running, PluginError> {
        let mut running =
            Running::start(&self.spec, &self.executable, self.setpriv.as_deref(), &self.wiring)?;
        let started = Instant::now();
        loop {
            if let Some(status) = running.try_exited() {
                running.output_done().await;
                return Err(PluginError::Exited {
                    plugin: self.spec.name(),
                    status: status.to_string(),
                    output: running.tail(),
                });
            }
            let ready = match self.spec.tcp {
                // Bounded: a listener whose backlog is full drops the SYN instead of refusing it.
                true => {
                    matches!(tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(probe)).await, Ok(Ok(_)))
                }
                false => started.elapsed() >= self.timing.udp_settle,
            };
            if ready {
                return Ok(running);
            }
            if started.elapsed() >= self.timing.ready_timeout {
                let output = running.tail();
                running.stop(self.timing.grace).await;
                return Err(PluginError::NotReady {
                    plugin: self.spec.name(),
                    addr: probe,
                    waited: self.timing.ready_timeout,
                    output,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn spawn_error(&self, error: std::io::Error) -> PluginError {
        PluginError::Spawn { plugin: self.spec.name(), reason: format!("choosing a loopback port: {error}") }
    }
}

/// Keeps the plugin running until `stop`: restarts it with [`Backoff`] when it exits, publishing its
/// address while it runs and `None` while it is down. At `stop` it is terminated.
pub(super) async fn supervise(
    mut launcher: Launcher,
    mut running: Running,
    publish: watch::Sender<Option<SocketAddr>>,
    stop: CancellationToken,
    restarts: Arc<AtomicU64>,
) {
    let name = launcher.spec.name();
    let timing = launcher.timing;
    let mut backoff = Backoff::new(timing.first_backoff, timing.max_backoff);
    let mut started = Instant::now();
    loop {
        let status = tokio::select! {
            status = running.exited() => status,
            () = stop.cancelled() => {
                publish.send_replace(None);
                running.stop(timing.grace).await;
                return;
            }
        };
        publish.send_replace(None);
        running.output_done().await;
        if started.elapsed() >= timing.stable_run {
            backoff.reset();
        }
        let mut delay = backoff.next_delay();
        let status = status.map_or_else(|error| format!("wait failed: {error}"), |status| status.to_string());
        tracing::error!(plugin = %name, "plugin exited ({status}); its last output: {}; restarting in {delay:?}", running.tail());
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
            match launcher.launch().await {
                Ok((restarted, addr)) => {
                    tracing::info!(plugin = %name, %addr, "plugin restarted");
                    restarts.fetch_add(1, Ordering::Relaxed);
                    running = restarted;
                    started = Instant::now();
                    publish.send_replace(Some(addr));
                    break;
                }
                Err(error) => {
                    delay = backoff.next_delay();
                    tracing::error!("{error}; trying again in {delay:?}");
                }
            }
        }
    }
}

/// Restart delays: `first`, doubling each time, at most `max`.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, first, max }
    }

    /// The delay to wait now; the following one is twice as long, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the first delay (after a run that lasted).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A loopback port that is free now (bound to port 0 and released).
fn free_port(loopback: IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(SocketAddr::new(loopback, 0))?.local_addr()?.port())
}

fn port_is_free(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

/// Where to probe a listener bound to `public`: the loopback address of its family when it is the
/// wildcard address, the address itself otherwise.
fn probe_address(public: SocketAddr) -> SocketAddr {
    match public.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), public.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), public.port()),
        _ => public,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let delays: Vec<u64> = (0..9).map(|_| backoff.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_restart_whose_port_was_taken_meanwhile_moves_to_another_port() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap();
        let spec = Spec {
            command: "sh".into(),
            options: None,
            args: vec!["-c".into(), "echo \"port $SS_LOCAL_PORT\" >&2; exec sleep 30".into()],
            tcp: false,
            udp: true,
        };
        let timing = Timing { udp_settle: Duration::from_millis(50), ..Timing::default() };
        let mut launcher = Launcher {
            spec,
            executable: PathBuf::from("/bin/sh"),
            setpriv: None,
            site: Site::Local { loopback: taken_addr.ip() },
            // As after a first run on that port.
            wiring: Wiring { remote_host: "127.0.0.1".into(), remote_port: 1, local: taken_addr },
            timing,
        };
        let (running, addr) = launcher.launch().await.unwrap();
        assert_ne!(addr, taken_addr);
        assert_eq!(addr.ip(), taken_addr.ip());
        running.stop(Duration::from_secs(1)).await;
    }

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        let probe = |text: &str| probe_address(text.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:8388"), "127.0.0.1:8388");
        assert_eq!(probe("[::]:8388"), "[::1]:8388");
        assert_eq!(probe("127.0.0.2:1"), "127.0.0.2:1");
    }
}
