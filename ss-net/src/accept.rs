//! The accept loop both binaries run: a cap on open connections, back-off on accept errors, and a
//! bounded drain at shutdown.
//!
//! - At most `max_connections` handlers run at once. Beyond that the loop stops accepting, so new
//!   connections wait in the kernel's backlog instead of being accepted and dropped.
//! - Accept errors that concern the listener (out of file descriptors, out of memory) are logged once per
//!   episode and retried with an exponential back-off (5 ms doubling to 1 s), never in a busy loop.
//! - On shutdown the loop stops accepting and closes the listener at once (new connections are refused),
//!   then waits up to `drain` for open connections.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::Workers;

/// Length of the accept queue: a burst of connections (a browser opening a page, a scan) waits here
/// instead of being dropped by the kernel; the usual default of 128 is too short for a proxy.
pub const BACKLOG: u32 = 1024;

/// Binds a TCP listener on `host:port` (an IP literal or a name) with a [`BACKLOG`]-long queue and the
/// default [`SocketOptions`](crate::SocketOptions) (see [`SocketOptions::listen_tcp_host`](crate::SocketOptions::listen_tcp_host)
/// for the configured ones).
pub async fn bind_tcp(host: &str, port: u16) -> io::Result<TcpListener> {
    crate::SocketOptions::default().listen_tcp_host(host, port).await
}

/// Limits of an accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections handled at once.
    pub max_connections: usize,
    /// How long shutdown waits for open connections before giving up on them.
    pub drain: Duration,
}

/// One of the accept loop's `max_connections` places, held by a connection's future for as long as it
/// runs: the handler must keep it (e.g. as an argument of its `async fn`) and drop it when done. The
/// shutdown drain waits for every slot to be dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _tracked: TaskTrackerToken,
}

/// Accepts connections on `listener` and runs `handler` for each on one of `workers`' runtimes, until
/// `shutdown` is cancelled; then waits up to `limits.drain` for the handlers still running. Returns the
/// number still running then.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    limits: Limits,
    workers: &Workers,
    shutdown: CancellationToken,
    handler: H,
) -> usize
where
    H: Fn(TcpStream, SocketAddr, Slot) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let mut backoff = Backoff::default();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.recovered();
                let handler = handler.clone();
                let slot = Slot { _permit: permit, _tracked: tracker.token() };
                let spawned = workers.spawn(stream, move |stream| handler(stream, peer, slot));
                if let Err(error) = spawned {
                    tracing::warn!(%error, "cannot hand a connection to a worker");
                }
            }
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                let pause = backoff.failed(&error);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    // Close the listening socket before the drain: a client that connects now is refused at once instead
    // of waiting in the kernel's backlog for an accept that never comes.
    drop(listener);
    tracker.close();
    if tokio::time::timeout(limits.drain, tracker.wait()).await.is_err() {
        tracing::warn!(open = tracker.len(), "shutdown: connections still open after the drain time");
    }
    tracker.len()
}

/// Errors that concern one incoming connection (it was reset before we took it), not the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}

/// Exponential back-off for accept errors, logging the first error of each episode only.
#[derive(Debug, Default)]
struct Backoff {
    current: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    fn failed(&mut self, error: &io::Error) -> Duration {
        let next = match self.current {
            None => {
                tracing::warn!(%error, "accept failed; backing off until it recovers");
                Self::FIRST
            }
            Some(current) => (current * 2).min(Self::MAX),
        };
        self.current = Some(next);
        next
    }

    fn recovered(&mut self) {
        if self.current.take().is_some() {
            tracing::info!("accepting connections again");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut backoff = Backoff::default();
        let error = io::Error::other("EMFILE");
        let pauses: Vec<_> = (0..10).map(|_| backoff.failed(&error)).collect();
        assert_eq!(pauses[0], Duration::from_millis(5));
        assert_eq!(pauses[1], Duration::from_millis(10));
        assert_eq!(pauses[9], Duration::from_secs(1));
        backoff.recovered();
        assert_eq!(backoff.failed(&error), Duration::from_millis(5));
    }

    #[tokio::test]
    async fn caps_connections_and_drains_on_shutdown() {
        // With a worker thread, so the cap and the drain are shown to hold across threads.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let limits = Limits { max_connections: 2, drain: Duration::from_secs(5) };
        let workers = Workers::start(2);
        // Connections being handled now, and the most there ever were: the cap is judged by these
        // counts, not by how soon a reply comes.
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn({
            let shutdown = shutdown.clone();
            let (running, most) = (running.clone(), most.clone());
            async move {
                accept_loop(listener, limits, &workers, shutdown, move |mut stream, _, slot| {
                    let (running, most) = (running.clone(), most.clone());
                    async move {
                        let _slot = slot;
                        most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        // Echo one line's worth of bytes, then close.
                        let mut buf = [0u8; 16];
                        if let Ok(n) = stream.read(&mut buf).await {
                            let _ = stream.write_all(&buf[..n]).await;
                        }
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .await
            }
        });
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        // The third connection waits in the backlog until one of the first two finishes. It is given a
        // moment to be served wrongly (a server without the cap answers it at once); passing does not
        // depend on this wait, the count of connections handled at once below decides.
        clients[2].write_all(b"third").await.unwrap();
        let mut reply = [0u8; 5];
        let third_early =
            tokio::time::timeout(Duration::from_millis(500), clients[2].read_exact(&mut reply)).await;
        assert!(third_early.is_err(), "served beyond the cap");
        clients[0].write_all(b"first").await.unwrap();
        clients[0].read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"first");
        tokio::time::timeout(Duration::from_secs(5), clients[2].read_exact(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&reply, b"third");
        clients[1].write_all(b"2").await.unwrap();
        shutdown.cancel();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap(), 0);
        assert_eq!(most.load(Ordering::SeqCst), 2, "connections handled at once");
    }
}
