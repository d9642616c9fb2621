//! The config file as written: shadowsocks-libev's JSON keys, shadowsocks-rust's `servers` / `locals`
//! arrays and our own extras, every field optional and unknown keys ignored.
//!
//! Nothing is checked here beyond JSON types, and numbers may be JSON numbers or strings (`8388` or
//! `"8388"`), as libev accepts both. [`Config::from_raw`](crate::Config::from_raw) checks everything once.
//!
//! ```text
//! { "server": "host" | ["host", ...],  "server_port": 8388,  "password": "...",  "method": "...",
//!   "servers": [ { "server"|"address": "host", "server_port"|"port": 8388, "password": "...", ... } ],
//!   "locals":  [ { "local_address": "127.0.0.1", "local_port": 1080, "protocol": "socks" },
//!                { "local_port": 5353, "protocol": "tunnel", "forward_address": "8.8.8.8", "forward_port": 53 },
//!                { "local_port": 12345, "protocol": "redir", "tcp_redir": "tproxy" } ], ... }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::ConfigError;

/// Longest accepted timeout in seconds (a year).
pub(crate) const MAX_SECONDS: u64 = 365 * 24 * 3600;

/// The config file, key for key. Every field is optional; `null` counts as absent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RawConfig {
    /// `server`: one host or an array of hosts (ss-server listens on each, ss-local tries each in order).
    #[serde(default, deserialize_with = "one_or_many")]
    pub server: Option<Vec<String>>,
    /// `server_port`.
    pub server_port: Option<NumberOrString>,
    /// `local_address`: where ss-local listens.
    pub local_address: Option<String>,
    /// `local_port`.
    pub local_port: Option<NumberOrString>,
    /// `password`: a password for classic methods, a base64 pre-shared key for 2022 methods.
    #[serde(default, deserialize_with = "secret")]
    pub password: Option<String>,
    /// `key`: the key in base64 (libev's `--key`); wins over `password`.
    #[serde(default, deserialize_with = "secret")]
    pub key: Option<String>,
    /// `method`.
    pub method: Option<String>,
    /// `timeout`: idle timeout in seconds.
    pub timeout: Option<NumberOrString>,
    /// `udp_timeout`: UDP association idle timeout in seconds.
    pub udp_timeout: Option<NumberOrString>,
    /// `mode`: `tcp_only`, `tcp_and_udp` or `udp_only`.
    pub mode: Option<String>,
    /// `plugin`: SIP003 plugin command.
    pub plugin: Option<String>,
    /// `plugin_opts`: the plugin's `SS_PLUGIN_OPTIONS`.
    pub plugin_opts: Option<String>,
    /// `plugin_args`: extra arguments for the plugin's command line (shadowsocks-rust).
    pub plugin_args: Option<Vec<String>>,
    /// `plugin_mode`: `tcp_only` (default), `udp_only` or `tcp_and_udp` (SIP003u).
    pub plugin_mode: Option<String>,
    /// `fast_open`: TCP Fast Open.
    pub fast_open: Option<bool>,
    /// `reuse_port`: `SO_REUSEPORT` on listeners.
    pub reuse_port: Option<bool>,
    /// `no_delay`: `TCP_NODELAY`.
    pub no_delay: Option<bool>,
    /// `mptcp` (shadowsocks-rust): Multipath TCP sockets.
    pub mptcp: Option<bool>,
    /// `keep_alive` (shadowsocks-rust): seconds of silence before TCP keep-alive probes; `0` turns them off.
    pub keep_alive: Option<NumberOrString>,
    /// `ipv6_first`: prefer IPv6 addresses when resolving.
    pub ipv6_first: Option<bool>,
    /// `nameserver`: DNS server(s) to resolve with.
    pub nameserver: Option<String>,
    /// `nofile`: file descriptor limit to set at start-up.
    pub nofile: Option<NumberOrString>,
    /// `acl`: access control list file.
    pub acl: Option<PathBuf>,
    /// shadowsocks-rust's `servers` array.
    pub servers: Option<Vec<RawServer>>,
    /// shadowsocks-rust's `locals` array: one listener each.
    pub locals: Option<Vec<RawLocal>>,
    /// `protocol` of the top-level listener: `socks` (default), `http`, `tunnel` or `redir`.
    pub protocol: Option<String>,
    /// `tcp_redir` of a top-level `redir` listener: `redirect` (default) or `tproxy`.
    pub tcp_redir: Option<String>,
    /// `udp_redir` of a top-level `redir` listener: `tproxy` (the only way).
    pub udp_redir: Option<String>,
    /// `tunnel_address` (libev's ss-tunnel): `host:port`, or `[bind:]port:host:port`, or an array of them.
    #[serde(default, deserialize_with = "one_or_many")]
    pub tunnel_address: Option<Vec<String>>,
    /// `handshake_timeout` (ours): seconds allowed for a client to send its first request.
    pub handshake_timeout: Option<NumberOrString>,
    /// `connect_timeout` (ours): seconds allowed to connect to a target or server.
    pub connect_timeout: Option<NumberOrString>,
    /// `max_connections` (ours): concurrent connection cap.
    pub max_connections: Option<NumberOrString>,
    /// `threads` (ours): threads serving TCP connections.
    pub threads: Option<NumberOrString>,
    /// `allow_private_targets` (ours): let ss-server connect to loopback and private addresses.
    pub allow_private_targets: Option<bool>,
    /// `log_level` (ours): `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: Option<String>,
    /// `replay_snapshot` (ours): where ss-server saves its classic replay filter, or `off`.
    pub replay_snapshot: Option<String>,
    /// `online_config` (SIP008, ss-local): a server list fetched over HTTPS and refreshed.
    pub online_config: Option<crate::online::RawOnlineConfig>,
    /// `state_dir` (ours): where ss-server keeps its per-user usage store.
    pub state_dir: Option<PathBuf>,
    /// shadowsocks-rust's `socks5_auth_config_path`: users for ss-local's port (SOCKS5 and HTTP).
    pub socks5_auth_config_path: Option<PathBuf>,
    /// `users`: the users of a multi-user server ([`crate::users`]).
    pub users: Option<Vec<crate::users::RawUser>>,
    /// `users_file` (ours): a JSON list of users, re-read on SIGHUP.
    pub users_file: Option<PathBuf>,
    /// `balancer`: how ss-local picks among several servers (`balance.rs`).
    pub balancer: Option<crate::balance::RawBalancer>,
    /// `metrics` (ours): where the Prometheus endpoint listens, `ADDR:PORT` or a unix socket path.
    pub metrics: Option<String>,
    /// `manager_address` (libev's ss-manager key): where ss-server answers the ss-manager UDP
    /// protocol, `host:port` or a unix datagram socket path.
    pub manager_address: Option<String>,
    /// `api` (ours): where ss-server serves the Shadowsocks Server Management API (HTTP), `host:port`
    /// or a unix socket path.
    pub api: Option<String>,
    /// `api_token` (ours): the bearer token the management API requires (always on TCP).
    #[serde(default, deserialize_with = "secret")]
    pub api_token: Option<String>,
    /// Keys of the file no field takes (`servers.0.foo` for nested ones), in file order: warned about,
    /// since a typo or a key we do not implement would otherwise be silently without effect.
    #[serde(skip)]
    pub ignored_keys: Vec<String>,
}

/// One entry of shadowsocks-rust's `servers` array. Missing fields fall back to the top-level ones.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RawServer {
    /// `server` (or `address`).
    #[serde(alias = "address")]
    pub server: Option<String>,
    /// `server_port` (or `port`).
    #[serde(alias = "port")]
    pub server_port: Option<NumberOrString>,
    /// `password`.
    #[serde(default, deserialize_with = "secret")]
    pub password: Option<String>,
    /// `key` (base64).
    #[serde(default, deserialize_with = "secret")]
    pub key: Option<String>,
    /// `method`.
    pub method: Option<String>,
    /// `timeout` in seconds; all entries must agree, as the timeout is global.
    pub timeout: Option<NumberOrString>,
    /// `plugin`: this server's own plugin (else the top level's; `""` for none).
    pub plugin: Option<String>,
    /// `plugin_opts` of this entry's own plugin.
    pub plugin_opts: Option<String>,
    /// `plugin_args` of this entry's own plugin.
    pub plugin_args: Option<Vec<String>>,
    /// `plugin_mode` of this entry's own plugin.
    pub plugin_mode: Option<String>,
    /// `users` of this entry (else the top level's).
    pub users: Option<Vec<crate::users::RawUser>>,
    /// `users_file` of this entry (else the top level's).
    pub users_file: Option<PathBuf>,
    /// `weight`: this server's share under round-robin and random, TCP and UDP.
    pub weight: Option<NumberOrString>,
    /// `tcp_weight` (shadowsocks-rust): its share of TCP connections.
    pub tcp_weight: Option<NumberOrString>,
    /// `udp_weight` (shadowsocks-rust): its share of UDP associations.
    pub udp_weight: Option<NumberOrString>,
    /// `remarks` (SIP008, shadowsocks-rust) or `tag`: the server's display name, the `#tag` of its link.
    #[serde(alias = "tag")]
    pub remarks: Option<String>,
}

/// One entry of shadowsocks-rust's `locals` array.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RawLocal {
    /// `local_address`.
    pub local_address: Option<String>,
    /// `local_port`.
    pub local_port: Option<NumberOrString>,
    /// `protocol`: `socks` (the default), `http`, `tunnel` or `redir`.
    pub protocol: Option<String>,
    /// `forward_address`: a tunnel's target host.
    pub forward_address: Option<String>,
    /// `forward_port`: a tunnel's target port.
    pub forward_port: Option<NumberOrString>,
    /// `tcp_redir`: `redirect` (default) or `tproxy`, for a `redir` listener.
    pub tcp_redir: Option<String>,
    /// `udp_redir`: `tproxy`, for a `redir` listener.
    pub udp_redir: Option<String>,
    /// `mode`: this listener's own `tcp_only`, `tcp_and_udp` or `udp_only`.
    pub mode: Option<String>,
}

/// A number written as a JSON number or as a string (`8388` or `"8388"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberOrString {
    /// A JSON number, as written.
    Number(serde_json::Number),
    /// A JSON string, not yet parsed.
    Text(String),
}

impl RawConfig {
    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        RawConfig::from_json(&text, path)
    }

    /// Whether the file holds a password or key anywhere (top level or a `servers` entry).
    pub fn holds_a_secret(&self) -> bool {
        self.password.is_some()
            || self.key.is_some()
            || self.api_token.is_some()
            || self.servers.iter().flatten().any(|server| server.password.is_some() || server.key.is_some())
    }

    /// Parses config text; `origin` names the file in errors (`config.json:3:17: expected ...`).
    pub fn from_json(text: &str, origin: &Path) -> Result<RawConfig, ConfigError> {
        // Editors on Windows like to start files with a byte order mark, which JSON forbids.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut ignored_keys = Vec::new();
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let parsed = serde_ignored::deserialize(&mut deserializer, |path| ignored_keys.push(key_name(&path)))
            .and_then(|raw: RawConfig| deserializer.end().map(|()| raw));
        let raw = parsed.map_err(|error| ConfigError::json(&error, origin))?;
        Ok(RawConfig { ignored_keys, ..raw })
    }
}

/// The dotted name of an ignored key; serde_ignored writes `?` for each `Option` on the way
/// (`servers.?.0.x`), which is not part of the key.
fn key_name(path: &serde_ignored::Path) -> String {
    let text = path.to_string();
    text.split('.').filter(|segment| *segment != "?").collect::<Vec<_>>().join(".")
}

/// A password or key: a string or `null`. Anything else is refused without quoting the value, which
/// serde would otherwise print in the error (and so in logs) when someone writes a numeric password
/// unquoted.
pub(crate) fn secret<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct Secret;
    impl<'de> serde::de::Visitor<'de> for Secret {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(text.to_owned()))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
            inner.deserialize_any(Secret)
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(E::custom(NOT_A_STRING))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(E::custom(NOT_A_STRING))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom(NOT_A_STRING))
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(E::custom(NOT_A_STRING))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(serde::de::Error::custom(NOT_A_STRING))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(serde::de::Error::custom(NOT_A_STRING))
        }
    }
    const NOT_A_STRING: &str = "a password or key must be a string in quotes (the value is not shown)";
    deserializer.deserialize_option(Secret)
}

impl NumberOrString {
    /// The value parsed as `T` (surrounding spaces in strings ignored), or `None` if it is not one.
    pub fn parse<T: std::str::FromStr>(&self) -> Option<T> {
        match self {
            NumberOrString::Number(number) => number.to_string().parse().ok(),
            NumberOrString::Text(text) => text.trim().parse().ok(),
        }
    }
}

impl NumberOrString {
    /// A port number, 1-65535; errors name `field`.
    pub(crate) fn port(&self, field: &str) -> Result<u16, ConfigError> {
        match self.parse::<u16>() {
            Some(port) if port != 0 => Ok(port),
            _ => Err(ConfigError::field_error(field, format!("{self} is not a port number (1-65535)"))),
        }
    }

    /// A whole number of seconds, 1 to a year (long enough for anyone, short enough to add to an
    /// `Instant` without overflow); errors name `field`.
    pub(crate) fn seconds(&self, field: &str) -> Result<u64, ConfigError> {
        let secs = self.positive::<u64>(field)?;
        if secs > MAX_SECONDS {
            let message = format!("{secs} seconds is too long (at most {MAX_SECONDS})");
            return Err(ConfigError::field_error(field, message));
        }
        Ok(secs)
    }

    /// A whole number of at least 1; errors name `field`.
    pub(crate) fn positive<T: std::str::FromStr + PartialEq + From<u8>>(
        &self,
        field: &str,
    ) -> Result<T, ConfigError> {
        match self.parse::<T>() {
            Some(number) if number != T::from(0) => Ok(number),
            Some(_) => Err(ConfigError::field_error(field, "must be at least 1")),
            None => Err(ConfigError::field_error(field, format!("{self} is not a whole number"))),
        }
    }
}

/// Numbers print as written, strings quoted, so errors show what the file says: `70000`, `"abc"`.
impl fmt::Display for NumberOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumberOrString::Number(number) => write!(f, "{number}"),
            NumberOrString::Text(text) => write!(f, "{text:?}"),
        }
    }
}

impl From<u64> for NumberOrString {
    fn from(value: u64) -> NumberOrString {
        NumberOrString::Number(value.into())
    }
}

impl From<&str> for NumberOrString {
    fn from(value: &str) -> NumberOrString {
        NumberOrString::Text(value.to_string())
    }
}

// Going through `Value` (rather than an untagged enum) keeps numbers working when serde_json's
// `arbitrary_precision` feature is switched on elsewhere in the workspace.
impl<'de> Deserialize<'de> for NumberOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NumberOrString, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Number(number) => Ok(NumberOrString::Number(number)),
            Value::String(text) => Ok(NumberOrString::Text(text)),
            other => Err(D::Error::invalid_type(unexpected(&other), &"a number or a string of digits")),
        }
    }
}

/// `"host"` or `["host", ...]`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
    const EXPECTED: &str = "a host name or an array of host names";
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(host)) => Ok(Some(vec![host])),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(host) => Ok(host),
                other => Err(D::Error::invalid_type(unexpected(&other), &EXPECTED)),
            })
            .collect::<Result<Vec<String>, D::Error>>()
            .map(Some),
        Some(other) => Err(D::Error::invalid_type(unexpected(&other), &EXPECTED)),
    }
}

fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(_) => Unexpected::Other("number"),
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        RawConfig::from_json(text, Path::new("config.json"))
    }

    #[test]
    fn libev_readme_example_parses() {
        let raw = parse(
            r#"{"server":"my_server_ip","server_port":8388,"local_port":1080,"password":"barfoo!",
                "timeout":60,"method":"chacha20-ietf-poly1305"}"#,
        )
        .unwrap();
        assert_eq!(raw.server, Some(vec!["my_server_ip".to_string()]));
        assert_eq!(raw.server_port, Some(NumberOrString::from(8388)));
        assert_eq!(raw.local_port.as_ref().and_then(NumberOrString::parse::<u16>), Some(1080));
        assert_eq!(raw.method.as_deref(), Some("chacha20-ietf-poly1305"));
    }

    #[test]
    fn numbers_may_be_strings_and_unknown_keys_are_named() {
        let raw = parse(
            r#"{"server_port":" 8388","timeout":"60","workers":4,"user":"nobody",
                "servers":[{"address":"a","port":1,"colour":"red"}]}"#,
        )
        .unwrap();
        assert_eq!(raw.server_port.as_ref().and_then(NumberOrString::parse::<u16>), Some(8388));
        assert_eq!(raw.timeout, Some(NumberOrString::from("60")));
        assert_eq!(raw.ignored_keys, ["workers", "user", "servers.0.colour"]);
        assert!(parse(r#"{"server_port":1}"#).unwrap().ignored_keys.is_empty());
        assert!(parse(r#"{"server_port":1} trailing"#).is_err(), "text after the object is an error");
    }

    #[test]
    fn server_is_a_string_an_array_or_null() {
        assert_eq!(parse(r#"{"server":["a","b"]}"#).unwrap().server, Some(vec!["a".into(), "b".into()]));
        assert_eq!(parse(r#"{"server":null}"#).unwrap().server, None);
        let error = parse(r#"{"server":[1]}"#).unwrap_err().to_string();
        assert!(error.contains("expected a host name or an array of host names"), "{error}");
    }

    #[test]
    fn shadowsocks_rust_arrays_parse_with_aliases() {
        let raw = parse(
            r#"{"servers":[{"address":"a","port":"1","password":"p","method":"aes-128-gcm","disabled":false}],
                "locals":[{"local_address":"::1","local_port":1080,"protocol":"socks","mode":"tcp_only"}]}"#,
        )
        .unwrap();
        let servers = raw.servers.unwrap();
        assert_eq!(servers[0].server.as_deref(), Some("a"));
        assert_eq!(servers[0].server_port, Some(NumberOrString::from("1")));
        assert_eq!(raw.locals.unwrap()[0].protocol.as_deref(), Some("socks"));
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let error = parse("{\n  \"server\": \"a\",\n  \"server_port\": 8388 \"x\"\n}").unwrap_err();
        assert_eq!(error.to_string(), "config.json:3:23: expected `,` or `}`");
        let ConfigError::Json { line, column, .. } = error else { panic!("{error:?}") };
        assert_eq!((line, column), (3, 23));
    }

    #[test]
    fn type_errors_are_located_too() {
        let error = parse("{\"server_port\": true}").unwrap_err().to_string();
        assert_eq!(
            error,
            "config.json:1:21: invalid type: boolean `true`, expected a number or a string of digits"
        );
        let error = parse("{\"fast_open\": \"yes\"}").unwrap_err().to_string();
        assert!(error.starts_with("config.json:1:"), "{error}");
    }

    #[test]
    fn byte_order_mark_is_accepted() {
        assert_eq!(
            parse("\u{feff}{\"method\":\"aes-128-gcm\"}").unwrap().method.as_deref(),
            Some("aes-128-gcm")
        );
    }

    #[test]
    fn display_quotes_strings_only() {
        assert_eq!(NumberOrString::from(70000).to_string(), "70000");
        assert_eq!(NumberOrString::from("abc").to_string(), "\"abc\"");
    }

    #[test]
    fn a_password_that_is_not_a_string_is_refused_without_echoing_it() {
        for field in ["password", "key"] {
            for value in ["123456789", "12.5", "true", "[\"hunter2\"]", "{\"p\":\"hunter2\"}"] {
                let text = format!(r#"{{"server":"s","{field}":{value},"method":"aes-128-gcm"}}"#);
                let error = RawConfig::from_json(&text, Path::new("c.json")).unwrap_err().to_string();
                assert!(error.contains("must be a string"), "{error}");
                for secret in ["123456789", "12.5", "hunter2"] {
                    assert!(!error.contains(secret), "{field} = {value}: {error}");
                }
            }
            let inside = format!(r#"{{"servers":[{{"server":"s","{field}":31337}}]}}"#);
            let error = RawConfig::from_json(&inside, Path::new("c.json")).unwrap_err().to_string();
            assert!(error.contains("must be a string") && !error.contains("31337"), "{error}");
        }
        let null = RawConfig::from_json(r#"{"password":null}"#, Path::new("c.json")).unwrap();
        assert_eq!(null.password, None);
    }
}
