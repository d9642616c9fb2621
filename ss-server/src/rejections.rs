//! Counting refused connections and datagrams instead of logging each one.
//!
//! A line per probe at WARN would let a prober decide how much the server logs. Each refusal is logged at
//! debug (with its connection's span) and counted here by reason; every [`SUMMARY_INTERVAL`] one info line
//! sums up the interval, and nothing is printed for an interval without refusals.
//!
//! AEAD-2022 requests refused for their timestamp are the one refusal an operator must act on (a client's
//! clock, or the server's, is more than 30 s off), so they also keep the skew they showed (the request's
//! timestamp minus our clock: only a holder of the key can make a header authenticate, so it is a real
//! client's clock, or a replay of an old request). The first of an interval is logged at once at warn with
//! its skew, at most one such line per [`SUMMARY_INTERVAL`]; the summary gives the interval's range.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ss_crypto::DecryptError;
use tokio_util::sync::CancellationToken;

/// How often the summary line is written.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Why a connection was refused before it was relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A record failed authentication (wrong key, garbage, a modified replay).
    Authentication,
    /// The request was malformed after authenticating (bad address, header, padding or length).
    Malformed,
    /// An AEAD-2022 timestamp outside the allowed window.
    Timestamp,
    /// A salt seen before.
    Replay,
    /// The stream ended inside the request.
    Truncated,
    /// The source already had its budget of connections in their handshake.
    SourceBudget,
    /// The client's address is refused by the ACL.
    Acl,
    /// A user's quota is spent, or their connection or device limit reached ([`crate::limits`]).
    UserLimit,
    /// An authenticated request's target is refused by the address policy or the ACL's outbound lists
    /// ([`crate::policy`]): a connection closed, or a datagram dropped.
    Policy,
}

/// Every reason, in the order summaries and metrics list them.
pub const REASONS: [Reason; 9] = [
    Reason::Authentication,
    Reason::Malformed,
    Reason::Timestamp,
    Reason::Replay,
    Reason::Truncated,
    Reason::SourceBudget,
    Reason::Acl,
    Reason::UserLimit,
    Reason::Policy,
];

impl Reason {
    /// The reason a decryption error stands for.
    pub fn of(error: &DecryptError) -> Reason {
        match error {
            DecryptError::AuthFailure => Reason::Authentication,
            DecryptError::BadTimestamp => Reason::Timestamp,
            DecryptError::Truncated => Reason::Truncated,
            _ => Reason::Malformed,
        }
    }

    /// The reason's name in logs and metrics (`authentication`, `source_budget`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Reason::Authentication => "authentication",
            Reason::Malformed => "malformed",
            Reason::Timestamp => "timestamp",
            Reason::Replay => "replay",
            Reason::Truncated => "truncated",
            Reason::SourceBudget => "source_budget",
            Reason::Acl => "acl",
            Reason::UserLimit => "user_limit",
            Reason::Policy => "policy",
        }
    }
}

/// Refusal counters: totals since start, and what the next summary will report.
#[derive(Debug, Default)]
pub struct Rejections {
    total: [AtomicU64; REASONS.len()],
    pending: [AtomicU64; REASONS.len()],
    skew: Mutex<Skews>,
}

/// The clock skews of refused AEAD-2022 timestamps.
#[derive(Debug, Default)]
struct Skews {
    /// Least and greatest skew (seconds) of this interval.
    range: Option<(i64, i64)>,
    /// The most recent skew since start (for diagnostics and metrics).
    last: Option<i64>,
    /// When a skew was last logged at once.
    logged: Option<tokio::time::Instant>,
}

/// One interval's counts, printed as `authentication=3 replay=1`, and the skew range of its timestamp
/// refusals (`timestamp=2 (skew -41..-38 s)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary(Vec<(Reason, u64)>, Option<(i64, i64)>);

impl Rejections {
    /// Counts one refusal.
    pub fn count(&self, reason: Reason) {
        let index = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        self.total[index].fetch_add(1, Ordering::Relaxed);
        self.pending[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an AEAD-2022 request refused for its timestamp, `skew` seconds from our clock (its
    /// timestamp minus our time), and logs it at once unless another was logged within the interval.
    pub fn timestamp_refused(&self, skew: i64) {
        self.count(Reason::Timestamp);
        let now = tokio::time::Instant::now();
        let mut skews = self.lock_skews();
        skews.last = Some(skew);
        skews.range = Some(skews.range.map_or((skew, skew), |(low, high)| (low.min(skew), high.max(skew))));
        if skews.logged.is_some_and(|logged| now.duration_since(logged) < SUMMARY_INTERVAL) {
            return;
        }
        skews.logged = Some(now);
        drop(skews);
        let ahead = if skew < 0 { "behind" } else { "ahead of" };
        tracing::warn!(
            skew_s = skew,
            "refused an AEAD-2022 request whose timestamp is {} s {ahead} this server's clock (at most 30 s \
             is allowed): the client's clock or this server's is wrong (is NTP running on both?); a skew of \
             hours or more may instead be a replay of an old request (at most one such line a minute)",
            skew.unsigned_abs()
        );
    }

    /// The skew of the last request refused for its timestamp (seconds, its clock minus ours).
    pub fn last_timestamp_skew(&self) -> Option<i64> {
        self.lock_skews().last
    }

    fn lock_skews(&self) -> std::sync::MutexGuard<'_, Skews> {
        self.skew.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Refusals for `reason` since the server started.
    pub fn total(&self, reason: Reason) -> u64 {
        let index = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        self.total[index].load(Ordering::Relaxed)
    }

    /// The counts since the last call, reset to zero; `None` when there were none.
    pub fn take_summary(&self) -> Option<Summary> {
        let counts: Vec<(Reason, u64)> = REASONS
            .iter()
            .zip(&self.pending)
            .map(|(reason, pending)| (*reason, pending.swap(0, Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect();
        let skews = self.lock_skews().range.take();
        (!counts.is_empty()).then_some(Summary(counts, skews))
    }

    /// Writes a summary line every [`SUMMARY_INTERVAL`] until `shutdown`.
    pub async fn report(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(SUMMARY_INTERVAL);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Some(summary) = self.take_summary() {
                tracing::info!(interval_s = SUMMARY_INTERVAL.as_secs(), "refused connections: {summary}");
            }
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (reason, count)) in self.0.iter().enumerate() {
            let space = if n == 0 { "" } else { " " };
            write!(f, "{space}{}={count}", reason.name())?;
            if let (Reason::Timestamp, Some((low, high))) = (reason, self.1) {
                write!(f, " (skew {low:+}..{high:+} s)")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_covers_one_interval_and_totals_keep_counting() {
        let rejections = Rejections::default();
        assert_eq!(rejections.take_summary(), None, "nothing to say");
        rejections.count(Reason::of(&DecryptError::AuthFailure));
        rejections.count(Reason::of(&DecryptError::AuthFailure));
        rejections.count(Reason::Replay);
        rejections.count(Reason::of(&DecryptError::BadAddress));
        let summary = rejections.take_summary().unwrap();
        assert_eq!(summary.to_string(), "authentication=2 malformed=1 replay=1");
        assert_eq!(rejections.take_summary(), None, "the interval was reset");
        rejections.count(Reason::SourceBudget);
        assert_eq!(rejections.take_summary().unwrap().to_string(), "source_budget=1");
        assert_eq!(rejections.total(Reason::Authentication), 2);
        assert_eq!(rejections.total(Reason::SourceBudget), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn timestamp_refusals_keep_their_skew_range_per_interval() {
        let rejections = Rejections::default();
        rejections.timestamp_refused(-38);
        rejections.timestamp_refused(-41);
        rejections.count(Reason::Replay);
        let summary = rejections.take_summary().unwrap();
        assert_eq!(summary.to_string(), "timestamp=2 (skew -41..-38 s) replay=1");
        assert_eq!(rejections.last_timestamp_skew(), Some(-41));
        rejections.timestamp_refused(3600);
        assert_eq!(rejections.take_summary().unwrap().to_string(), "timestamp=1 (skew +3600..+3600 s)");
        assert_eq!(rejections.total(Reason::Timestamp), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_skew_is_logged_at_once_at_most_once_an_interval() {
        let rejections = Rejections::default();
        let logged = |rejections: &Rejections| rejections.lock_skews().logged;
        rejections.timestamp_refused(40);
        let first = logged(&rejections).expect("the first is logged at once");
        tokio::time::advance(SUMMARY_INTERVAL / 2).await;
        rejections.timestamp_refused(41);
        assert_eq!(logged(&rejections), Some(first), "not again within the interval");
        tokio::time::advance(SUMMARY_INTERVAL).await;
        rejections.timestamp_refused(42);
        assert!(logged(&rejections) > Some(first), "again after it");
    }
}
