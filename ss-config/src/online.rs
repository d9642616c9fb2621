//! SIP008 online config: ss-local's `online_config` key, and the server list document it fetches.
//!
//! ```text
//! "online_config": {
//!     "url": "https://example.com/sip008.json",   (or "config_url", shadowsocks-rust's name)
//!     "update_interval": 3600,                    (seconds; default 3600)
//!     "ca_file": "/etc/ss/private-ca.pem",        (optional: trusted besides the system's roots)
//!     "allowed_plugins": ["v2ray-plugin"]         (default: none)
//! }
//! ```
//!
//! The document (SIP008) is `{"version": 1, "servers": [{"id", "remarks", "server", "server_port",
//! "password", "method", "plugin", "plugin_opts"}, ...]}`, other fields ignored. Its servers are checked
//! exactly as a config file's `servers` array is ([`Config::from_raw`](crate::Config::from_raw)); one bad
//! entry refuses the whole document, so a half-broken list never replaces a good one.
//!
//! A document from the network must not start programs on this machine: a server whose `plugin` is not
//! in `allowed_plugins` (matched exactly, command as written) is left out, with the reason in
//! [`OnlineServers::refused`]. Only SIP008's keys are read from an entry: `plugin_args` (a command
//! line), `users` / `users_file` (a local file) and the rest of a config entry's keys are ignored.
//! Only `https://` URLs are accepted.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::raw::{NumberOrString, RawConfig, RawServer};
use crate::{servers, CliArgs, ConfigError, ServerEntry};

/// How often the list is fetched when `update_interval` is not given.
const DEFAULT_UPDATE_INTERVAL: u64 = 3600;

/// `online_config` as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RawOnlineConfig {
    /// `url` (or shadowsocks-rust's `config_url`): where the SIP008 document is.
    #[serde(alias = "config_url")]
    pub url: Option<String>,
    /// `update_interval`: seconds between fetches.
    pub update_interval: Option<NumberOrString>,
    /// `ca_file`: PEM certificates trusted besides the system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// `allowed_plugins`: plugin commands a fetched server may use.
    pub allowed_plugins: Option<Vec<String>>,
}

/// `online_config`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineConfig {
    /// The document's `https://` URL.
    pub url: String,
    /// Time between fetches.
    pub update_interval: Duration,
    /// Extra trusted certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Plugin commands a fetched server may use; empty: none.
    pub allowed_plugins: Vec<String>,
}

/// The servers of one fetched document.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineServers {
    /// The servers to use, in the document's order.
    pub servers: Vec<ServerEntry>,
    /// One line per server left out, saying why (a plugin not allowed).
    pub refused: Vec<String>,
}

/// Why a fetched document was not used; one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON, or not a SIP008 object.
    #[error("not a SIP008 document: {0}")]
    Json(String),
    /// A server entry is wrong (the message names it: `servers[2].method: ...`).
    #[error("{0}")]
    Server(String),
    /// No server left to use.
    #[error("no usable server in the document{0}")]
    Empty(String),
}

impl OnlineConfig {
    /// Checks `online_config`; `None` when the key is absent.
    pub(crate) fn from_raw(raw: Option<&RawOnlineConfig>) -> Result<Option<OnlineConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let url = raw.url.as_deref().map(str::trim).unwrap_or_default();
        if url.is_empty() {
            return Err(ConfigError::field_error("online_config.url", "missing"));
        }
        let is_https = url.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        if !is_https || url.len() == 8 || url.contains(char::is_whitespace) {
            let message =
                format!("{url:?} is not an https:// URL (the list holds passwords: plain HTTP is refused)");
            return Err(ConfigError::field_error("online_config.url", message));
        }
        let update_interval = match &raw.update_interval {
            Some(secs) => secs.seconds("online_config.update_interval")?,
            None => DEFAULT_UPDATE_INTERVAL,
        };
        Ok(Some(OnlineConfig {
            url: url.to_string(),
            update_interval: Duration::from_secs(update_interval),
            ca_file: raw.ca_file.clone(),
            allowed_plugins: raw.allowed_plugins.clone().unwrap_or_default(),
        }))
    }

    /// The servers of a fetched SIP008 document, with the plugins not allowed left out.
    pub fn parse_document(&self, body: &[u8]) -> Result<OnlineServers, DocumentError> {
        /// SIP008's keys only: nothing else a config entry may hold (`users_file` names a local file,
        /// `plugin_args` a command line) is read from the network, nor can its shape refuse a document.
        #[derive(Deserialize)]
        struct Document {
            servers: Vec<Sip008Server>,
        }
        #[derive(Deserialize)]
        struct Sip008Server {
            server: Option<String>,
            server_port: Option<NumberOrString>,
            // Refused without quoting it, as in a config file.
            #[serde(default, deserialize_with = "crate::raw::secret")]
            password: Option<String>,
            method: Option<String>,
            plugin: Option<String>,
            plugin_opts: Option<String>,
            remarks: Option<String>,
        }
        let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
        let document: Document = serde_json::from_slice(body)
            .map_err(|error| DocumentError::Json(crate::one_line(error.to_string())))?;
        let mut kept = Vec::new();
        let mut refused = Vec::new();
        for (index, written) in document.servers.into_iter().enumerate() {
            let server = RawServer {
                server: written.server,
                server_port: written.server_port,
                password: written.password,
                method: written.method,
                plugin: written.plugin,
                plugin_opts: written.plugin_opts,
                remarks: written.remarks,
                ..RawServer::default()
            };
            // Compared as written: only a blank `plugin` means none, as in a config file.
            let plugin = server.plugin.as_deref().filter(|command| !command.trim().is_empty());
            if let Some(command) = plugin {
                if !self.allowed_plugins.iter().any(|allowed| allowed == command) {
                    let name = crate::one_line(command.to_string());
                    refused.push(format!(
                        "servers[{index}]: plugin {name:?} is not in online_config.allowed_plugins"
                    ));
                    continue;
                }
            }
            kept.push(server);
        }
        if kept.is_empty() {
            let why = if refused.is_empty() { String::new() } else { format!(" ({})", refused.join("; ")) };
            return Err(DocumentError::Empty(why));
        }
        // The servers are read exactly as a config file's `servers` array, with nothing on top.
        let raw = RawConfig { servers: Some(kept), ..RawConfig::default() };
        let servers = servers::resolve(&raw, &CliArgs::default(), &[])
            .map_err(|error| DocumentError::Server(error.to_string()))?;
        Ok(OnlineServers { servers, refused })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ss_crypto::Method;

    use super::*;
    use crate::Config;

    const PSK: &str = "AAECAwQFBgcICQoLDA0ODw==";

    fn online(allowed: &[&str]) -> OnlineConfig {
        OnlineConfig {
            url: "https://example.com/list.json".into(),
            update_interval: Duration::from_secs(60),
            ca_file: None,
            allowed_plugins: allowed.iter().map(|name| name.to_string()).collect(),
        }
    }

    fn server(host: &str, plugin: &str) -> String {
        format!(
            r#"{{"id":"27b8a625-4f4b-4428-9f0f-8a2317db7c79","remarks":"{host}","server":"{host}","server_port":8388,
                "password":"{PSK}","method":"2022-blake3-aes-128-gcm","plugin":"{plugin}","plugin_opts":"obfs=tls",
                "plugin_args":["--evil"]}}"#
        )
    }

    #[test]
    fn a_sip008_document_gives_its_servers_with_their_names() {
        let body =
            format!(r#"{{"version":1,"servers":[{},{}],"bytes_used":1}}"#, server("a", ""), server("b", ""));
        let list = online(&[]).parse_document(body.as_bytes()).unwrap();
        let names: Vec<_> =
            list.servers.iter().map(|s| (s.host.as_str(), s.tag.as_deref(), s.method)).collect();
        assert_eq!(
            names,
            [("a", Some("a"), Method::Blake3Aes128Gcm), ("b", Some("b"), Method::Blake3Aes128Gcm)]
        );
        assert!(list.servers.iter().all(|server| server.plugin.is_none()) && list.refused.is_empty());
    }

    #[test]
    fn plugins_not_allowed_are_left_out_and_arguments_never_taken() {
        let body = format!(
            r#"{{"version":1,"servers":[{},{}]}}"#,
            server("a", "/tmp/evil"),
            server("b", "obfs-local")
        );
        let list = online(&["obfs-local"]).parse_document(body.as_bytes()).unwrap();
        assert_eq!(list.servers.len(), 1);
        let plugin = list.servers[0].plugin.clone().unwrap();
        assert_eq!((plugin.command.as_str(), plugin.options.as_deref()), ("obfs-local", Some("obfs=tls")));
        assert!(plugin.args.is_empty(), "plugin_args from the network are dropped");
        assert_eq!(list.refused.len(), 1);
        assert!(list.refused[0].contains("\"/tmp/evil\"") && list.refused[0].contains("allowed_plugins"));

        // By default nothing is allowed; a list of only refused servers is no list.
        let error = online(&[]).parse_document(body.as_bytes()).unwrap_err();
        assert!(matches!(error, DocumentError::Empty(_)), "{error}");
        assert!(error.to_string().contains("obfs-local"), "{error}");
    }

    #[test]
    fn keys_beyond_sip008_are_ignored() {
        let body = r#"{"servers":[{"server":"a","server_port":1,"password":"AAECAwQFBgcICQoLDA0ODw==",
            "method":"2022-blake3-aes-128-gcm","users_file":"/etc/shadow","users":"not a list",
            "key":"not even base64","timeout":"x","plugin_mode":"bogus"}]}"#;
        let list = online(&[]).parse_document(body.as_bytes()).unwrap();
        assert_eq!(list.servers.len(), 1);
        assert!(list.servers[0].users.is_none());
    }

    #[test]
    fn broken_documents_are_refused_whole() {
        for (body, expected) in [
            ("<html>", "not a SIP008 document"),
            (r#"{"version":1}"#, "not a SIP008 document"),
            (r#"{"version":1,"servers":[]}"#, "no usable server"),
            (
                r#"{"servers":[{"server":"a","server_port":1,"password":"p","method":"rc5"}]}"#,
                "servers[0].method",
            ),
            (r#"{"servers":[{"server":"a","server_port":1,"method":"aes-128-gcm"}]}"#, "servers[0].password"),
            (
                r#"{"servers":[{"server":"a","server_port":1,"password":31337,"method":"aes-128-gcm"}]}"#,
                "must be a string",
            ),
        ] {
            let error = online(&[]).parse_document(body.as_bytes()).unwrap_err().to_string();
            assert!(error.contains(expected), "{body}: {error}");
            assert!(!error.contains("31337"), "the password is not quoted: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn the_config_key_is_checked_and_allows_an_empty_local_list() {
        let config = |json: &str| {
            let raw = RawConfig::from_json(json, Path::new("c.json")).unwrap();
            Config::from_raw(raw, &CliArgs::default())
        };
        let checked = config(
            r#"{"online_config":{"config_url":"https://127.0.0.1:8443/a.json","update_interval":"30",
                "ca_file":"/ca.pem","allowed_plugins":["obfs-local"]}}"#,
        )
        .unwrap();
        assert!(checked.servers.is_empty());
        let online = checked.online_config.unwrap();
        assert_eq!(online.url, "https://127.0.0.1:8443/a.json");
        assert_eq!(online.update_interval, Duration::from_secs(30));
        assert_eq!(online.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(online.allowed_plugins, ["obfs-local"]);
        let default = config(r#"{"online_config":{"url":"https://h/x"}}"#).unwrap().online_config.unwrap();
        assert_eq!((default.update_interval, default.allowed_plugins.len()), (Duration::from_secs(3600), 0));

        for (json, field) in [
            (r#"{"online_config":{"url":"http://h/x"}}"#, "online_config.url"),
            (r#"{"online_config":{}}"#, "online_config.url"),
            (
                r#"{"online_config":{"url":"https://h/x","update_interval":0}}"#,
                "online_config.update_interval",
            ),
            ("{}", "server"),
        ] {
            assert_eq!(config(json).unwrap_err().field(), Some(field), "{json}");
        }
    }
}
