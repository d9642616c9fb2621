//! ss-local's listeners ([`Local`]): what each local port speaks (SOCKS5, HTTP, a tunnel to a fixed
//! target, transparent proxying) and where it listens, from three sources that add up:
//!
//! ```text
//! top level   -b/-l, "local_address"/"local_port", --protocol/"protocol"      one listener (if a port)
//!             -L host:port / "tunnel_address": "host:port"                    makes that one a tunnel
//! locals[]    {local_address, local_port, protocol, forward_address,          one listener each
//!              forward_port, tcp_redir, udp_redir, mode}                      (shadowsocks-rust)
//! -L          [bind:]port:host:hostport / "tunnel_address": [...]              one tunnel each (ssh style)
//! ```
//!
//! `-L host:port` is libev's ss-tunnel flag: the top-level port forwards to `host:port`
//! (`ss-local -l 5353 -L 8.8.8.8:53` is `ss-tunnel -l 5353 -L 8.8.8.8:53`). Only one tunnel can own the
//! top-level port; more tunnels name their own local port, as ssh's `-L 5353:8.8.8.8:53` does.

use crate::entry::{split_host_port, Mode};
use crate::raw::{RawConfig, RawLocal};
use crate::{CliArgs, ConfigError};

/// One listener of ss-local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Where to listen: an IP address or a name (default `127.0.0.1`).
    pub address: String,
    /// Port to listen on.
    pub port: u16,
    /// What the listener speaks.
    pub protocol: Protocol,
    /// Which of TCP and UDP this listener serves (its own `mode`, else the top-level one).
    pub mode: Mode,
}

/// What one listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// SOCKS5 (`"socks"`, the default).
    Socks,
    /// HTTP proxy (`"http"`).
    Http,
    /// Every connection and datagram goes to this fixed target through the server (`"tunnel"`).
    Tunnel(Forward),
    /// Transparent proxying (`"redir"`, Linux): the destination is the one the firewall diverted.
    Redir {
        /// How TCP connections were diverted.
        tcp: TcpRedir,
    },
}

/// A tunnel's fixed target, sent to the server as written (a name is resolved by the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Host name or IP address, without brackets.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// How a redir listener's TCP connections reach it (`tcp_redir`, `--tcp-redir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpRedir {
    /// nftables/iptables `redirect`: the destination is read with `SO_ORIGINAL_DST`.
    #[default]
    Redirect,
    /// `tproxy`: the listener is `IP_TRANSPARENT` and the destination is the accepted socket's own
    /// address.
    Tproxy,
}

/// The listeners of `raw` with the command line laid over it; empty when no port is given anywhere.
pub(crate) fn locals(raw: &RawConfig, args: &CliArgs, mode: Mode) -> Result<Vec<Local>, ConfigError> {
    let mut tunnels_here = Vec::new();
    let mut tunnels_own = Vec::new();
    let tunnel_specs = match &args.tunnel {
        specs if !specs.is_empty() => specs.iter().map(|spec| ("-L", spec.as_str())).collect::<Vec<_>>(),
        _ => raw.tunnel_address.iter().flatten().map(|spec| ("tunnel_address", spec.as_str())).collect(),
    };
    for (field, spec) in tunnel_specs {
        match parse_tunnel(spec).map_err(|message| ConfigError::field_error(field, message))? {
            TunnelSpec::Here(forward) => tunnels_here.push((field, forward)),
            TunnelSpec::Own { bind, port, forward } => tunnels_own.push((bind, port, forward)),
        }
    }
    if tunnels_here.len() > 1 {
        let message = "only one tunnel without its own local port can take the local port; write the \
                       others as LOCAL_PORT:HOST:PORT";
        return Err(ConfigError::field_error(tunnels_here[0].0, message));
    }
    let top_address = match (&args.local_address, &raw.local_address) {
        (Some(address), _) | (None, Some(address)) => address.trim().to_string(),
        (None, None) => String::new(),
    };
    let top_address = if top_address.is_empty() { "127.0.0.1".to_string() } else { top_address };
    let top_port = match (args.local_port, &raw.local_port) {
        (Some(port), _) => Some(port),
        (None, Some(port)) => Some(port.port("local_port")?),
        (None, None) => None,
    };
    let top_protocol = args.protocol.as_deref().or(raw.protocol.as_deref());
    let field = if args.protocol.is_some() { "--protocol" } else { "protocol" };
    let top_redir = args.tcp_redir.as_deref().or(raw.tcp_redir.as_deref());
    let top_udp_redir = args.udp_redir.as_deref().or(raw.udp_redir.as_deref());
    let mut result = Vec::new();
    if let Some((tunnel_field, forward)) = tunnels_here.pop() {
        if top_protocol.is_some_and(|protocol| protocol.trim() != "tunnel") {
            let message =
                format!("{tunnel_field} makes the local port a tunnel; drop the protocol or the tunnel");
            return Err(ConfigError::field_error(field, message));
        }
        let Some(port) = top_port else {
            let message =
                "a tunnel needs a local port: set -l or \"local_port\", or write LOCAL_PORT:HOST:PORT";
            return Err(ConfigError::field_error(tunnel_field, message));
        };
        result.push(Local { address: top_address.clone(), port, protocol: Protocol::Tunnel(forward), mode });
    } else if let Some(port) = top_port {
        if top_protocol.map(str::trim) == Some("tunnel") {
            let message = "missing: the tunnel's target (-L HOST:PORT or \"tunnel_address\")";
            return Err(ConfigError::field_error("tunnel_address", message));
        }
        let protocol = protocol(field, top_protocol, None, top_redir, top_udp_redir)?;
        result.push(Local { address: top_address.clone(), port, protocol, mode });
    }
    for (index, entry) in raw.locals.iter().flatten().enumerate() {
        result.push(local_entry(index, entry, mode)?);
    }
    for (bind, port, forward) in tunnels_own {
        let address = bind.unwrap_or_else(|| top_address.clone());
        result.push(Local { address, port, protocol: Protocol::Tunnel(forward), mode });
    }
    Ok(result)
}

fn local_entry(index: usize, entry: &RawLocal, mode: Mode) -> Result<Local, ConfigError> {
    let field = |name: &str| format!("locals[{index}].{name}");
    let address = entry.local_address.as_deref().map(str::trim).unwrap_or_default();
    let address = if address.is_empty() { "127.0.0.1" } else { address }.to_string();
    let Some(port) = &entry.local_port else {
        return Err(ConfigError::field_error(field("local_port"), "missing"));
    };
    let port = port.port(&field("local_port"))?;
    let forward = match (&entry.forward_address, &entry.forward_port) {
        (None, None) => None,
        (Some(host), Some(port)) => {
            let port = port.port(&field("forward_port"))?;
            let host = host.trim().trim_start_matches('[').trim_end_matches(']');
            Some(
                forward(host, port)
                    .map_err(|message| ConfigError::field_error(field("forward_address"), message))?,
            )
        }
        (Some(_), None) => return Err(ConfigError::field_error(field("forward_port"), "missing")),
        (None, Some(_)) => return Err(ConfigError::field_error(field("forward_address"), "missing")),
    };
    let protocol = protocol(
        &field("protocol"),
        entry.protocol.as_deref(),
        forward,
        entry.tcp_redir.as_deref(),
        entry.udp_redir.as_deref(),
    )?;
    let mode = match &entry.mode {
        Some(text) => Mode::parse_field(&field("mode"), text)?,
        None => mode,
    };
    Ok(Local { address, port, protocol, mode })
}

/// The protocol named `text` (default socks), with what it needs; `field` names the protocol's key.
fn protocol(
    field: &str,
    text: Option<&str>,
    forward: Option<Forward>,
    tcp_redir: Option<&str>,
    udp_redir: Option<&str>,
) -> Result<Protocol, ConfigError> {
    let name = text.map(str::trim).unwrap_or("socks");
    let sibling =
        |key: &str| field.rsplit_once('.').map_or(key.to_string(), |(base, _)| format!("{base}.{key}"));
    if name != "redir" {
        if let Some(key) = [("tcp_redir", tcp_redir), ("udp_redir", udp_redir)]
            .iter()
            .find_map(|(key, value)| value.map(|_| *key))
        {
            return Err(ConfigError::field_error(sibling(key), "only a \"redir\" listener takes it"));
        }
    }
    if name != "tunnel" && forward.is_some() {
        return Err(ConfigError::field_error(
            sibling("forward_address"),
            "only a \"tunnel\" listener takes it",
        ));
    }
    match name {
        "socks" => Ok(Protocol::Socks),
        "http" => Ok(Protocol::Http),
        "tunnel" => match forward {
            Some(forward) => Ok(Protocol::Tunnel(forward)),
            None => Err(ConfigError::field_error(
                sibling("forward_address"),
                "missing: a tunnel needs forward_address and forward_port",
            )),
        },
        "redir" => {
            let tcp = match tcp_redir.map(str::trim) {
                None | Some("redirect") => TcpRedir::Redirect,
                Some("tproxy") => TcpRedir::Tproxy,
                Some(other) => {
                    let message = format!("unknown {other:?}; use redirect or tproxy");
                    return Err(ConfigError::field_error(sibling("tcp_redir"), message));
                }
            };
            match udp_redir.map(str::trim) {
                None | Some("tproxy") => {}
                Some(other) => {
                    let message = format!("unknown {other:?}; UDP is redirected only by tproxy");
                    return Err(ConfigError::field_error(sibling("udp_redir"), message));
                }
            }
            Ok(Protocol::Redir { tcp })
        }
        other => Err(ConfigError::field_error(
            field,
            format!("unknown protocol {other:?}; use socks, http, tunnel or redir"),
        )),
    }
}

/// A tunnel as written in `-L` or `tunnel_address`.
#[derive(Debug, PartialEq, Eq)]
enum TunnelSpec {
    /// libev's `host:port`: the top-level local port forwards there.
    Here(Forward),
    /// ssh's `[bind:]port:host:hostport`: a listener of its own.
    Own { bind: Option<String>, port: u16, forward: Forward },
}

fn parse_tunnel(text: &str) -> Result<TunnelSpec, String> {
    let text = text.trim();
    let usage = || format!("{text:?} is not HOST:PORT or [BIND:]LOCAL_PORT:HOST:PORT");
    if let Ok((host, Some(port))) = split_host_port(text) {
        if !host.is_empty() {
            return Ok(TunnelSpec::Here(forward(host, port)?));
        }
    }
    // ssh style: the local part first, then a host:port of libev's syntax.
    let (bind, rest) = if let Some(rest) = text.strip_prefix('[') {
        let (bind, rest) = rest.split_once("]:").ok_or_else(usage)?;
        (Some(bind), rest)
    } else {
        let (first, rest) = text.split_once(':').ok_or_else(usage)?;
        if first.bytes().all(|byte| byte.is_ascii_digit()) {
            (None, text)
        } else {
            (Some(first), rest)
        }
    };
    let (port, target) = rest.split_once(':').ok_or_else(usage)?;
    let port = match port.parse::<u16>() {
        Ok(number) if number != 0 && port.bytes().all(|byte| byte.is_ascii_digit()) => number,
        _ => return Err(format!("{port:?} is not a local port number (1-65535) in {text:?}")),
    };
    match split_host_port(target) {
        Ok((host, Some(target_port))) if !host.is_empty() => {
            Ok(TunnelSpec::Own { bind: bind.map(str::to_string), port, forward: forward(host, target_port)? })
        }
        _ => Err(usage()),
    }
}

/// A tunnel target; the host must fit the Shadowsocks address header (1 to 255 bytes).
fn forward(host: &str, port: u16) -> Result<Forward, String> {
    match host.len() {
        0 => Err("empty host".to_string()),
        1..=255 => Ok(Forward { host: host.to_string(), port }),
        len => Err(format!("a host name of {len} bytes; at most 255 fit the Shadowsocks header")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(host: &str, port: u16) -> Forward {
        Forward { host: host.to_string(), port }
    }

    #[test]
    fn tunnel_forms() {
        assert_eq!(parse_tunnel("8.8.8.8:53"), Ok(TunnelSpec::Here(forward("8.8.8.8", 53))));
        assert_eq!(parse_tunnel("[2001:db8::1]:53"), Ok(TunnelSpec::Here(forward("2001:db8::1", 53))));
        assert_eq!(parse_tunnel("dns.example:853"), Ok(TunnelSpec::Here(forward("dns.example", 853))));
        assert_eq!(
            parse_tunnel("5353:8.8.8.8:53"),
            Ok(TunnelSpec::Own { bind: None, port: 5353, forward: forward("8.8.8.8", 53) })
        );
        assert_eq!(
            parse_tunnel("0.0.0.0:5353:[2001:db8::1]:53"),
            Ok(TunnelSpec::Own {
                bind: Some("0.0.0.0".into()),
                port: 5353,
                forward: forward("2001:db8::1", 53)
            })
        );
        assert_eq!(
            parse_tunnel("[::1]:5353:dns.example:53"),
            Ok(TunnelSpec::Own { bind: Some("::1".into()), port: 5353, forward: forward("dns.example", 53) })
        );
        assert!(parse_tunnel(&format!("{}:53", "a".repeat(256))).unwrap_err().contains("at most 255"));
        for bad in ["", "8.8.8.8", ":53", "x:y:z", "5353:8.8.8.8", "0:8.8.8.8:53", "70000:h:1", "[::1:1:h:1"]
        {
            assert!(parse_tunnel(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the command line holds, `-L` parses or is refused with a message; a target it
        /// accepts always has a port and a host that fits the Shadowsocks header.
        #[test]
        fn any_tunnel_text_parses_or_is_refused(text in "[0-9a-f:\\[\\]. ]{0,40}|\\PC{0,300}") {
            match parse_tunnel(&text) {
                Ok(TunnelSpec::Here(forward)) | Ok(TunnelSpec::Own { forward, .. }) => {
                    proptest::prop_assert!((1..=255).contains(&forward.host.len()));
                    proptest::prop_assert!(forward.port != 0);
                }
                Err(message) => proptest::prop_assert!(!message.is_empty()),
            }
        }
    }
}
