//! SIP002 `ss://` URLs: one server (host, port, method, key, plugin, name) in a line that can be pasted
//! or shown as a QR code.
//!
//! ```text
//! ss://YWVzLTI1Ni1nY206c2VjcmV0@example.com:8388/?plugin=obfs-local%3Bobfs%3Dhttp#My%20server
//!      \____ userinfo ______/ \__ host _/ \port/  \__________ query ___________/ \__ tag ___/
//! ```
//!
//! - userinfo: base64url of `method:password` for classic methods (we write it unpadded; on input
//!   padding is optional and the standard alphabet works too), percent-encoded `method:password` for
//!   2022 methods, whose password is the base64 PSK. Either form is accepted for any method.
//! - host: a name, an IPv4 address, or an IPv6 address in brackets; the port is required.
//! - query: `plugin=command;options` (SIP003), form-encoded (`+` is a space, as shadowsocks-rust reads
//!   it); other parameters are ignored.
//! - tag: the server's display name, percent-encoded.
//!
//! The legacy form `ss://base64(method:password@host:port)#tag` is accepted too. Error messages never
//! repeat the password.

use std::fmt;
use std::net::Ipv6Addr;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use ss_crypto::{Key, KeyError, Method, MethodError};

use crate::entry::{split_host_port, HostPortError, Plugin};

/// A server parsed from, or to be written as, an `ss://` URL.
///
/// The method, key and password are read through accessors because they must agree: the key is
/// derived from the password ([`Key::from_config_password`]) when the value is made.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Host name or IP address, without brackets (`::1`, not `[::1]`).
    pub host: String,
    /// Port, 1-65535.
    pub port: u16,
    /// The `plugin` query parameter, split at its first `;` into command and options.
    pub plugin: Option<Plugin>,
    /// The fragment: a display name for the server.
    pub tag: Option<String>,
    method: Method,
    key: Key,
    password: String,
}

/// Why an `ss://` URL was refused. Messages are one line and never contain the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The text does not start with `ss://`.
    #[error("not an ss:// URL")]
    Scheme,
    /// The part before `@` is neither base64 of `method:password` nor `method:password`.
    #[error(
        "the user info is neither base64 of \"method:password\" nor percent-encoded \"method:password\""
    )]
    Userinfo,
    /// A `%` escape is not two hex digits, or the decoded text is not UTF-8.
    #[error("bad percent-encoding in the {0}")]
    Percent(&'static str),
    /// The method is unknown, refused or unsupported.
    #[error(transparent)]
    Method(#[from] MethodError),
    /// The password is empty.
    #[error("the password is empty")]
    EmptyPassword,
    /// The key of a 2022 method is not base64 of the right length.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The host is empty, holds characters a host cannot, or is an IPv6 address without brackets.
    #[error("bad host: {0}")]
    Host(String),
    /// There is no `:port` after the host.
    #[error("missing port (the address must be host:port)")]
    MissingPort,
    /// The port is not a number from 1 to 65535.
    #[error("{0:?} is not a port number (1-65535)")]
    Port(String),
    /// Something other than `/` follows `host:port`.
    #[error("unexpected path {0:?} after host:port")]
    Path(String),
}

/// Parses an `ss://` URL (SIP002, or the legacy all-base64 form) and derives the server's key.
pub fn parse_ss_url(text: &str) -> Result<ServerUrl, UrlError> {
    let text = text.trim();
    let body = match text.get(..5) {
        Some(scheme) if scheme.eq_ignore_ascii_case("ss://") => &text[5..],
        _ => return Err(UrlError::Scheme),
    };
    let (body, tag) = match body.split_once('#') {
        Some((body, tag)) => (body, Some(percent_decode(tag, false).ok_or(UrlError::Percent("tag"))?)),
        None => (body, None),
    };
    let (before_query, query) = body.split_once('?').unwrap_or((body, ""));
    let (userinfo, address) = match before_query.rsplit_once('@') {
        Some((userinfo, rest)) => {
            let (address, path) = rest.split_once('/').unwrap_or((rest, ""));
            if !path.is_empty() {
                return Err(UrlError::Path(format!("/{path}")));
            }
            (credentials(userinfo)?, address.to_string())
        }
        None => legacy(before_query)?,
    };
    let (host, port) = host_and_port(&address)?;
    let (method, password) = userinfo;
    // Escaped first so that an error quoting the name stays one line; no method name has control characters.
    let method = crate::one_line(method).parse()?;
    let mut server = ServerUrl::new(host, port, method, password)?;
    server.plugin = plugin(query)?;
    server.tag = tag.filter(|tag| !tag.is_empty());
    Ok(server)
}

/// Writes a server as a SIP002 URL: base64url without padding for classic methods, percent-encoded
/// `method:password` for 2022 methods. [`parse_ss_url`] reads it back equal.
pub fn format_ss_url(server: &ServerUrl) -> String {
    let userinfo = if server.method.is_2022() {
        format!("{}:{}", server.method, percent_encode(&server.password))
    } else {
        URL_SAFE_LENIENT.encode(format!("{}:{}", server.method, server.password))
    };
    let mut url = format!("ss://{userinfo}@");
    if server.host.contains(':') {
        url.push_str(&format!("[{}]:{}", server.host, server.port));
    } else {
        url.push_str(&format!("{}:{}", server.host, server.port));
    }
    if let Some(plugin) = &server.plugin {
        let value = match &plugin.options {
            Some(options) => format!("{};{options}", plugin.command),
            None => plugin.command.clone(),
        };
        url.push_str("/?plugin=");
        url.push_str(&percent_encode(&value));
    }
    if let Some(tag) = &server.tag {
        url.push('#');
        url.push_str(&percent_encode(tag));
    }
    url
}

impl ServerUrl {
    /// A server without plugin or tag. `password` is the classic password or the 2022 base64 PSK;
    /// `host` has no brackets.
    pub fn new(host: String, port: u16, method: Method, password: String) -> Result<ServerUrl, UrlError> {
        check_host(&host)?;
        if port == 0 {
            return Err(UrlError::Port(port.to_string()));
        }
        if password.is_empty() {
            return Err(UrlError::EmptyPassword);
        }
        let key = Key::from_config_password(method, &password)?;
        Ok(ServerUrl { host, port, plugin: None, tag: None, method, key, password })
    }

    /// The encryption method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The master key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The password (classic methods) or base64 PSK (2022 methods), as written in the URL.
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl std::str::FromStr for ServerUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<ServerUrl, UrlError> {
        parse_ss_url(text)
    }
}

impl fmt::Display for ServerUrl {
    /// The URL, password included: for showing to the server's owner, not for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_ss_url(self))
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("method", &self.method)
            .field("key", &self.key)
            .field("password", &"<redacted>")
            .field("plugin", &self.plugin)
            .field("tag", &self.tag)
            .finish()
    }
}

/// Unpadded on output; padding optional on input.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_encode_padding(false)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);

/// `(method name, password)` from the user info, in either form.
fn credentials(userinfo: &str) -> Result<(String, String), UrlError> {
    // A literal ':' cannot be base64, so it marks the plain form; the password may hold more colons.
    if let Some((method, password)) = userinfo.split_once(':') {
        let method = percent_decode(method, false).ok_or(UrlError::Percent("user info"))?;
        let password = percent_decode(password, false).ok_or(UrlError::Percent("user info"))?;
        return Ok((method, password));
    }
    let decoded = percent_decode(userinfo, false).ok_or(UrlError::Percent("user info"))?;
    // A colon that was itself percent-encoded also marks the plain form.
    let plain =
        if decoded.contains(':') { decoded } else { decode_base64(&decoded).ok_or(UrlError::Userinfo)? };
    let (method, password) = plain.split_once(':').ok_or(UrlError::Userinfo)?;
    Ok((method.to_string(), password.to_string()))
}

/// The legacy `ss://base64(method:password@host:port)`.
fn legacy(encoded: &str) -> Result<((String, String), String), UrlError> {
    let plain = decode_base64(encoded).ok_or(UrlError::Userinfo)?;
    let (userinfo, address) = plain.rsplit_once('@').ok_or(UrlError::Userinfo)?;
    let (method, password) = userinfo.split_once(':').ok_or(UrlError::Userinfo)?;
    Ok(((method.to_string(), password.to_string()), address.to_string()))
}

fn decode_base64(text: &str) -> Option<String> {
    let bytes = URL_SAFE_LENIENT.decode(text).or_else(|_| STANDARD_LENIENT.decode(text)).ok()?;
    String::from_utf8(bytes).ok()
}

/// `host:port` or `[v6]:port` ([`split_host_port`] with the port required and IPv6 in brackets).
fn host_and_port(address: &str) -> Result<(String, u16), UrlError> {
    match split_host_port(address) {
        Ok((host, Some(port))) => Ok((host.to_string(), port)),
        Ok((host, None)) if host.contains(':') && !address.starts_with('[') => {
            Err(UrlError::Host("an IPv6 address must be in brackets, e.g. [::1]:8388".into()))
        }
        Ok((_, None)) => Err(UrlError::MissingPort),
        Err(HostPortError::Port(port)) if port.is_empty() => Err(UrlError::MissingPort),
        Err(HostPortError::Port(port)) => Err(UrlError::Port(port)),
        Err(HostPortError::UnclosedBracket) => Err(UrlError::Host("unclosed '['".into())),
        Err(HostPortError::NotIpv6(host)) => {
            Err(UrlError::Host(format!("{host:?} in brackets is not an IPv6 address")))
        }
        Err(HostPortError::AfterBracket(after)) => Err(UrlError::Host(format!("{after:?} after ']'"))),
    }
}

/// A host as [`ServerEntry`](crate::ServerEntry) holds it: non-empty, an IPv6 address if it has a colon, and nothing a URL
/// would read as a delimiter.
fn check_host(host: &str) -> Result<(), UrlError> {
    if host.is_empty() {
        return Err(UrlError::Host("empty".into()));
    }
    if host.contains(':') && host.parse::<Ipv6Addr>().is_err() {
        return Err(UrlError::Host(format!("{host:?} has a ':' but is not an IPv6 address")));
    }
    if let Some(bad) = host.chars().find(|c| c.is_whitespace() || c.is_control() || "/?#@[]%\\".contains(*c))
    {
        return Err(UrlError::Host(format!("{host:?} contains {bad:?}")));
    }
    Ok(())
}

/// The `plugin` parameter of the query, if any (the first one; an empty one means none).
fn plugin(query: &str) -> Result<Option<Plugin>, UrlError> {
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(name, true).as_deref() != Some("plugin") {
            continue;
        }
        let value = percent_decode(value, true).ok_or(UrlError::Percent("plugin parameter"))?;
        let (command, options) = match value.split_once(';') {
            Some((command, options)) => (command, Some(options.to_string()).filter(|o| !o.is_empty())),
            None => (value.as_str(), None),
        };
        if command.trim().is_empty() {
            return Ok(None);
        }
        return Ok(Some(Plugin::new(command, options)));
    }
    Ok(None)
}

fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        out.push(match byte {
            b'%' => {
                let high = char::from(bytes.next()?).to_digit(16)?;
                let low = char::from(bytes.next()?).to_digit(16)?;
                (high * 16 + low) as u8
            }
            b'+' if plus_is_space => b' ',
            other => other,
        });
    }
    String::from_utf8(out).ok()
}

/// Escapes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
    out
}

#[cfg(test)]
mod tests;
