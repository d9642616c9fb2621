//! Replay protection: salts the server has seen (and sent) are refused the second time.
//!
//! - AEAD-2022 streams carry a timestamp checked to within 30 s of the server's clock, so a salt only
//!   has to be remembered while a copy of its header could still pass that check. [`SaltWindow`] keeps
//!   the exact salts (no false positives) for at least [`retention_2022`]; see there for the arithmetic.
//! - Classic AEAD has no timestamp, so a replay may come at any time. [`SaltHistory`] keeps 64-bit keyed
//!   fingerprints of the last salts in two generations of `capacity` entries each: when the current one is
//!   full the older is forgotten. It remembers at least the last `capacity` salts (default 2^20 for TCP;
//!   it grows only as salts arrive, and when full it is two tables of 2^21 slots of 9 bytes, about
//!   36 MiB). A fresh salt is wrongly refused only if its fingerprint collides with a remembered one:
//!   probability at most 2 x capacity / 2^64, about 1.1e-13 per connection at the default. The
//!   fingerprint is a BLAKE3 keyed hash under a key derived from the server's key: collisions cannot be aimed at without the key, and the fingerprints stay meaningful
//!   across restarts, so the history can be saved and loaded ([`crate::replay_snapshot`]).
//!
//! Salts are recorded the moment the first record after them authenticated (the 2022 fixed header with
//! its timestamp checked, the classic first length): an unauthenticated salt proves nothing and would let
//! anyone fill the filter. The server records the salts of its own response streams too, so that a
//! response replayed back to it is refused as well.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ss_crypto::{Generation, Key, Salt};
use tokio::time::Instant;

/// Default number of classic TCP salts remembered per generation.
pub const DEFAULT_CLASSIC_CAPACITY: usize = 1 << 20;
/// Classic UDP salts remembered per generation (by the UDP relay): 2^17, so a datagram flood cannot
/// grow it beyond two tables of 2^18 slots, about 4.5 MiB.
pub const CLASSIC_UDP_CAPACITY: usize = 1 << 17;
/// The largest difference SIP022 allows between a header's timestamp and the receiver's clock.
pub const MAX_TIME_SKEW: Duration = Duration::from_secs(ss_crypto::tcp::MAX_TIME_SKEW);

/// How long an AEAD-2022 TCP salt must be remembered, for a server whose handshake timeout is
/// `handshake_timeout`.
///
/// A header with timestamp `ts` passes the check while the server's clock, read in whole seconds, is in
/// `ts - 30 ..= ts + 30`: a real-time span of 61 s (the last second counts until it ends). The first copy
/// can arrive at its very start and a replay at its very end, so the salt must outlive its first use by
/// 2 x 30 s + 1 s. On top of that comes the longest a handshake may take: the check and the record are
/// the same moment today, but the bound must not silently break if the record ever moves towards the end
/// of the handshake (where it was before), and it is margin for a wall clock that is stepped slightly.
/// With the default 10 s handshake timeout this is 71 s.
pub fn retention_2022(handshake_timeout: Duration) -> Duration {
    2 * MAX_TIME_SKEW + Duration::from_secs(1) + handshake_timeout
}

/// The server's replay filter, shared by all connections.
#[derive(Debug)]
pub struct ReplayFilter {
    inner: Mutex<Filter>,
    /// A salt was recorded since the last [`ReplayFilter::take_changed`].
    changed: AtomicBool,
}

#[derive(Debug)]
enum Filter {
    Classic(SaltHistory),
    Aead2022(SaltWindow),
}

impl ReplayFilter {
    /// A filter for `key`'s protocol generation: classic filters remember `classic_capacity` salts per
    /// generation, 2022 filters keep salts for [`retention_2022`] of `handshake_timeout`.
    pub fn new(
        key: &Key,
        generation: Generation,
        classic_capacity: usize,
        handshake_timeout: Duration,
    ) -> Self {
        let filter = match generation {
            Generation::Classic => Filter::Classic(SaltHistory::new(key, classic_capacity)),
            Generation::Aead2022 => {
                Filter::Aead2022(SaltWindow::new(retention_2022(handshake_timeout), Instant::now()))
            }
        };
        ReplayFilter { inner: Mutex::new(filter), changed: AtomicBool::new(false) }
    }

    /// Records `salt`; returns false if it was already there (a replay).
    pub fn insert(&self, salt: &Salt) -> bool {
        let fresh = match &mut *self.lock() {
            Filter::Classic(history) => history.insert(salt.as_bytes()),
            Filter::Aead2022(window) => window.insert(salt, Instant::now()),
        };
        if fresh {
            self.changed.store(true, Ordering::Relaxed);
        }
        fresh
    }

    /// Runs `f` on the classic history; `None` for a 2022 filter (nothing there outlives a restart).
    pub fn with_history<T>(&self, f: impl FnOnce(&mut SaltHistory) -> T) -> Option<T> {
        match &mut *self.lock() {
            Filter::Classic(history) => Some(f(history)),
            Filter::Aead2022(_) => None,
        }
    }

    /// Salts (or fingerprints) remembered now, both generations together.
    pub fn len(&self) -> usize {
        match &*self.lock() {
            Filter::Classic(history) => history.current.len() + history.previous.len(),
            Filter::Aead2022(window) => window.current.len() + window.previous.len(),
        }
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a salt was recorded since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Filter> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Exact salts of at least the last `retention`: two generations, rotated every `retention`, so a salt
/// is remembered for `retention` to `2 x retention`.
#[derive(Debug)]
pub struct SaltWindow {
    retention: Duration,
    current: HashSet<Salt>,
    previous: HashSet<Salt>,
    rotated: Instant,
}

impl SaltWindow {
    /// An empty window starting at `now`.
    pub fn new(retention: Duration, now: Instant) -> SaltWindow {
        SaltWindow { retention, current: HashSet::new(), previous: HashSet::new(), rotated: now }
    }

    /// Records `salt` at `now`; false if it was recorded less than `retention` ago (or up to twice that).
    pub fn insert(&mut self, salt: &Salt, now: Instant) -> bool {
        // A salt recorded at t < rotated + R moves to `previous` at a rotation r1 >= rotated + R > t and is
        // dropped at the next one, r2 >= r1 + R > t + R; clearing both after 2 R idle keeps that bound.
        let age = now.saturating_duration_since(self.rotated);
        if age >= 2 * self.retention {
            self.previous.clear();
            self.current.clear();
            self.rotated = now;
        } else if age >= self.retention {
            rotate(&mut self.previous, &mut self.current);
            self.rotated = now;
        }
        if self.previous.contains(salt) {
            return false;
        }
        self.current.insert(*salt)
    }
}

/// Keyed fingerprints of the last `capacity` to `2 x capacity` classic salts.
#[derive(Debug)]
pub struct SaltHistory {
    fingerprint_key: [u8; blake3::KEY_LEN],
    current: HashSet<u64>,
    previous: HashSet<u64>,
    capacity: usize,
}

impl SaltHistory {
    /// An empty history remembering at least `capacity` salts, fingerprinted under `key`.
    pub fn new(key: &Key, capacity: usize) -> SaltHistory {
        SaltHistory {
            fingerprint_key: blake3::derive_key("ss-rs replay filter salt fingerprint", key.as_bytes()),
            current: HashSet::new(),
            previous: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `salt`; false if its fingerprint is remembered.
    pub fn insert(&mut self, salt: &[u8]) -> bool {
        let fingerprint = self.fingerprint(salt);
        self.insert_fingerprint(fingerprint)
    }

    /// The 64-bit fingerprint of `salt` under this history's key.
    pub fn fingerprint(&self, salt: &[u8]) -> u64 {
        let hash = blake3::keyed_hash(&self.fingerprint_key, salt);
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    /// Records a fingerprint (from [`SaltHistory::fingerprint`] or a snapshot); false if remembered.
    pub fn insert_fingerprint(&mut self, fingerprint: u64) -> bool {
        if self.previous.contains(&fingerprint) || !self.current.insert(fingerprint) {
            return false;
        }
        if self.current.len() >= self.capacity {
            rotate(&mut self.previous, &mut self.current);
        }
        true
    }

    /// The remembered fingerprints, older generation first.
    pub fn generations(&self) -> (&HashSet<u64>, &HashSet<u64>) {
        (&self.previous, &self.current)
    }

    /// Salts remembered per generation.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A value that identifies the key (not the key): two histories under different keys differ here,
    /// so a snapshot written under another key is recognised.
    pub fn key_check(&self) -> [u8; 16] {
        let hash = blake3::keyed_hash(&self.fingerprint_key, b"ss-rs replay snapshot key check");
        let mut check = [0u8; 16];
        check.copy_from_slice(&hash.as_bytes()[..16]);
        check
    }
}

/// Makes `current` the older generation and starts an empty one in the table the oldest one used.
///
/// Reusing the table (rather than dropping the oldest generation and growing a new one from nothing)
/// keeps the filter's memory flat under steady traffic: growing by doubling and freeing once per
/// generation made a sawtooth in the server's RSS. The table shrinks only as far as the newest
/// generation needs, so a burst of traffic is given back one generation later.
fn rotate<T: std::hash::Hash + Eq>(previous: &mut HashSet<T>, current: &mut HashSet<T>) {
    std::mem::swap(previous, current);
    current.clear();
    current.shrink_to(previous.len());
}

#[cfg(test)]
mod tests {
    use ss_crypto::Method;

    use super::*;

    fn salt(n: u32) -> Salt {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        Salt::from_slice(Method::Aes128Gcm, &bytes).unwrap()
    }

    fn key() -> Key {
        Key::from_password(Method::Aes128Gcm, "replay tests").unwrap()
    }

    #[test]
    fn the_2022_retention_is_the_timestamp_window_plus_the_handshake() {
        assert_eq!(retention_2022(Duration::from_secs(10)), Duration::from_secs(71));
        assert_eq!(retention_2022(Duration::from_secs(0)), Duration::from_secs(61));
    }

    /// The boundary: wherever in the rotation cycle a salt is recorded, and however often other salts
    /// rotate the generations meanwhile, it is refused until one tick before `retention` has passed.
    /// The old fixed 60 s window forgot a salt recorded just before a rotation after just over 60 s.
    #[test]
    fn a_2022_salt_is_kept_for_the_whole_retention_wherever_it_falls_in_the_cycle() {
        let retention = retention_2022(Duration::from_secs(10));
        let tick = Duration::from_millis(1);
        let t0 = Instant::now();
        for offset_ms in [0, 1, 30_000, 59_999, 60_000, 60_001, 70_999, 71_000, 71_001, 141_999] {
            let mut window = SaltWindow::new(retention, t0);
            let recorded = t0 + Duration::from_millis(offset_ms);
            assert!(window.insert(&salt(0), recorded));
            let last = recorded + retention - tick;
            let mut now = recorded;
            let mut n = 1;
            while now < last {
                now = (now + Duration::from_millis(997)).min(last);
                assert!(window.insert(&salt(n), now), "filler {n}");
                n += 1;
            }
            assert!(!window.insert(&salt(0), last), "recorded at {offset_ms} ms, forgotten too early");
        }
    }

    /// The shared filter reads tokio's clock: with it paused, the same boundary end to end.
    #[tokio::test(start_paused = true)]
    async fn the_shared_2022_filter_refuses_a_replay_one_tick_before_the_retention_ends() {
        let handshake = Duration::from_secs(10);
        // Written out rather than taken from `retention_2022`: 30 s either side, the last whole second,
        // and the handshake timeout.
        let retention = Duration::from_secs(30 + 30 + 1 + 10);
        let filter = ReplayFilter::new(&key(), Generation::Aead2022, 16, handshake);
        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert!(filter.insert(&salt(1)));
        let recorded = Instant::now();
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(filter.insert(&salt(2)), "rotates the generations");
        tokio::time::advance(retention - Duration::from_millis(3)).await;
        assert!(filter.insert(&salt(3)));
        assert_eq!(Instant::now() - recorded, retention - Duration::from_millis(1));
        assert!(!filter.insert(&salt(1)), "replay one tick before the retention ends");
        tokio::time::advance(2 * retention).await;
        assert!(filter.insert(&salt(1)), "forgotten once it cannot pass the timestamp check any more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_2022_salt_is_forgotten_within_twice_the_retention() {
        let retention = retention_2022(Duration::from_secs(10));
        let mut window = SaltWindow::new(retention, Instant::now());
        assert!(window.insert(&salt(1), Instant::now()));
        tokio::time::advance(2 * retention).await;
        assert!(window.insert(&salt(2), Instant::now()));
        assert!(window.insert(&salt(1), Instant::now()), "bounded memory: forgotten after 2 x retention");
    }

    #[test]
    fn history_remembers_at_least_capacity_salts() {
        let mut history = SaltHistory::new(&key(), 1000);
        for n in 0..1000 {
            assert!(history.insert(salt(n).as_bytes()));
        }
        for n in 0..1000 {
            assert!(!history.insert(salt(n).as_bytes()), "salt {n} forgotten too early");
        }
        for n in 1000..2000 {
            assert!(history.insert(salt(n).as_bytes()));
        }
        assert!(history.insert(salt(0).as_bytes()), "the oldest generation is dropped");
        assert!(history.current.len() + history.previous.len() <= 2000, "bounded");
    }

    #[test]
    fn a_rotation_reuses_the_table_instead_of_growing_a_new_one() {
        let mut history = SaltHistory::new(&key(), 1000);
        for n in 0..2000 {
            assert!(history.insert(salt(n).as_bytes()));
        }
        assert!(history.current.is_empty(), "just rotated");
        assert!(history.current.capacity() >= 1000, "steady traffic: the next generation needs no regrowth");
        let t0 = Instant::now();
        let mut window = SaltWindow::new(Duration::from_secs(1), t0);
        for n in 0..3000 {
            window.insert(&salt(n), t0 + Duration::from_millis(u64::from(n)));
        }
        assert!(window.current.capacity() >= window.previous.len());
    }

    #[test]
    fn fingerprints_depend_on_the_key_and_survive_a_restart() {
        let one = SaltHistory::new(&key(), 10);
        let again = SaltHistory::new(&key(), 10);
        let other = SaltHistory::new(&Key::from_password(Method::Aes128Gcm, "another").unwrap(), 10);
        let bytes = salt(5);
        assert_eq!(one.fingerprint(bytes.as_bytes()), again.fingerprint(bytes.as_bytes()));
        assert_ne!(one.fingerprint(bytes.as_bytes()), other.fingerprint(bytes.as_bytes()));
        assert_eq!(one.key_check(), again.key_check());
        assert_ne!(one.key_check(), other.key_check());
    }

    #[tokio::test(start_paused = true)]
    async fn shared_filter_refuses_the_second_use() {
        for generation in [Generation::Classic, Generation::Aead2022] {
            let filter = ReplayFilter::new(&key(), generation, 16, Duration::from_secs(10));
            assert!(filter.insert(&salt(7)));
            assert!(filter.take_changed());
            assert!(!filter.insert(&salt(7)));
            assert!(!filter.take_changed(), "a refused salt changes nothing");
            assert!(filter.insert(&salt(8)));
        }
    }
}
