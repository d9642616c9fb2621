//! `ss-server --check`: the start-up of every server entry without serving (see [`ss_net::check`]).
//!
//! For each entry, as a start would: its [`Settings`] from the config, the public TCP and UDP
//! addresses it listens on (a name resolves as the listener resolves it), and its plugin's
//! executable. With a plugin the plugin listens on the public address, and that address is still bound
//! here: the start would fail the same way if it were taken. Then the files a start loads (the ACL),
//! the target resolver's system configuration, where a multi-user server keeps its usage store, and the
//! management interfaces' address rules (a manager on loopback, an API on TCP with a token).
//! Every socket is held until all entries are bound, so two entries on one address are reported, and
//! released when the check ends.

use ss_config::{Config, ServerEntry};
use ss_net::check::Report;
use ss_net::plugin::Spec;
use tokio::net::{TcpListener, UdpSocket};

use crate::Settings;

/// Runs every check on `config` (loaded as a start loads it), with `descriptors` open files, into
/// `report`.
pub async fn check(config: &Config, descriptors: u64, mut report: Report) -> Report {
    let mut held = Held::default();
    let mut resolve = None;
    for entry in &config.servers {
        let settings = Settings::from_config(config, entry, descriptors);
        resolve.get_or_insert_with(|| settings.resolve.clone());
        bind(config, entry, &settings.socket, &mut report, &mut held).await;
        if let Some(plugin) = &entry.plugin {
            let spec = Spec {
                command: plugin.command.clone(),
                options: plugin.options.clone(),
                args: plugin.args.clone(),
                tcp: plugin.mode.tcp(),
                udp: plugin.mode.udp(),
            };
            if let Some(path) =
                report.check(&format!("server {}:{}", entry.host, entry.port), spec.executable())
            {
                report.note(format!("plugin {}: {}", spec.name(), path.display()));
            }
        }
        if let Some(list) = &entry.users {
            report.note(format!("server {}:{}: {} users", entry.host, entry.port, list.users.len()));
        }
    }
    // The management interfaces' address rules; not bound here (a running server may hold them).
    if let Some(address) = &config.manager_address {
        if let crate::manage::Address::Udp(text) = crate::manage::Address::parse(address) {
            if let Err(error) = crate::manage::loopback(&text).await {
                report.problem(format!("{error:#}"));
            }
        }
        report.note(format!("manager on {address}"));
    }
    if let Some(address) = &config.api {
        if let Err(error) = crate::api::serve::check(address, config.api_token.is_some()) {
            report.problem(error.to_string());
        }
        report.note(format!("management API on {address}"));
    }
    if let Some(path) = &config.acl {
        if report.check("acl", ss_net::SharedAcl::load(path)).is_some() {
            report.note(format!("acl: {}", path.display()));
        }
    }
    if config.servers.iter().any(|entry| entry.users.is_some()) {
        // Where the usage store goes; not opened here: a running server holds its lock.
        let dir = config
            .state_dir
            .clone()
            .or_else(|| crate::usage_store::default_dir(|name| std::env::var_os(name)));
        report.note(match dir {
            Some(dir) => format!("usage store in {}", dir.display()),
            None => "no state directory (set state_dir or HOME): usage kept in memory only".to_string(),
        });
    }
    if let Some(resolve) = resolve {
        if report.check("resolver", ss_net::Resolver::new(&resolve)).is_some() {
            report.note(match resolve.nameservers.is_empty() {
                true => "resolver: the system's name servers (/etc/resolv.conf)".to_string(),
                false => format!("resolver: {:?}", resolve.nameservers),
            });
        }
    }
    let metrics = ss_net::metrics_http::check(&mut report, config.metrics.as_ref()).await;
    drop((held, metrics));
    report
}

/// Sockets bound by the check, closed when it ends.
#[derive(Default)]
struct Held {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

/// Binds `entry`'s public address as a start would, for TCP and UDP as the config's `mode` says.
async fn bind(
    config: &Config,
    entry: &ServerEntry,
    options: &ss_net::SocketOptions,
    report: &mut Report,
    held: &mut Held,
) {
    let (host, port) = (entry.host.as_str(), entry.port);
    let mut bound = Vec::new();
    if config.mode.tcp() {
        let result = options.listen_tcp_host(host, port).await;
        if let Some(listener) = report.check(&format!("binding TCP {host}:{port}"), result) {
            held.tcp.push(listener);
            bound.push("TCP");
        }
    }
    if config.mode.udp() {
        let result = options.bind_udp_host(host, port).await;
        if let Some(socket) = report.check(&format!("binding UDP {host}:{port}"), result) {
            held.udp.push(socket);
            bound.push("UDP");
        }
    }
    if !bound.is_empty() {
        let via = if entry.plugin.is_some() { " (for the plugin)" } else { "" };
        report.note(format!("server {host}:{port}: {} bind{via}", bound.join(" and ")));
    }
}
