//! The values the rest of the crate builds and passes around: a [`ServerEntry`], its [`Plugin`], the
//! relay [`Mode`], and the one reading of `host:port` that the config file and `ss://` URLs share
//! ([`split_host_port`]). This module imports no other module of the crate but the error type.

use std::net::Ipv6Addr;

use ss_crypto::{Key, Method};

use crate::users::UserList;
use crate::ConfigError;

/// One server: for ss-server an address to listen on, for ss-local a remote server to try.
#[derive(Clone, PartialEq)]
pub struct ServerEntry {
    /// Host name or IP address, without brackets (`::1`, not `[::1]`).
    pub host: String,
    /// Port, 1-65535.
    pub port: u16,
    /// The encryption method.
    pub method: Method,
    /// The master key (from the base64 key, or derived from the password).
    pub key: Key,
    /// A classic method's password is short or repetitive; the binary should warn.
    pub password_is_weak: bool,
    /// The SIP003 plugin in front of this server (ss-server: listening for it; ss-local: dialling it).
    pub plugin: Option<Plugin>,
    /// ss-server: the users of a multi-user entry (`users`, `users_file`); `None` for one key.
    pub users: Option<UserList>,
    /// ss-local: the identity PSKs of a `password: "iPSK:uPSK"` chain (SIP023, AES 2022 methods), in
    /// order; `key` is then the uPSK. Empty for a plain key.
    pub identity_keys: Vec<Key>,
    /// Its shares under round-robin and random (ss-local; `weight`, `tcp_weight`, `udp_weight`).
    pub weights: crate::Weights,
    /// What an `ss://` link carries as the password: the classic password as configured, or the 2022
    /// key in base64. `None` for a classic method configured by its raw `key`, which no link can carry.
    pub password: Option<String>,
    /// A display name: `remarks` or `tag` of a `servers` entry, the fragment of an `ss://` URL.
    pub tag: Option<String>,
}

impl std::fmt::Debug for ServerEntry {
    /// Everything but the password (the key redacts itself).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerEntry")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("method", &self.method)
            .field("key", &self.key)
            .field("password_is_weak", &self.password_is_weak)
            .field("plugin", &self.plugin)
            .field("users", &self.users)
            .field("identity_keys", &self.identity_keys)
            .field("weights", &self.weights)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tag", &self.tag)
            .finish()
    }
}

/// Which protocols to relay (libev's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `tcp_only` (the default).
    #[default]
    TcpOnly,
    /// `tcp_and_udp` (`-u`).
    TcpAndUdp,
    /// `udp_only` (`-U`).
    UdpOnly,
}

/// A SIP003 plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    /// The plugin executable.
    pub command: String,
    /// `SS_PLUGIN_OPTIONS`.
    pub options: Option<String>,
    /// Extra arguments on the plugin's command line (`plugin_args`).
    pub args: Vec<String>,
    /// Which traffic goes through the plugin (`plugin_mode`, default `tcp_only`); the rest bypasses it.
    pub mode: Mode,
}

impl Plugin {
    /// A plugin with no extra arguments that carries TCP only (the SIP003 default).
    pub fn new(command: impl Into<String>, options: Option<String>) -> Plugin {
        Plugin { command: command.into(), options, args: Vec::new(), mode: Mode::TcpOnly }
    }
}

impl Mode {
    /// Whether TCP is relayed.
    pub fn tcp(self) -> bool {
        matches!(self, Mode::TcpOnly | Mode::TcpAndUdp)
    }

    /// Whether UDP is relayed.
    pub fn udp(self) -> bool {
        matches!(self, Mode::UdpOnly | Mode::TcpAndUdp)
    }

    /// The config spelling: `tcp_only`, `tcp_and_udp` or `udp_only`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::TcpOnly => "tcp_only",
            Mode::TcpAndUdp => "tcp_and_udp",
            Mode::UdpOnly => "udp_only",
        }
    }

    /// `text` as a mode; an error names `field`.
    pub fn parse_field(field: &str, text: &str) -> Result<Mode, ConfigError> {
        let message = || format!("unknown mode {text:?}; use tcp_only, tcp_and_udp or udp_only");
        let found =
            [Mode::TcpOnly, Mode::TcpAndUdp, Mode::UdpOnly].into_iter().find(|mode| mode.name() == text);
        found.ok_or_else(|| ConfigError::field_error(field, message()))
    }
}

/// Why [`split_host_port`] refused its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPortError {
    /// A `[` without its `]`.
    UnclosedBracket,
    /// Brackets around something that is not an IPv6 address.
    NotIpv6(String),
    /// Something other than `:port` after `]`.
    AfterBracket(String),
    /// The port is not 1-65535 in decimal digits (empty when the text ends in `:`).
    Port(String),
}

/// libev's `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address (several colons) has no
/// port. The host may come back empty: what an empty host means is the caller's to say.
pub(crate) fn split_host_port(text: &str) -> Result<(&str, Option<u16>), HostPortError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(HostPortError::UnclosedBracket)?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(HostPortError::NotIpv6(host.to_string()));
        }
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(HostPortError::AfterBracket(after.to_string())),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (text, None),
        }
    };
    let Some(port) = port else { return Ok((host, None)) };
    // Digits only: `u16::from_str` would also take "+80".
    match port.parse::<u16>() {
        Ok(number) if number != 0 && port.bytes().all(|byte| byte.is_ascii_digit()) => {
            Ok((host, Some(number)))
        }
        _ => Err(HostPortError::Port(port.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("example.com"), Ok(("example.com", None)));
        assert_eq!(split_host_port("example.com:443"), Ok(("example.com", Some(443))));
        assert_eq!(split_host_port("fe80::1"), Ok(("fe80::1", None)), "a bare IPv6 address has no port");
        assert_eq!(split_host_port("[fe80::1]"), Ok(("fe80::1", None)));
        assert_eq!(split_host_port("[fe80::1]:8388"), Ok(("fe80::1", Some(8388))));
        assert_eq!(split_host_port(":8388"), Ok(("", Some(8388))));
        assert_eq!(split_host_port("[::1"), Err(HostPortError::UnclosedBracket));
        assert_eq!(split_host_port("[h]:1"), Err(HostPortError::NotIpv6("h".into())));
        assert_eq!(split_host_port("[::1]x"), Err(HostPortError::AfterBracket("x".into())));
        for port in ["", "0", "70000", "+80", "x"] {
            assert_eq!(
                split_host_port(&format!("h:{port}")),
                Err(HostPortError::Port(port.into())),
                "{port:?}"
            );
        }
    }
}
