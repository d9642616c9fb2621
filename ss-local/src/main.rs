//! `ss-local`: command line and config file in, [`ss_local::run`] out.

use std::process::ExitCode;

use anyhow::Context as _;
use ss_config::{Binary, CliArgs, Config};
use ss_local::{OnlineSource, PluginRoute, ServerList, Settings};
use ss_net::plugin::{Plugin, Timing};
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
        if let Some((spec, route_tcp, route_udp)) = ss_local::plugin_spec(config.mode, entry) {
            let plugin = Plugin::start_local(spec, &entry.host, entry.port, Timing::default()).await?;
            server.plugin = Some(PluginRoute { endpoint: plugin.endpoint(), tcp: route_tcp, udp: route_udp });
            plugins.push(plugin);
        }
    }
    // SIP008: the list from the network joins the config's servers, and is refreshed while we run.
    let mut online = None;
    if let Some(source) = OnlineSource::from_config(&config, settings.servers.clone())? {
        let list = ServerList::new(settings.servers.clone());
        settings.server_list = Some(list.clone());
        online = Some(tokio::spawn(source.run(list, shutdown.clone())));
    }
    let listener = settings
        .socket
        .listen_tcp_host(&config.local_address, local_port)
        .await
        .with_context(|| format!("binding {}:{local_port}", config.local_address))?;
    ss_local::run(settings, vec![listener], shutdown).await;
    if let Some(online) = online {
        plugins.extend(online.await.unwrap_or_default());
    }
    // After the drain: open connections still used the plugins.
    for plugin in plugins {
        plugin.stop().await;
    }
    Ok(())
}
