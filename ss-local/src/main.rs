//! `ss-local`: command line and config file in, [`ss_local::run`] out.

use std::process::ExitCode;

use anyhow::Context as _;
use ss_config::{Binary, CliArgs, Config, ServerEntry};
use ss_local::{PluginRoute, Settings};
use ss_net::plugin::{Plugin, Spec, Timing};
use tokio_util::sync::CancellationToken;

/// Shadowsocks local: a SOCKS5 proxy that relays through a Shadowsocks server (shadowsocks-libev
/// compatible flags and config keys).
#[derive(Debug, clap::Parser)]
#[command(name = "ss-local", version)]
struct Args {
    #[command(flatten)]
    common: CliArgs,
}

fn main() -> ExitCode {
    let args: Args = ss_config::parse_for(Binary::Local);
    let config = match ss_config::load(&args.common) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ss-local: {error}");
            return ExitCode::from(2);
        }
    };
    if args.common.print_url {
        let every_server_has_one = ss_config::share::print(&config.servers, args.common.qr);
        return if every_server_has_one { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let Some(local_port) = config.local_port else {
        eprintln!("ss-local: local_port: missing (set \"local_port\" in the config or -l)");
        return ExitCode::from(2);
    };
    let (log_level, warnings, nofile) =
        (config.effective_log_level(), config.warnings.clone(), config.nofile);
    ss_net::process::run_main("ss-local", log_level.as_str(), &warnings, nofile, |descriptors| {
        serve(config, local_port, descriptors)
    })
}

async fn serve(config: Config, local_port: u16, descriptors: u64) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    ss_net::process::cancel_on_signal(shutdown.clone()).context("installing signal handlers")?;
    let mut settings = Settings::from_config(&config, descriptors);
    if let Some(path) = &config.acl {
        let acl = ss_net::SharedAcl::load(path).context("loading the ACL")?;
        acl.reload_on_hangup(shutdown.clone()).context("installing the SIGHUP handler")?;
        settings.acl = Some(acl);
    }
    // One plugin per server, each dialling its own server; started (and ready) before we listen.
    let mut plugins = Vec::new();
    for (entry, server) in config.servers.iter().zip(&mut settings.servers) {
        if let Some((spec, route_tcp, route_udp)) = plugin_spec(&config, entry) {
            let plugin = Plugin::start_local(spec, &entry.host, entry.port, Timing::default()).await?;
            server.plugin = Some(PluginRoute { endpoint: plugin.endpoint(), tcp: route_tcp, udp: route_udp });
            plugins.push(plugin);
        }
    }
    let listener = settings
        .socket
        .listen_tcp_host(&config.local_address, local_port)
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
