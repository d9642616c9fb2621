//! The checked [`Config`]: typed, defaulted, and built once from the file and the command line
//! (command line first, then the file, then the default).
//!
//! | key                 | default     | key                     | default |
//! |---------------------|-------------|-------------------------|---------|
//! | `local_address`     | `127.0.0.1` | `handshake_timeout`     | 10 s    |
//! | `mode`              | `tcp_only`  | `connect_timeout`       | 10 s    |
//! | `timeout`           | 60 s        | `max_connections`       | 10000   |
//! | `udp_timeout`       | 300 s       | `allow_private_targets` | false   |
//! | `threads`           | one per CPU | `nameserver` (`-d`)     | system's |
//! | `plugin_mode`       | `tcp_only`  | `no_delay`              | true    |
//! | `fast_open`         | false       | `reuse_port`            | false   |
//! | `mptcp`             | false       | `keep_alive`            | 15 s    |
//!
//! `no_delay` (`TCP_NODELAY` on both sockets of a relay) is on unless the file says `"no_delay": false`:
//! shadowsocks-libev leaves it off unless asked, but a proxy that batches small writes adds latency to
//! every interactive protocol it carries. `--no-delay` is accepted for libev's command lines.
//!
//! Socket keys (`fast_open`, `reuse_port`, `mptcp`, `no_delay`, `keep_alive`) are applied by
//! `ss_net::socket_options`; `keep_alive` is 15 s unless given (`0` turns keep-alive off). Every key
//! the parser accepts takes effect; a weak password adds a line to [`Config::warnings`], which both
//! binaries log at start.
//! `plugin`, `plugin_opts`, `plugin_args` and `plugin_mode` (SIP003) may also sit in `servers[]` entries;
//! each [`ServerEntry`] carries its own [`Plugin`](crate::Plugin) (see `servers.rs` for the precedence).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::entry::{Mode, ServerEntry};
use crate::online::OnlineConfig;
use crate::raw::{NumberOrString, RawConfig};
use crate::servers;
use crate::{CliArgs, ConfigError};

/// The checked configuration of either binary.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// At least one (or none, with an online config). ss-server listens on each; ss-local tries them in
    /// order.
    pub servers: Vec<ServerEntry>,
    /// `online_config` (SIP008): where ss-local fetches more servers, and how often.
    pub online_config: Option<OnlineConfig>,
    /// Where ss-local listens (default `127.0.0.1`); libev's ss-server uses `-b` to bind outgoing sockets.
    pub local_address: String,
    /// Where ss-local listens; the binary decides whether it is required.
    pub local_port: Option<u16>,
    /// ss-local's listeners: the top-level one (if it has a port), `locals[]` and `-L` tunnels
    /// (see `locals.rs`).
    pub locals: Vec<crate::Local>,
    /// Which of TCP and UDP to relay.
    pub mode: Mode,
    /// Idle timeout of a TCP connection.
    pub timeout: Duration,
    /// Idle timeout of a UDP association.
    pub udp_timeout: Duration,
    /// Time allowed for a client's first request (SOCKS5 handshake, Shadowsocks header).
    pub handshake_timeout: Duration,
    /// Time allowed to connect to a target (ss-server) or a server (ss-local).
    pub connect_timeout: Duration,
    /// Concurrent connections accepted before new ones wait.
    pub max_connections: usize,
    /// Threads serving TCP connections; `None`: one per CPU (see [`Config::threads_or_cpus`]).
    pub threads: Option<usize>,
    /// Whether ss-server may connect to loopback, private and link-local targets.
    pub allow_private_targets: bool,
    /// `TCP_NODELAY` on relayed sockets (default on; `"no_delay": false` turns it off).
    pub no_delay: bool,
    /// TCP Fast Open on listeners and outbound connections.
    pub fast_open: bool,
    /// `SO_REUSEPORT` on TCP and UDP listeners.
    pub reuse_port: bool,
    /// Multipath TCP sockets where the kernel has them.
    pub mptcp: bool,
    /// Silence before TCP keep-alive probes (`keep_alive`, default 15 s); `None`: off (`"keep_alive": 0`).
    pub keep_alive: Option<Duration>,
    /// Prefer IPv6 addresses when resolving.
    pub ipv6_first: bool,
    /// DNS servers to resolve with (`nameserver`, `-d`), in place of the system's; empty: the system's.
    pub nameserver: Vec<SocketAddr>,
    /// File descriptor limit to raise to at start-up.
    pub nofile: Option<u64>,
    /// Access control list file.
    pub acl: Option<PathBuf>,
    /// Users file for ss-local's port (`socks5_auth_config_path`, shadowsocks-rust's form).
    pub socks5_auth_config_path: Option<PathBuf>,
    /// Where ss-server keeps its classic replay filter across restarts.
    pub replay_snapshot: ReplaySnapshot,
    /// How ss-local picks among several servers (`balancer`).
    pub balance: crate::Balance,
    /// `state_dir` / `--state-dir`: where ss-server keeps per-user usage (`None`: its default place).
    pub state_dir: Option<PathBuf>,
    /// `metrics` / `--metrics`: where the Prometheus endpoint listens (`None`: off).
    pub metrics: Option<crate::MetricsAddress>,
    /// `manager_address` / `--manager-address`: where ss-server answers the ss-manager protocol. With
    /// it, a config without any port serves only the ports the manager adds ([`Config::servers`] empty).
    pub manager_address: Option<String>,
    /// `api` / `--api`: where ss-server serves the management API.
    pub api: Option<String>,
    /// `api_token` / `--api-token`: the management API's bearer token.
    pub api_token: Option<String>,
    /// `log_level` from the file; see [`Config::effective_log_level`].
    pub log_level: Option<LogLevel>,
    /// How many times `-v` was given.
    pub verbose: u8,
    /// One-line warnings found while loading (e.g. a config file with a password that others can read);
    /// the binaries log each at start.
    pub warnings: Vec<String>,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    Info,
    /// `-v`.
    Debug,
    /// `-vv`.
    Trace,
}

/// Where the classic replay filter is saved (`replay_snapshot` key, `--replay-snapshot` flag).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReplaySnapshot {
    /// Not configured: the binary picks its default location.
    #[default]
    Default,
    /// `off` (or an empty string): kept in memory only.
    Off,
    /// This file.
    At(PathBuf),
}

impl ReplaySnapshot {
    fn parse(text: Option<&str>) -> ReplaySnapshot {
        match text {
            None => ReplaySnapshot::Default,
            Some(text) if matches!(text.trim(), "" | "off") => ReplaySnapshot::Off,
            Some(path) => ReplaySnapshot::At(PathBuf::from(path)),
        }
    }
}

impl Config {
    /// Checks a raw config with the command line laid over it.
    pub fn from_raw(raw: RawConfig, args: &CliArgs) -> Result<Config, ConfigError> {
        let urls = servers::cli_servers(args)?;
        let manager_address = args.manager_address.clone().or(raw.manager_address.clone());
        // A manager's config (libev's ss-manager form) may name no port: the panel adds them.
        let no_port = args.server_port.is_none() && raw.server_port.is_none() && raw.servers.is_none();
        let servers = match manager_address.is_some() && no_port && urls.is_empty() {
            true => Vec::new(),
            false => servers::resolve(&raw, args, &urls)?,
        };
        let (local_address, local_port) = local(&raw, args)?;
        let mode = match (args.udp_only, args.tcp_and_udp, raw.mode.as_deref()) {
            (true, _, _) => Mode::UdpOnly,
            (false, true, _) => Mode::TcpAndUdp,
            (false, false, Some(text)) => Mode::parse_field("mode", text)?,
            (false, false, None) => Mode::TcpOnly,
        };
        let locals = crate::locals::locals(&raw, args, mode)?;
        // The top-level timeout wins over the (agreeing) per-entry ones of shadowsocks-rust's `servers`.
        let file_timeout = raw.timeout.as_ref().map(|secs| secs.seconds("timeout")).transpose()?;
        let timeout = match (args.timeout, file_timeout) {
            (Some(secs), _) | (None, Some(secs)) => secs,
            (None, None) => servers::shared_timeout(&raw, args)?.unwrap_or(60),
        };
        let fast_open = args.fast_open || raw.fast_open.unwrap_or(false);
        let reuse_port = args.reuse_port || raw.reuse_port.unwrap_or(false);
        let acl = args.acl.clone().or(raw.acl);
        let warnings =
            servers.iter().filter(|entry| entry.password_is_weak).map(weak_password_warning).collect();
        let keep_alive = match &raw.keep_alive {
            None => Some(Duration::from_secs(DEFAULT_KEEP_ALIVE)),
            Some(secs) if secs.parse::<u64>() == Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs.seconds("keep_alive")?)),
        };
        let online_config = OnlineConfig::from_raw(raw.online_config.as_ref())?;
        Ok(Config {
            servers,
            online_config,
            local_address,
            local_port,
            locals,
            mode,
            timeout: Duration::from_secs(timeout),
            udp_timeout: timeout_of("udp_timeout", args.udp_timeout, raw.udp_timeout.as_ref(), 300)?,
            handshake_timeout: timeout_of(
                "handshake_timeout",
                args.handshake_timeout,
                raw.handshake_timeout.as_ref(),
                10,
            )?,
            connect_timeout: timeout_of(
                "connect_timeout",
                args.connect_timeout,
                raw.connect_timeout.as_ref(),
                10,
            )?,
            max_connections: match args.max_connections {
                Some(max) => max,
                None => match &raw.max_connections {
                    Some(max) => max.positive("max_connections")?,
                    None => 10_000,
                },
            },
            threads: match args.threads {
                Some(threads) => Some(threads),
                None => raw.threads.as_ref().map(|threads| threads.positive("threads")).transpose()?,
            },
            allow_private_targets: args.allow_private_targets || raw.allow_private_targets.unwrap_or(false),
            no_delay: args.no_delay || raw.no_delay.unwrap_or(true),
            fast_open,
            reuse_port,
            mptcp: args.mptcp || raw.mptcp.unwrap_or(false),
            keep_alive,
            ipv6_first: args.ipv6_first || raw.ipv6_first.unwrap_or(false),
            nameserver: nameservers(args.nameserver.as_deref().or(raw.nameserver.as_deref()))?,
            nofile: match args.nofile {
                Some(nofile) => Some(nofile),
                None => raw.nofile.as_ref().map(|nofile| nofile.positive("nofile")).transpose()?,
            },
            acl,
            socks5_auth_config_path: raw.socks5_auth_config_path,
            replay_snapshot: ReplaySnapshot::parse(
                args.replay_snapshot.as_deref().or(raw.replay_snapshot.as_deref()),
            ),
            balance: crate::Balance::from_raw(raw.balancer.as_ref())?,
            state_dir: args.state_dir.clone().or(raw.state_dir),
            metrics: args
                .metrics
                .as_deref()
                .or(raw.metrics.as_deref())
                .map(crate::MetricsAddress::parse)
                .transpose()?,
            manager_address,
            api: args.api.clone().or(raw.api),
            api_token: args.api_token.clone().or(raw.api_token),
            log_level: raw.log_level.as_deref().map(LogLevel::parse).transpose()?,
            verbose: args.verbose,
            warnings,
        })
    }

    /// Threads to serve TCP connections with: as configured, else one per CPU the process may use.
    pub fn threads_or_cpus(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cpus| cpus.get()))
    }

    /// The level to log at: `-v` (debug) and `-vv` (trace) win over the file's `log_level`; the default
    /// is info.
    pub fn effective_log_level(&self) -> LogLevel {
        match self.verbose {
            0 => self.log_level.unwrap_or(LogLevel::Info),
            1 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }
}

/// Seconds of silence before keep-alive probes when `keep_alive` is not given: with three probes a
/// third of it apart, a dead peer is found in about 30 s, inside the default 60 s idle timeout.
const DEFAULT_KEEP_ALIVE: u64 = 15;

/// The warning for a weak classic password; the same words from both binaries.
fn weak_password_warning(entry: &ServerEntry) -> String {
    format!(
        "the password for {}:{} is weak: anyone who records traffic can try to guess it offline; use a \
         random key (ss-server --generate-key -m {}) or a long random password",
        entry.host, entry.port, entry.method
    )
}

/// libev's `nameserver` syntax: addresses separated by commas, each an IP (port 53) or an IP and port
/// (`[v6]:port` for IPv6). Empty entries are ignored.
fn nameservers(text: Option<&str>) -> Result<Vec<SocketAddr>, ConfigError> {
    let entries = text.unwrap_or("").split(',').map(str::trim).filter(|entry| !entry.is_empty());
    entries
        .map(|entry| match (entry.parse::<SocketAddr>(), entry.parse::<IpAddr>()) {
            (Ok(addr), _) if addr.port() == 0 => {
                Err(ConfigError::field_error("nameserver", format!("{entry:?}: port 0 is not a port")))
            }
            (Ok(addr), _) => Ok(addr),
            (_, Ok(ip)) => Ok(SocketAddr::new(ip, 53)),
            _ => Err(ConfigError::field_error(
                "nameserver",
                format!("{entry:?} is not an IP address or IP:port (names are not accepted here)"),
            )),
        })
        .collect()
}

impl LogLevel {
    /// The name tracing's filters understand: `error`, `warn`, `info`, `debug`, `trace`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    fn parse(text: &str) -> Result<LogLevel, ConfigError> {
        let levels = [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace];
        let wanted = text.trim().to_ascii_lowercase().replace("warning", "warn");
        let message = || format!("unknown level {text:?}; use error, warn, info, debug or trace");
        let found = levels.into_iter().find(|level| level.as_str() == wanted);
        found.ok_or_else(|| ConfigError::field_error("log_level", message()))
    }
}

/// `local_address` / `local_port` from `-b` / `-l`, the top level, or else the first `locals` entry
/// (every listener, with its protocol, is in [`Config::locals`]).
fn local(raw: &RawConfig, args: &CliArgs) -> Result<(String, Option<u16>), ConfigError> {
    let entry = raw.locals.as_deref().unwrap_or_default().first();
    let address = match (&args.local_address, &raw.local_address) {
        (Some(address), _) | (None, Some(address)) => Some(address.clone()),
        (None, None) => entry.and_then(|local| local.local_address.clone()),
    };
    let address = address.map(|address| address.trim().to_string()).unwrap_or_default();
    let address = if address.is_empty() { "127.0.0.1".to_string() } else { address };
    let port = match (args.local_port, &raw.local_port) {
        (Some(port), _) => Some(port),
        (None, Some(port)) => Some(port.port("local_port")?),
        (None, None) => match entry.and_then(|local| local.local_port.as_ref()) {
            Some(port) => Some(port.port("locals[0].local_port")?),
            None => None,
        },
    };
    Ok((address, port))
}

fn timeout_of(
    field: &str,
    cli: Option<u64>,
    file: Option<&NumberOrString>,
    default: u64,
) -> Result<Duration, ConfigError> {
    let secs = match cli {
        Some(secs) => secs,
        None => file.map(|secs| secs.seconds(field)).transpose()?.unwrap_or(default),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod nameserver_props;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{Forward, Local, Plugin, Protocol, TcpRedir};

    fn check(json: &str) -> Result<Config, ConfigError> {
        Config::from_raw(RawConfig::from_json(json, Path::new("config.json"))?, &CliArgs::default())
    }

    fn error(json: &str) -> String {
        check(json).unwrap_err().to_string()
    }

    const BASE: &str = r#""server":"s","server_port":8388,"password":"barfoo!","method":"aes-256-gcm""#;

    #[test]
    fn libev_readme_example_loads_with_libev_defaults() {
        let config = check(
            r#"{"server":"my_server_ip","server_port":8388,"local_port":1080,"password":"barfoo!","timeout":60,
                "method":"chacha20-ietf-poly1305"}"#,
        )
        .unwrap();
        assert_eq!(config.servers.len(), 1);
        assert_eq!((config.servers[0].host.as_str(), config.servers[0].port), ("my_server_ip", 8388));
        assert!(config.servers[0].password_is_weak);
        assert_eq!((config.local_address.as_str(), config.local_port), ("127.0.0.1", Some(1080)));
        assert_eq!(config.mode, Mode::TcpOnly);
        assert_eq!(config.timeout, Duration::from_secs(60));
        assert_eq!(config.udp_timeout, Duration::from_secs(300));
        assert_eq!(
            (config.handshake_timeout, config.connect_timeout),
            (Duration::from_secs(10), Duration::from_secs(10))
        );
        assert_eq!(config.max_connections, 10_000);
        assert_eq!(config.threads, None);
        // One thread per CPU this process may run on (2 on the test machines, so a constant 1 fails).
        let cpus = std::thread::available_parallelism().map_or(1, |cpus| cpus.get());
        assert_eq!(config.threads_or_cpus(), cpus);
        assert!(!config.allow_private_targets && !config.fast_open && config.no_delay);
        assert_eq!(
            (config.servers[0].plugin.as_ref(), config.acl.as_ref(), config.nofile),
            (None, None, None)
        );
        assert_eq!(config.effective_log_level(), LogLevel::Info);
    }

    #[test]
    fn numbers_as_strings() {
        let config = check(&format!(
            r#"{{{BASE},"local_port":"1080","timeout":"30","udp_timeout":"40","nofile":"51200",
                "max_connections":"7","handshake_timeout":"5","connect_timeout":"6","threads":"3"}}"#
        ))
        .unwrap();
        assert_eq!(config.local_port, Some(1080));
        assert_eq!((config.timeout, config.udp_timeout), (Duration::from_secs(30), Duration::from_secs(40)));
        assert_eq!((config.nofile, config.max_connections), (Some(51200), 7));
        assert_eq!((config.threads, config.threads_or_cpus()), (Some(3), 3));
        assert_eq!(config.handshake_timeout, Duration::from_secs(5));
    }

    #[test]
    fn modes_and_helpers() {
        for (name, mode, tcp, udp) in [
            ("tcp_only", Mode::TcpOnly, true, false),
            ("tcp_and_udp", Mode::TcpAndUdp, true, true),
            ("udp_only", Mode::UdpOnly, false, true),
        ] {
            let config = check(&format!(r#"{{{BASE},"mode":"{name}"}}"#)).unwrap();
            assert_eq!(
                (config.mode, config.mode.tcp(), config.mode.udp(), config.mode.name()),
                (mode, tcp, udp, name)
            );
        }
        assert_eq!(
            error(&format!(r#"{{{BASE},"mode":"both"}}"#)),
            "mode: unknown mode \"both\"; use tcp_only, tcp_and_udp or udp_only"
        );
    }

    #[test]
    fn bad_numbers_name_their_field() {
        assert_eq!(error(&format!(r#"{{{BASE},"timeout":0}}"#)), "timeout: must be at least 1");
        assert_eq!(
            error(&format!(r#"{{{BASE},"udp_timeout":"soon"}}"#)),
            "udp_timeout: \"soon\" is not a whole number"
        );
        assert_eq!(
            error(&format!(r#"{{{BASE},"connect_timeout":1.5}}"#)),
            "connect_timeout: 1.5 is not a whole number"
        );
        assert!(error(&format!(r#"{{{BASE},"handshake_timeout":99999999999}}"#))
            .starts_with("handshake_timeout: "));
        assert_eq!(
            error(&format!(r#"{{{BASE},"max_connections":0}}"#)),
            "max_connections: must be at least 1"
        );
        assert_eq!(error(&format!(r#"{{{BASE},"threads":0}}"#)), "threads: must be at least 1");
        assert_eq!(
            error(&format!(r#"{{{BASE},"threads":"many"}}"#)),
            "threads: \"many\" is not a whole number"
        );
        assert_eq!(
            error(&format!(r#"{{{BASE},"local_port":0}}"#)),
            "local_port: 0 is not a port number (1-65535)"
        );
        assert_eq!(error(&format!(r#"{{{BASE},"nofile":-1}}"#)), "nofile: -1 is not a whole number");
    }

    #[test]
    fn shadowsocks_rust_locals() {
        let config = check(&format!(
            r#"{{{BASE},"locals":[{{"local_address":"::1","local_port":"1081","protocol":"socks"}}]}}"#
        ))
        .unwrap();
        assert_eq!((config.local_address.as_str(), config.local_port), ("::1", Some(1081)));
        let socks = |address: &str, port| Local {
            address: address.into(),
            port,
            protocol: Protocol::Socks,
            mode: Mode::TcpOnly,
        };
        assert_eq!(config.locals, [socks("::1", 1081)]);
        let both =
            check(&format!(r#"{{{BASE},"local_port":1080,"locals":[{{"local_port":1081}}]}}"#)).unwrap();
        assert_eq!(both.local_port, Some(1080));
        assert_eq!(both.locals, [socks("127.0.0.1", 1080), socks("127.0.0.1", 1081)], "each is a listener");
        assert!(check(&format!("{{{BASE}}}")).unwrap().locals.is_empty());
        assert!(error(&format!(r#"{{{BASE},"locals":[{{"local_port":"x"}}]}}"#))
            .starts_with("locals[0].local_port: "));
        assert_eq!(error(&format!(r#"{{{BASE},"locals":[{{}}]}}"#)), "locals[0].local_port: missing");
    }

    #[test]
    fn every_kind_of_local() {
        let config = check(&format!(
            r#"{{{BASE},"mode":"tcp_and_udp","locals":[
                {{"local_port":1080,"protocol":"http","mode":"tcp_only"}},
                {{"local_address":"::","local_port":5353,"protocol":"tunnel","forward_address":"[2001:db8::53]","forward_port":"53"}},
                {{"local_address":"0.0.0.0","local_port":12345,"protocol":"redir","tcp_redir":"tproxy","udp_redir":"tproxy"}},
                {{"local_port":12346,"protocol":"redir"}}]}}"#
        ))
        .unwrap();
        let protocols: Vec<_> =
            config.locals.iter().map(|local| (local.port, local.protocol.clone(), local.mode)).collect();
        let forward = Forward { host: "2001:db8::53".into(), port: 53 };
        assert_eq!(
            protocols,
            [
                (1080, Protocol::Http, Mode::TcpOnly),
                (5353, Protocol::Tunnel(forward), Mode::TcpAndUdp),
                (12345, Protocol::Redir { tcp: TcpRedir::Tproxy }, Mode::TcpAndUdp),
                (12346, Protocol::Redir { tcp: TcpRedir::Redirect }, Mode::TcpAndUdp),
            ]
        );
        assert_eq!(config.locals[1].address, "::");
    }

    #[test]
    fn bad_locals_are_one_line_errors() {
        let local = |fields: &str| error(&format!(r#"{{{BASE},"locals":[{{"local_port":1,{fields}}}]}}"#));
        assert_eq!(
            local(r#""protocol":"ftp""#),
            "locals[0].protocol: unknown protocol \"ftp\"; use socks, http, tunnel or redir"
        );
        assert_eq!(
            local(r#""protocol":"tunnel""#),
            "locals[0].forward_address: missing: a tunnel needs forward_address and forward_port"
        );
        assert_eq!(local(r#""protocol":"tunnel","forward_address":"h""#), "locals[0].forward_port: missing");
        assert_eq!(
            local(r#""protocol":"tunnel","forward_address":" ","forward_port":1"#),
            "locals[0].forward_address: empty host"
        );
        assert!(local(r#""protocol":"tunnel","forward_address":"h","forward_port":0"#)
            .starts_with("locals[0].forward_port: "));
        assert_eq!(
            local(r#""protocol":"socks","forward_address":"h","forward_port":1"#),
            "locals[0].forward_address: only a \"tunnel\" listener takes it"
        );
        assert_eq!(
            local(r#""protocol":"redir","tcp_redir":"divert""#),
            "locals[0].tcp_redir: unknown \"divert\"; use redirect or tproxy"
        );
        assert!(local(r#""protocol":"redir","udp_redir":"redirect""#).starts_with("locals[0].udp_redir: "));
        assert_eq!(
            local(r#""tcp_redir":"tproxy""#),
            "locals[0].tcp_redir: only a \"redir\" listener takes it"
        );
        assert!(local(r#""mode":"both""#).starts_with("locals[0].mode: unknown mode"));
        assert_eq!(
            error(&format!(r#"{{{BASE},"local_port":1,"protocol":"x"}}"#)),
            "protocol: unknown protocol \"x\"; use socks, http, tunnel or redir"
        );
    }

    #[test]
    fn libev_tunnels_from_the_file_and_the_command_line() {
        let tunnel = |address: &str, port, host: &str, target| Local {
            address: address.into(),
            port,
            protocol: Protocol::Tunnel(Forward { host: host.into(), port: target }),
            mode: Mode::TcpOnly,
        };
        let file = check(&format!(r#"{{{BASE},"local_port":5353,"tunnel_address":"8.8.8.8:53"}}"#)).unwrap();
        assert_eq!(
            file.locals,
            [tunnel("127.0.0.1", 5353, "8.8.8.8", 53)],
            "ss-tunnel's -l port is the tunnel"
        );
        let raw =
            RawConfig::from_json(&format!(r#"{{{BASE},"tunnel_address":["x:1"]}}"#), Path::new("c")).unwrap();
        let args = CliArgs {
            local_port: Some(5300),
            tunnel: vec!["[2001:db8::1]:53".into(), "5301:dns.example:853".into(), "[::1]:5302:h:1".into()],
            ..CliArgs::default()
        };
        let config = Config::from_raw(raw, &args).unwrap();
        assert_eq!(
            config.locals,
            [
                tunnel("127.0.0.1", 5300, "2001:db8::1", 53),
                tunnel("127.0.0.1", 5301, "dns.example", 853),
                tunnel("::1", 5302, "h", 1)
            ],
            "-L replaces the file's tunnel_address"
        );
        let args = |tunnel: &[&str], port: Option<u16>, protocol: Option<&str>| CliArgs {
            local_port: port,
            tunnel: tunnel.iter().map(|spec| spec.to_string()).collect(),
            protocol: protocol.map(str::to_string),
            ..CliArgs::default()
        };
        let error = |args: CliArgs| {
            let raw = RawConfig::from_json(&format!("{{{BASE}}}"), Path::new("c")).unwrap();
            Config::from_raw(raw, &args).unwrap_err().to_string()
        };
        assert!(error(args(&["a:1", "b:2"], Some(1), None))
            .starts_with("-L: only one tunnel without its own local port"));
        assert!(error(args(&["a:1"], None, None)).starts_with("-L: a tunnel needs a local port"));
        assert!(error(args(&["a:1"], Some(1), Some("redir")))
            .starts_with("--protocol: -L makes the local port a tunnel"));
        assert!(error(args(&["a"], Some(1), None)).starts_with("-L: \"a\" is not HOST:PORT"));
        assert_eq!(
            error(args(&[], Some(1), Some("tunnel"))),
            "tunnel_address: missing: the tunnel's target (-L HOST:PORT or \"tunnel_address\")"
        );
    }

    #[test]
    fn plugins() {
        let plugin_of = |json: &str| check(json).unwrap().servers[0].plugin.clone();
        let plugin = plugin_of(&format!(r#"{{{BASE},"plugin":"v2ray-plugin","plugin_opts":"server"}}"#));
        assert_eq!(plugin, Some(Plugin::new("v2ray-plugin", Some("server".into()))));
        let plugin = plugin_of(&format!(
            r#"{{{BASE},"plugin":"p","plugin_args":["-v","x y"],"plugin_mode":"tcp_and_udp"}}"#
        ))
        .unwrap();
        assert_eq!((plugin.args, plugin.mode), (vec!["-v".to_string(), "x y".to_string()], Mode::TcpAndUdp));
        assert_eq!(
            error(&format!(r#"{{{BASE},"plugin":"p","plugin_mode":"both"}}"#)),
            "plugin_mode: unknown mode \"both\"; use tcp_only, tcp_and_udp or udp_only"
        );
        assert!(error(&format!(r#"{{{BASE},"plugin_args":["x"]}}"#)).starts_with("plugin_args: "));
        assert_eq!(plugin_of(&format!(r#"{{{BASE},"plugin":"","plugin_opts":"x"}}"#)), None);
        assert!(error(&format!(r#"{{{BASE},"plugin_opts":"x"}}"#)).starts_with("plugin_opts: "));
    }

    #[test]
    fn servers_entries_have_their_own_plugin_or_the_top_levels() {
        let config = check(
            r#"{"password":"barfoo!","method":"aes-256-gcm","plugin":"top","plugin_opts":"t=1","servers":[
                {"server":"a","port":1,"plugin":"p","plugin_opts":"o","plugin_args":["1"],"plugin_mode":"udp_only"},
                {"server":"b","port":2},
                {"server":"c","port":3,"plugin":""}]}"#,
        )
        .unwrap();
        let own = config.servers[0].plugin.clone().unwrap();
        assert_eq!((own.command.as_str(), own.options.as_deref()), ("p", Some("o")));
        assert_eq!((own.args, own.mode), (vec!["1".to_string()], Mode::UdpOnly));
        assert_eq!(config.servers[1].plugin, Some(Plugin::new("top", Some("t=1".into()))));
        assert_eq!(config.servers[2].plugin, None, "an empty plugin switches it off");
        let text = error(
            r#"{"password":"p","method":"aes-256-gcm","plugin":"top","servers":[{"server":"a","port":1,"plugin_opts":"o"}]}"#,
        );
        assert!(text.starts_with("servers[0].plugin_opts: set, but this entry has no \"plugin\""), "{text}");
        let text = error(
            r#"{"password":"p","method":"aes-256-gcm","servers":[{"server":"a","port":1,"plugin":"p","plugin_mode":"x"}]}"#,
        );
        assert!(text.starts_with("servers[0].plugin_mode: unknown mode"), "{text}");
    }

    #[test]
    fn log_level_from_file_and_verbose_flag() {
        let config = check(&format!(r#"{{{BASE},"log_level":"WARNING","nameserver":"1.1.1.1"}}"#)).unwrap();
        assert_eq!(
            (config.effective_log_level(), config.effective_log_level().as_str()),
            (LogLevel::Warn, "warn")
        );
        assert_eq!(config.nameserver, ["1.1.1.1:53".parse::<SocketAddr>().unwrap()]);
        let verbose = Config { verbose: 1, ..config };
        assert_eq!(verbose.effective_log_level(), LogLevel::Debug);
        assert!(error(&format!(r#"{{{BASE},"log_level":"loud"}}"#))
            .starts_with("log_level: unknown level \"loud\""));
    }

    #[test]
    fn nameservers_in_libev_syntax() {
        let config =
            check(&format!(r#"{{{BASE},"nameserver":"8.8.8.8, 127.0.0.1:5353,::1,[::1]:54,"}}"#)).unwrap();
        let expected: Vec<SocketAddr> = ["8.8.8.8:53", "127.0.0.1:5353", "[::1]:53", "[::1]:54"]
            .iter()
            .map(|addr| addr.parse().unwrap())
            .collect();
        assert_eq!(config.nameserver, expected);
        assert!(check(&format!(r#"{{{BASE},"nameserver":" "}}"#)).unwrap().nameserver.is_empty());
        assert!(check(&format!("{{{BASE}}}")).unwrap().nameserver.is_empty());
        for bad in ["dns.google", "1.1.1.1:99999", "1.1.1.1;8.8.8.8"] {
            let message = error(&format!(r#"{{{BASE},"nameserver":"{bad}"}}"#));
            assert!(message.starts_with("nameserver: "), "{bad}: {message}");
        }
    }

    #[test]
    fn metrics_is_off_by_default_and_the_flag_wins_over_the_key() {
        assert_eq!(check(&format!("{{{BASE}}}")).unwrap().metrics, None);
        let json = format!(r#"{{{BASE},"metrics":"127.0.0.1:9100"}}"#);
        let from_file = check(&json).unwrap().metrics;
        assert_eq!(from_file, Some(crate::MetricsAddress::Tcp("127.0.0.1:9100".parse().unwrap())));
        let raw = RawConfig::from_json(&json, Path::new("config.json")).unwrap();
        let args = CliArgs { metrics: Some("/run/m.sock".into()), ..CliArgs::default() };
        let flag = Config::from_raw(raw, &args).unwrap().metrics;
        assert_eq!(flag, Some(crate::MetricsAddress::Unix("/run/m.sock".into())));
        assert!(error(&format!(r#"{{{BASE},"metrics":"9100"}}"#)).starts_with("metrics: "));
    }

    #[test]
    fn replay_snapshot_path_off_or_default() {
        assert_eq!(check(&format!("{{{BASE}}}")).unwrap().replay_snapshot, ReplaySnapshot::Default);
        let at = check(&format!(r#"{{{BASE},"replay_snapshot":"/var/lib/ss/replay"}}"#)).unwrap();
        assert_eq!(at.replay_snapshot, ReplaySnapshot::At(PathBuf::from("/var/lib/ss/replay")));
        for off in ["off", "", " off "] {
            let config = check(&format!(r#"{{{BASE},"replay_snapshot":"{off}"}}"#)).unwrap();
            assert_eq!(config.replay_snapshot, ReplaySnapshot::Off, "{off:?}");
        }
    }

    #[test]
    fn booleans_from_the_file() {
        let config = check(&format!(
            r#"{{{BASE},"fast_open":true,"no_delay":true,"reuse_port":true,"ipv6_first":true,
                "allow_private_targets":true,"acl":"/etc/ss.acl","mptcp":true,"keep_alive":"40"}}"#
        ))
        .unwrap();
        assert!(
            config.fast_open && config.no_delay && config.reuse_port && config.ipv6_first && config.mptcp
        );
        assert_eq!(config.keep_alive, Some(Duration::from_secs(40)));
        assert!(config.allow_private_targets);
        assert_eq!(config.acl, Some(PathBuf::from("/etc/ss.acl")));
        let off = check(&format!(r#"{{{BASE},"no_delay":false,"keep_alive":0}}"#)).unwrap();
        assert!(!off.no_delay, "no_delay is on by default and the file can turn it off");
        assert_eq!(off.keep_alive, None, "keep_alive 0 turns keep-alive off");
        let default = check(&format!("{{{BASE}}}")).unwrap();
        assert!(!default.fast_open && !default.reuse_port && !default.mptcp);
        assert_eq!(default.keep_alive, Some(Duration::from_secs(15)));
        let error = check(&format!(r#"{{{BASE},"keep_alive":"soon"}}"#)).unwrap_err().to_string();
        assert!(error.contains("keep_alive"), "{error}");
    }

    #[test]
    fn socket_keys_are_not_warned_about_and_weak_passwords_are_one_line_warnings() {
        let strong = r#""server":"s","server_port":1,"password":"a long and varied password 1234","method":"aes-256-gcm""#;
        assert!(check(&format!("{{{strong}}}")).unwrap().warnings.is_empty());
        let config =
            check(&format!(r#"{{{strong},"fast_open":true,"reuse_port":true,"acl":"/etc/ss.acl"}}"#))
                .unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let weak = check(&format!("{{{BASE}}}")).unwrap().warnings;
        assert_eq!(weak.len(), 1, "{weak:?}");
        assert!(weak[0].starts_with("the password for s:8388 is weak: "), "{weak:?}");
        assert!(weak[0].contains("--generate-key -m aes-256-gcm") && !weak[0].contains('\n'), "{weak:?}");
    }
}
