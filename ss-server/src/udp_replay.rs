//! What the UDP relay remembers so that a captured datagram cannot be replayed: the windows of AEAD-2022
//! sessions whose association has ended, and (in [`crate::replay::SaltHistory`]) the salts of classic
//! datagrams.
//!
//! An AEAD-2022 session's packet-id window lives in its association. When the association ends (idle
//! timeout, 20 s for DNS-only ones, or eviction beyond the cap), [`EndedSessions`] keeps the window for
//! [`ENDED_SESSION_RETENTION`]: a datagram's timestamp passes the check only within 30 s either side of
//! the server's clock (61 s of real time, counting the last whole second), and every datagram of the
//! session arrived before the association ended, so after that long no copy of one can pass the
//! timestamp check again. A datagram for an ended session whose id the window refuses is dropped before
//! any association is created; a fresh one (the real client coming back) gets its old window back.
//!
//! Memory is bounded: at most `capacity` ended sessions (four times the association cap, at least 1,024;
//! about 170 bytes each), the oldest forgotten first when more end within the retention.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ss_net::PacketWindow;
use tokio::time::Instant;

/// How long the window of an ended 2022 session is kept: the timestamp window (2 x 30 s) plus the last
/// whole second.
pub const ENDED_SESSION_RETENTION: Duration = Duration::from_secs(2 * ss_crypto::tcp::MAX_TIME_SKEW + 1);

/// Windows of recently ended AEAD-2022 sessions, by client session id.
#[derive(Debug)]
pub struct EndedSessions {
    windows: HashMap<u64, (PacketWindow, Instant)>,
    /// Session ids in the order they ended (an id may appear again if it ended twice; stale entries are
    /// skipped when their time does not match the map's).
    order: VecDeque<(u64, Instant)>,
    capacity: usize,
}

impl EndedSessions {
    /// Room for `capacity` ended sessions.
    pub fn new(capacity: usize) -> EndedSessions {
        EndedSessions { windows: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// The capacity for a relay with at most `max_associations` live associations.
    pub fn capacity_for(max_associations: usize) -> usize {
        max_associations.saturating_mul(4).max(1024)
    }

    /// Remembers the window of a session whose association ended at `now`.
    pub fn record(&mut self, session_id: u64, window: PacketWindow, now: Instant) {
        self.expire(now);
        while self.windows.len() >= self.capacity {
            let Some((oldest, ended)) = self.order.pop_front() else { break };
            if self.windows.get(&oldest).is_some_and(|(_, at)| *at == ended) {
                self.windows.remove(&oldest);
            }
        }
        self.windows.insert(session_id, (window, now));
        self.order.push_back((session_id, now));
        // Re-recorded ids leave stale entries behind; keep the queue from outgrowing the map.
        if self.order.len() > 2 * self.capacity {
            let windows = &self.windows;
            self.order.retain(|(id, at)| windows.get(id).is_some_and(|(_, ended)| ended == at));
        }
    }

    /// Whether a datagram of `session_id` with `packet_id` may open a new association at `now`:
    /// false if the session ended recently and its window refuses the id.
    pub fn admits(&mut self, session_id: u64, packet_id: u64, now: Instant) -> bool {
        self.expire(now);
        self.windows.get(&session_id).is_none_or(|(window, _)| window.is_fresh(packet_id))
    }

    /// Takes the window of an ended session back for its new association.
    pub fn take(&mut self, session_id: u64) -> Option<PacketWindow> {
        self.windows.remove(&session_id).map(|(window, _)| window)
    }

    /// Ended sessions remembered.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(id, ended)) = self.order.front() {
            if now.saturating_duration_since(ended) < ENDED_SESSION_RETENTION {
                break;
            }
            self.order.pop_front();
            if self.windows.get(&id).is_some_and(|(_, at)| *at == ended) {
                self.windows.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window_up_to(highest: u64) -> PacketWindow {
        let mut window = PacketWindow::default();
        for id in 1..=highest {
            window.accept(id);
        }
        window
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_session_refuses_old_ids_for_the_whole_timestamp_window() {
        let mut ended = EndedSessions::new(16);
        ended.record(7, window_up_to(5), Instant::now());
        assert!(!ended.admits(7, 3, Instant::now()));
        assert!(ended.admits(7, 6, Instant::now()), "the real client continues");
        assert!(ended.admits(8, 1, Instant::now()), "other sessions are unaffected");
        tokio::time::advance(ENDED_SESSION_RETENTION - Duration::from_millis(1)).await;
        assert!(!ended.admits(7, 5, Instant::now()), "one tick before the retention ends");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(ended.admits(7, 5, Instant::now()), "no copy passes the timestamp check any more");
        assert!(ended.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_returning_session_gets_its_window_back() {
        let mut ended = EndedSessions::new(16);
        ended.record(7, window_up_to(5), Instant::now());
        let mut window = ended.take(7).expect("remembered");
        assert!(!window.accept(4));
        assert!(window.accept(6));
        assert!(ended.take(7).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_oldest_first() {
        let mut ended = EndedSessions::new(4);
        for id in 0..100 {
            ended.record(id, window_up_to(1), Instant::now());
            ended.record(id % 3, window_up_to(1), Instant::now());
            assert!(ended.len() <= 4);
            assert!(ended.order.len() <= 8 + 1);
        }
        assert!(!ended.admits(99, 1, Instant::now()), "the newest is kept");
        assert!(ended.admits(50, 1, Instant::now()), "the oldest went first");
    }
}
