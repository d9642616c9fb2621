//! Binding what a server entry serves on: TCP and UDP on its public address, or, with a SIP003 plugin,
//! a loopback port of ours behind the plugin (which is started here). `main` binds every configured
//! entry with [`listen`] before anything is served; the manager ([`crate::manage`]) binds each port a
//! panel adds the same way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context as _;
use ss_config::{Config, ServerEntry};
use ss_net::plugin::{Plugin, Spec, Timing};
use tokio::net::{TcpListener, UdpSocket};

use crate::Listeners;

/// Binds what `entry` serves on. Without a plugin: TCP and UDP on the public address. With one, what
/// it carries (`plugin_mode`) is bound on a loopback port of ours instead, the plugin listens on the
/// public address and forwards to it, and it is started (and ready) before this returns.
pub async fn listen(
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
