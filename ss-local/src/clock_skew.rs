//! Telling the user that their clock and an AEAD-2022 server's disagree, the most reported failure of
//! those methods.
//!
//! A 2022 server answers nothing to a request whose timestamp is more than 30 s from its clock: from
//! here that looks like a server that accepts connections and never answers. The server's side of
//! the story is in each response's header, whose timestamp shows how far its clock is from ours. So
//! after each 2022 connection:
//!
//! - a response whose timestamp was outside the window (refused here) is logged with the skew;
//! - a response within the window but [`NOTABLE_SKEW`] or more away is logged as a warning before it
//!   becomes a failure;
//! - a connection that sent a request and got nothing back is logged with the hint that the clocks may
//!   differ, and by how much if a response from that server ever showed it.
//!
//! Each kind of line is written at most once per [`LOG_INTERVAL`] per server. Connections whose
//! responses are in time and near our clock take no lock here. Nothing of this is visible on the wire.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// A server clock this many seconds or more from ours is worth a warning (30 fails).
pub const NOTABLE_SKEW: i64 = 10;
/// The most skew AEAD-2022 allows.
const MAX_SKEW: i64 = 30;
/// Least time between two lines of one kind about one server.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How a 2022 connection to a server ended, as far as its clock is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The response header authenticated: the server's clock minus ours, in seconds.
    Answered(i64),
    /// A request went out and nothing came back.
    Silent,
}

/// What was logged, as the tests see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// The server's response was refused for its timestamp.
    Refused(i64),
    /// The server's clock is off but still within the window.
    Notable(i64),
    /// The server did not answer; the last skew it showed, if any.
    Silent(Option<i64>),
}

/// What is known of each server's clock, by host and port.
#[derive(Debug, Default)]
pub struct ClockWatch {
    servers: Mutex<HashMap<(String, u16), Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    /// The last notable skew a response showed.
    skew: Option<i64>,
    /// When each kind of line was last written: refused/notable, silent.
    logged_skew: Option<Instant>,
    logged_silence: Option<Instant>,
}

/// The process's watch (one ss-local process talks to each server from every listener).
pub fn watch() -> &'static ClockWatch {
    static WATCH: OnceLock<ClockWatch> = OnceLock::new();
    WATCH.get_or_init(ClockWatch::default)
}

impl ClockWatch {
    /// Takes note of how a 2022 connection to the server at `host` and `port` ended; returns what it
    /// logged, if anything.
    pub fn ended(&self, host: &str, port: u16, ending: Ending) -> Option<Logged> {
        if let Ending::Answered(skew) = ending {
            if skew.abs() < NOTABLE_SKEW {
                return None;
            }
        }
        let now = Instant::now();
        let mut servers = self.servers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let seen = servers.entry((host.to_owned(), port)).or_default();
        let due = |last: Option<Instant>| last.is_none_or(|last| now.duration_since(last) >= LOG_INTERVAL);
        let logged = match ending {
            Ending::Answered(skew) => {
                seen.skew = Some(skew);
                if !due(seen.logged_skew) {
                    return None;
                }
                seen.logged_skew = Some(now);
                if skew.abs() > MAX_SKEW {
                    Logged::Refused(skew)
                } else {
                    Logged::Notable(skew)
                }
            }
            Ending::Silent => {
                if !due(seen.logged_silence) {
                    return None;
                }
                seen.logged_silence = Some(now);
                Logged::Silent(seen.skew)
            }
        };
        drop(servers);
        log(&format!("{host}:{port}"), logged);
        Some(logged)
    }
}

fn log(server: &str, logged: Logged) {
    let direction = |skew: i64| if skew < 0 { "behind" } else { "ahead of" };
    match logged {
        Logged::Refused(skew) => tracing::warn!(
            %server,
            skew_s = skew,
            "the server's clock is {} s {} this machine's, more than the 30 s AEAD-2022 allows: its responses \
             are refused, and it refuses our requests; set both clocks right (is NTP running on both?)",
            skew.unsigned_abs(),
            direction(skew)
        ),
        Logged::Notable(skew) => tracing::warn!(
            %server,
            skew_s = skew,
            "the server's clock is {} s {} this machine's; AEAD-2022 connections fail beyond 30 s (is NTP \
             running on both?)",
            skew.unsigned_abs(),
            direction(skew)
        ),
        Logged::Silent(Some(skew)) => tracing::warn!(
            %server,
            last_skew_s = skew,
            "the server sent nothing back to a request: an AEAD-2022 server does that when the request's \
             timestamp is more than 30 s from its clock, and its last response showed its clock {} s {} \
             this machine's; check both clocks (or the key)",
            skew.unsigned_abs(),
            direction(skew)
        ),
        Logged::Silent(None) => tracing::warn!(
            %server,
            "the server sent nothing back to a request: an AEAD-2022 server does that when the request's \
             timestamp is more than 30 s from its clock (or the key is wrong); check this machine's clock"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn near_clocks_say_nothing_and_take_no_entry() {
        let watch = ClockWatch::default();
        assert_eq!(watch.ended("s", 1, Ending::Answered(0)), None);
        assert_eq!(watch.ended("s", 1, Ending::Answered(-9)), None);
        assert!(watch.servers.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_skew_is_logged_as_notable_or_refused_once_an_interval() {
        let watch = ClockWatch::default();
        assert_eq!(watch.ended("s", 1, Ending::Answered(12)), Some(Logged::Notable(12)));
        assert_eq!(watch.ended("s", 1, Ending::Answered(40)), None, "within the interval");
        assert_eq!(watch.ended("s", 2, Ending::Answered(-40)), Some(Logged::Refused(-40)), "another server");
        tokio::time::advance(LOG_INTERVAL).await;
        assert_eq!(watch.ended("s", 1, Ending::Answered(40)), Some(Logged::Refused(40)));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_logged_with_the_last_skew_the_server_showed() {
        let watch = ClockWatch::default();
        assert_eq!(watch.ended("s", 1, Ending::Silent), Some(Logged::Silent(None)));
        assert_eq!(watch.ended("s", 1, Ending::Silent), None, "within the interval");
        watch.ended("s", 1, Ending::Answered(-25));
        tokio::time::advance(LOG_INTERVAL).await;
        assert_eq!(watch.ended("s", 1, Ending::Silent), Some(Logged::Silent(Some(-25))));
    }
}
