//! Passive health: a real connection's upstream read half, wrapped so that the server's first byte
//! back reports the connection's latency (connect time plus the wait for that byte) as it arrives.
//! Whether a byte ever came is asked at the end ([`FirstByte::answered`]), when the connection decides
//! whether it counts as a failure.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use super::{Balancer, Outcome, ServerId};

/// What to report, and to whom, when the first byte arrives.
#[derive(Debug)]
pub struct Watch {
    balancer: Arc<Balancer>,
    server: ServerId,
    connect: Duration,
    since: Instant,
}

impl Watch {
    /// Watches a connection to `server` that took `connect` to open and whose request went out now.
    pub fn new(balancer: Arc<Balancer>, server: ServerId, connect: Duration) -> Watch {
        Watch { balancer, server, connect, since: Instant::now() }
    }

    /// Reports a failure if nothing came back: the server refused to answer, reset or stayed silent.
    pub fn report_failure(&self) {
        self.balancer.report(&self.server, Outcome::Failed);
    }
}

/// A read half that reports the server's first byte to the balancer.
#[derive(Debug)]
pub struct FirstByte<R> {
    inner: R,
    /// Taken when the first byte arrives.
    watch: Option<Watch>,
}

impl<R> FirstByte<R> {
    /// Wraps `inner`; `watch` is reported on its first byte.
    pub fn new(inner: R, watch: Watch) -> FirstByte<R> {
        FirstByte { inner, watch: Some(watch) }
    }

    /// Whether the server sent anything back.
    pub fn answered(&self) -> bool {
        self.watch.is_none()
    }

    /// The watch, if no byte ever came.
    pub fn unanswered(&self) -> Option<&Watch> {
        self.watch.as_ref()
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
            if let Some(watch) = this.watch.take() {
                let latency = watch.connect + watch.since.elapsed();
                watch.balancer.report(&watch.server, Outcome::Answered(latency));
            }
        }
        polled
    }
}
