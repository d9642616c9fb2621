//! A user's quota ledger: what of the period's bytes ([`ss_config::quota`]) is spent.
//!
//! Connections take the quota in leases ([`crate::metered::LEASE`] bytes at a time) before they write
//! and give back what they did not write when they end; datagrams take exactly their size. So what all
//! of a user's connections write together never exceeds the quota, and the shared ledger is touched once
//! per lease rather than per write. A lease in hand when the server stops counts as spent (the store
//! saves what was taken): a restart may cost a user up to one lease per connection that was open.
//!
//! The period rolls over when the ledger is next touched at or after its end (UTC, by the wall clock).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use ss_config::quota::Quota;

/// The quota in force and what is spent of it.
#[derive(Debug, Default)]
pub struct QuotaLedger {
    /// Whether a quota is set: users without one never take the lock.
    limited: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    quota: Option<Quota>,
    /// Start (Unix seconds) of the period `used` counts in.
    period_start: u64,
    used: u64,
}

impl State {
    /// Moves to the period `now` falls in; false outside every period (a range that is over or not
    /// begun).
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

impl QuotaLedger {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `quota` in force (at start and on reload); what was spent in the period stays spent.
    pub fn set(&self, quota: Option<Quota>) {
        self.lock().quota = quota;
        self.limited.store(quota.is_some(), Ordering::Relaxed);
    }

    /// Whether there is something left to spend at `now` (Unix seconds); always without a quota.
    pub fn has_left(&self, now: u64) -> bool {
        if !self.limited.load(Ordering::Relaxed) {
            return true;
        }
        let mut state = self.lock();
        match state.quota {
            None => true,
            Some(quota) => state.roll(now) && state.used < quota.bytes,
        }
    }

    /// Takes up to `want` bytes at `now`: how many were granted (0 when spent), and the period they
    /// count in (for [`QuotaLedger::give_back`]). Without a quota, all of `want`.
    pub fn take(&self, want: u64, now: u64) -> (u64, u64) {
        if !self.limited.load(Ordering::Relaxed) {
            return (want, 0);
        }
        let mut state = self.lock();
        let Some(quota) = state.quota else { return (want, 0) };
        if !state.roll(now) {
            return (0, state.period_start);
        }
        let granted = want.min(quota.bytes.saturating_sub(state.used));
        state.used += granted;
        (granted, state.period_start)
    }

    /// Takes exactly `bytes` at `now`, or nothing (a datagram is sent whole or not at all).
    pub fn take_exact(&self, bytes: u64, now: u64) -> bool {
        let (granted, period) = self.take(bytes, now);
        if granted < bytes {
            self.give_back(granted, period);
            return false;
        }
        true
    }

    /// Gives back `unspent` bytes taken in the period starting at `period` (ignored once it is over).
    pub fn give_back(&self, unspent: u64, period: u64) {
        if unspent == 0 || !self.limited.load(Ordering::Relaxed) {
            return;
        }
        let mut state = self.lock();
        if state.period_start == period {
            state.used = state.used.saturating_sub(unspent);
        }
    }

    /// The period's start and what is spent in it, for the store.
    pub fn spent(&self) -> (u64, u64) {
        let state = self.lock();
        (state.period_start, state.used)
    }

    /// Adds what a saved ledger had spent in the period starting at `period_start` (at start).
    pub fn restore(&self, period_start: u64, used: u64) {
        let mut state = self.lock();
        if period_start > state.period_start {
            state.period_start = period_start;
            state.used = 0;
        }
        if period_start == state.period_start {
            state.used += used;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ss_config::quota::Period;

    // 2026-11-28 23:59:59 UTC, then midnight.
    const EVENING: u64 = 1_795_910_399;
    const MIDNIGHT: u64 = 1_795_910_400;
    const THAT_DAY: u64 = 1_795_824_000;

    fn daily(bytes: u64) -> QuotaLedger {
        let ledger = QuotaLedger::default();
        ledger.set(Some(Quota { bytes, period: Period::Day }));
        ledger
    }

    #[test]
    fn a_daily_quota_is_spent_then_starts_again_at_midnight_utc() {
        let ledger = daily(1000);
        assert_eq!(ledger.take(600, EVENING), (600, THAT_DAY));
        assert_eq!(ledger.take(600, EVENING).0, 400, "only what is left");
        assert!(!ledger.has_left(EVENING));
        assert_eq!(ledger.take(1, EVENING).0, 0);
        ledger.give_back(100, THAT_DAY);
        assert!(ledger.has_left(EVENING), "unspent bytes given back");
        assert!(!ledger.take_exact(101, EVENING), "a datagram is taken whole or not at all");
        assert!(ledger.take_exact(100, EVENING));
        assert!(ledger.has_left(MIDNIGHT));
        ledger.give_back(100, THAT_DAY);
        assert_eq!(ledger.take(2000, MIDNIGHT).0, 1000, "a new day, a new quota; old leases ignored");
    }

    #[test]
    fn what_was_spent_survives_a_restart_within_its_period() {
        let ledger = daily(1000);
        ledger.take(1000, EVENING);
        let (start, used) = ledger.spent();
        let restarted = daily(1000);
        restarted.restore(start, used);
        assert!(!restarted.has_left(EVENING));
        assert!(restarted.has_left(MIDNIGHT), "but not into the next period");
    }

    #[test]
    fn no_quota_grants_everything_and_a_range_nothing_outside_it() {
        let ledger = QuotaLedger::default();
        assert_eq!(ledger.take(u64::MAX, EVENING).0, u64::MAX);
        assert!(ledger.has_left(EVENING));
        ledger.set(Some(Quota { bytes: 10, period: Period::Range { from: MIDNIGHT, to: MIDNIGHT + 10 } }));
        assert!(!ledger.has_left(EVENING), "before the range");
        assert!(ledger.has_left(MIDNIGHT));
        assert!(!ledger.has_left(MIDNIGHT + 10), "after it");
    }
}
