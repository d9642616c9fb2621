//! Process plumbing both binaries need: log setup and the shutdown signal.

use tokio_util::sync::CancellationToken;

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

/// Cancels `token` at the first SIGINT or SIGTERM. The handlers are installed before this returns, so
/// call it before binding: a signal that arrives once the port is open is always a graceful stop.
#[cfg(unix)]
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
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
