//! The ports a manager added: each served in-process as a server entry of its own, with its traffic
//! counted ([`crate::Settings::owner`]) and stopped at once by `remove`.
//!
//! An added port is a config load: the config file of `-c` (read again, so edits to it apply to ports
//! added later) with the command's port, password, method and plugin laid over it as `-p`, `-k`, `-m`,
//! `--plugin` and `--plugin-opts` would be; `mode` and `fast_open` replace the config's. It is served on
//! every host of the config's `server` (each host one entry, as for a configured port), with the
//! config's timeouts, name servers, ACL and limits; the open-file limit is shared by every port added.
//!
//! `remove` ends every connection and association of the port at once (the owner user is marked
//! removed, as a reload removes a user) and closes its sockets before the reply; the counts go with it.
//! Ports live as long as the process: a restart starts with none, as libev's ss-manager does (a panel
//! adds its ports again when it sees the server back).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ss_config::{CliArgs, Mode};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::command::PortSpec;
use crate::users::User;
use crate::Settings;

/// What every added port shares: how the process was started and what it runs on.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The command line (its `-c` config is read for each port added).
    pub args: CliArgs,
    /// The process's open-file limit.
    pub descriptors: u64,
    /// The process's worker threads.
    pub workers: ss_net::Workers,
    /// The process's ACL, if any.
    pub acl: Option<Arc<ss_net::SharedAcl>>,
    /// The process's shutdown: every port stops with it.
    pub shutdown: CancellationToken,
    /// The process's Prometheus metrics, if on: each added port's entries report there (under the
    /// owner's name as `access_key`) until it is removed.
    pub metrics: Option<Arc<crate::metrics::ServerMetrics>>,
}

/// One port being served.
struct Port {
    spec: PortSpec,
    method: ss_crypto::Method,
    owner: Arc<User>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    drain: Duration,
}

/// The ports a manager serves, by number.
pub struct Ports {
    launcher: Launcher,
    ports: Mutex<BTreeMap<u16, Port>>,
}

/// Why a port could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The config with the command laid over it does not load (e.g. an unknown method, a bad key).
    #[error("{0}")]
    Config(String),
    /// Binding (or starting the plugin) failed.
    #[error("port is not available")]
    Bind(#[source] anyhow::Error),
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}

impl Ports {
    /// No ports yet.
    pub fn new(launcher: Launcher) -> Ports {
        Ports { launcher, ports: Mutex::default() }
    }

    /// Serves `spec`'s port, replacing the one of that number if there is one.
    pub async fn add(&self, spec: PortSpec) -> Result<(), AddError> {
        let mut ports = self.ports.lock().await;
        if let Some(old) = ports.remove(&spec.port) {
            old.stop().await;
        }
        let port = self.start(spec).await?;
        tracing::info!(port = port.spec.port, method = %port.method, "manager: port added");
        ports.insert(port.spec.port, port);
        Ok(())
    }

    /// Stops serving `port`; whether it was served.
    pub async fn remove(&self, port: u16) -> bool {
        let Some(old) = self.ports.lock().await.remove(&port) else {
            return false;
        };
        old.stop().await;
        tracing::info!(port, "manager: port removed");
        true
    }

    /// Every port's spec and method name, by port number.
    pub async fn list(&self) -> Vec<(PortSpec, String)> {
        let ports = self.ports.lock().await;
        ports.values().map(|port| (port.spec.clone(), port.method.to_string())).collect()
    }

    /// Every port's traffic: payload bytes from and to its clients since it was added.
    pub async fn traffic(&self) -> Vec<(u16, u64)> {
        let ports = self.ports.lock().await;
        let bytes = |port: &Port| {
            let counts = port.owner.usage().counts();
            counts.client_to_proxy.saturating_add(counts.proxy_to_client)
        };
        ports.iter().map(|(&number, port)| (number, bytes(port))).collect()
    }

    /// Waits for every port to finish at shutdown: their sockets close and their connections get the
    /// drain time, as the configured ports' do (`remove` ends them at once instead).
    pub async fn drain_all(&self) {
        let ports = std::mem::take(&mut *self.ports.lock().await);
        for port in ports.into_values() {
            port.stop.cancel();
            let bound = port.drain + Duration::from_secs(5);
            let _ = tokio::time::timeout(bound, port.task).await;
        }
    }

    async fn start(&self, spec: PortSpec) -> Result<Port, AddError> {
        let launcher = &self.launcher;
        let mut args = launcher.args.clone();
        args.server_port = Some(spec.port);
        args.password = Some(spec.password.clone());
        (args.key, args.password_file, args.password_env) = (None, None, None);
        args.method = spec.method.clone().or(args.method);
        args.plugin = spec.plugin.clone().or(args.plugin);
        args.plugin_opts = spec.plugin_opts.clone().or(args.plugin_opts);
        args.fast_open |= spec.fast_open.unwrap_or(false);
        let mut config = ss_config::load(&args).map_err(|error| AddError::Config(error.to_string()))?;
        if let Some(mode) = &spec.mode {
            config.mode =
                Mode::parse_field("mode", mode).map_err(|error| AddError::Config(error.to_string()))?;
        }
        if spec.fast_open == Some(false) {
            config.fast_open = false;
        }
        let entries: Vec<_> = config.servers.iter().filter(|entry| entry.port == spec.port).collect();
        if entries.iter().any(|entry| entry.users.is_some()) {
            let message =
                "the config's users would make the port multi-user; a managed port has one password";
            return Err(AddError::Config(message.into()));
        }
        let Some(first) = entries.first() else {
            return Err(AddError::Config("no server host to listen on (set \"server\")".into()));
        };
        let owner = Arc::new(User::new(format!("port {}", spec.port), first.key.clone()));
        let method = first.method;
        let stop = launcher.shutdown.child_token();
        let mut servers = Vec::new();
        let mut plugins = Vec::new();
        let mut drain = Duration::ZERO;
        for entry in &entries {
            let mut settings = Settings {
                acl: launcher.acl.clone(),
                ..Settings::from_config(&config, entry, launcher.descriptors)
            };
            settings.owner = Some(owner.clone());
            settings.metrics =
                launcher.metrics.as_ref().map(|metrics| metrics.entry(&entry.host, entry.port));
            drain = drain.max(settings.drain_timeout);
            match crate::listen::listen(&config, entry, &settings.socket).await {
                Ok((listeners, plugin)) => {
                    plugins.extend(plugin);
                    servers.push((settings, listeners));
                }
                Err(error) => {
                    // What was bound is dropped; started plugins are stopped.
                    for plugin in plugins {
                        plugin.stop().await;
                    }
                    return Err(AddError::Bind(error));
                }
            }
        }
        let (workers, until) = (launcher.workers.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            for (settings, listeners) in servers {
                running.spawn(crate::run_on(settings, listeners, workers.clone(), until.clone()));
            }
            while running.join_next().await.is_some() {}
            for plugin in plugins {
                plugin.stop().await;
            }
        });
        Ok(Port { spec, method, owner, stop, task, drain })
    }
}

impl Port {
    /// Ends the port's connections and closes its sockets; waits (bounded) for both.
    async fn stop(self) {
        self.owner.mark_removed();
        self.stop.cancel();
        let bound = self.drain + Duration::from_secs(5);
        if tokio::time::timeout(bound, self.task).await.is_err() {
            tracing::warn!(port = self.spec.port, "manager: the removed port took long to stop");
        }
    }
}
