//! Passive health: a real connection's upstream read half, wrapped so that the server's first byte
//! back reports the connection's latency (connect time plus the wait for that byte) as it arrives.
//!
//! A request that carried data and got nothing back within the deadline (the connect timeout) is
//! reported as a failure then, without touching the connection: a server that accepts and never answers
//! is marked down after a few such connections, not only when they end. A connection that ends with
//! nothing back is asked at the end ([`FirstByte::silent`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;
use tokio::io::{AsyncRead, ReadBuf};

use tokio::time::{Instant, Sleep};

use super::{Balancer, Outcome, ServerId};

/// What to report, and to whom, when the first byte arrives.
#[derive(Debug)]
pub struct Watch {
    balancer: Arc<Balancer>,
    server: ServerId,
    connect: Duration,
    since: Instant,
    /// A failure was already reported for this connection.
    reported: AtomicBool,
}

impl Watch {
    /// Watches a connection to `server` that took `connect` to open and whose request went out now.
    pub fn new(balancer: Arc<Balancer>, server: ServerId, connect: Duration) -> Watch {
        Watch { balancer, server, connect, since: Instant::now(), reported: AtomicBool::new(false) }
    }

    /// Reports a failure (once): nothing came back, the server reset or stayed silent.
    pub fn report_failure(&self) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            self.balancer.report(&self.server, Outcome::Failed);
        }
    }
}

/// A read half that reports the server's first byte to the balancer.
#[derive(Debug)]
pub struct FirstByte<R> {
    inner: R,
    /// Taken when the first byte arrives. Boxed: the reader lives as long as the connection, and after
    /// the first byte this is only a null pointer in it.
    watch: Option<Box<Watch>>,
    /// When silence becomes a failure; `None` when not armed (no data sent) or past.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<R> FirstByte<R> {
    /// Wraps `inner`; `watch` is reported on its first byte, or as a failure after `deadline` of
    /// silence if one is given (the request carried data, so an answer is due).
    pub fn new(inner: R, watch: Watch, deadline: Option<Duration>) -> FirstByte<R> {
        let deadline = deadline.map(|after| Box::pin(tokio::time::sleep(after)));
        FirstByte { inner, watch: Some(Box::new(watch)), deadline }
    }

    /// The watch, if no byte ever came back (to report the silence as a failure).
    pub fn silent(&self) -> Option<&Watch> {
        self.watch.as_deref()
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FirstByte<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.deadline = None;
            if let Some(watch) = this.watch.take() {
                let latency = watch.connect + watch.since.elapsed();
                watch.balancer.report(&watch.server, Outcome::Answered(latency));
            }
        } else if polled.is_pending() {
            // Polled only while the relay waits for the server, which is when silence counts; the
            // sleep's waker brings the relay back here when it runs out.
            if let Some(deadline) = this.deadline.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    this.deadline = None;
                    if let Some(watch) = &this.watch {
                        watch.report_failure();
                    }
                }
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use ss_crypto::{Key, Method};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::balance::Policy;
    use crate::Server;

    fn setup(failures_to_down: u32) -> (Arc<Balancer>, ServerId) {
        let key = Key::from_password(Method::Aes128Gcm, "pw").unwrap();
        let id = ServerId::of(&Server::new("a", 1, Method::Aes128Gcm, key));
        (Arc::new(Balancer::new(Policy { failures_to_down, ..Policy::default() })), id)
    }

    #[tokio::test(start_paused = true)]
    async fn silence_past_the_deadline_is_a_failure_and_a_late_answer_still_counts() {
        let (balancer, id) = setup(1);
        let (near, mut far) = tokio::io::duplex(64);
        let watch = Watch::new(balancer.clone(), id.clone(), Duration::from_millis(40));
        let mut reader = FirstByte::new(near, watch, Some(Duration::from_secs(10)));
        let read = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            reader.read_exact(&mut byte).await.map(|_| reader)
        });
        tokio::time::sleep(Duration::from_millis(9_990)).await;
        assert!(!balancer.is_down(&id), "silent, but not yet for the whole deadline");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(balancer.is_down(&id), "silent past the deadline: reported as it happens");
        far.write_all(b"x").await.unwrap();
        let reader = tokio::time::timeout(Duration::from_secs(1), read).await.unwrap().unwrap().unwrap();
        assert!(reader.silent().is_none());
        assert!(!balancer.is_down(&id), "the answer came after all");
        let score = balancer.score(&id).unwrap();
        assert!((10_040.0..10_100.0).contains(&score), "connect + wait: {score}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unarmed_watch_waits_as_long_as_it_takes_and_reports_once() {
        let (balancer, id) = setup(2);
        let (near, _far) = tokio::io::duplex(64);
        let watch = Watch::new(balancer.clone(), id.clone(), Duration::ZERO);
        let mut reader = FirstByte::new(near, watch, None);
        let mut byte = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_secs(3600), reader.read(&mut byte)).await;
        assert!(waited.is_err());
        reader.silent().unwrap().report_failure();
        reader.silent().unwrap().report_failure();
        assert!(!balancer.is_down(&id), "one connection is one failure, however often it is asked");
    }
}
