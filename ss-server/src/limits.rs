//! A user's limits on a multi-user server ([`ss_config::limits`]): quota, rates, connections, devices.
//!
//! Each user name has one [`Account`] for the server's life (kept across reloads, so a user whose key
//! changes keeps what they used and their place in the limits):
//!
//! - **Admission** ([`Account::admit`]): a new TCP connection or UDP association is refused when the
//!   quota is spent, when the user has `max_connections` TCP connections open, or when it comes from a
//!   client IP address that is not among the user's live ones and the user already has `max_devices`
//!   of them. The refusal is a probe's (silence, then the connection ends): nothing tells a client which
//!   limit, or even that its key is valid. Limits lowered by a reload apply to new connections.
//! - **Rates**: one [`RateBucket`] per direction shared by all the user's connections and datagrams.
//!   A TCP connection waits before reading more once the user is ahead of their rate
//!   ([`crate::metered::Metered`]); the wait is on the reading side, so the sender is slowed by TCP's
//!   own flow control and nothing is buffered. Connections waiting on one bucket are woken in the order
//!   their reads were charged, each read bounded by its buffer, so they share the rate evenly. A UDP
//!   datagram over the rate is dropped (policing, as routers do). Rate changes apply at once.
//! - **Quota**: a [`QuotaLedger`], saved with the user's counters so that it survives restarts.
//!
//! A bucket is GCRA: it keeps the time at which the bytes already let through would have passed at the
//! rate; a read may start while that time is at most [`BURST`] ahead of now. Idle time earns no credit
//! beyond that burst.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ss_config::limits::Limits;
use tokio::time::Instant;

use crate::accounting::{unix_seconds, Counts, Usage};
use crate::quota::QuotaLedger;

/// How far ahead of its rate a user may get: bursts of up to this much time's worth of bytes pass at
/// once. Short, so a measured rate is close to the configured one over a few seconds.
pub const BURST: Duration = Duration::from_millis(50);

/// The direction a bucket paces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Client to target.
    Up,
    /// Target to client.
    Down,
}

/// A byte rate shared by every connection of one user in one direction.
#[derive(Debug, Default)]
pub struct RateBucket {
    /// Bytes per second; 0 for no limit.
    rate: AtomicU64,
    /// When the bytes let through so far would have passed at the rate.
    due: Mutex<Option<Instant>>,
}

impl RateBucket {
    /// Puts `rate` (bytes per second, `None` for no limit) in force.
    pub fn set_rate(&self, rate: Option<u64>) {
        self.rate.store(rate.unwrap_or(0), Ordering::Relaxed);
    }

    /// Whether the bucket limits anything.
    pub fn is_limited(&self) -> bool {
        self.rate.load(Ordering::Relaxed) != 0
    }

    fn lock(&self) -> MutexGuard<'_, Option<Instant>> {
        self.due.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When the next read may start; `None`: now.
    pub fn wait_until(&self, now: Instant) -> Option<Instant> {
        if !self.is_limited() {
            return None;
        }
        let due = (*self.lock())?;
        (due > now + BURST).then(|| due - BURST)
    }

    /// Counts `bytes` that went through at `now`.
    pub fn charge(&self, bytes: usize, now: Instant) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 || bytes == 0 {
            return;
        }
        let mut due = self.lock();
        let from = due.map_or(now, |due| due.max(now));
        *due = Some(from + Duration::from_secs_f64(bytes as f64 / rate as f64));
    }

    /// For a connection that wants to read `grant` bytes at `now`: `None` if the user is not ahead of
    /// their rate (read now, and [`RateBucket::charge`] what was read); otherwise the bytes are booked
    /// at the end of the queue and the time returned is when they may be read. Booking rather than
    /// waiting for the bucket to drain lets waiting connections take turns in the order they came.
    pub fn reserve(&self, grant: usize, now: Instant) -> Option<Instant> {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return None;
        }
        let mut due = self.lock();
        let booked = due.filter(|due| *due > now + BURST)?;
        *due = Some(booked + Duration::from_secs_f64(grant as f64 / rate as f64));
        Some(booked - BURST)
    }

    /// Lets a datagram of `bytes` through if the user is not ahead of their rate, and charges it.
    pub fn try_pass(&self, bytes: usize, now: Instant) -> bool {
        if self.wait_until(now).is_some() {
            return false;
        }
        self.charge(bytes, now);
        true
    }
}

/// Why a user's new connection or association was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The quota of the period is spent (or the date is outside its range).
    Quota,
    /// `max_connections` TCP connections are open.
    Connections,
    /// `max_devices` other client addresses are connected.
    Devices,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Quota => "the user's quota is spent",
            Refusal::Connections => "the user has max_connections open",
            Refusal::Devices => "the user is connected from max_devices other addresses",
        })
    }
}

impl std::error::Error for Refusal {}

/// Who is connected as the user now.
#[derive(Debug, Default)]
struct Presence {
    max_connections: Option<u32>,
    max_devices: Option<u32>,
    /// Open TCP connections.
    connections: u32,
    /// Live connections and associations by client address.
    devices: HashMap<IpAddr, u32>,
}

/// What one user name has: usage and quota, rate buckets, who is connected.
#[derive(Debug, Default)]
pub struct Account {
    usage: Usage,
    quota: QuotaLedger,
    up: RateBucket,
    down: RateBucket,
    presence: Mutex<Presence>,
}

impl Account {
    /// The user's counters and quota.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// The user's quota ledger.
    pub fn quota(&self) -> &QuotaLedger {
        &self.quota
    }

    /// The counters with what is spent of the quota, for the store.
    pub fn counts(&self) -> Counts {
        let (period_start, period_used) = self.quota.spent();
        Counts { period_start, period_used, ..self.usage.counts() }
    }

    /// Adds saved counts and quota spending (the store's row at start).
    pub fn restore(&self, counts: &Counts) {
        self.usage.add(counts);
        self.quota.restore(counts.period_start, counts.period_used);
    }

    /// The bucket pacing `way`.
    pub fn bucket(&self, way: Way) -> &RateBucket {
        match way {
            Way::Up => &self.up,
            Way::Down => &self.down,
        }
    }

    fn lock_presence(&self) -> MutexGuard<'_, Presence> {
        self.presence.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `limits` in force (at start and on every reload).
    pub fn set_limits(&self, limits: &Limits) {
        self.quota.set(limits.quota);
        self.up.set_rate(limits.rate_up);
        self.down.set_rate(limits.rate_down);
        let mut presence = self.lock_presence();
        presence.max_connections = limits.max_connections;
        presence.max_devices = limits.max_devices;
    }

    /// Admits a new TCP connection (`tcp`) or UDP association from `client`, if the limits allow it;
    /// the returned [`Present`] holds its place until dropped.
    pub fn admit(self: &Arc<Self>, client: IpAddr, tcp: bool) -> Result<Present, Refusal> {
        if !self.quota.has_left(unix_seconds()) {
            return Err(Refusal::Quota);
        }
        let mut presence = self.lock_presence();
        if tcp && presence.max_connections.is_some_and(|max| presence.connections >= max) {
            return Err(Refusal::Connections);
        }
        let known = presence.devices.contains_key(&client);
        if !known && presence.max_devices.is_some_and(|max| presence.devices.len() >= max as usize) {
            return Err(Refusal::Devices);
        }
        *presence.devices.entry(client).or_default() += 1;
        presence.connections += u32::from(tcp);
        drop(presence);
        Ok(Present { account: self.clone(), client, tcp })
    }

    /// Lets a datagram of `bytes` going `way` through the rate and the quota (UDP).
    pub fn pass_datagram(&self, way: Way, bytes: usize) -> bool {
        self.bucket(way).try_pass(bytes, Instant::now())
            && self.quota.take_exact(bytes as u64, unix_seconds())
    }

    /// TCP connections open now, and client addresses connected now.
    pub fn present(&self) -> (u32, usize) {
        let presence = self.lock_presence();
        (presence.connections, presence.devices.len())
    }
}

/// A connection's or association's place among its user's: given back when dropped.
#[derive(Debug)]
pub struct Present {
    account: Arc<Account>,
    client: IpAddr,
    tcp: bool,
}

impl Drop for Present {
    fn drop(&mut self) {
        let mut presence = self.account.lock_presence();
        presence.connections = presence.connections.saturating_sub(u32::from(self.tcp));
        if let Some(count) = presence.devices.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                presence.devices.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ss_config::quota::{Period, Quota};

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn connections_and_devices_are_limited_and_given_back() {
        let account = Arc::new(Account::default());
        account.set_limits(&Limits { max_connections: Some(2), max_devices: Some(2), ..Limits::default() });
        let first = account.admit(ip(1), true).unwrap();
        let udp = account.admit(ip(2), false).unwrap();
        assert_eq!(account.admit(ip(3), false).unwrap_err(), Refusal::Devices, "a third address");
        let second = account.admit(ip(2), true).unwrap();
        assert_eq!(account.admit(ip(1), true).unwrap_err(), Refusal::Connections);
        assert!(account.admit(ip(1), false).is_ok(), "UDP associations are not connections");
        assert_eq!(account.present(), (2, 2));
        drop((first, second, udp));
        assert_eq!(account.present(), (0, 0), "every place given back");
        assert!(account.admit(ip(3), true).is_ok());
        // A reload lifting the limits applies to the next connection.
        account.set_limits(&Limits::default());
        let many: Vec<Present> = (1..=10).map(|n| account.admit(ip(n), true).unwrap()).collect();
        assert_eq!(many.len(), 10);
    }

    #[test]
    fn a_spent_quota_refuses_new_connections_and_datagrams() {
        let account = Arc::new(Account::default());
        account.set_limits(&Limits {
            quota: Some(Quota { bytes: 1000, period: Period::Day }),
            ..Limits::default()
        });
        assert!(account.pass_datagram(Way::Down, 600));
        assert!(!account.pass_datagram(Way::Down, 600), "only 400 bytes left");
        assert!(account.pass_datagram(Way::Up, 400));
        assert_eq!(account.admit(ip(1), true).unwrap_err(), Refusal::Quota);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_lets_its_rate_through_after_a_short_burst() {
        let bucket = RateBucket::default();
        let start = Instant::now();
        assert_eq!(bucket.wait_until(start), None, "no limit: never waits");
        bucket.set_rate(Some(1000));
        // 10 reads of 100 bytes at 1000 B/s: the first 50 ms worth pass at once, then one per 100 ms.
        let mut passed = 0;
        for _ in 0..10 {
            if let Some(at) = bucket.wait_until(Instant::now()) {
                tokio::time::sleep_until(at).await;
            }
            bucket.charge(100, Instant::now());
            passed += 100;
        }
        let elapsed = start.elapsed();
        assert_eq!(passed, 1000);
        assert!(
            elapsed >= Duration::from_millis(900) - BURST && elapsed <= Duration::from_millis(900),
            "{elapsed:?}"
        );
        // Datagrams over the rate are dropped rather than delayed.
        assert!(!bucket.try_pass(100, Instant::now()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(bucket.try_pass(100, Instant::now()), "idle time earns the burst back");
    }
}
