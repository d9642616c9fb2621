//! The command line of both binaries, with shadowsocks-libev's flags and meanings.
//!
//! Each binary flattens [`CliArgs`] into its own parser (`#[command(flatten)]`) and parses with
//! [`parse_for`], which hides the flags that belong to the other binary and refuses
//! them by name: `--allow-private-targets is an ss-server option`. Taken here:
//! `-c -s -p -l -b -k -m -t -u -U -v -6 -d -n` and the long names below. clap keeps `-h/--help` (libev's
//! `-h` too); the binary's `#[command(version)]` adds `-V/--version`. Values given here win over the
//! config file.
//!
//! | only ss-local takes            | only ss-server takes                                               |
//! |--------------------------------|--------------------------------------------------------------------|
//! | `-l/--local-port`              | `--allow-private-targets`, `--replay-snapshot`, `-d/--nameserver`, |
//! | `-b/--local-address`, `-L`     | `--generate-key`                                                   |
//! | `--protocol`, `--tcp-redir`,   |                                                                    |
//! | `--udp-redir`                  |                                                                    |
//!
//! libev's ss-server reads `-b` as the address to bind outgoing connections to, which we do not offer,
//! so `-b` is ss-local's only. `--udp-timeout` serves both: ss-local's tunnel and redir associations end
//! with it (SOCKS5 ones with their control connection). (The config file's keys are shared: each binary reads the keys it
//! uses and leaves the other's alone, so one file serves both.)
//!
//! `--server-url` is the exception: each `ss://` URL is a whole server (host, port, method, key) and is
//! appended to the list built from `-s` or the file, which `-p/-m/-k/--key` shape as usual; those flags
//! leave the URL's servers alone, and so do `--plugin` / `--plugin-opts`: a URL's server has the URL's
//! `plugin`, if any. The URL is checked when the config is, with an error that hides the password.

use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgAction, Command, CommandFactory, FromArgMatches};

use crate::raw::MAX_SECONDS;

/// Command-line flags shared by `ss-local` and `ss-server`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct CliArgs {
    /// Config file (shadowsocks-libev JSON)
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Server host or IP (repeatable): where ss-local connects, where ss-server listens
    #[arg(short = 's', long = "server", value_name = "HOST")]
    pub server: Vec<String>,
    /// Server as an ss:// URL (SIP002; repeatable), added after the servers of -s or the config file;
    /// -p, -m, -k and --key do not apply to it. Visible in `ps`, like -k
    #[arg(long = "server-url", value_name = "URL")]
    pub server_url: Vec<String>,
    /// Server port
    #[arg(short = 'p', long = "server-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub server_port: Option<u16>,
    /// Local port (ss-local's SOCKS5 listener, unless --protocol or -L HOST:PORT says otherwise)
    #[arg(short = 'l', long = "local-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub local_port: Option<u16>,
    /// Local address (of the -l listener and of -L tunnels without their own) [default: 127.0.0.1]
    #[arg(short = 'b', long = "local-address", value_name = "ADDR")]
    pub local_address: Option<String>,
    /// Tunnel (libev's ss-tunnel; repeatable): HOST:PORT makes the -l port forward there through the
    /// server, TCP and UDP; LOCAL_PORT:HOST:PORT (or BIND:LOCAL_PORT:HOST:PORT) adds a tunnel on its own
    /// port
    #[arg(short = 'L', long = "tunnel", value_name = "[[BIND:]PORT:]HOST:PORT")]
    pub tunnel: Vec<String>,
    /// What the -l port speaks: socks (default), http, tunnel (with -L) or redir (transparent proxy)
    #[arg(long = "protocol", value_name = "PROTOCOL")]
    pub protocol: Option<String>,
    /// How a redir port gets TCP: redirect (nftables/iptables REDIRECT, the default) or tproxy
    #[arg(long = "tcp-redir", value_name = "redirect|tproxy")]
    pub tcp_redir: Option<String>,
    /// How a redir port gets UDP (with -u/-U): tproxy, the only way
    #[arg(long = "udp-redir", value_name = "tproxy")]
    pub udp_redir: Option<String>,
    /// Password (classic methods) or base64 key (2022 methods); visible in `ps`, prefer the config file
    #[arg(short = 'k', long = "password", value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Key in base64; wins over the password
    #[arg(long = "key", value_name = "BASE64")]
    pub key: Option<String>,
    /// Read the password (or base64 key) from the first line of FILE instead of -k, out of sight of `ps`
    #[arg(long = "password-file", value_name = "FILE", conflicts_with_all = ["password", "password_env"])]
    pub password_file: Option<PathBuf>,
    /// Read the password (or base64 key) from the environment variable NAME instead of -k
    #[arg(long = "password-env", value_name = "NAME", conflicts_with = "password")]
    pub password_env: Option<String>,
    /// Encryption method, e.g. 2022-blake3-aes-256-gcm or chacha20-ietf-poly1305
    #[arg(short = 'm', long = "method", value_name = "METHOD")]
    pub method: Option<String>,
    /// Idle timeout in seconds [default: 60]
    #[arg(short = 't', long = "timeout", value_name = "SECONDS", value_parser = seconds_parser())]
    pub timeout: Option<u64>,
    /// Relay TCP and UDP
    #[arg(short = 'u', conflicts_with = "udp_only")]
    pub tcp_and_udp: bool,
    /// Relay UDP only
    #[arg(short = 'U')]
    pub udp_only: bool,
    /// More logging (-v debug, -vv trace)
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
    /// SIP003 plugin command
    #[arg(long = "plugin", value_name = "COMMAND")]
    pub plugin: Option<String>,
    /// SIP003 plugin options (SS_PLUGIN_OPTIONS)
    #[arg(long = "plugin-opts", value_name = "OPTIONS")]
    pub plugin_opts: Option<String>,
    /// TCP Fast Open on listeners and outbound connections
    #[arg(long = "fast-open")]
    pub fast_open: bool,
    /// Set TCP_NODELAY on relayed sockets (already the default; "no_delay": false in the file turns it off)
    #[arg(long = "no-delay")]
    pub no_delay: bool,
    /// SO_REUSEPORT on listeners, so several processes can serve one port
    #[arg(long = "reuse-port")]
    pub reuse_port: bool,
    /// Multipath TCP sockets where the kernel has them (plain TCP otherwise, with a warning)
    #[arg(long = "mptcp")]
    pub mptcp: bool,
    /// Access control list file (shadowsocks-libev syntax)
    #[arg(long = "acl", value_name = "FILE")]
    pub acl: Option<PathBuf>,
    /// Prefer IPv6 addresses when resolving (ss-local: the server's name; ss-server: targets)
    #[arg(short = '6')]
    pub ipv6_first: bool,
    /// Let ss-server connect to loopback and private addresses
    #[arg(long = "allow-private-targets")]
    pub allow_private_targets: bool,
    /// Seconds allowed for a client's first request [default: 10]
    #[arg(long = "handshake-timeout", value_name = "SECONDS", value_parser = seconds_parser())]
    pub handshake_timeout: Option<u64>,
    /// Seconds allowed to connect to a target or server [default: 10]
    #[arg(long = "connect-timeout", value_name = "SECONDS", value_parser = seconds_parser())]
    pub connect_timeout: Option<u64>,
    /// Concurrent connection cap [default: 10000]
    #[arg(long = "max-connections", value_name = "N", value_parser = positive_count)]
    pub max_connections: Option<usize>,
    /// Threads serving TCP connections [default: one per CPU]
    #[arg(long = "threads", value_name = "N", value_parser = positive_count)]
    pub threads: Option<usize>,
    /// Name servers for ss-server's resolver, in place of /etc/resolv.conf's: IP or IP:port, comma
    /// separated (libev's -d)
    #[arg(short = 'd', long = "nameserver", value_name = "ADDR[,ADDR]")]
    pub nameserver: Option<String>,
    /// UDP association idle timeout in seconds (ss-server; ss-local's tunnels and redir) [default: 300]
    #[arg(long = "udp-timeout", value_name = "SECONDS", value_parser = seconds_parser())]
    pub udp_timeout: Option<u64>,
    /// Open-file limit to set at start [default: the hard limit]
    #[arg(short = 'n', long = "nofile", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub nofile: Option<u64>,
    /// ss-server: file the classic replay filter is saved to and loaded from, or `off`
    /// [default: $STATE_DIRECTORY, $XDG_STATE_HOME/ss-rs or ~/.local/state/ss-rs, replay-PORT.snapshot]
    #[arg(long = "replay-snapshot", value_name = "FILE|off")]
    pub replay_snapshot: Option<String>,
    /// ss-server: directory of the per-user usage store (multi-user servers)
    /// [default: $STATE_DIRECTORY, $XDG_STATE_HOME/ss-rs or ~/.local/state/ss-rs]
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics on GET /metrics at ADDR:PORT (e.g. 127.0.0.1:9100) or a unix socket
    /// path [default: off]
    #[arg(long = "metrics", value_name = "ADDR")]
    pub metrics: Option<String>,
    /// ss-server: answer shadowsocks-libev's ss-manager protocol (add, remove, list, ping) on this UDP
    /// `host:port` or unix datagram socket path; each added port is served in-process
    #[arg(long = "manager-address", value_name = "ADDR|PATH")]
    pub manager_address: Option<String>,
    /// ss-server: serve the Shadowsocks Server Management API v1 (HTTP) on this `host:port` (needs
    /// --api-token) or unix socket path
    #[arg(long = "api", value_name = "ADDR|PATH")]
    pub api: Option<String>,
    /// ss-server: the bearer token the management API requires (other users can read a command line:
    /// prefer api_token in the config file)
    #[arg(long = "api-token", value_name = "TOKEN")]
    pub api_token: Option<String>,
    /// Print a fresh random key for the method given with -m (base64) and exit
    #[arg(long = "generate-key")]
    pub generate_key: bool,
    /// Print each configured server's ss:// link (SIP002) and exit
    #[arg(long = "print-url")]
    pub print_url: bool,
    /// With --print-url: also draw each link as a QR code in the terminal
    #[arg(long = "qr", requires = "print_url")]
    pub qr: bool,
    /// Check the config and exit: load it as a start does, resolve server names, bind every listen
    /// address (then release it), find plugins, report the open-file limit; exit 0 with "config OK",
    /// else 1 listing every problem
    #[arg(long = "check")]
    pub check: bool,
    /// Print the manual page (roff) and exit; the package's pages are made with it ([`crate::man`])
    #[arg(long = "man-page", hide = true)]
    pub man_page: bool,
}

/// The two programs sharing [`CliArgs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `ss-local`.
    Local,
    /// `ss-server`.
    Server,
}

/// Flags (by their [`CliArgs`] field) that only one binary takes; every other flag applies to both.
const OWNED: &[(&str, Binary)] = &[
    ("local_port", Binary::Local),
    ("local_address", Binary::Local),
    ("tunnel", Binary::Local),
    ("protocol", Binary::Local),
    ("tcp_redir", Binary::Local),
    ("udp_redir", Binary::Local),
    ("allow_private_targets", Binary::Server),
    ("replay_snapshot", Binary::Server),
    ("state_dir", Binary::Server),
    ("nameserver", Binary::Server),
    ("generate_key", Binary::Server),
    ("manager_address", Binary::Server),
    ("api", Binary::Server),
    ("api_token", Binary::Server),
];

impl Binary {
    /// The program's name: `ss-local` or `ss-server`.
    pub fn name(self) -> &'static str {
        match self {
            Binary::Local => "ss-local",
            Binary::Server => "ss-server",
        }
    }

    /// `command` without the flags of the other binary in its help (they still parse, so that
    /// [`try_parse_for`] can refuse them by name rather than as unknown).
    pub fn command(self, command: Command) -> Command {
        OWNED
            .iter()
            .filter(|(_, owner)| *owner != self)
            .fold(command, |command, (id, _)| command.mut_arg(*id, |arg| arg.hide(true)))
    }
}

/// Parses the process's command line for `binary` (see [`try_parse_for`]); on an error or `--help`,
/// prints clap's message and exits (code 2 for errors, as clap does).
pub fn parse_for<P: CommandFactory + FromArgMatches>(binary: Binary) -> P {
    try_parse_for(binary, std::env::args_os()).unwrap_or_else(|error| error.exit())
}

/// Parses `argv` (program name first) into `P`, a parser that flattens [`CliArgs`]; a flag of the other
/// binary is an error naming that binary.
pub fn try_parse_for<P, I, T>(binary: Binary, argv: I) -> Result<P, clap::Error>
where
    P: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut command = binary.command(P::command());
    let matches = command.try_get_matches_from_mut(argv)?;
    let misplaced = OWNED
        .iter()
        .find(|(id, owner)| *owner != binary && matches.value_source(id) == Some(ValueSource::CommandLine));
    if let Some((id, owner)) = misplaced {
        let flag = command.get_arguments().find(|arg| arg.get_id() == *id).map_or_else(
            || (*id).to_string(),
            |arg| match (arg.get_short(), arg.get_long()) {
                (Some(short), Some(long)) => format!("-{short}/--{long}"),
                (None, Some(long)) => format!("--{long}"),
                (Some(short), None) => format!("-{short}"),
                (None, None) => (*id).to_string(),
            },
        );
        let message = format!("{flag} is an {} option, not one of {}", owner.name(), binary.name());
        return Err(command.error(ErrorKind::ArgumentConflict, message));
    }
    P::from_arg_matches(&matches).map_err(|error| error.format(&mut command))
}

fn seconds_parser() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=MAX_SECONDS)
}

fn positive_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(count) => Ok(count),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::{Config, LogLevel, Mode, Plugin, RawConfig};

    /// How a binary uses `CliArgs`.
    #[derive(Debug, Parser)]
    #[command(name = "ss-test", version)]
    struct Cli {
        #[command(flatten)]
        args: CliArgs,
    }

    fn parse(argv: &[&str]) -> Result<CliArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("ss-test").chain(argv.iter().copied())).map(|cli| cli.args)
    }

    const FILE: &str = r#"{
        "server": ["file-a", "file-b"], "server_port": 1111, "local_address": "127.0.0.2", "local_port": 2222,
        "password": "file password that is long", "method": "aes-128-gcm", "timeout": 11, "udp_timeout": 12,
        "mode": "tcp_only", "plugin": "file-plugin", "plugin_opts": "file-opts", "acl": "/file.acl",
        "handshake_timeout": 13, "connect_timeout": 14, "max_connections": 15, "log_level": "warn",
        "nofile": 1024,
        "nameserver": "192.0.2.53",
        "replay_snapshot": "/file.snapshot"
    }"#;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_overrides_the_file() {
        let args = parse(&[
            "-s",
            "cli-a",
            "-s",
            "[::1]",
            "-p",
            "3333",
            "-l",
            "4444",
            "-b",
            "::",
            "-k",
            "cli password",
            "-m",
            "chacha20-ietf-poly1305",
            "-t",
            "21",
            "-u",
            "-vv",
            "--plugin",
            "cli-plugin",
            "--plugin-opts",
            "cli-opts",
            "--fast-open",
            "--no-delay",
            "--reuse-port",
            "--mptcp",
            "--acl",
            "/cli.acl",
            "-6",
            "--allow-private-targets",
            "--handshake-timeout",
            "23",
            "--connect-timeout",
            "24",
            "--max-connections",
            "25",
            "--threads",
            "2",
            "--udp-timeout",
            "22",
            "-n",
            "4096",
            "-d",
            "127.0.0.1:5353,::1",
            "--replay-snapshot",
            "off",
        ])
        .unwrap();
        let raw = RawConfig::from_json(FILE, Path::new("file.json")).unwrap();
        let config = Config::from_raw(raw, &args).unwrap();
        let hosts: Vec<_> = config.servers.iter().map(|s| (s.host.as_str(), s.port)).collect();
        assert_eq!(hosts, [("cli-a", 3333), ("::1", 3333)]);
        assert_eq!(config.servers[0].method, ss_crypto::Method::ChaCha20IetfPoly1305);
        let expected = ss_crypto::Key::from_password(config.servers[0].method, "cli password").unwrap();
        assert_eq!(config.servers[0].key, expected);
        assert!(config.servers[0].password_is_weak);
        assert_eq!((config.local_address.as_str(), config.local_port), ("::", Some(4444)));
        assert_eq!(config.mode, Mode::TcpAndUdp);
        assert_eq!(config.timeout, Duration::from_secs(21));
        assert_eq!(config.udp_timeout, Duration::from_secs(22));
        assert_eq!(config.nofile, Some(4096), "-n over the file's nofile");
        assert_eq!(config.handshake_timeout, Duration::from_secs(23));
        assert_eq!(config.connect_timeout, Duration::from_secs(24));
        assert_eq!(config.max_connections, 25);
        assert_eq!(config.threads, Some(2));
        let plugin = Plugin::new("cli-plugin", Some("cli-opts".into()));
        assert!(config.servers.iter().all(|server| server.plugin == Some(plugin.clone())));
        assert_eq!(config.acl.as_deref(), Some(Path::new("/cli.acl")));
        assert!(config.fast_open && config.no_delay && config.reuse_port && config.ipv6_first);
        assert!(config.mptcp, "--mptcp");
        assert!(config.allow_private_targets);
        assert_eq!(config.verbose, 2);
        assert_eq!(config.effective_log_level(), LogLevel::Trace);
        let nameservers: Vec<String> = config.nameserver.iter().map(ToString::to_string).collect();
        assert_eq!(nameservers, ["127.0.0.1:5353", "[::1]:53"]);
        assert_eq!(config.replay_snapshot, crate::ReplaySnapshot::Off);
    }

    #[test]
    fn without_flags_the_file_stands() {
        let raw = RawConfig::from_json(FILE, Path::new("file.json")).unwrap();
        let config = Config::from_raw(raw, &parse(&[]).unwrap()).unwrap();
        let hosts: Vec<_> = config.servers.iter().map(|s| (s.host.as_str(), s.port)).collect();
        assert_eq!(hosts, [("file-a", 1111), ("file-b", 1111)]);
        assert_eq!((config.local_address.as_str(), config.local_port), ("127.0.0.2", Some(2222)));
        assert_eq!(config.timeout, Duration::from_secs(11));
        assert_eq!(config.max_connections, 15);
        assert_eq!(config.effective_log_level(), LogLevel::Warn);
        assert!(!config.fast_open && !config.allow_private_targets);
        assert_eq!(config.nameserver, ["192.0.2.53:53".parse::<std::net::SocketAddr>().unwrap()]);
        assert_eq!(config.replay_snapshot, crate::ReplaySnapshot::At("/file.snapshot".into()));
    }

    #[test]
    fn key_flag_beats_the_files_password_and_udp_only_beats_the_files_mode() {
        let key = "AAECAwQFBgcICQoLDA0ODw==";
        let raw = RawConfig::from_json(FILE, Path::new("file.json")).unwrap();
        let config = Config::from_raw(raw, &parse(&["--key", key, "-U"]).unwrap()).unwrap();
        assert_eq!(
            config.servers[0].key,
            ss_crypto::Key::from_base64(config.servers[0].method, key).unwrap()
        );
        assert!(!config.servers[0].password_is_weak);
        assert_eq!(config.mode, Mode::UdpOnly);
    }

    #[test]
    fn server_urls_come_after_the_other_servers_whole() {
        let with_plugin = "ss://2022-blake3-aes-128-gcm:AAECAwQFBgcICQoLDA0ODw%3D%3D@[::1]:9000/\
                           ?plugin=url-plugin%3Burl-opts#A";
        let classic = "ss://YWVzLTEyOC1nY206dGVzdA@url-b:9001";
        let args = parse(&["-p", "3333", "-m", "chacha20-ietf-poly1305", "-k", "cli password"]).unwrap();
        let args = CliArgs { server_url: vec![with_plugin.into(), classic.into()], ..args };
        let raw = RawConfig::from_json(FILE, Path::new("file.json")).unwrap();
        let config = Config::from_raw(raw, &args).unwrap();
        let servers: Vec<_> = config.servers.iter().map(|s| (s.host.as_str(), s.port, s.method)).collect();
        let chacha = ss_crypto::Method::ChaCha20IetfPoly1305;
        assert_eq!(
            servers,
            [
                ("file-a", 3333, chacha),
                ("file-b", 3333, chacha),
                ("::1", 9000, ss_crypto::Method::Blake3Aes128Gcm),
                ("url-b", 9001, ss_crypto::Method::Aes128Gcm),
            ]
        );
        assert_eq!(config.servers[3].key, ss_crypto::Key::from_password(servers[3].2, "test").unwrap());
        assert!(config.servers[3].password_is_weak);
        // Each URL server has its own URL's plugin; the file's plugin stays with the file's servers.
        let url_plugin = Plugin::new("url-plugin", Some("url-opts".into()));
        assert_eq!(config.servers[2].plugin, Some(url_plugin));
        assert_eq!(config.servers[3].plugin, None);
        assert_eq!(config.servers[0].plugin, Some(Plugin::new("file-plugin", Some("file-opts".into()))));

        let only_urls = parse(&["--server-url", classic, "--server-url", with_plugin]).unwrap();
        let config = Config::from_raw(RawConfig::default(), &only_urls).unwrap();
        assert_eq!(config.servers.iter().map(|s| s.host.as_str()).collect::<Vec<_>>(), ["url-b", "::1"]);
        let plugins: Vec<_> =
            config.servers.iter().map(|s| s.plugin.as_ref().map(|p| p.command.as_str())).collect();
        assert_eq!(plugins, [None, Some("url-plugin")]);
    }

    #[test]
    fn bad_server_urls_name_the_flag_and_hide_the_password() {
        let check = |argv: &[&str]| Config::from_raw(RawConfig::default(), &parse(argv).unwrap());
        let error = check(&["--server-url", "ss://aes-128-gcm:hunter2@h"]).unwrap_err();
        assert_eq!(error.to_string(), "--server-url: missing port (the address must be host:port)");
        let error =
            check(&["--server-url", "ss://YWVzLTEyOC1nY206dGVzdA@h:1", "--server-url", "ss://x:hunter2@h:1"])
                .unwrap_err();
        assert_eq!(error.field(), Some("--server-url #2"));
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let config =
            check(&["--plugin", "other", "--server-url", "ss://YWVzLTEyOC1nY206dGVzdA@h:1?plugin=p"])
                .unwrap();
        assert_eq!(
            config.servers[0].plugin,
            Some(Plugin::new("p", None)),
            "the flag leaves URL servers alone"
        );
    }

    #[test]
    fn bad_values_are_refused_at_parse_time() {
        for argv in
            [&["-p", "0"][..], &["-p", "70000"], &["-l", "abc"], &["-t", "0"], &["--max-connections", "0"]]
        {
            assert!(parse(argv).is_err(), "{argv:?}");
        }
        assert!(parse(&["-u", "-U"]).is_err());
    }

    #[test]
    fn each_binarys_help_lists_only_its_own_flags() {
        let help = |binary: Binary| binary.command(Cli::command()).render_help().to_string();
        let (local, server) = (help(Binary::Local), help(Binary::Server));
        for flag in
            ["--local-port", "--local-address", "-L", "--tunnel", "--protocol", "--tcp-redir", "--udp-redir"]
        {
            assert!(local.contains(flag) && !server.contains(flag), "{flag}");
        }
        let server_only = ["--allow-private-targets", "--replay-snapshot", "--nameserver", "--generate-key"];
        for flag in server_only {
            assert!(server.contains(flag) && !local.contains(flag), "{flag}");
        }
        for shared in
            ["--server", "--password", "--method", "--threads", "--plugin", "--nofile", "-6", "--udp-timeout"]
        {
            assert!(local.contains(shared) && server.contains(shared), "{shared}");
        }
    }

    #[test]
    fn a_flag_of_the_other_binary_is_refused_by_name() {
        let parse_for = |binary, argv: &[&str]| {
            try_parse_for::<Cli, _, _>(binary, std::iter::once("ss-test").chain(argv.iter().copied()))
        };
        let error = parse_for(Binary::Local, &["-s", "h", "--allow-private-targets"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
        let text = error.to_string();
        assert!(
            text.contains("--allow-private-targets is an ss-server option, not one of ss-local"),
            "{text}"
        );
        let text = parse_for(Binary::Local, &["-d", "1.1.1.1"]).unwrap_err().to_string();
        assert!(text.contains("-d/--nameserver is an ss-server option"), "{text}");
        let text = parse_for(Binary::Server, &["-l", "1080"]).unwrap_err().to_string();
        assert!(text.contains("-l/--local-port is an ss-local option, not one of ss-server"), "{text}");
        let text = parse_for(Binary::Server, &["--local-address", "::"]).unwrap_err().to_string();
        assert!(text.contains("-b/--local-address is an ss-local option"), "{text}");
        // Each binary's own flags, and the shared ones, parse as before.
        let local = parse_for(Binary::Local, &["-l", "1080", "-b", "::", "-6"]).unwrap().args;
        assert_eq!(
            (local.local_port, local.local_address.as_deref(), local.ipv6_first),
            (Some(1080), Some("::"), true)
        );
        let server =
            parse_for(Binary::Server, &["--allow-private-targets", "-d", "::1", "--generate-key"]).unwrap();
        assert!(server.args.allow_private_targets && server.args.generate_key);
        assert_eq!(server.args.nameserver.as_deref(), Some("::1"));
    }

    #[test]
    fn help_is_h_and_version_is_capital_v() {
        assert_eq!(parse(&["-h"]).unwrap_err().kind(), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(parse(&["-V"]).unwrap_err().kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(parse(&["-v", "-v", "-v"]).unwrap().verbose, 3);
    }
}
