//! Relaying bytes both ways between two connections, with half-close and an idle timeout.
//!
//! ```text
//!   a_read ──pump──▶ b_write      (EOF on a_read → shutdown(b_write): FIN travels on)
//!   b_read ──pump──▶ a_write      (EOF on b_read → shutdown(a_write))
//! ```
//!
//! The relay ends when both directions have seen EOF, when either direction fails (then both sides are
//! dropped, so neither peer waits on a half-dead connection), or when no byte has moved in either
//! direction for the idle timeout.
//!
//! Each turn a relay gets on its runtime moves at most [`TURN_BYTES`] per direction, then it goes to the
//! back of the runtime's queue. Without that a connection moved whatever its sockets held (up to tokio's
//! budget, megabytes), so connections whose kernel buffers had grown larger took more of the thread's
//! time than the others: a quarter of 100 busy downloads ran at 2.4x the mean and the slowest at 0.1x.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};

/// Most bytes a direction moves in one turn before the relay yields to the other tasks of its thread:
/// two full 64 KiB reads. Measured with 1,000 busy downloads (aes-128-gcm, 3 alternated rounds each):
/// 64 KiB gave the slowest connection 0.70-0.78 of the mean but ~25% less in all, 256 KiB 0.37-0.49 at
/// full speed, 128 KiB 0.56-0.63 with the aggregate within 256 KiB's spread.
pub const TURN_BYTES: usize = 128 * 1024;

/// How a relay ended and how many bytes moved each way.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes copied from `a` to `b`.
    pub a_to_b: u64,
    /// Bytes copied from `b` to `a`.
    pub b_to_a: u64,
    /// Why it ended.
    pub end: RelayEnd,
}

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A read or write failed in the direction named.
    Failed {
        /// True if the failing direction was `a` to `b`.
        a_to_b: bool,
        /// The error.
        error: io::Error,
    },
}

impl std::fmt::Display for RelayEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayEnd::Closed => f.write_str("closed"),
            RelayEnd::Idle => f.write_str("idle timeout"),
            RelayEnd::Failed { a_to_b: true, error } => write!(f, "error on the way out: {error}"),
            RelayEnd::Failed { a_to_b: false, error } => write!(f, "error on the way back: {error}"),
        }
    }
}

impl RelayEnd {
    /// Whether the relay ended in an error, so both sockets should be reset rather than closed: a peer
    /// that reads until EOF must not take a broken transfer for a complete one.
    pub fn is_failure(&self) -> bool {
        matches!(self, RelayEnd::Failed { .. })
    }
}

/// Aborts a connection: no FIN for this write half, and a reset (SO_LINGER 0) once its read half is
/// dropped too.
pub fn abort(write_half: tokio::net::tcp::OwnedWriteHalf) {
    let _ = socket2::SockRef::from(write_half.as_ref()).set_linger(Some(Duration::ZERO));
    // Dropping the half would shut it down (a FIN) before the reset; forgetting it leaves the close to
    // the read half.
    write_half.forget();
}

/// Copies what peer `a` sends to peer `b` and back until both directions end, one fails, or nothing moves
/// for `idle`. Each peer is given as its (read half, write half).
///
/// Written as one hand-rolled poll loop rather than `try_join!` of two `async` pumps inside a `select!`
/// with an idle watcher: nested async blocks store each pump future twice (rust-lang/rust#62958) and the
/// combinators add their own state, which made this future ~1 KB per connection; this one is ~200 bytes.
pub async fn relay<AR, AW, BR, BW>(
    a: (&mut AR, &mut AW),
    b: (&mut BR, &mut BW),
    idle: Duration,
) -> RelayOutcome
where
    AR: AsyncBufRead + Unpin,
    AW: AsyncWrite + Unpin,
    BR: AsyncBufRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let ((a_read, a_write), (b_read, b_write)) = (a, b);
    let mut timer = std::pin::pin!(sleep_until(Instant::now() + idle));
    let mut last = Instant::now();
    let mut outbound = Pump::default();
    let mut inbound = Pump::default();
    let end = poll_fn(|cx| {
        let mut moved = false;
        let mut turn_used = false;
        if let Poll::Ready(Err(error)) =
            outbound.poll(cx, &mut *a_read, &mut *b_write, &mut moved, &mut turn_used)
        {
            return Poll::Ready(RelayEnd::Failed { a_to_b: true, error });
        }
        if let Poll::Ready(Err(error)) =
            inbound.poll(cx, &mut *b_read, &mut *a_write, &mut moved, &mut turn_used)
        {
            return Poll::Ready(RelayEnd::Failed { a_to_b: false, error });
        }
        if outbound.done && inbound.done {
            return Poll::Ready(RelayEnd::Closed);
        }
        if moved {
            last = Instant::now();
        }
        if turn_used {
            // More is ready, but the other connections of this thread go first.
            cx.waker().wake_by_ref();
        }
        // The timer is only moved when it fires: resetting it on every chunk would cost a timer-wheel
        // update per read.
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return Poll::Ready(RelayEnd::Idle);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await;
    RelayOutcome { a_to_b: outbound.count, b_to_a: inbound.count, end }
}

/// One direction: copy until EOF (flushing after each chunk), then shut the writer down so the FIN
/// reaches the other side.
#[derive(Default)]
struct Pump {
    /// A chunk was written in full and the writer still has to be flushed.
    flushing: bool,
    /// EOF was read; the writer is being shut down.
    shutting_down: bool,
    done: bool,
    count: u64,
}

impl Pump {
    /// Moves bytes until the reader or writer would wait, the direction ends, or [`TURN_BYTES`] moved in
    /// this call (then `turn_used` is set and it returns `Pending` without a waker registered).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        moved: &mut bool,
        turn_used: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut this_turn = 0;
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.shutting_down {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            if self.flushing {
                // Hand everything to the socket before waiting for more input, or it could sit in a buffer.
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                self.flushing = false;
            }
            if this_turn >= TURN_BYTES {
                *turn_used = true;
                return Poll::Pending;
            }
            let chunk = ready!(Pin::new(&mut *reader).poll_fill_buf(cx))?;
            if chunk.is_empty() {
                self.shutting_down = true;
                continue;
            }
            let len = chunk.len();
            let written = ready!(Pin::new(&mut *writer).poll_write(cx, chunk))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *reader).consume(written);
            self.count += written as u64;
            this_turn += written;
            *moved = true;
            if written == len {
                self.flushing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, split, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        let (a_near, a_far) = duplex(64);
        let (b_near, b_far) = duplex(64);
        let (a_read, mut a_write) = split(a_near);
        let (b_read, mut b_write) = split(b_near);
        let relay = tokio::spawn(async move {
            let (mut a_read, mut b_read) = (BufReader::new(a_read), BufReader::new(b_read));
            relay((&mut a_read, &mut a_write), (&mut b_read, &mut b_write), Duration::from_secs(60)).await
        });
        let (mut a_far_read, mut a_far_write) = split(a_far);
        let (mut b_far_read, mut b_far_write) = split(b_far);
        a_far_write.write_all(b"request").await.unwrap();
        a_far_write.shutdown().await.unwrap();
        let mut got = Vec::new();
        b_far_read.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request", "EOF from a reaches b");
        b_far_write.write_all(b"response after half-close").await.unwrap();
        b_far_write.shutdown().await.unwrap();
        let mut back = Vec::new();
        a_far_read.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"response after half-close");
        let outcome = relay.await.unwrap();
        assert!(matches!(outcome.end, RelayEnd::Closed));
        assert_eq!((outcome.a_to_b, outcome.b_to_a), (7, 25));
    }

    /// Accepts every write at once and counts the bytes.
    #[derive(Default)]
    struct CountingSink(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl AsyncWrite for CountingSink {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.0.fetch_add(buf.len(), std::sync::atomic::Ordering::Relaxed);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Counts how often it is woken.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_turn_moves_at_most_turn_bytes_each_way_then_yields() {
        use std::sync::atomic::Ordering::Relaxed;
        let (out_source, back_source) = (vec![1u8; 5 * TURN_BYTES / 2], vec![2u8; TURN_BYTES / 2]);
        let (mut a_read, mut b_read) = (BufReader::new(&out_source[..]), BufReader::new(&back_source[..]));
        let (mut a_write, mut b_write) = (CountingSink::default(), CountingSink::default());
        let (to_b, to_a) = (b_write.0.clone(), a_write.0.clone());
        let mut relay = Box::pin(relay(
            (&mut a_read, &mut a_write),
            (&mut b_read, &mut b_write),
            Duration::from_secs(60),
        ));
        let woken = std::sync::Arc::new(CountingWaker::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);

        assert!(relay.as_mut().poll(&mut cx).is_pending());
        assert_eq!((to_b.load(Relaxed), to_a.load(Relaxed)), (TURN_BYTES, TURN_BYTES / 2));
        assert_eq!(woken.0.load(Relaxed), 1, "it asks to run again, behind the other tasks");

        assert!(relay.as_mut().poll(&mut cx).is_pending());
        assert_eq!(to_b.load(Relaxed), 2 * TURN_BYTES);
        let Poll::Ready(outcome) = relay.as_mut().poll(&mut cx) else { panic!("the rest fits in a turn") };
        assert_eq!((outcome.a_to_b, outcome.b_to_a), (5 * TURN_BYTES as u64 / 2, TURN_BYTES as u64 / 2));
        assert!(matches!(outcome.end, RelayEnd::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn ends_after_the_idle_timeout() {
        let (a_near, _a_far) = duplex(64);
        let (b_near, _b_far) = duplex(64);
        let (a_read, mut a_write) = split(a_near);
        let (b_read, mut b_write) = split(b_near);
        let (mut a_read, mut b_read) = (BufReader::new(a_read), BufReader::new(b_read));
        let started = Instant::now();
        let outcome =
            relay((&mut a_read, &mut a_write), (&mut b_read, &mut b_write), Duration::from_secs(30)).await;
        assert!(matches!(outcome.end, RelayEnd::Idle));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn one_way_traffic_keeps_the_relay_alive() {
        let (a_near, a_far) = duplex(64);
        let (b_near, mut b_far) = duplex(64);
        let (a_read, mut a_write) = split(a_near);
        let (b_read, mut b_write) = split(b_near);
        let relay = tokio::spawn(async move {
            let (mut a_read, mut b_read) = (BufReader::new(a_read), BufReader::new(b_read));
            relay((&mut a_read, &mut a_write), (&mut b_read, &mut b_write), Duration::from_secs(30)).await
        });
        let (mut a_far_read, _a_far_write) = split(a_far);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            b_far.write_all(b"tick").await.unwrap();
            let mut tick = [0u8; 4];
            a_far_read.read_exact(&mut tick).await.unwrap();
        }
        assert!(!relay.is_finished(), "100 s of one-way traffic is not idle");
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(matches!(relay.await.unwrap().end, RelayEnd::Idle));
    }
}
