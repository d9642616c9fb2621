//! SIP008 online config: fetch the server list over HTTPS, and again every `update_interval`, and put
//! it in the running [`ServerList`] beside the config file's own servers.
//!
//! ```text
//!  every update_interval ─▶ GET url (rustls; system roots + ca_file; ≤ 30 s, ≤ 1 MiB, ≤ 5 redirects)
//!     ─▶ SIP008 document (ss_config: checked like a servers array, plugins not allowed left out)
//!     ─▶ start the allowed plugins it names ─▶ ServerList = config's servers, then the document's
//! ```
//!
//! Any failure (TLS, HTTP status, size, time, JSON, a bad entry, nothing usable) keeps the list in use
//! and logs one line saying why; the first fetch is made at start, and until one succeeds only the
//! config's own servers are used. The URL is never logged whole (its query may carry a user's token).
//! Proxy environment variables are ignored: the fetch goes straight to the config server.
//!
//! A plugin whose server leaves the list is stopped after a grace period (the idle timeout), so the
//! connections already going through it can finish.

use std::collections::HashMap;
use std::time::Duration;

use ss_config::{Config, Mode, OnlineConfig, ServerEntry};
use ss_net::plugin::{Plugin, Timing};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{plugin_spec, PluginRoute, Server, ServerList};

/// Longest a fetch may take, redirects and body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest document accepted: a SIP008 list of a few hundred servers is well under it.
const MAX_DOCUMENT: usize = 1 << 20;

/// Why the online config could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The `ca_file` could not be read or holds no certificate.
    #[error("online_config.ca_file {path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The HTTPS client could not be built.
    #[error("online_config: {0}")]
    Client(String),
}

/// Fetches the list and keeps a [`ServerList`] up to date; see the module doc.
#[derive(Debug)]
pub struct OnlineSource {
    online: OnlineConfig,
    client: reqwest::Client,
    /// The config file's servers (with their plugins): always first in the list.
    fixed: Vec<Server>,
    mode: Mode,
    ipv6_first: bool,
    /// How long a plugin whose server left the list keeps running.
    plugin_grace: Duration,
}

/// A plugin started for a fetched server, known by what it dials and how.
type PluginKey = (String, u16, String, Option<String>);

impl OnlineSource {
    /// The source for `config`'s `online_config`, if it has one; `fixed` are the servers built from the
    /// config file, plugins started.
    pub fn from_config(config: &Config, fixed: Vec<Server>) -> Result<Option<OnlineSource>, SetupError> {
        let Some(online) = config.online_config.clone() else { return Ok(None) };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .no_proxy()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(path) = &online.ca_file {
            let ca_error = |message: String| SetupError::CaFile { path: path.display().to_string(), message };
            let pem = std::fs::read(path).map_err(|error| ca_error(error.to_string()))?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| ca_error(error.to_string()))?;
            if certificates.is_empty() {
                return Err(ca_error("no PEM certificate in it".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|error| SetupError::Client(error.to_string()))?;
        Ok(Some(OnlineSource {
            online,
            client,
            fixed,
            mode: config.mode,
            ipv6_first: config.ipv6_first,
            plugin_grace: config.timeout,
        }))
    }

    /// Fetches now and every `update_interval` until `shutdown`, replacing `list`'s contents with the
    /// config's servers followed by the document's. Returns the plugins still in use, for the caller to
    /// stop once open connections have drained.
    pub async fn run(self, list: ServerList, shutdown: CancellationToken) -> Vec<Plugin> {
        let mut plugins: HashMap<PluginKey, Plugin> = HashMap::new();
        loop {
            match self.fetch().await {
                Ok(body) => match self.online.parse_document(&body) {
                    Ok(document) => {
                        for refused in &document.refused {
                            warn!("online config: {refused}; server left out");
                        }
                        let count = document.servers.len();
                        let servers = self.servers(document.servers, &mut plugins, &shutdown).await;
                        list.replace(self.fixed.iter().cloned().chain(servers).collect());
                        info!(servers = count, "online config: server list updated");
                    }
                    Err(error) => warn!("online config: keeping the last list: {error}"),
                },
                Err(error) => warn!("online config: keeping the last list: {error}"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.online.update_interval) => {}
                () = shutdown.cancelled() => break,
            }
        }
        plugins.into_values().collect()
    }

    /// The document's body, or one line saying why there is none.
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let describe = |error: reqwest::Error| error_chain(&error.without_url());
        let mut response = self.client.get(&self.online.url).send().await.map_err(describe)?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP status {status}"));
        }
        if response.content_length().is_some_and(|length| length > MAX_DOCUMENT as u64) {
            return Err(format!("the document is larger than {MAX_DOCUMENT} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("the document is larger than {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// `entries` as servers, with their (allowed) plugins started or kept; plugins no longer used are
    /// stopped after the grace period. A server whose plugin fails to start is left out.
    async fn servers(
        &self,
        entries: Vec<ServerEntry>,
        plugins: &mut HashMap<PluginKey, Plugin>,
        shutdown: &CancellationToken,
    ) -> Vec<Server> {
        let mut unused: HashMap<PluginKey, Plugin> = std::mem::take(plugins);
        let mut servers = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut server = Server {
                ipv6_first: self.ipv6_first,
                ..Server::new(entry.host.clone(), entry.port, entry.method, entry.key.clone())
            };
            if let Some((spec, tcp, udp)) = plugin_spec(self.mode, &entry) {
                let key = (entry.host.clone(), entry.port, spec.command.clone(), spec.options.clone());
                let plugin = match unused.remove(&key) {
                    Some(plugin) => plugin,
                    None => match Plugin::start_local(spec, &entry.host, entry.port, Timing::default()).await
                    {
                        Ok(plugin) => plugin,
                        Err(error) => {
                            warn!(server = %entry.host, port = entry.port, %error, "online config: plugin did not start; server left out");
                            continue;
                        }
                    },
                };
                server.plugin = Some(PluginRoute { endpoint: plugin.endpoint(), tcp, udp });
                plugins.insert(key, plugin);
            }
            servers.push(server);
        }
        for (_, plugin) in unused {
            let (grace, shutdown) = (self.plugin_grace, shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(grace) => {}
                    () = shutdown.cancelled() => {}
                }
                plugin.stop().await;
            });
        }
        servers
    }
}

/// An error and its causes on one line (reqwest's own message alone says little: "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}
