//! `ss-local --check`: the start-up of ss-local without serving (see [`ss_net::check`]).
//!
//! As a start would: the [`Settings`] from the config; the users file and the ACL loaded (and the
//! resolver for the names the ACL bypasses set up); each server's name resolved as a connection
//! resolves it (the system resolver, in the order connections try the addresses), and its plugin's
//! executable found; the online config's source set up (not fetched); and every local listener bound
//! with [`Listener::bind`], the start's own code. The listeners are held until the check ends, so two
//! listeners on one port are reported.

use std::path::Path;

use ss_config::Config;
use ss_net::check::Report;

use crate::{Listener, OnlineSource, Settings};

/// Runs every check on `config` (loaded as a start loads it), with the users file `auth_path` given on
/// the command line (else the config's) and `descriptors` open files, into `report`.
pub async fn check(
    config: &Config,
    auth_path: Option<&Path>,
    descriptors: u64,
    mut report: Report,
) -> Report {
    let settings = Settings::from_config(config, descriptors);
    if let Some(path) = auth_path.or(config.socks5_auth_config_path.as_deref()) {
        let users = crate::inbound::Users::load(path);
        if report.check("socks5_auth_config_path", users).is_some() {
            report.note(format!("users: {}", path.display()));
        }
    }
    if let Some(path) = &config.acl {
        if let Some(acl) = report.check("acl", ss_net::SharedAcl::load(path)) {
            report.note(format!("acl: {}", path.display()));
            // Bypassed names are resolved here, by the router's resolver.
            report
                .check("acl: resolver for bypassed names", crate::route::Router::new(acl, &settings.resolve));
        }
    }
    for (entry, server) in config.servers.iter().zip(&settings.servers) {
        let name = format!("server {}:{}", server.host, server.port);
        match server.addresses().await {
            Ok(addresses) if addresses.is_empty() => {
                report.problem(format!("{name}: resolved to no address"))
            }
            Ok(addresses) => report.note(format!("{name}: {}", list(&addresses))),
            Err(error) => report.problem(format!("{name}: cannot resolve: {error}")),
        }
        if let Some((spec, _, _)) = crate::plugin_spec(config.mode, entry) {
            if let Some(path) = report.check(&name, spec.executable()) {
                report.note(format!("plugin {}: {}", spec.name(), path.display()));
            }
        }
    }
    if report
        .check("online_config", OnlineSource::from_config(config, settings.servers.clone()))
        .flatten()
        .is_some()
    {
        report.note("online_config: set up (not fetched by --check)");
    }
    let mut held = Vec::new();
    for local in &config.locals {
        let what = format!("binding {}:{}", local.address, local.port);
        if let Some(listener) = report.check(&what, Listener::bind(local, &settings.socket).await) {
            let speaks = match listener.inbound {
                crate::listen::Inbound::Socks => "SOCKS5, SOCKS4 and HTTP",
                crate::listen::Inbound::Http => "HTTP",
                crate::listen::Inbound::Tunnel(_) => "tunnel",
                crate::listen::Inbound::Redir(_) => "redir",
            };
            report.note(format!("local {}:{}: {speaks}, binds", local.address, local.port));
            held.push(listener);
        }
    }
    let metrics = ss_net::metrics_http::check(&mut report, config.metrics.as_ref()).await;
    drop((held, metrics));
    report
}

/// `addresses` joined with commas.
fn list(addresses: &[std::net::SocketAddr]) -> String {
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
