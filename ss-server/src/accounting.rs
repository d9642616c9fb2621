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
//! Nothing on the relay path touches a shared counter: a TCP connection counts into its own
//! [`crate::metered::Meter`] (relaxed atomics no other thread writes, so their cache line stays with
//! the connection's thread), and the connection folds the difference into its user's [`Usage`] every
//! [`crate::metered::FOLD_INTERVAL`] and at close. UDP datagrams are counted straight into the user's `Usage` (a datagram already costs
//! two system calls). A server without users runs none of this.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

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
    /// Start (Unix seconds) of the quota period `period_used` counts in ([`crate::quota`]; 0 for
    /// the total, and for a user without a quota).
    pub period_start: u64,
    /// Bytes spent of the quota in that period.
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
    /// The UDP share of the four byte counts (the metrics tell TCP and UDP apart); not saved.
    udp_bytes: [AtomicU64; 4],
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
            ..Counts::default()
        }
    }

    /// Adds `counts` (saved ones, loaded at start); `last_seen` takes the later of the two. The quota
    /// fields are the ledger's ([`crate::limits::Account::restore`]).
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
        self.udp_bytes[0].fetch_add(payload as u64, Ordering::Relaxed);
        self.udp_bytes[1].fetch_add(sent as u64, Ordering::Relaxed);
        self.seen();
    }

    /// A reply of `payload` bytes from the target, `sent` of them sent on to the client.
    pub fn udp_out(&self, payload: usize, sent: usize) {
        self.udp_packets_out.fetch_add(1, Ordering::Relaxed);
        self.target_to_proxy.fetch_add(payload as u64, Ordering::Relaxed);
        self.proxy_to_client.fetch_add(sent as u64, Ordering::Relaxed);
        self.udp_bytes[2].fetch_add(payload as u64, Ordering::Relaxed);
        self.udp_bytes[3].fetch_add(sent as u64, Ordering::Relaxed);
    }

    /// The UDP part of the byte counts since start (c->p, p->t, t->p, p->c); the rest of
    /// [`Usage::counts`]' bytes is TCP (and what a usage store restored).
    pub fn udp_bytes(&self) -> [u64; 4] {
        self.udp_bytes.each_ref().map(|counter| counter.load(Ordering::Relaxed))
    }

    /// Adds what a connection moved since its last fold: c->p, p->t, t->p, p->c.
    pub(crate) fn add_bytes(&self, delta: [u64; 4]) {
        self.client_to_proxy.fetch_add(delta[0], Ordering::Relaxed);
        self.proxy_to_target.fetch_add(delta[1], Ordering::Relaxed);
        self.target_to_proxy.fetch_add(delta[2], Ordering::Relaxed);
        self.proxy_to_client.fetch_add(delta[3], Ordering::Relaxed);
        self.seen();
    }

    fn seen(&self) {
        self.last_seen.fetch_max(unix_seconds(), Ordering::Relaxed);
    }
}

pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_counts_add_up_and_keep_the_latest_last_seen() {
        let usage = Usage::default();
        usage.udp_in(10, 10);
        usage.add(&Counts { client_to_proxy: 5, tcp_opened: 2, last_seen: 1, ..Counts::default() });
        let counts = usage.counts();
        assert_eq!((counts.client_to_proxy, counts.tcp_opened, counts.udp_packets_in), (15, 2, 1));
        assert!(counts.last_seen > 1);
    }

    #[test]
    fn the_udp_share_of_the_bytes_is_kept_apart() {
        let usage = Usage::default();
        usage.add_bytes([100, 100, 40, 40]);
        usage.udp_in(10, 9);
        usage.udp_out(7, 6);
        assert_eq!(usage.udp_bytes(), [10, 9, 7, 6]);
        let counts = usage.counts();
        let all =
            [counts.client_to_proxy, counts.proxy_to_target, counts.target_to_proxy, counts.proxy_to_client];
        assert_eq!(all, [110, 109, 47, 46], "TCP and UDP together");
    }
}
