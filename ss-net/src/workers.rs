//! Thread per core: every connection runs start to end on one single-threaded runtime.
//!
//! ```text
//!   caller's runtime: accept loop(s), UDP, and its share of connections
//!   worker thread 1:  current_thread runtime ── its connections
//!   worker thread 2:  ...
//! ```
//!
//! A work-stealing runtime moves a connection's task between threads and wakes idle threads to steal it;
//! on a small machine those cross-thread wake-ups cost more context switches than the stealing saves
//! (measured in the README's benchmarks). Here the accept loop hands each new connection to the runtime
//! with the fewest live connections, and the connection stays there: one cross-thread wake-up per
//! connection, none per read or write.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The runtimes connections are spread over: the caller's own plus zero or more worker threads. Cloning
/// is cheap; the worker threads stop when the last clone is dropped (their runtimes drop the connections
/// still on them).
#[derive(Clone, Debug)]
pub struct Workers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Worker threads' runtimes; the caller's runtime is not listed (it is whichever runs the spawn).
    threads: Vec<Worker>,
    /// Live connections on the caller's runtime.
    caller_live: Arc<AtomicUsize>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    live: Arc<AtomicUsize>,
}

impl Inner {
    fn empty() -> Inner {
        Inner { threads: Vec::new(), caller_live: Arc::default(), stop: CancellationToken::new() }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Workers {
    /// Connections run on the caller's runtime only.
    pub fn none() -> Workers {
        Workers { inner: Arc::new(Inner::empty()) }
    }

    /// Spreads connections over `total` runtimes: the caller's and `total - 1` new threads, each with a
    /// single-threaded runtime. `total` of 0 or 1 adds no thread. A thread that cannot be started is
    /// logged and done without: connections then share the runtimes that did start.
    pub fn start(total: usize) -> Workers {
        let mut inner = Inner::empty();
        for index in 1..total {
            match start_thread(index, inner.stop.clone()) {
                Ok(handle) => inner.threads.push(Worker { handle, live: Arc::default() }),
                Err(error) => {
                    tracing::warn!(%error, "cannot start a worker thread; running with fewer");
                    break;
                }
            }
        }
        Workers { inner: Arc::new(inner) }
    }

    /// Runtimes connections are spread over, the caller's included.
    pub fn count(&self) -> usize {
        self.inner.threads.len() + 1
    }

    /// Runs the connection built by `make` on the least busy runtime. `stream` is moved to that runtime's
    /// reactor before `make` is called there. `make` runs on the chosen runtime; the future it returns
    /// must be `Send` because the caller's runtime may be multi-threaded.
    pub fn spawn<M, F>(&self, stream: tokio::net::TcpStream, make: M) -> io::Result<()>
    where
        M: FnOnce(tokio::net::TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let least_busy = self.inner.threads.iter().min_by_key(|worker| worker.live.load(Ordering::Relaxed));
        match least_busy {
            Some(worker)
                if worker.live.load(Ordering::Relaxed) < self.inner.caller_live.load(Ordering::Relaxed) =>
            {
                let stream = stream.into_std()?;
                let live = Live::enter(&worker.live);
                worker.handle.spawn(async move {
                    let _live = live;
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => make(stream).await,
                        Err(error) => tracing::warn!(%error, "cannot move a connection to a worker thread"),
                    }
                });
            }
            _ => {
                let live = Live::enter(&self.inner.caller_live);
                tokio::spawn(async move {
                    let _live = live;
                    make(stream).await;
                });
            }
        }
        Ok(())
    }
}

/// A thread running a single-threaded runtime until `stop` is cancelled.
fn start_thread(index: usize, stop: CancellationToken) -> io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("worker-{index}"))
        .spawn(move || runtime.block_on(stop.cancelled()))?;
    Ok(handle)
}

/// Counts one live connection on a runtime until dropped.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn enter(counter: &Arc<AtomicUsize>) -> Live {
        counter.fetch_add(1, Ordering::Relaxed);
        Live(counter.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    use super::*;

    /// Opens `count` connections and hands each to `workers` with an echo handler that, at EOF, says
    /// which thread it ran on. Returns the client ends.
    async fn spawn_echoes(workers: &Workers, count: usize) -> Vec<TcpStream> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..count {
            let client = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            workers
                .spawn(stream, |mut stream| async move {
                    let mut buf = [0u8; 64];
                    loop {
                        let n = stream.read(&mut buf).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        stream.write_all(&buf[..n]).await.unwrap();
                    }
                    let name = std::thread::current().name().unwrap_or("unnamed").to_owned();
                    stream.write_all(name.as_bytes()).await.unwrap();
                })
                .unwrap();
            clients.push(client);
        }
        clients
    }

    /// Checks that each connection echoes, then closes it and collects the thread names.
    async fn echo_and_name(clients: Vec<TcpStream>) -> Vec<String> {
        let mut names = Vec::new();
        for mut client in clients {
            client.write_all(b"ping").await.unwrap();
            let mut echo = [0u8; 4];
            client.read_exact(&mut echo).await.unwrap();
            assert_eq!(&echo, b"ping");
            client.shutdown().await.unwrap();
            let mut name = String::new();
            client.read_to_string(&mut name).await.unwrap();
            names.push(name);
        }
        names
    }

    #[tokio::test]
    async fn without_threads_everything_runs_on_the_caller() {
        let caller = std::thread::current().name().unwrap_or("unnamed").to_owned();
        let workers = Workers::none();
        let names =
            timeout(Duration::from_secs(10), async { echo_and_name(spawn_echoes(&workers, 4).await).await })
                .await
                .unwrap();
        assert!(names.iter().all(|name| *name == caller), "{names:?}");
    }

    #[tokio::test]
    async fn connections_spread_over_the_threads_and_keep_working_there() {
        let workers = Workers::start(3);
        assert_eq!(workers.count(), 3);
        // All six stay open until every one is placed: each goes to the least busy runtime.
        let names =
            timeout(Duration::from_secs(10), async { echo_and_name(spawn_echoes(&workers, 6).await).await })
                .await
                .unwrap();
        for worker in ["worker-1", "worker-2"] {
            assert_eq!(names.iter().filter(|name| *name == worker).count(), 2, "{names:?}");
        }
        assert_eq!(names.iter().filter(|name| !name.starts_with("worker-")).count(), 2, "{names:?}");
    }

    #[test]
    fn dropping_the_last_clone_stops_the_threads() {
        let workers = Workers::start(2);
        let handle = workers.inner.threads[0].handle.clone();
        let (sender, receiver) = std::sync::mpsc::channel::<()>();
        handle.spawn(async move {
            // Held until the runtime drops this task.
            let _sender = sender;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The runtime shuts down and drops the pending task: the channel disconnects.
        assert_eq!(
            receiver.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
