//! Replay protection: salts the server has seen (and sent) are refused the second time.
//!
//! - AEAD-2022 streams carry a timestamp checked to within 30 s, so a salt only has to be remembered for
//!   60 s. [`SaltWindow`] keeps the exact salts in two generations rotated every 60 s: a salt is
//!   remembered for 60 to 120 s, with no false positives and memory proportional to the connection rate.
//! - Classic AEAD has no timestamp, so a replay may come at any time. [`SaltHistory`] keeps 64-bit keyed
//!   fingerprints of the last salts in two generations of `capacity` entries each: when the current one is
//!   full the older is forgotten. It remembers at least the last `capacity` salts (default 2^20, about
//!   16 MiB when full; it grows only as salts arrive). A fresh salt is wrongly refused only if its
//!   fingerprint collides with a remembered one: probability at most 2 x capacity / 2^64, about 1.1e-13
//!   per connection at the default. The fingerprint key is random per process, so collisions cannot be
//!   aimed at.
//!
//! Salts are recorded only after the first record authenticated (an unauthenticated salt proves nothing and
//! would let anyone fill the filter), and the server records the salts of its own response streams so that
//! a response replayed back to it is refused as well.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use ss_crypto::{Generation, Salt};
use tokio::time::Instant;

/// Default number of classic salts remembered per generation.
pub const DEFAULT_CLASSIC_CAPACITY: usize = 1 << 20;
/// How long an AEAD-2022 generation lasts.
const WINDOW: Duration = Duration::from_secs(60);

/// The server's replay filter, shared by all connections.
#[derive(Debug)]
pub struct ReplayFilter {
    inner: Mutex<Filter>,
}

#[derive(Debug)]
enum Filter {
    Classic(SaltHistory),
    Aead2022(SaltWindow),
}

impl ReplayFilter {
    /// A filter for one protocol generation.
    pub fn new(generation: Generation, classic_capacity: usize) -> ReplayFilter {
        let filter = match generation {
            Generation::Classic => Filter::Classic(SaltHistory::new(classic_capacity)),
            Generation::Aead2022 => Filter::Aead2022(SaltWindow::new(Instant::now())),
        };
        ReplayFilter { inner: Mutex::new(filter) }
    }

    /// Records `salt`; returns false if it was already there (a replay).
    pub fn insert(&self, salt: &Salt) -> bool {
        let mut filter = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &mut *filter {
            Filter::Classic(history) => history.insert(salt.as_bytes()),
            Filter::Aead2022(window) => window.insert(salt, Instant::now()),
        }
    }
}

/// Exact salts of the last 60 to 120 seconds.
#[derive(Debug)]
pub struct SaltWindow {
    current: HashSet<Salt>,
    previous: HashSet<Salt>,
    rotated: Instant,
}

impl SaltWindow {
    /// An empty window starting at `now`.
    pub fn new(now: Instant) -> SaltWindow {
        SaltWindow { current: HashSet::new(), previous: HashSet::new(), rotated: now }
    }

    /// Records `salt` at `now`; false if it was seen in the last 60 s (or up to 120 s).
    pub fn insert(&mut self, salt: &Salt, now: Instant) -> bool {
        if now.duration_since(self.rotated) >= 2 * WINDOW {
            self.previous.clear();
            self.current.clear();
            self.rotated = now;
        } else if now.duration_since(self.rotated) >= WINDOW {
            self.previous = std::mem::take(&mut self.current);
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
    hasher: std::collections::hash_map::RandomState,
    current: HashSet<u64>,
    previous: HashSet<u64>,
    capacity: usize,
}

impl SaltHistory {
    /// An empty history remembering at least `capacity` salts.
    pub fn new(capacity: usize) -> SaltHistory {
        SaltHistory {
            hasher: std::collections::hash_map::RandomState::new(),
            current: HashSet::new(),
            previous: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `salt`; false if its fingerprint is remembered.
    pub fn insert(&mut self, salt: &[u8]) -> bool {
        let fingerprint = self.hasher.hash_one(salt);
        if self.previous.contains(&fingerprint) || !self.current.insert(fingerprint) {
            return false;
        }
        if self.current.len() >= self.capacity {
            self.previous = std::mem::take(&mut self.current);
        }
        true
    }
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

    #[test]
    fn window_remembers_for_at_least_sixty_seconds() {
        let start = Instant::now();
        let mut window = SaltWindow::new(start);
        assert!(window.insert(&salt(1), start));
        assert!(!window.insert(&salt(1), start + Duration::from_secs(1)));
        assert!(!window.insert(&salt(1), start + Duration::from_secs(59)));
        assert!(window.insert(&salt(2), start + Duration::from_secs(61)), "rotation");
        assert!(
            !window.insert(&salt(1), start + Duration::from_secs(62)),
            "still in the previous generation"
        );
        assert!(!window.insert(&salt(2), start + Duration::from_secs(120)));
        assert!(window.insert(&salt(1), start + Duration::from_secs(250)), "forgotten after 120 s");
    }

    #[test]
    fn history_remembers_at_least_capacity_salts() {
        let mut history = SaltHistory::new(1000);
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
    fn shared_filter_refuses_the_second_use() {
        for generation in [Generation::Classic, Generation::Aead2022] {
            let filter = ReplayFilter::new(generation, 16);
            assert!(filter.insert(&salt(7)));
            assert!(!filter.insert(&salt(7)));
            assert!(filter.insert(&salt(8)));
        }
    }
}
