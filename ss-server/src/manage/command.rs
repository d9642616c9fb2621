//! The commands of shadowsocks-libev's ss-manager protocol, one per datagram, and the replies' text.
//!
//! ```text
//! add: {"server_port": 8001, "password": "...", "method"?: "...", "mode"?: "tcp_and_udp",
//!       "plugin"?: "...", "plugin_opts"?: "...", "fast_open"?: true}      -> ok | err | port is not available
//! remove: {"server_port": 8001}                                          -> ok | err
//! list                                                                    -> [{"server_port":8001,"password":"...","method":"..."}]
//! ping                                                                    -> stat: {"8001":11370}
//! stat: {"8001": 11370}        (what a libev ss-server reports to its manager; accepted, no reply)
//! ```
//!
//! The action is the text before the first `:` (surrounding white space and a trailing NUL ignored, as
//! libev's C clients send one); the data is the JSON after it. Ports may be JSON numbers (shadowsocks-rust
//! sends them) or strings of digits (libev panels do). Keys an `add` does not know (shadowsocks-rust's
//! `users`, `no_delay`, ...) are ignored. Everything else, an unknown action included, is a
//! [`CommandError`], which the manager answers with `err` (libev answers malformed `add`/`remove` so and
//! ignores unknown actions; answering keeps a panel from waiting for its timeout).

use serde_json::{Map, Value};

/// One manager command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Serve a port (replacing the one of that number, if any).
    Add(PortSpec),
    /// Stop serving a port.
    Remove(u16),
    /// The ports served, with their passwords and methods.
    List,
    /// Each port's traffic.
    Ping,
    /// A statistics report from a libev ss-server: not ours to act on.
    Stat,
}

/// What `add` asks for; absent fields take the config's values.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PortSpec {
    /// `server_port`.
    pub port: u16,
    /// `password` (a base64 key for the 2022 methods).
    pub password: String,
    /// `method`.
    pub method: Option<String>,
    /// `mode`: `tcp_only`, `tcp_and_udp` or `udp_only`.
    pub mode: Option<String>,
    /// `plugin`.
    pub plugin: Option<String>,
    /// `plugin_opts`.
    pub plugin_opts: Option<String>,
    /// `fast_open`.
    pub fast_open: Option<bool>,
}

/// The password stays out of logs.
impl std::fmt::Debug for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortSpec")
            .field("port", &self.port)
            .field("method", &self.method)
            .field("mode", &self.mode)
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

/// Why a datagram is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not UTF-8, or nothing but white space.
    #[error("empty or not text")]
    NotText,
    /// An action we do not know.
    #[error("unknown command {0:?}")]
    Unknown(String),
    /// `add` or `remove` without a JSON object after the colon.
    #[error("{0}: expected a JSON object after the colon")]
    NoObject(&'static str),
    /// A field missing or of the wrong type.
    #[error("{0}")]
    Field(String),
}

/// Reads one datagram.
pub fn parse(datagram: &[u8]) -> Result<Command, CommandError> {
    let text = std::str::from_utf8(datagram).map_err(|_| CommandError::NotText)?;
    let text = text.trim_end_matches('\0').trim();
    if text.is_empty() {
        return Err(CommandError::NotText);
    }
    let (action, data) = match text.split_once(':') {
        Some((action, data)) => (action.trim(), Some(data.trim())),
        None => (text, None),
    };
    match action {
        "add" => add(object("add", data)?),
        "remove" => Ok(Command::Remove(port(&object("remove", data)?)?)),
        "list" => Ok(Command::List),
        "ping" => Ok(Command::Ping),
        "stat" => Ok(Command::Stat),
        other => Err(CommandError::Unknown(other.chars().take(32).collect())),
    }
}

/// The reply to `list`: a JSON array of the ports (numbers, as shadowsocks-rust writes them).
pub fn list_reply<'a>(ports: impl IntoIterator<Item = (&'a PortSpec, String)>) -> String {
    let entries: Vec<Value> = ports
        .into_iter()
        .map(|(spec, method)| {
            serde_json::json!({"server_port": spec.port, "password": spec.password, "method": method})
        })
        .collect();
    Value::Array(entries).to_string()
}

/// The reply to `ping`: `stat: ` and each port's bytes (as libev writes it, ports as strings).
pub fn stat_reply(traffic: impl IntoIterator<Item = (u16, u64)>) -> String {
    let map: Map<String, Value> =
        traffic.into_iter().map(|(port, bytes)| (port.to_string(), Value::from(bytes))).collect();
    format!("stat: {}", Value::Object(map))
}

fn object(action: &'static str, data: Option<&str>) -> Result<Map<String, Value>, CommandError> {
    match data.map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(map))) => Ok(map),
        _ => Err(CommandError::NoObject(action)),
    }
}

fn add(map: Map<String, Value>) -> Result<Command, CommandError> {
    let password = match map.get("password") {
        Some(Value::String(text)) if !text.is_empty() => text.clone(),
        _ => return Err(CommandError::Field("password: missing or not a non-empty string".into())),
    };
    Ok(Command::Add(PortSpec {
        port: port(&map)?,
        password,
        method: string(&map, "method")?,
        mode: string(&map, "mode")?,
        plugin: string(&map, "plugin")?,
        plugin_opts: string(&map, "plugin_opts")?,
        fast_open: match map.get("fast_open") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(on)) => Some(*on),
            Some(_) => return Err(CommandError::Field("fast_open: not true or false".into())),
        },
    }))
}

/// `server_port`: a number or a string of digits, 1-65535.
fn port(map: &Map<String, Value>) -> Result<u16, CommandError> {
    let number = match map.get("server_port") {
        Some(Value::Number(number)) => number.as_u64(),
        Some(Value::String(text)) => text.trim().parse::<u64>().ok(),
        _ => None,
    };
    match number.and_then(|number| u16::try_from(number).ok()) {
        Some(port) if port != 0 => Ok(port),
        _ => Err(CommandError::Field("server_port: missing or not a port (1-65535)".into())),
    }
}

/// An optional string field; an empty string counts as absent.
fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, CommandError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(CommandError::Field(format!("{key}: not a string"))),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any datagram is a command or an error, never a panic (`fuzz/`'s `manager_command` goes
        /// further).
        #[test]
        fn any_bytes_parse_or_fail(datagram in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&datagram);
        }

        /// Any port and password, the port written as a number or as a string, with or without spaces
        /// and a trailing NUL, reads back as written.
        #[test]
        fn add_and_remove_read_back(port in 1u16.., password in "[ -~]{1,40}", quoted: bool, nul: bool) {
            let written = if quoted { format!("\"{port}\"") } else { port.to_string() };
            let password_json = Value::from(password.clone()).to_string();
            let end = if nul { "\0" } else { "" };
            let add = format!("add: {{\"server_port\": {written}, \"password\": {password_json}}}{end}");
            let expected = PortSpec { port, password, ..PortSpec::default() };
            prop_assert_eq!(parse(add.as_bytes()), Ok(Command::Add(expected)));
            let remove = format!("remove:{{\"server_port\":{written}}}{end}");
            prop_assert_eq!(parse(remove.as_bytes()), Ok(Command::Remove(port)));
        }
    }

    fn spec(port: u16) -> PortSpec {
        PortSpec { port, password: "secret".into(), ..PortSpec::default() }
    }

    #[test]
    fn ports_are_numbers_or_strings() {
        let numbers = parse(br#"add: {"server_port": 8001, "password": "secret"}"#);
        let strings = parse(b"add:{\"server_port\":\"8001\",\"password\":\"secret\"}\0");
        assert_eq!(numbers, Ok(Command::Add(spec(8001))));
        assert_eq!(strings, numbers);
        assert_eq!(parse(br#"remove: {"server_port": "8001"}"#), Ok(Command::Remove(8001)));
        assert_eq!(parse(br#" remove : {"server_port": 8001} "#), Ok(Command::Remove(8001)));
    }

    #[test]
    fn optional_fields_and_unknown_keys() {
        let full = parse(
            br#"add: {"server_port": 8001, "password": "secret", "method": "aes-256-gcm", "mode": "tcp_and_udp",
                "plugin": "obfs-server", "plugin_opts": "obfs=http", "fast_open": true, "users": [], "no_delay": true}"#,
        );
        let expected = PortSpec {
            method: Some("aes-256-gcm".into()),
            mode: Some("tcp_and_udp".into()),
            plugin: Some("obfs-server".into()),
            plugin_opts: Some("obfs=http".into()),
            fast_open: Some(true),
            ..spec(8001)
        };
        assert_eq!(full, Ok(Command::Add(expected)));
    }

    #[test]
    fn bare_actions() {
        assert_eq!(parse(b"ping"), Ok(Command::Ping));
        assert_eq!(parse(b"list\n"), Ok(Command::List));
        assert_eq!(parse(b"ping\0"), Ok(Command::Ping));
        assert_eq!(parse(br#"stat: {"8001": 5}"#), Ok(Command::Stat));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let cases: &[&[u8]] = &[
            b"",
            b"   \0",
            b"\xff\xfe",
            b"add",
            b"add:",
            b"add: []",
            b"add: {\"server_port\": 8001}",
            b"add: {\"password\": \"x\"}",
            b"add: {\"server_port\": 0, \"password\": \"x\"}",
            b"add: {\"server_port\": 65536, \"password\": \"x\"}",
            b"add: {\"server_port\": -1, \"password\": \"x\"}",
            b"add: {\"server_port\": 1.5, \"password\": \"x\"}",
            b"add: {\"server_port\": \"80a\", \"password\": \"x\"}",
            b"add: {\"server_port\": 8001, \"password\": \"\"}",
            b"add: {\"server_port\": 8001, \"password\": 5}",
            b"add: {\"server_port\": 8001, \"password\": \"x\", \"method\": 1}",
            b"add: {\"server_port\": 8001, \"password\": \"x\", \"fast_open\": \"yes\"}",
            b"add: {\"server_port\": 8001, \"password\": \"x\"",
            b"remove: 8001",
            b"remove",
            b"delete: {\"server_port\": 8001}",
            b"{\"server_port\": 8001}",
        ];
        for case in cases {
            assert!(parse(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
        let long = format!("{}: {{}}", "x".repeat(10_000));
        assert_eq!(parse(long.as_bytes()), Err(CommandError::Unknown("x".repeat(32))));
    }

    #[test]
    fn replies_as_libev_and_rust_write_them() {
        assert_eq!(stat_reply([(8001, 11370), (8002, 0)]), r#"stat: {"8001":11370,"8002":0}"#);
        assert_eq!(stat_reply([]), "stat: {}");
        let list = list_reply([(&spec(8001), "aes-256-gcm".to_string())]);
        let parsed: Value = serde_json::from_str(&list).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([{"server_port": 8001, "password": "secret", "method": "aes-256-gcm"}])
        );
    }
}
