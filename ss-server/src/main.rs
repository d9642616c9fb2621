//! `ss-server`: command line and config file in, one [`ss_server::run_on`] per server entry out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context as _;
use ss_config::{Binary, CliArgs, Config, ServerEntry};
use ss_crypto::{Key, Method};
use ss_net::metrics_http::{self, MetricsListener};
use ss_net::plugin::{Plugin, Spec, Timing};
use ss_server::usage_store::{self, UsageStore};
use ss_server::{Listeners, Settings};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// Shadowsocks server (shadowsocks-libev compatible flags and config keys).
#[derive(Debug, clap::Parser)]
#[command(name = "ss-server", version)]
struct Args {
    #[command(flatten)]
    common: CliArgs,
}

fn main() -> ExitCode {
    let args: Args = ss_config::parse_for(Binary::Server);
    if args.common.man_page {
        return ss_config::man::print::<Args>(Binary::Server);
    }
    if args.common.generate_key {
        return generate_key(args.common.method.as_deref().unwrap_or("2022-blake3-aes-256-gcm"));
    }
    let config = match ss_config::load(&args.common) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ss-server: {error}");
            return ExitCode::from(2);
        }
    };
    // An online config (ss-local's) lets the config's own list be empty; a server needs one to listen on.
    if config.servers.is_empty() {
        eprintln!("ss-server: server: missing (set \"server\" in the config or -s)");
        return ExitCode::from(2);
    }
    if args.common.print_url {
        let every_server_has_one = ss_config::share::print(&config.servers, args.common.qr);
        return if every_server_has_one { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let (log_level, warnings, nofile) =
        (config.effective_log_level(), config.warnings.clone(), config.nofile);
    if args.common.check {
        return ss_net::check::run_check("ss-server", &warnings, nofile, |report, descriptors| async move {
            ss_server::check::check(&config, descriptors, report).await
        });
    }
    ss_net::process::run_main("ss-server", log_level.as_str(), &warnings, nofile, |descriptors| {
        serve(config, args.common, descriptors)
    })
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

async fn serve(config: Config, args: CliArgs, descriptors: u64) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    ss_net::process::cancel_on_signal(shutdown.clone()).context("installing signal handlers")?;
    // One set of worker threads for the process, whatever the number of server entries.
    let workers = ss_net::Workers::start(config.threads_or_cpus());
    // One ACL for every entry, loaded before anything listens, reloaded on SIGHUP.
    let acl = match &config.acl {
        None => None,
        Some(path) => {
            let acl = ss_net::SharedAcl::load(path).context("loading the ACL")?;
            acl.reload_on_hangup(shutdown.clone()).context("installing the SIGHUP handler")?;
            Some(acl)
        }
    };
    let store = open_usage_store(&config)?;
    let metrics = config.metrics.as_ref().map(|_| ss_server::metrics::ServerMetrics::new());
    let mut servers = tokio::task::JoinSet::new();
    let mut plugins = Vec::new();
    let mut with_users = Vec::new();
    for (index, entry) in config.servers.iter().enumerate() {
        let mut settings =
            Settings { acl: acl.clone(), ..Settings::from_config(&config, entry, descriptors) };
        if let (Some(store), Some(users)) = (&store, &settings.users) {
            let server = format!("{}:{}", entry.host, entry.port);
            usage_store::restore(store, &server, users)?;
            settings.usage_store = Some(usage_store::Saving { store: store.clone(), server });
        }
        settings.metrics = metrics.as_ref().map(|metrics| metrics.entry(&entry.host, entry.port));
        let (listeners, plugin) = listen(&config, entry, &settings.socket).await?;
        if let (Some(metrics), Some(plugin)) = (&metrics, &plugin) {
            metrics.plugin(format!("{} ({}:{})", plugin.name(), entry.host, entry.port), plugin.restarts());
        }
        plugins.extend(plugin);
        with_users.extend(settings.users.clone().map(|users| (index, users)));
        servers.spawn(ss_server::run_on(settings, listeners, workers.clone(), shutdown.clone()));
    }
    if !with_users.is_empty() {
        ss_net::hangup::on_hangup(shutdown.clone(), move || reload_users(&args, &with_users))
            .context("installing the SIGHUP handler")?;
    }
    if let (Some(addr), Some(metrics)) = (&config.metrics, &metrics) {
        let listener =
            MetricsListener::bind(addr).await.with_context(|| format!("binding metrics {addr}"))?;
        let shown = listener.local_addr().map_or_else(|| addr.to_string(), |bound| bound.to_string());
        tracing::info!(addr = %shown, "serving metrics on GET /metrics");
        servers.spawn(metrics_http::serve(
            listener,
            std::sync::Arc::new(metrics.registry()),
            shutdown.clone(),
        ));
    }
    // Every listener is bound and every plugin started.
    ss_net::process::notify_ready();
    while servers.join_next().await.is_some() {}
    // After the drain: open connections came in through the plugins.
    for plugin in plugins {
        plugin.stop().await;
    }
    Ok(())
}

/// Opens the usage store when some entry has users: in `state_dir`, else the default state directory.
/// A store that cannot be opened or read stops the server (counting from zero would overwrite it).
fn open_usage_store(config: &Config) -> anyhow::Result<Option<std::sync::Arc<UsageStore>>> {
    if config.servers.iter().all(|entry| entry.users.is_none()) {
        return Ok(None);
    }
    let dir =
        match config.state_dir.clone().or_else(|| usage_store::default_dir(|name| std::env::var_os(name))) {
            Some(dir) => dir,
            None => {
                tracing::warn!(
                    "no state directory (set state_dir or HOME): per-user usage is kept in memory only"
                );
                return Ok(None);
            }
        };
    let store = UsageStore::open_in(&dir)?;
    tracing::info!(path = %store.path().display(), "per-user usage store");
    Ok(Some(std::sync::Arc::new(store)))
}

/// SIGHUP: reads the config (and its users files) again and puts each multi-user entry's users in
/// force. A config that no longer loads keeps every entry's users and logs one line why.
fn reload_users(args: &CliArgs, servers: &[(usize, std::sync::Arc<ss_server::users::Users>)]) {
    let config = match ss_config::load(args) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("users reload failed: {error}; the previous users stay in force");
            return;
        }
    };
    for (index, users) in servers {
        let _ = users.reload_from(config.servers.get(*index));
    }
}

/// Binds what `entry` serves on. Without a plugin: TCP and UDP on the public address. With one, what
/// it carries (`plugin_mode`) is bound on a loopback port of ours instead, the plugin listens on the
/// public address and forwards to it, and it is started (and ready) before this returns.
async fn listen(
    config: &Config,
    entry: &ServerEntry,
    options: &ss_net::SocketOptions,
) -> anyhow::Result<(Listeners, Option<Plugin>)> {
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
        let listener = options.listen_tcp_host(host, port).await.with_context(|| {
            let hint =
                if options.reuse_port { "" } else { " (reuse_port lets several servers share a port)" };
            format!("binding TCP {host}:{port}{hint}")
        })?;
        listeners.tcp.push(listener);
    }
    if config.mode.udp() && !plugin_udp {
        let socket =
            options.bind_udp_host(host, port).await.with_context(|| format!("binding UDP {host}:{port}"))?;
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
