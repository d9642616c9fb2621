//! The relay of a multi-user connection: counted ([`crate::accounting`]), paced to the user's rates,
//! and bounded by the user's quota ([`crate::limits`]).
//!
//! Each of the relay's four ends is wrapped in a [`Metered`] stream sharing the connection's [`Meter`]:
//!
//! - reads count when the relay consumes them (after writing them on); the client side and the target
//!   side are paced by the user's up and down [`crate::limits::RateBucket`]s: `poll_fill_buf` waits
//!   while the user is ahead of their rate, `consume` charges what went through;
//! - writes count as written and, with a quota, write only what the connection holds of it: the meter
//!   takes a [`LEASE`] from the user's ledger when it runs out, and a write finding the quota spent
//!   fails, which ends the relay. What a user's connections write never exceeds the quota.
//!
//! A connection also ends when the user is removed by a reload, or within [`FOLD_INTERVAL`] of the
//! quota running out even if it is idle. A server without users runs none of this.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::accounting::{unix_seconds, Usage};
use crate::limits::{Account, RateBucket, Way};
use crate::users::User;

/// How often a long connection folds its counts into its user's totals (and checks the quota).
pub const FOLD_INTERVAL: Duration = Duration::from_secs(5);

/// How many bytes a rate-limited connection books at a time when it has to wait: one record.
pub const GRANT: usize = 16 * 1024;

/// How much of the quota a connection takes at a time: it touches the user's ledger once per this
/// many bytes, and holds at most this much that the others cannot use until it ends.
pub const LEASE: u64 = 256 * 1024;

/// The counts of one TCP connection, written only by its own task, and its lease of the quota.
#[derive(Debug, Default)]
pub struct Meter {
    /// c->p, p->t, t->p, p->c.
    bytes: [AtomicU64; 4],
    /// What has been folded into the user's [`Usage`] already.
    folded: [AtomicU64; 4],
    /// The user's account: rates and quota. `None`: counting only.
    account: Option<Arc<Account>>,
    /// Quota bytes taken and not yet written, and the period they were taken in.
    lease: AtomicU64,
    lease_period: AtomicU64,
    /// A write found the quota spent.
    spent: AtomicBool,
}

/// Which of a [`Meter`]'s four counts a [`Metered`] stream adds to.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Read from the client.
    ClientToProxy = 0,
    /// Written to the target.
    ProxyToTarget = 1,
    /// Read from the target.
    TargetToProxy = 2,
    /// Written to the client.
    ProxyToClient = 3,
}

impl Meter {
    /// A meter applying `account`'s rates and quota.
    pub fn for_account(account: Arc<Account>) -> Meter {
        Meter { account: Some(account), ..Meter::default() }
    }

    fn count(&self, direction: Direction, bytes: usize) {
        self.bytes[direction as usize].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The bucket pacing reads of `direction`, if the user has a rate for it.
    fn bucket(&self, direction: Direction) -> Option<&RateBucket> {
        let way = match direction {
            Direction::ClientToProxy => Way::Up,
            Direction::TargetToProxy => Way::Down,
            Direction::ProxyToTarget | Direction::ProxyToClient => return None,
        };
        Some(self.account.as_ref()?.bucket(way)).filter(|bucket| bucket.is_limited())
    }

    /// How many of `len` bytes may be written now (0: the quota is spent), taking a lease from the
    /// user's ledger when the one in hand runs short.
    fn allow(&self, len: usize) -> usize {
        let Some(account) = &self.account else { return len };
        let len = len as u64;
        let mut have = self.lease.load(Ordering::Relaxed);
        if have < len {
            let (granted, period) = account.quota().take(LEASE.max(len) - have, unix_seconds());
            if granted > 0 {
                self.give_back_lease();
                have = self.lease.load(Ordering::Relaxed) + granted;
                self.lease_period.store(period, Ordering::Relaxed);
            }
            self.lease.store(have, Ordering::Relaxed);
        }
        have.min(len) as usize
    }

    fn spend(&self, written: usize) {
        if self.account.is_some() {
            self.lease.fetch_sub(written as u64, Ordering::Relaxed);
        }
    }

    /// Gives the lease in hand back to the user's ledger (before a new one, and at close).
    fn give_back_lease(&self) {
        if let Some(account) = &self.account {
            let unspent = self.lease.swap(0, Ordering::Relaxed);
            account.quota().give_back(unspent, self.lease_period.load(Ordering::Relaxed));
        }
    }

    /// Adds what moved since the last fold to `usages` (the user's and the total), and marks it seen.
    pub fn fold_into(&self, usages: &[&Usage]) {
        let mut delta = [0u64; 4];
        for (index, slot) in delta.iter_mut().enumerate() {
            let now = self.bytes[index].load(Ordering::Relaxed);
            *slot = now - self.folded[index].swap(now, Ordering::Relaxed);
        }
        if delta != [0; 4] {
            usages.iter().for_each(|usage| usage.add_bytes(delta));
        }
    }
}

/// A stream whose reads (or writes) count into one direction of a [`Meter`], paced and bounded by
/// the user's limits.
#[derive(Debug)]
pub struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
    direction: Direction,
    /// The wait for a booked read ([`RateBucket::reserve`]), boxed only for a connection that has
    /// waited.
    wait: Option<Pin<Box<Sleep>>>,
    /// A read is booked and `wait` runs until its turn.
    booked: bool,
    /// Bytes booked and waited for, not yet read: they are not charged again.
    credit: usize,
}

impl<S> Metered<S> {
    /// `inner`, counting into `direction` of `meter`.
    pub fn new(inner: S, meter: Arc<Meter>, direction: Direction) -> Metered<S> {
        Metered { inner, meter, direction, wait: None, booked: false, credit: 0 }
    }

    /// The stream inside.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Ready once the user's rate lets this direction read more: at once while the user is within
    /// their rate or this connection holds booked bytes, else after booking [`GRANT`] bytes and waiting
    /// for their turn.
    fn poll_pace(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(bucket) = self.meter.bucket(self.direction) else { return Poll::Ready(()) };
        if self.credit > 0 {
            return Poll::Ready(());
        }
        if !self.booked {
            let Some(at) = bucket.reserve(GRANT, Instant::now()) else { return Poll::Ready(()) };
            let wait = self.wait.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            wait.as_mut().reset(at);
            self.booked = true;
        }
        if let Some(wait) = self.wait.as_mut() {
            ready!(wait.as_mut().poll(cx));
        }
        self.booked = false;
        self.credit = GRANT;
        Poll::Ready(())
    }

    /// Charges `bytes` read to the user's rate, less what was booked for them.
    fn charge(&mut self, bytes: usize) {
        let prepaid = bytes.min(self.credit);
        self.credit -= prepaid;
        if let Some(bucket) = self.meter.bucket(self.direction) {
            bucket.charge(bytes - prepaid, Instant::now());
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pace(cx));
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.meter.count(this.direction, read);
        this.charge(read);
        polled
    }
}

impl<S: AsyncBufRead + Unpin> AsyncBufRead for Metered<S> {
    /// A connection reading on booked bytes is shown no more than it booked: a turn is the same size
    /// whatever the size of the connection's buffer.
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        ready!(this.poll_pace(cx));
        let turn = if this.credit > 0 { this.credit } else { usize::MAX };
        let available = ready!(Pin::new(&mut this.inner).poll_fill_buf(cx))?;
        Poll::Ready(Ok(&available[..available.len().min(turn)]))
    }

    /// Bytes count (and are charged to the rate) when the relay consumes them, after writing them on.
    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.meter.count(this.direction, amt);
        this.charge(amt);
        Pin::new(&mut this.inner).consume(amt);
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    /// With a quota, writes only what the quota allows and fails once it is spent (the relay then
    /// ends the connection): no byte beyond the quota is written.
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let allowed = this.meter.allow(buf.len());
        if allowed == 0 && !buf.is_empty() {
            this.meter.spent.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::other("the user's quota is spent")));
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, &buf[..allowed]);
        if let Poll::Ready(Ok(written)) = &polled {
            this.meter.count(this.direction, *written);
            this.meter.spend(*written);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Why a multi-user connection was ended from outside its relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A reload removed the user (or changed their key).
    Removed,
    /// The user's quota ran out: what was written within it is still to be delivered (the caller
    /// closes the client's side gracefully).
    QuotaSpent,
}

/// Relays a multi-user connection like [`ss_net::relay()`], counted, paced and bounded as the module
/// says. `Err`: ended from outside (the caller aborts the connection).
pub(crate) async fn relay_counted<CR, CW, TR, TW>(
    user: &User,
    client: (&mut CR, &mut CW),
    target: (&mut TR, &mut TW),
    idle: Duration,
) -> Result<ss_net::RelayOutcome, Ended>
where
    CR: AsyncBufRead + Unpin,
    CW: AsyncWrite + Unpin,
    TR: AsyncBufRead + Unpin,
    TW: AsyncWrite + Unpin,
{
    let account = user.account();
    let meter = Arc::new(Meter::for_account(account.clone()));
    let usages = user.usages();
    for usage in usages {
        usage.tcp_opened();
    }
    let mut client_read = Metered::new(client.0, meter.clone(), Direction::ClientToProxy);
    let mut client_write = Metered::new(client.1, meter.clone(), Direction::ProxyToClient);
    let mut target_read = Metered::new(target.0, meter.clone(), Direction::TargetToProxy);
    let mut target_write = Metered::new(target.1, meter.clone(), Direction::ProxyToTarget);
    let relay =
        ss_net::relay((&mut client_read, &mut client_write), (&mut target_read, &mut target_write), idle);
    let mut relay = std::pin::pin!(relay);
    let start = Instant::now() + FOLD_INTERVAL;
    let mut fold = tokio::time::interval_at(start, FOLD_INTERVAL);
    let mut outcome = loop {
        tokio::select! {
            outcome = &mut relay => break Ok(outcome),
            _ = fold.tick() => {
                meter.fold_into(&usages);
                if !account.quota().has_left(unix_seconds()) {
                    break Err(Ended::QuotaSpent);
                }
            }
            () = user.removed() => break Err(Ended::Removed),
        }
    };
    if outcome.is_ok() && meter.spent.load(Ordering::Relaxed) {
        outcome = Err(Ended::QuotaSpent);
    }
    meter.fold_into(&usages);
    meter.give_back_lease();
    for usage in usages {
        usage.tcp_closed();
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use ss_config::limits::Limits;
    use ss_config::quota::{Period, Quota};
    use ss_crypto::{Key, Method};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    fn user(name: &str, limits: Limits) -> User {
        let key = Key::from_bytes(Method::Blake3Aes128Gcm, &[1; 16]).unwrap();
        let user = User::new(name, key);
        user.account().set_limits(&limits);
        user
    }

    #[tokio::test]
    async fn metered_streams_count_and_fold_only_the_difference() {
        let meter = Arc::new(Meter::default());
        let (user, total) = (Usage::default(), Usage::default());
        let mut reader = Metered::new(&b"hello"[..], meter.clone(), Direction::TargetToProxy);
        let mut writer = Metered::new(Vec::new(), meter.clone(), Direction::ProxyToClient);
        let mut buf = [0u8; 16];
        let read = reader.read(&mut buf).await.unwrap();
        writer.write_all(&buf[..read]).await.unwrap();
        meter.fold_into(&[&user, &total]);
        writer.write_all(b"!!").await.unwrap();
        meter.fold_into(&[&user, &total]);
        meter.fold_into(&[&user, &total]);
        let counts = user.counts();
        assert_eq!((counts.target_to_proxy, counts.proxy_to_client), (5, 7));
        assert_eq!(total.counts().proxy_to_client, 7);
        assert!(counts.last_seen > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_connection_is_folded_every_interval_and_at_close() {
        let user = user("alice", Limits::default());
        let (mut client, proxy_client) = tokio::io::duplex(1024);
        let (proxy_target, mut target) = tokio::io::duplex(1024);
        let (client_read, mut client_write) = tokio::io::split(proxy_client);
        let (target_read, mut target_write) = tokio::io::split(proxy_target);
        let mut client_read = tokio::io::BufReader::new(client_read);
        let mut target_read = tokio::io::BufReader::new(target_read);
        let relay = relay_counted(
            &user,
            (&mut client_read, &mut client_write),
            (&mut target_read, &mut target_write),
            Duration::from_secs(600),
        );
        let traffic = async {
            let mut buf = [0u8; 8];
            client.write_all(b"12345").await.unwrap();
            target.read_exact(&mut buf[..5]).await.unwrap();
            target.write_all(b"abc").await.unwrap();
            client.read_exact(&mut buf[..3]).await.unwrap();
            let counts = user.usage().counts();
            assert_eq!((counts.tcp_opened, counts.client_to_proxy), (1, 0), "nothing folded yet");
            tokio::time::sleep(FOLD_INTERVAL + Duration::from_millis(1)).await;
            let counts = user.usage().counts();
            let bytes = (counts.client_to_proxy, counts.proxy_to_target);
            assert_eq!((bytes, counts.target_to_proxy, counts.proxy_to_client), ((5, 5), 3, 3));
            assert_eq!(counts.tcp_closed, 0);
            client.write_all(b"67").await.unwrap();
            drop(client);
            target.read_exact(&mut buf[..2]).await.unwrap();
            drop(target);
        };
        let (outcome, ()) =
            tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(relay, traffic) })
                .await
                .unwrap();
        assert!(outcome.is_ok());
        let counts = user.usage().counts();
        assert_eq!((counts.client_to_proxy, counts.tcp_closed), (7, 1), "folded at close");
        assert_eq!(user.usages()[1].counts().client_to_proxy, 7, "the total too");
    }

    #[tokio::test]
    async fn writes_stop_at_the_quota_and_the_unspent_lease_goes_back() {
        let quota = Quota { bytes: LEASE + 10, period: Period::Day };
        let user = user("bob", Limits { quota: Some(quota), ..Limits::default() });
        let meter = Arc::new(Meter::for_account(user.account().clone()));
        let mut writer = Metered::new(Vec::new(), meter.clone(), Direction::ProxyToTarget);
        let chunk = vec![0u8; 100_000];
        let mut written = 0;
        let error = loop {
            match writer.write(&chunk).await {
                Ok(n) => written += n,
                Err(error) => break error,
            }
        };
        assert_eq!(written as u64, LEASE + 10, "not a byte more");
        assert!(error.to_string().contains("quota"));
        meter.give_back_lease();
        assert!(!user.account().quota().has_left(unix_seconds()));
        // A second connection's unspent lease is given back when it ends.
        let other = user_with_room();
        let meter = Meter::for_account(other.account().clone());
        assert_eq!(meter.allow(100), 100);
        assert_eq!(other.account().quota().spent().1, LEASE, "a lease is taken");
        meter.give_back_lease();
        assert_eq!(other.account().quota().spent().1, 0);
    }

    fn user_with_room() -> User {
        user(
            "carol",
            Limits { quota: Some(Quota { bytes: 1 << 30, period: Period::Month }), ..Limits::default() },
        )
    }

    /// Reads `reader` into nothing until `until`; how many bytes it read.
    async fn read_until<R: AsyncBufRead + Unpin>(mut reader: R, until: Instant) -> usize {
        let mut total = 0;
        while Instant::now() < until {
            let chunk = tokio::time::timeout_at(until, reader.fill_buf()).await;
            let Ok(Ok(chunk)) = chunk else { break };
            let len = chunk.len();
            reader.consume(len);
            total += len;
        }
        total
    }

    #[tokio::test(start_paused = true)]
    async fn connections_of_one_user_share_its_rate_evenly() {
        let user = user("erin", Limits { rate_down: Some(100_000), ..Limits::default() });
        let data = vec![7u8; 10_000_000];
        let paced = |capacity: usize| {
            let meter = Arc::new(Meter::for_account(user.account().clone()));
            let reader = tokio::io::BufReader::with_capacity(capacity, &data[..]);
            Metered::new(reader, meter, Direction::TargetToProxy)
        };
        // One connection reads in 64 KiB gulps, the other in 4 KiB sips: the turns still even out.
        let until = Instant::now() + Duration::from_secs(20);
        let (big, small) =
            tokio::join!(read_until(paced(64 * 1024), until), read_until(paced(4 * 1024), until));
        let total = (big + small) as f64;
        assert!((total - 2_000_000.0).abs() < 150_000.0, "together {total} bytes in 20 s at 100 kB/s");
        let share = small as f64 / total;
        assert!((0.45..=0.55).contains(&share), "shares {big} and {small}");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_paced_to_the_users_rate() {
        let user = user("dave", Limits { rate_down: Some(100_000), ..Limits::default() });
        let meter = Arc::new(Meter::for_account(user.account().clone()));
        let data = vec![7u8; 500_000];
        let reader = tokio::io::BufReader::with_capacity(16 * 1024, &data[..]);
        let mut paced = Metered::new(reader, meter.clone(), Direction::TargetToProxy);
        let mut unpaced = Metered::new(&data[..], meter, Direction::ClientToProxy);
        let start = Instant::now();
        let mut sink = Vec::new();
        tokio::io::copy_buf(&mut paced, &mut sink).await.unwrap();
        let elapsed = start.elapsed();
        assert_eq!(sink.len(), data.len());
        // 500 kB at 100 kB/s: 5 s, less the burst and the last read's share.
        assert!(elapsed >= Duration::from_millis(4700) && elapsed <= Duration::from_secs(5), "{elapsed:?}");
        let start = Instant::now();
        tokio::io::copy(&mut unpaced, &mut tokio::io::sink()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "the other direction has no limit");
    }
}
