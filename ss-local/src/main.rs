//! `ss-local`: command line and config file in, [`ss_local::run`] out.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use ss_config::{CliArgs, Config, ServerEntry};
use ss_local::{PluginRoute, Server, Settings};
use ss_net::plugin::{Plugin, Spec, Timing};
use tokio_util::sync::CancellationToken;

/// Shadowsocks local: a SOCKS5 proxy that relays through a Shadowsocks server (shadowsocks-libev
/// compatible flags and config keys).
#[derive(Debug, Parser)]
#[command(name = "ss-local", version)]
struct Args {
    #[command(flatten)]
    common: CliArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match ss_config::load(&args.common) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ss-local: {error}");
            return ExitCode::from(2);
        }
    };
    let Some(local_port) = config.local_port else {
        eprintln!("ss-local: local_port: missing (set \"local_port\" in the config or -l)");
        return ExitCode::from(2);
    };
    ss_net::process::init_logging(config.effective_log_level().as_str());
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let descriptors = match ss_net::process::raise_descriptor_limit(config.nofile) {
        Ok(limit) => limit,
        Err(error) => {
            eprintln!("ss-local: nofile: cannot set the open-file limit: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Single-threaded: the accept loop and UDP run here, and TCP connections are spread over this thread
    // and `threads - 1` more, each connection staying on one (ss_net::Workers).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ss-local: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, local_port, descriptors)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, local_port: u16, descriptors: u64) -> anyhow::Result<()> {
    for entry in config.servers.iter().filter(|entry| entry.password_is_weak) {
        tracing::warn!(
            "the password for {}:{} is weak: anyone who records traffic can try to guess it offline; \
             use a random key (ss-server --generate-key -m {})",
            entry.host,
            entry.port,
            entry.method
        );
    }
    let shutdown = CancellationToken::new();
    ss_net::process::cancel_on_signal(shutdown.clone()).context("installing signal handlers")?;
    // One plugin per server, each dialling its own server; started (and ready) before we listen.
    let mut servers = Vec::new();
    let mut plugins = Vec::new();
    for entry in &config.servers {
        let mut server = Server::new(entry.host.clone(), entry.port, entry.method, entry.key.clone());
        if let Some((spec, route_tcp, route_udp)) = plugin_spec(&config, entry) {
            let plugin = Plugin::start_local(spec, &entry.host, entry.port, Timing::default()).await?;
            server.plugin = Some(PluginRoute { endpoint: plugin.endpoint(), tcp: route_tcp, udp: route_udp });
            plugins.push(plugin);
        }
        servers.push(server);
    }
    let mut settings = Settings::new(servers);
    settings.handshake_timeout = config.handshake_timeout;
    settings.connect_timeout = config.connect_timeout;
    settings.idle_timeout = config.timeout;
    // A SOCKS5 connection holds two descriptors, as on the server; a UDP association three (its control
    // connection, the relay socket and the upstream socket): the UDP share covers the third.
    let udp_share = if config.mode.udp() { usize::MAX } else { 0 };
    let (max_connections, _) =
        ss_net::process::fit_to_descriptors(descriptors, 1, config.max_connections, udp_share);
    tracing::info!(nofile = descriptors, max_connections, "limits fitted to the open-file limit");
    settings.max_connections = max_connections;
    settings.threads = config.threads_or_cpus();
    settings.tcp = config.mode.tcp();
    settings.udp = config.mode.udp();

    let listener = ss_net::bind_tcp(&config.local_address, local_port)
        .await
        .with_context(|| format!("binding {}:{local_port}", config.local_address))?;
    ss_local::run(settings, vec![listener], shutdown).await;
    // After the drain: open connections still used the plugins.
    for plugin in plugins {
        plugin.stop().await;
    }
    Ok(())
}

/// The plugin to start for `entry`, if it has one that carries any traffic we relay, and whether it
/// carries TCP and UDP (`plugin_mode`, within `mode`); what it does not carry goes to the server directly.
fn plugin_spec(config: &Config, entry: &ServerEntry) -> Option<(Spec, bool, bool)> {
    let plugin = entry.plugin.as_ref()?;
    let tcp = plugin.mode.tcp() && config.mode.tcp();
    let udp = plugin.mode.udp() && config.mode.udp();
    if !tcp && !udp {
        tracing::warn!(plugin = %plugin.command, "plugin_mode {} carries nothing in mode {}; not started", plugin.mode.name(), config.mode.name());
        return None;
    }
    let spec = Spec {
        command: plugin.command.clone(),
        options: plugin.options.clone(),
        args: plugin.args.clone(),
        tcp,
        udp,
    };
    Some((spec, tcp, udp))
}
