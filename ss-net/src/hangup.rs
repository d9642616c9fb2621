//! Reload on SIGHUP: one small loop that calls a reload function on every hangup signal until shutdown.
//! The ACL ([`crate::acl`]) and ss-server's users reload through it; each keeps its state in force
//! when its file turns out broken. Under systemd (`Type=notify`) each reload is framed by `RELOADING=1`
//! and `READY=1`, so `systemctl reload` shows the service reloading while it does.

use tokio_util::sync::CancellationToken;

/// Calls `reload` on every SIGHUP until `shutdown` is cancelled. Installing the handler can fail (no
/// signal support): the caller reports it at start-up. Several callers may listen at once; each gets
/// every signal.
#[cfg(unix)]
pub fn on_hangup(
    shutdown: CancellationToken,
    mut reload: impl FnMut() + Send + 'static,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    crate::process::notify(&[sd_notify::NotifyState::Reloading]);
                    reload();
                    crate::process::notify(&[sd_notify::NotifyState::Ready]);
                }
            }
        }
    });
    Ok(())
}

/// Without SIGHUP there is nothing to wait for.
#[cfg(not(unix))]
pub fn on_hangup(
    _shutdown: CancellationToken,
    _reload: impl FnMut() + Send + 'static,
) -> std::io::Result<()> {
    Ok(())
}
