//! Process plumbing both binaries need: log setup, the descriptor limit, the shutdown and hangup
//! signals, and readiness notification for systemd (`Type=notify` units in packaging/systemd).

use tokio_util::sync::CancellationToken;

/// Descriptors kept aside for what is not a connection: listeners, the runtimes' epoll and wake-up
/// descriptors, resolver sockets, log and state files.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft limit on open files to `requested` (libev's `nofile`), or to the hard limit when not
/// given, and returns the limit now in force. Asking for more than the hard limit raises the hard limit
/// too where the process may (as root); otherwise the hard limit is used and the shortfall logged.
pub fn raise_descriptor_limit(requested: Option<u64>) -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let wanted = requested.unwrap_or(hard);
    if wanted > hard {
        if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
            return Ok(wanted);
        }
        tracing::warn!(nofile = wanted, hard, "cannot raise the open-file limit above its hard limit");
    }
    let target = wanted.min(hard);
    if target != soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    Ok(target)
}

/// How many TCP connections and UDP associations fit in `limit` descriptors, capped at the configured
/// `max_connections` and `max_udp` (per listener; `listeners` share the limit; `max_udp` is 0 when UDP
/// is off).
///
/// A relayed TCP connection holds two descriptors (client and target) and a UDP association one (its
/// outbound socket); UDP gets at most a quarter of what is left after [`RESERVED_DESCRIPTORS`]. The
/// accept loop stops at `max_connections`, so with these caps accept never fails for want of
/// descriptors and the last connection can still open its outbound socket.
pub fn fit_to_descriptors(
    limit: u64,
    listeners: usize,
    max_connections: usize,
    max_udp: usize,
) -> (usize, usize) {
    let listeners = listeners.max(1) as u64;
    let available = limit.saturating_sub(RESERVED_DESCRIPTORS) / listeners;
    let udp = (available / 4).min(max_udp as u64);
    let tcp = ((available - udp) / 2).min(max_connections as u64);
    let udp = if max_udp == 0 { 0 } else { udp.max(1) };
    (tcp.max(1) as usize, udp as usize)
}

/// What both binaries do once their config is loaded: set up logging at `log_level`, log `warnings`,
/// raise the open-file limit to `nofile` (see [`raise_descriptor_limit`]), and run `serve(limit)` to
/// the end on a single-threaded runtime (connections are spread over worker threads by
/// [`Workers`](crate::Workers), not by this runtime). The exit code is 1 when any of it fails; the
/// error is printed as `binary: ...` before logging is up, logged after.
pub fn run_main<F, E>(
    binary: &str,
    log_level: &str,
    warnings: &[String],
    nofile: Option<u64>,
    serve: impl FnOnce(u64) -> F,
) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    init_logging(log_level);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let descriptors = match raise_descriptor_limit(nofile) {
        Ok(limit) => limit,
        Err(error) => {
            eprintln!("{binary}: nofile: cannot set the open-file limit: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{binary}: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(descriptors)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` shows an anyhow error's whole chain of context.
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Sends logs to stderr. `RUST_LOG` wins when set; otherwise `default` (e.g. "info", "debug") applies to
/// every target.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Tells systemd the service is ready: call once every listener is bound (and plugins started).
pub fn notify_ready() {
    #[cfg(unix)]
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Sends `state` to systemd's notification socket; nothing when `NOTIFY_SOCKET` is unset (not started
/// by systemd), and a failure to send only costs the notification, so it is logged and ignored.
#[cfg(unix)]
pub(crate) fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::debug!("cannot notify systemd: {error}");
    }
}

/// Cancels `token` at the first SIGINT or SIGTERM. The handlers are installed before this returns, so
/// call it before binding: a signal that arrives once the port is open is always a graceful stop.
/// SIGHUP (`systemctl reload`) is caught too, so that it never ends the process, whether or not
/// anything is reloadable (the ACL and users files reload through [`crate::hangup`]).
#[cfg(unix)]
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    crate::hangup::on_hangup(token.clone(), || tracing::info!("SIGHUP: reloading"))?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down: no new connections; open ones may finish");
        token.cancel();
    });
    Ok(())
}

/// Cancels `token` at the first Ctrl-C.
#[cfg(not(unix))]
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_in_the_descriptor_limit() {
        // The common soft limit: 960 usable, 240 for UDP, 360 connections of two descriptors.
        assert_eq!(fit_to_descriptors(1024, 1, 10_000, 4096), (360, 240));
        let (tcp, udp) = fit_to_descriptors(1024, 1, 10_000, 4096);
        assert!(2 * tcp as u64 + udp as u64 + RESERVED_DESCRIPTORS <= 1024);
        // Two listeners share it.
        assert_eq!(fit_to_descriptors(1024, 2, 10_000, 4096), (180, 120));
        // A generous limit leaves the configured caps alone.
        assert_eq!(fit_to_descriptors(1 << 20, 1, 10_000, 4096), (10_000, 4096));
        // A limit below the reserve still lets one of each through rather than none.
        assert_eq!(fit_to_descriptors(10, 1, 10_000, 4096), (1, 1));
        // Without UDP, TCP has it all.
        assert_eq!(fit_to_descriptors(1024, 1, 10_000, 0), (480, 0));
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{getrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(raise_descriptor_limit(None).unwrap(), hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, hard);
        // A smaller request (libev's nofile) is honoured as asked.
        let smaller = hard.min(4096) - 1;
        assert_eq!(raise_descriptor_limit(Some(smaller)).unwrap(), smaller);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, smaller);
        assert_eq!(raise_descriptor_limit(None).unwrap(), hard);
    }
}
