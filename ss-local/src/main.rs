//! `ss-local`: command line and config file in, [`ss_local::run`] out.

use std::process::ExitCode;

use anyhow::Context as _;
use ss_config::{Binary, CliArgs, Config};
use ss_local::{Listener, OnlineSource, PluginRoute, ServerList, Settings};
use ss_net::plugin::{Plugin, Timing};
use tokio_util::sync::CancellationToken;

/// Shadowsocks local: a SOCKS5, SOCKS4/4a and HTTP proxy on one port, tunnels (-L) and transparent
/// proxying (--protocol redir), relaying through a Shadowsocks server (shadowsocks-libev compatible
/// flags and config keys).
#[derive(Debug, clap::Parser)]
#[command(name = "ss-local", version, after_help = MODES)]
struct Args {
    #[command(flatten)]
    common: CliArgs,
    /// Users file (shadowsocks-rust's form: {"password":{"users":[{"user_name":..,"password":..}]}}):
    /// require SOCKS5 username/password and HTTP Proxy-Authorization: Basic; SOCKS4 is then refused
    #[arg(long = "socks5-auth-config-path", value_name = "FILE")]
    socks5_auth_config_path: Option<std::path::PathBuf>,
}

/// One line per client protocol the local port speaks (`ss-local -c config.json -l 1080`).
const MODES: &str = "\
Every protocol on the one local port (-l 1080), chosen by the client's first byte:
  SOCKS5 (remote DNS)   curl --socks5-hostname 127.0.0.1:1080 http://example.com/
  SOCKS4 / SOCKS4a      curl --socks4a 127.0.0.1:1080 http://example.com/
  HTTP proxy            curl -x http://127.0.0.1:1080 http://example.com/
  HTTPS via CONNECT     https_proxy=http://127.0.0.1:1080 curl https://example.com/
  PAC file              chromium --proxy-pac-url=http://127.0.0.1:1080/proxy.pac
  With users            ss-local ... --socks5-auth-config-path users.json; curl -x http://user:pass@127.0.0.1:1080 ...
Other listeners:
  Tunnel (ss-tunnel)    ss-local -c config.json -u -l 5353 -L 8.8.8.8:53      (then: dig @127.0.0.1 -p 5353 example.com)
  More tunnels          ss-local -c config.json -L 5354:1.1.1.1:53 -L 127.0.0.2:5355:example.com:53
  Transparent (redir)   ss-local -c config.json -u -b 0.0.0.0 -l 12345 --protocol redir --tcp-redir tproxy
  Several at once       \"locals\": [{\"local_port\":1080}, {\"local_port\":5353,\"protocol\":\"tunnel\",...}] in the config";

fn main() -> ExitCode {
    let args: Args = ss_config::parse_for(Binary::Local);
    if args.common.man_page {
        return ss_config::man::print::<Args>(Binary::Local);
    }
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
    if config.locals.is_empty() {
        eprintln!("ss-local: local_port: missing (set \"local_port\" or \"locals\" in the config, or -l)");
        return ExitCode::from(2);
    }
    let (log_level, warnings, nofile) =
        (config.effective_log_level(), config.warnings.clone(), config.nofile);
    if args.common.check {
        let auth_path = args.socks5_auth_config_path;
        return ss_net::check::run_check("ss-local", &warnings, nofile, |report, descriptors| async move {
            ss_local::check::check(&config, auth_path.as_deref(), descriptors, report).await
        });
    }
    ss_net::process::run_main("ss-local", log_level.as_str(), &warnings, nofile, |descriptors| {
        serve(config, args.socks5_auth_config_path, descriptors)
    })
}

async fn serve(
    config: Config,
    auth_path: Option<std::path::PathBuf>,
    descriptors: u64,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    ss_net::process::cancel_on_signal(shutdown.clone()).context("installing signal handlers")?;
    let mut settings = Settings::from_config(&config, descriptors);
    if let Some(path) = auth_path.as_deref().or(config.socks5_auth_config_path.as_deref()) {
        let users = ss_local::inbound::Users::load(path).context("loading socks5_auth_config_path")?;
        settings.users = Some(std::sync::Arc::new(users));
    }
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
        let list = ServerList::updatable(settings.servers.clone());
        settings.server_list = Some(list.clone());
        online = Some(tokio::spawn(source.run(list, shutdown.clone())));
    }
    let mut listeners = Vec::new();
    for local in &config.locals {
        let listener = Listener::bind(local, &settings.socket)
            .await
            .with_context(|| format!("binding {}:{}", local.address, local.port))?;
        listeners.push(listener);
    }
    // Every listener is bound and every plugin started.
    ss_net::process::notify_ready();
    ss_local::run_listeners(settings, listeners, shutdown).await;
    if let Some(online) = online {
        plugins.extend(online.await.unwrap_or_default());
    }
    // After the drain: open connections still used the plugins.
    for plugin in plugins {
        plugin.stop().await;
    }
    Ok(())
}
