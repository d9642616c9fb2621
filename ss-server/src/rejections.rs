//! Counting refused connections and datagrams instead of logging each one.
//!
//! A line per probe at WARN would let a prober decide how much the server logs. Each refusal is logged at
//! debug (with its connection's span) and counted here by reason; every [`SUMMARY_INTERVAL`] one info line
//! sums up the interval, and nothing is printed for an interval without refusals.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

const REASONS: [Reason; 8] = [
    Reason::Authentication,
    Reason::Malformed,
    Reason::Timestamp,
    Reason::Replay,
    Reason::Truncated,
    Reason::SourceBudget,
    Reason::Acl,
    Reason::UserLimit,
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

    fn name(self) -> &'static str {
        match self {
            Reason::Authentication => "authentication",
            Reason::Malformed => "malformed",
            Reason::Timestamp => "timestamp",
            Reason::Replay => "replay",
            Reason::Truncated => "truncated",
            Reason::SourceBudget => "source_budget",
            Reason::Acl => "acl",
            Reason::UserLimit => "user_limit",
        }
    }
}

/// Refusal counters: totals since start, and what the next summary will report.
#[derive(Debug, Default)]
pub struct Rejections {
    total: [AtomicU64; REASONS.len()],
    pending: [AtomicU64; REASONS.len()],
}

/// One interval's counts, printed as `authentication=3 replay=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary(Vec<(Reason, u64)>);

impl Rejections {
    /// Counts one refusal.
    pub fn count(&self, reason: Reason) {
        let index = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        self.total[index].fetch_add(1, Ordering::Relaxed);
        self.pending[index].fetch_add(1, Ordering::Relaxed);
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
        (!counts.is_empty()).then_some(Summary(counts))
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
}
