//! Who may hold a connection slot while still in the handshake, and for how long.
//!
//! Every connection that has not sent a valid request yet (a slow client, a probe getting the silent
//! treatment, garbage) holds a slot and a descriptor until its handshake deadline. Without a bound per
//! source, one host opening a hundred garbage connections a second owns every slot, and real clients wait
//! in the backlog or are refused. Two rules stop that, without changing the reaction a prober sees:
//!
//! - **Per source** (one IPv4 address, or one IPv6 /64, since a single host usually has a whole /64): the
//!   first [`Admission::per_source`] connections in their handshake at once get the normal deadline: the
//!   configured number (default [`DEFAULT_PER_SOURCE`]), but never more than a quarter of the slots.
//!   Beyond that, up to eight times as many (and never more than half the slots) get half the deadline,
//!   at least [`OVER_BUDGET_DEADLINE`]: ample for a real client's first flight (one round trip plus the
//!   client's wait for the application's first bytes, even on a loaded server) and shorter for garbage.
//!   Beyond that, a connection is closed at once. A prober that opens fewer at a time sees the usual reaction; a flood from one
//!   host costs the server a bounded share of its slots. A burst of real connections from one host (a
//!   browser opening a page through one ss-local, many users behind one NAT) is still served: those
//!   connections leave the handshake within a round trip, long before the short deadline.
//! - **Under pressure**: when connections in their handshake fill more than half of the server's slots
//!   (a flood from many sources), the handshake deadline of new connections shrinks linearly, from the
//!   configured timeout at 50% to a tenth of it (at least [`MIN_DEADLINE`]) at 90% and above. Real
//!   clients send their request in the first round trip and do not notice; garbage is let go sooner.
//!
//! Slots are bounded by the accept loop (`max_connections`) and `main` fits that to the descriptor limit,
//! so accept never fails for want of descriptors.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default number of connections one source may have in their handshake at once.
pub const DEFAULT_PER_SOURCE: usize = 256;
/// `per_source` that turns the per-source rule off: for a server behind a SIP003 plugin, where every
/// connection comes from the plugin on loopback and the real source is unknown.
pub const NO_PER_SOURCE_RULE: usize = usize::MAX;
/// The shortest handshake deadline of a source's connections beyond its budget (they get half the
/// configured one).
pub const OVER_BUDGET_DEADLINE: Duration = Duration::from_secs(2);
/// How many times its budget a source may have in their handshake before new ones are closed at once.
const HARD_CAP_FACTOR: usize = 8;
/// The per-source budget is never cut below this by a small slot count.
const MIN_PER_SOURCE: usize = 8;
/// The shortest handshake deadline pressure can bring.
pub const MIN_DEADLINE: Duration = Duration::from_secs(1);

/// The handshake bookkeeping shared by a server's connections.
#[derive(Debug)]
pub struct Admission {
    per_source: usize,
    hard_cap: usize,
    slots: usize,
    in_handshake: AtomicUsize,
    sources: Mutex<HashMap<Source, usize>>,
}

/// A connection's place among those in their handshake; dropping it (when the handshake ends, however it
/// ends) gives the place back.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: Source,
    /// The source had its budget in their handshake already when this one came.
    over_budget: bool,
}

/// Where a connection comes from, as far as the per-source budget is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl Admission {
    /// Bookkeeping for a server with `slots` connection slots, allowing `per_source` handshakes at once
    /// from one source (at most a quarter of the slots).
    pub fn new(slots: usize, per_source: usize) -> Arc<Admission> {
        let (per_source, hard_cap) = if per_source == NO_PER_SOURCE_RULE {
            (NO_PER_SOURCE_RULE, NO_PER_SOURCE_RULE)
        } else {
            let per_source = per_source.min((slots / 4).max(MIN_PER_SOURCE)).max(1);
            (per_source, (per_source * HARD_CAP_FACTOR).min(slots / 2).max(per_source))
        };
        Arc::new(Admission {
            per_source,
            hard_cap,
            slots: slots.max(1),
            in_handshake: AtomicUsize::new(0),
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// How many connections one source may have in their handshake at once.
    pub fn per_source(&self) -> usize {
        self.per_source
    }

    /// Lets a new connection from `peer` start its handshake, or `None` if its source already has eight
    /// times its budget (or half the slots) in their handshake.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Ticket> {
        let source = Source::of(peer.ip());
        let over_budget = {
            let mut sources = self.lock();
            let count = sources.entry(source).or_insert(0);
            if *count >= self.hard_cap {
                return None;
            }
            *count += 1;
            *count > self.per_source
        };
        self.in_handshake.fetch_add(1, Ordering::Relaxed);
        Some(Ticket { admission: self.clone(), source, over_budget })
    }

    /// Connections in their handshake right now.
    pub fn in_handshake(&self) -> usize {
        self.in_handshake.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, usize>> {
        self.sources.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Ticket {
    /// The handshake deadline of this connection, given the configured `timeout`: shorter when most
    /// slots are in their handshake, and halved (to no less than [`OVER_BUDGET_DEADLINE`]) beyond the
    /// source's budget.
    pub fn deadline(&self, timeout: Duration) -> Duration {
        let admission = &self.admission;
        let deadline = shrink(timeout, admission.in_handshake.load(Ordering::Relaxed), admission.slots);
        if self.over_budget {
            deadline.min((timeout / 2).max(OVER_BUDGET_DEADLINE))
        } else {
            deadline
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.in_handshake.fetch_sub(1, Ordering::Relaxed);
        let mut sources = self.admission.lock();
        if let Some(count) = sources.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                sources.remove(&self.source);
            }
        }
    }
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// `timeout` scaled for `busy` of `slots` in their handshake: whole up to half full, then linearly down
/// to a tenth (not below [`MIN_DEADLINE`], nor above `timeout`) at 90% full.
fn shrink(timeout: Duration, busy: usize, slots: usize) -> Duration {
    let floor = (timeout / 10).max(MIN_DEADLINE).min(timeout);
    let fill = busy as f64 / slots as f64;
    if fill <= 0.5 {
        return timeout;
    }
    let left = ((0.9 - fill) / 0.4).clamp(0.0, 1.0);
    floor + (timeout - floor).mul_f64(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().unwrap(), 40_000)
    }

    #[test]
    fn one_source_is_held_to_its_budget_and_gets_it_back() {
        let timeout = Duration::from_secs(10);
        let admission = Admission::new(1000, 3);
        let within: Vec<_> = (0..3).map(|_| admission.admit(peer("198.51.100.7")).unwrap()).collect();
        assert!(within.iter().all(|ticket| ticket.deadline(timeout) == timeout), "within the budget");
        let beyond: Vec<_> = (0..21).map(|_| admission.admit(peer("198.51.100.7")).unwrap()).collect();
        assert!(
            beyond.iter().all(|ticket| ticket.deadline(timeout) == timeout / 2),
            "beyond the budget: half the deadline"
        );
        assert_eq!(beyond[0].deadline(Duration::from_secs(3)), OVER_BUDGET_DEADLINE, "but at least 2 s");
        assert!(admission.admit(peer("198.51.100.7")).is_none(), "beyond eight times the budget");
        assert!(admission.admit(peer("::ffff:198.51.100.7")).is_none(), "the mapped form is the same source");
        let other = admission.admit(peer("198.51.100.8")).expect("another address is not affected");
        assert_eq!(other.deadline(timeout), timeout);
        assert_eq!(admission.in_handshake(), 25);
        drop((within, beyond, other));
        assert_eq!(admission.in_handshake(), 0);
        assert!(admission.lock().is_empty(), "no entry is kept for a source with nothing in flight");
        let again = admission.admit(peer("198.51.100.7")).expect("the budget came back");
        assert_eq!(again.deadline(timeout), timeout);
    }

    #[test]
    fn one_source_never_gets_more_than_a_quarter_of_the_slots_at_full_deadline_nor_half_in_all() {
        let limits = |slots, per_source| {
            let admission = Admission::new(slots, per_source);
            (admission.per_source(), admission.hard_cap)
        };
        assert_eq!(limits(10_000, 256), (256, 2048));
        assert_eq!(limits(480, 256), (120, 240));
        assert_eq!(limits(10, 256), (8, 8));
        assert_eq!(limits(10_000, 0), (1, 8));
        assert_eq!(limits(480, NO_PER_SOURCE_RULE), (NO_PER_SOURCE_RULE, NO_PER_SOURCE_RULE));
    }

    #[test]
    fn without_the_per_source_rule_one_source_may_fill_every_slot() {
        let timeout = Duration::from_secs(10);
        let admission = Admission::new(100, NO_PER_SOURCE_RULE);
        let mut deadlines = Vec::new();
        let mut tickets = Vec::new();
        for _ in 0..100 {
            let ticket = admission.admit(peer("127.0.0.1")).expect("no per-source cap");
            deadlines.push(ticket.deadline(timeout));
            tickets.push(ticket);
        }
        assert!(deadlines[..50].iter().all(|deadline| *deadline == timeout), "{deadlines:?}");
        // The pressure rule still applies.
        assert_eq!(deadlines[99], Duration::from_secs(1));
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64() {
        let timeout = Duration::from_secs(10);
        let admission = Admission::new(1000, 2);
        let _first = admission.admit(peer("2001:db8:1:2::1")).unwrap();
        let _second = admission.admit(peer("2001:db8:1:2:ffff::9")).unwrap();
        let third = admission.admit(peer("2001:db8:1:2::3")).unwrap();
        assert_eq!(third.deadline(timeout), timeout / 2, "same /64");
        let other = admission.admit(peer("2001:db8:1:3::1")).unwrap();
        assert_eq!(other.deadline(timeout), timeout, "another /64");
    }

    #[test]
    fn the_deadline_shrinks_only_under_pressure() {
        let timeout = Duration::from_secs(10);
        assert_eq!(shrink(timeout, 0, 100), timeout);
        assert_eq!(shrink(timeout, 50, 100), timeout);
        assert_eq!(shrink(timeout, 70, 100), Duration::from_millis(5_500));
        assert_eq!(shrink(timeout, 90, 100), Duration::from_secs(1));
        assert_eq!(shrink(timeout, 150, 100), Duration::from_secs(1));
        // A short configured timeout is never raised by the floor.
        assert_eq!(shrink(Duration::from_millis(300), 100, 100), Duration::from_millis(300));
        assert_eq!(shrink(Duration::from_secs(60), 100, 100), Duration::from_secs(6));
    }

    #[test]
    fn tickets_feed_the_pressure() {
        let timeout = Duration::from_secs(10);
        let admission = Admission::new(10, 100);
        let tickets: Vec<_> =
            (0..9).map(|n| admission.admit(peer(&format!("198.51.100.{n}"))).unwrap()).collect();
        assert_eq!(tickets[0].deadline(timeout), Duration::from_secs(1), "90% of the slots in handshake");
        drop(tickets);
        let alone = admission.admit(peer("198.51.100.1")).unwrap();
        assert_eq!(alone.deadline(timeout), timeout);
    }
}
