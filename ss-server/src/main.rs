//! `ss-server`: command line and config file in, one [`ss_server::run_on`] per server entry out.

use std::process::ExitCode;

use anyhow::Context as _;
use ss_config::{Binary, CliArgs, Config};
use ss_crypto::{Key, Method};
use ss_net::metrics_http::{self, MetricsListener};
use ss_server::usage_store::{self, UsageStore};
use ss_server::Settings;
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
    if config.servers.is_empty() && config.manager_address.is_none() {
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
    // Bound first: a refused address stops the start before anything listens, and a client that sees a
    // port listening finds these ready too.
    let manager = match &config.manager_address {
        Some(address) => {
            Some(ss_server::manage::Socket::bind(&ss_server::manage::Address::parse(address)).await?)
        }
        None => None,
    };
    let api = match &config.api {
        Some(address) => {
            Some(ss_server::api::serve::Listener::bind(address, config.api_token.is_some()).await?)
        }
        None => None,
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
        let (listeners, plugin) = ss_server::listen::listen(&config, entry, &settings.socket).await?;
        if let (Some(metrics), Some(plugin)) = (&metrics, &plugin) {
            metrics.plugin(format!("{} ({}:{})", plugin.name(), entry.host, entry.port), plugin.restarts());
        }
        plugins.extend(plugin);
        with_users.extend(settings.users.clone().map(|users| (index, users)));
        servers.spawn(ss_server::run_on(settings, listeners, workers.clone(), shutdown.clone()));
    }
    if let Some(socket) = manager {
        let launcher = ss_server::manage::Launcher {
            args: args.clone(),
            descriptors,
            workers: workers.clone(),
            acl: acl.clone(),
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
        };
        let ports = std::sync::Arc::new(ss_server::manage::Ports::new(launcher));
        servers.spawn(ss_server::manage::serve(socket, ports, shutdown.clone()));
    }
    if let Some(listener) = api {
        servers.spawn(serve_api(listener, &config, &args, &with_users, shutdown.clone()));
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

/// The management API over the multi-user entries (a server per port), served on `listener` until
/// shutdown.
fn serve_api(
    listener: ss_server::api::serve::Listener,
    config: &Config,
    args: &CliArgs,
    with_users: &[(usize, std::sync::Arc<ss_server::users::Users>)],
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    use ss_server::api;
    let mut by_port: Vec<(u16, Vec<_>, Option<std::path::PathBuf>)> = Vec::new();
    for (index, users) in with_users {
        let Some(entry) = config.servers.get(*index) else { continue };
        match by_port.iter_mut().find(|(port, _, _)| *port == entry.port) {
            Some((_, entries, _)) => entries.push((*index, users.clone())),
            None => {
                let file = entry.users.as_ref().and_then(|list| list.file.clone());
                by_port.push((entry.port, vec![(*index, users.clone())], file));
            }
        }
    }
    if by_port.is_empty() {
        tracing::warn!("management API: no server entry has users, so there are none to manage");
    }
    let groups = by_port
        .into_iter()
        .map(|(port, entries, file)| api::Group::new(port.to_string(), entries, file, args.clone()))
        .collect();
    let api = api::Api::new(groups, config.api_token.as_deref());
    api::serve::serve(listener, std::sync::Arc::new(api), shutdown)
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
