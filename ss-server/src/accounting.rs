//! Per-user accounting of a multi-user server: what each user (and all of them together) moved.
//!
//! Bytes are payload bytes, counted at the four ends of the proxy (salts, tags and length fields are
//! not counted):
//!
//! ```text
//! client ──c->p──▶ proxy ──p->t──▶ target
//! client ◀──p->c── proxy ◀──t->p── target
//! ```
//!
//! c->p and p->t (and t->p and p->c) differ only by data in flight when a connection ends.
//!
//! Nothing on the relay path touches a shared counter: a TCP connection counts into its own [`Meter`]
//! (four relaxed atomics no other thread writes, so their cache line stays with the connection's
//! thread), and the connection folds the difference into its user's [`Usage`] every [`FOLD_INTERVAL`]
//! and at close. UDP datagrams are counted straight into the user's `Usage` (a datagram already costs
//! two system calls). A server without users runs none of this.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use ss_config::quota::Quota;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// How often a long connection folds its counts into its user's totals.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(5);

/// The counters of one user (or of all users together), as plain numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Payload bytes received from clients.
    pub client_to_proxy: u64,
    /// Payload bytes sent to targets.
    pub proxy_to_target: u64,
    /// Payload bytes received from targets.
    pub target_to_proxy: u64,
    /// Payload bytes sent to clients.
    pub proxy_to_client: u64,
    /// TCP connections authenticated as the user.
    pub tcp_opened: u64,
    /// Of those, connections that have ended.
    pub tcp_closed: u64,
    /// UDP associations opened.
    pub udp_associations: u64,
    /// UDP datagrams from clients.
    pub udp_packets_in: u64,
    /// UDP datagrams to clients.
    pub udp_packets_out: u64,
    /// Unix seconds of the last activity (0: never).
    pub last_seen: u64,
    /// Start (Unix seconds) of the quota period `period_used` counts in.
    pub period_start: u64,
    /// Bytes counted against the quota in that period.
    pub period_used: u64,
}

/// Live counters of one user, or of all users together; updated from any thread.
#[derive(Debug, Default)]
pub struct Usage {
    client_to_proxy: AtomicU64,
    proxy_to_target: AtomicU64,
    target_to_proxy: AtomicU64,
    proxy_to_client: AtomicU64,
    tcp_opened: AtomicU64,
    tcp_closed: AtomicU64,
    udp_associations: AtomicU64,
    udp_packets_in: AtomicU64,
    udp_packets_out: AtomicU64,
    last_seen: AtomicU64,
    quota: Mutex<QuotaState>,
}

/// A user's quota and what of it is spent ([`Usage::take`]).
#[derive(Debug, Default)]
struct QuotaState {
    quota: Option<Quota>,
    period_start: u64,
    used: u64,
}

impl QuotaState {
    /// Moves to the period `now` falls in; false outside every period (a range that is over).
    fn roll(&mut self, now: u64) -> bool {
        let Some(quota) = self.quota else { return true };
        match quota.period.bounds(now) {
            None => false,
            Some((start, _)) => {
                if start != self.period_start {
                    self.period_start = start;
                    self.used = 0;
                }
                true
            }
        }
    }
}

impl Usage {
    /// The counters now.
    pub fn counts(&self) -> Counts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counts {
            client_to_proxy: get(&self.client_to_proxy),
            proxy_to_target: get(&self.proxy_to_target),
            target_to_proxy: get(&self.target_to_proxy),
            proxy_to_client: get(&self.proxy_to_client),
            tcp_opened: get(&self.tcp_opened),
            tcp_closed: get(&self.tcp_closed),
            udp_associations: get(&self.udp_associations),
            udp_packets_in: get(&self.udp_packets_in),
            udp_packets_out: get(&self.udp_packets_out),
            last_seen: get(&self.last_seen),
            period_start: self.lock_quota().period_start,
            period_used: self.lock_quota().used,
        }
    }

    fn lock_quota(&self) -> std::sync::MutexGuard<'_, QuotaState> {
        self.quota.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `quota` in force (at start and on reload); what was spent in the period stays spent.
    pub fn set_quota(&self, quota: Option<Quota>) {
        self.lock_quota().quota = quota;
    }

    /// Whether the user has a quota.
    pub fn has_quota(&self) -> bool {
        self.lock_quota().quota.is_some()
    }

    /// Whether a new connection may start at `now` (Unix seconds): no quota, or some of it left.
    pub fn may_connect(&self, now: u64) -> bool {
        let mut state = self.lock_quota();
        match state.quota {
            None => true,
            Some(quota) => state.roll(now) && state.used < quota.bytes,
        }
    }

    /// Takes up to `want` bytes of the quota at `now` for a connection to spend; 0 when it is spent (or
    /// outside a range). Without a quota, all of `want`.
    pub fn take(&self, want: u64, now: u64) -> u64 {
        let mut state = self.lock_quota();
        let Some(quota) = state.quota else { return want };
        if !state.roll(now) {
            return 0;
        }
        let granted = want.min(quota.bytes.saturating_sub(state.used));
        state.used += granted;
        granted
    }

    /// Gives back `unspent` bytes a connection took at `taken_in` (a period start) and did not use.
    pub fn give_back(&self, unspent: u64, taken_in: u64) {
        let mut state = self.lock_quota();
        if state.period_start == taken_in {
            state.used = state.used.saturating_sub(unspent);
        }
    }

    /// The start of the quota period in force.
    fn period_start(&self) -> u64 {
        self.lock_quota().period_start
    }

    /// Adds `counts` (saved ones, loaded at start); `last_seen` takes the later of the two.
    pub fn add(&self, counts: &Counts) {
        let add = |counter: &AtomicU64, value: u64| counter.fetch_add(value, Ordering::Relaxed);
        add(&self.client_to_proxy, counts.client_to_proxy);
        add(&self.proxy_to_target, counts.proxy_to_target);
        add(&self.target_to_proxy, counts.target_to_proxy);
        add(&self.proxy_to_client, counts.proxy_to_client);
        add(&self.tcp_opened, counts.tcp_opened);
        add(&self.tcp_closed, counts.tcp_closed);
        add(&self.udp_associations, counts.udp_associations);
        add(&self.udp_packets_in, counts.udp_packets_in);
        add(&self.udp_packets_out, counts.udp_packets_out);
        self.last_seen.fetch_max(counts.last_seen, Ordering::Relaxed);
        let mut state = self.lock_quota();
        if counts.period_start > state.period_start {
            state.period_start = counts.period_start;
            state.used = 0;
        }
        if counts.period_start == state.period_start {
            state.used += counts.period_used;
        }
    }

    /// A TCP connection of this user authenticated.
    pub fn tcp_opened(&self) {
        self.tcp_opened.fetch_add(1, Ordering::Relaxed);
        self.seen();
    }

    /// A TCP connection of this user ended (after its last fold).
    pub fn tcp_closed(&self) {
        self.tcp_closed.fetch_add(1, Ordering::Relaxed);
        self.seen();
    }

    /// A UDP association of this user opened.
    pub fn udp_association(&self) {
        self.udp_associations.fetch_add(1, Ordering::Relaxed);
    }

    /// A datagram of `payload` bytes from the client, `sent` of them sent on to the target.
    pub fn udp_in(&self, payload: usize, sent: usize) {
        self.udp_packets_in.fetch_add(1, Ordering::Relaxed);
        self.client_to_proxy.fetch_add(payload as u64, Ordering::Relaxed);
        self.proxy_to_target.fetch_add(sent as u64, Ordering::Relaxed);
        self.seen();
    }

    /// A reply of `payload` bytes from the target, `sent` of them sent on to the client.
    pub fn udp_out(&self, payload: usize, sent: usize) {
        self.udp_packets_out.fetch_add(1, Ordering::Relaxed);
        self.target_to_proxy.fetch_add(payload as u64, Ordering::Relaxed);
        self.proxy_to_client.fetch_add(sent as u64, Ordering::Relaxed);
    }

    fn seen(&self) {
        self.last_seen.fetch_max(unix_seconds(), Ordering::Relaxed);
    }
}

pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// How much of the quota a connection takes at a time: a connection touches the user's shared quota
/// once per this many bytes, and holds at most this much the others cannot use until it ends.
pub const LEASE: u64 = 256 * 1024;

/// The byte counts of one TCP connection, written only by its own task.
#[derive(Debug, Default)]
pub struct Meter {
    /// c->p, p->t, t->p, p->c.
    bytes: [AtomicU64; 4],
    /// What has been folded into the user's [`Usage`] already.
    folded: [AtomicU64; 4],
    /// The user's usage when they have a quota: what this connection writes is taken from it.
    quota: Option<Arc<Usage>>,
    /// Quota bytes taken and not yet written, and the period they were taken in.
    allowance: AtomicU64,
    allowance_period: AtomicU64,
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
    /// A meter whose writes are bounded by `usage`'s quota.
    pub fn with_quota(usage: Arc<Usage>) -> Meter {
        Meter { quota: Some(usage), ..Meter::default() }
    }

    /// How many of `len` bytes may be written now (0: the quota is spent). Tops the allowance up from
    /// the user's quota when it runs short.
    fn allow(&self, len: usize) -> usize {
        let Some(usage) = &self.quota else { return len };
        let len = len as u64;
        let mut have = self.allowance.load(Ordering::Relaxed);
        if have < len {
            let now = unix_seconds();
            let got = usage.take(LEASE.max(len) - have, now);
            self.allowance_period.store(usage.period_start(), Ordering::Relaxed);
            have += got;
            self.allowance.store(have, Ordering::Relaxed);
        }
        have.min(len) as usize
    }

    fn spend(&self, written: usize) {
        if self.quota.is_some() {
            self.allowance.fetch_sub(written as u64, Ordering::Relaxed);
        }
    }

    /// Gives the unspent allowance back to the user's quota (at close).
    fn give_back(&self) {
        if let Some(usage) = &self.quota {
            let unspent = self.allowance.swap(0, Ordering::Relaxed);
            usage.give_back(unspent, self.allowance_period.load(Ordering::Relaxed));
        }
    }

    fn count(&self, direction: Direction, bytes: usize) {
        self.bytes[direction as usize].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Adds what moved since the last fold to `usages` (the user's and the total), and marks it seen.
    pub fn fold_into(&self, usages: &[&Usage]) {
        let mut delta = [0u64; 4];
        for (index, slot) in delta.iter_mut().enumerate() {
            let now = self.bytes[index].load(Ordering::Relaxed);
            *slot = now - self.folded[index].swap(now, Ordering::Relaxed);
        }
        if delta == [0; 4] {
            return;
        }
        for usage in usages {
            usage.client_to_proxy.fetch_add(delta[0], Ordering::Relaxed);
            usage.proxy_to_target.fetch_add(delta[1], Ordering::Relaxed);
            usage.target_to_proxy.fetch_add(delta[2], Ordering::Relaxed);
            usage.proxy_to_client.fetch_add(delta[3], Ordering::Relaxed);
            usage.seen();
        }
    }
}

/// A stream whose reads (or writes) count into one direction of a [`Meter`].
#[derive(Debug)]
pub struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
    direction: Direction,
}

impl<S> Metered<S> {
    /// `inner`, counting into `direction` of `meter`.
    pub fn new(inner: S, meter: Arc<Meter>, direction: Direction) -> Metered<S> {
        Metered { inner, meter, direction }
    }

    /// The stream inside.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.meter.count(this.direction, buf.filled().len() - before);
        polled
    }
}

impl<S: AsyncBufRead + Unpin> AsyncBufRead for Metered<S> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    /// Bytes count when the relay consumes them (after writing them on).
    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.meter.count(this.direction, amt);
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

/// Relays a multi-user connection like [`ss_net::relay`], counting each direction into a [`Meter`]
/// that is folded into the user's usage every [`FOLD_INTERVAL`] and at the end. `None`: a reload
/// removed the user first (the caller aborts the connection).
pub(crate) async fn relay_counted<CR, CW, TR, TW>(
    user: &crate::users::User,
    client: (&mut CR, &mut CW),
    target: (&mut TR, &mut TW),
    idle: Duration,
) -> Option<ss_net::RelayOutcome>
where
    CR: AsyncBufRead + Unpin,
    CW: AsyncWrite + Unpin,
    TR: AsyncBufRead + Unpin,
    TW: AsyncWrite + Unpin,
{
    let meter = match user.usage().has_quota() {
        true => Arc::new(Meter::with_quota(user.usage_arc())),
        false => Arc::new(Meter::default()),
    };
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
    let start = tokio::time::Instant::now() + FOLD_INTERVAL;
    let mut fold = tokio::time::interval_at(start, FOLD_INTERVAL);
    let outcome = loop {
        tokio::select! {
            outcome = &mut relay => break Some(outcome),
            _ = fold.tick() => meter.fold_into(&usages),
            () = user.removed() => break None,
        }
    };
    meter.fold_into(&usages);
    meter.give_back();
    for usage in usages {
        usage.tcp_closed();
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        use ss_crypto::{Key, Method};
        let key = Key::from_bytes(Method::Blake3Aes128Gcm, &[1; 16]).unwrap();
        let user = crate::users::User::new("alice", key);
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
        assert!(outcome.is_some());
        let counts = user.usage().counts();
        assert_eq!((counts.client_to_proxy, counts.tcp_closed), (7, 1), "folded at close");
        assert_eq!(user.usages()[1].counts().client_to_proxy, 7, "the total too");
    }

    #[test]
    fn a_daily_quota_is_spent_then_starts_again_at_midnight_utc() {
        use ss_config::quota::Period;
        let usage = Usage::default();
        usage.set_quota(Some(Quota { bytes: 1000, period: Period::Day }));
        // 2026-11-28 23:59:59 UTC, then midnight.
        let (evening, midnight) = (1_795_910_399, 1_795_910_400);
        assert_eq!(usage.take(600, evening), 600);
        assert_eq!(usage.take(600, evening), 400, "only what is left");
        assert!(!usage.may_connect(evening));
        assert_eq!(usage.take(1, evening), 0);
        usage.give_back(100, 1_795_824_000);
        assert!(usage.may_connect(evening), "unspent bytes given back");
        assert!(usage.may_connect(midnight));
        assert_eq!(usage.take(2000, midnight), 1000, "a new day, a new quota");
        // What was spent survives a restart (saved counts loaded into a fresh usage).
        let restored = Usage::default();
        restored.set_quota(Some(Quota { bytes: 1000, period: Period::Day }));
        restored.add(&usage.counts());
        assert!(!restored.may_connect(midnight + 60));
    }

    #[tokio::test]
    async fn writes_stop_at_the_quota() {
        use ss_config::quota::Period;
        let usage = Arc::new(Usage::default());
        usage.set_quota(Some(Quota { bytes: LEASE + 10, period: Period::Day }));
        let meter = Arc::new(Meter::with_quota(usage.clone()));
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
        meter.give_back();
        assert!(!usage.may_connect(unix_seconds()));
    }

    #[test]
    fn loaded_counts_add_up_and_keep_the_latest_last_seen() {
        let usage = Usage::default();
        usage.udp_in(10, 10);
        usage.add(&Counts { client_to_proxy: 5, tcp_opened: 2, last_seen: 1, ..Counts::default() });
        let counts = usage.counts();
        assert_eq!((counts.client_to_proxy, counts.tcp_opened, counts.udp_packets_in), (15, 2, 1));
        assert!(counts.last_seen > 1);
    }
}
