//! `ss-server`: command line and config file in, [`ss_server::run`] out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use ss_config::{CliArgs, Config, ReplaySnapshot, ServerEntry};
use ss_crypto::{Key, Method};
use ss_net::plugin::{Plugin, Spec, Timing};
use ss_server::{Listeners, Settings, TargetPolicy};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// Shadowsocks server (shadowsocks-libev compatible flags and config keys).
#[derive(Debug, Parser)]
#[command(name = "ss-server", version)]
struct Args {
    #[command(flatten)]
    common: CliArgs,
    /// Print a fresh random key for the method given with -m (base64) and exit.
    #[arg(long = "generate-key")]
    generate_key: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.generate_key {
        return generate_key(args.common.method.as_deref().unwrap_or("2022-blake3-aes-256-gcm"));
    }
    let config = match ss_config::load(&args.common) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ss-server: {error}");
            return ExitCode::from(2);
        }
    };
    ss_net::process::init_logging(config.effective_log_level().as_str());
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let descriptors = match ss_net::process::raise_descriptor_limit(config.nofile) {
        Ok(limit) => limit,
        Err(error) => {
            eprintln!("ss-server: nofile: cannot set the open-file limit: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Single-threaded: the accept loop and UDP run here, and TCP connections are spread over this thread
    // and `threads - 1` more, each connection staying on one (ss_net::Workers).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ss-server: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, descriptors)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn generate_key(method: &str) -> ExitCode {
    match method.parse::<Method>() {
        Ok(method) => {
            println!("{}", Key::generate(method, &mut rand_core::OsRng).to_base64());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ss-server: method: {error}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: Config, descriptors: u64) -> anyhow::Result<()> {
    warn_about_unsupported(&config);
    let shutdown = CancellationToken::new();
    ss_net::process::cancel_on_signal(shutdown.clone()).context("installing signal handlers")?;
    let mut servers = tokio::task::JoinSet::new();
    let mut plugins = Vec::new();
    for entry in &config.servers {
        let (listeners, plugin) = listen(&config, entry).await?;
        plugins.extend(plugin);
        servers.spawn(ss_server::run(settings(&config, entry, descriptors), listeners, shutdown.clone()));
    }
    while servers.join_next().await.is_some() {}
    // After the drain: open connections came in through the plugins.
    for plugin in plugins {
        plugin.stop().await;
    }
    Ok(())
}

/// Binds what `entry` serves on. Without a plugin: TCP and UDP on the public address. With one, what
/// it carries (`plugin_mode`) is bound on a loopback port of ours instead, the plugin listens on the
/// public address and forwards to it, and it is started (and ready) before this returns.
async fn listen(config: &Config, entry: &ServerEntry) -> anyhow::Result<(Listeners, Option<Plugin>)> {
    let (host, port) = (entry.host.as_str(), entry.port);
    let plugin = entry.plugin.as_ref();
    let plugin_tcp = config.mode.tcp() && plugin.is_some_and(|plugin| plugin.mode.tcp());
    let plugin_udp = config.mode.udp() && plugin.is_some_and(|plugin| plugin.mode.udp());
    let mut listeners = Listeners::default();
    let mut loopback = None;
    if plugin_tcp || plugin_udp {
        let (tcp, udp, addr) = bind_loopback(host, plugin_tcp, plugin_udp).await?;
        listeners.tcp.extend(tcp);
        listeners.udp.extend(udp);
        loopback = Some(addr);
    }
    if config.mode.tcp() && !plugin_tcp {
        let listener =
            ss_net::bind_tcp(host, port).await.with_context(|| format!("binding TCP {host}:{port}"))?;
        listeners.tcp.push(listener);
    }
    if config.mode.udp() && !plugin_udp {
        let socket =
            UdpSocket::bind((host, port)).await.with_context(|| format!("binding UDP {host}:{port}"))?;
        listeners.udp.push(socket);
    }
    let (Some(plugin), Some(ours)) = (plugin, loopback) else {
        return Ok((listeners, None));
    };
    let spec = Spec {
        command: plugin.command.clone(),
        options: plugin.options.clone(),
        args: plugin.args.clone(),
        tcp: plugin_tcp,
        udp: plugin_udp,
    };
    let plugin = Plugin::start_server(spec, host, port, ours, Timing::default()).await?;
    Ok((listeners, Some(plugin)))
}

/// Our side of a plugin: TCP and/or UDP on one loopback port (SIP003u gives the plugin one SS_LOCAL
/// port for both); `::1` when the public host is an IPv6 address, else `127.0.0.1`.
async fn bind_loopback(
    host: &str,
    tcp: bool,
    udp: bool,
) -> anyhow::Result<(Option<TcpListener>, Option<UdpSocket>, SocketAddr)> {
    let ip = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let mut last_error = None;
    for _ in 0..16 {
        let listener = match tcp {
            true => {
                Some(TcpListener::bind((ip, 0)).await.context("binding the loopback port for the plugin")?)
            }
            false => None,
        };
        let port = match &listener {
            Some(listener) => listener.local_addr()?.port(),
            None => 0,
        };
        if !udp {
            return Ok((listener, None, SocketAddr::new(ip, port)));
        }
        // The UDP port of the same number may be taken; then take another pair.
        match UdpSocket::bind((ip, port)).await {
            Ok(socket) => {
                let addr = socket.local_addr()?;
                return Ok((listener, Some(socket), addr));
            }
            Err(error) => last_error = Some(error),
        }
    }
    let error = last_error.unwrap_or_else(|| std::io::Error::other("no free port"));
    Err(error).context("binding the loopback port pair for the plugin")
}

fn settings(config: &Config, entry: &ServerEntry, descriptors: u64) -> Settings {
    if entry.password_is_weak {
        tracing::warn!(
            "the password for {}:{} is weak: anyone who records traffic can try to guess it offline; \
             use a random key (ss-server --generate-key -m {}) or a long random password",
            entry.host,
            entry.port,
            entry.method
        );
    }
    let mut settings = Settings::new(entry.method, entry.key.clone());
    if config.mode.tcp() && entry.plugin.as_ref().is_some_and(|plugin| plugin.mode.tcp()) {
        // Every connection comes from the plugin on loopback: the clients' addresses are unknown.
        settings.max_handshakes_per_source = ss_server::admission::NO_PER_SOURCE_RULE;
    }
    settings.policy =
        if config.allow_private_targets { TargetPolicy::AllowAll } else { TargetPolicy::PublicOnly };
    settings.handshake_timeout = config.handshake_timeout;
    settings.connect_timeout = config.connect_timeout;
    settings.idle_timeout = config.timeout;
    settings.max_connections = config.max_connections;
    settings.threads = config.threads_or_cpus();
    settings.udp_timeout = config.udp_timeout;
    settings.resolve.nameservers = config.nameserver.clone();
    settings.resolve.ipv6_first = config.ipv6_first;
    let (max_connections, max_udp) = ss_net::process::fit_to_descriptors(
        descriptors,
        config.servers.len(),
        settings.max_connections,
        if config.mode.udp() { settings.max_udp_associations } else { 0 },
    );
    tracing::info!(
        nofile = descriptors,
        max_connections,
        max_udp_associations = max_udp,
        "{}:{}: limits fitted to the open-file limit",
        entry.host,
        entry.port
    );
    settings.max_connections = max_connections;
    settings.max_udp_associations = max_udp.max(1);
    settings.replay_snapshot = match &config.replay_snapshot {
        ReplaySnapshot::Off => None,
        ReplaySnapshot::At(path) => Some(path.clone()),
        ReplaySnapshot::Default => {
            let path = ss_server::replay_snapshot::default_path(entry.port, |name| std::env::var_os(name));
            if path.is_none() && !entry.method.is_2022() {
                tracing::warn!(
                    "no state directory (STATE_DIRECTORY, XDG_STATE_HOME, HOME) for the replay filter: \
                     it is kept in memory only; set replay_snapshot to keep it across restarts"
                );
            }
            path
        }
    };
    settings
}

/// Warns about tuning knobs we do not act on.
fn warn_about_unsupported(config: &Config) {
    for (set, name) in
        [(config.fast_open, "fast_open"), (config.reuse_port, "reuse_port"), (config.acl.is_some(), "acl")]
    {
        if set {
            tracing::warn!("{name} is not supported yet and is ignored");
        }
    }
}
