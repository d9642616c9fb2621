//! Server choice when several servers are configured: a strategy picks the server for each new
//! connection (TCP) or association (UDP), fed by what real connections report (passive health) and by
//! a few quiet checks where they are needed (`balance/check.rs`).
//!
//! ```text
//! connection ──order(kind, servers)──▶ try servers in that order ──report(server, outcome)──▶ Health
//!                                                                                  ▲
//! checker task ── due_checks(servers) ──▶ one TCP connect + request each ── report ─┘
//! ```
//!
//! State is keyed by server identity (host, port, method), never by list position, and every call takes
//! the current server list: the list may change at run time and a server keeps its score across the
//! change. Health (score, failures, down) is one per server, shared by TCP and UDP (both go to the same
//! host and only TCP is measured); the choice itself (the current `fastest` server, round-robin
//! position, weights) is made separately for each.
//!
//! - Score: an EWMA of "connect time + time to the server's first byte back". A connection whose server
//!   sent nothing back (refused, reset or timed out before any byte) is a failure; `failures_to_down`
//!   in a row mark the server down at once. New connections then go elsewhere; open ones are untouched.
//!   If every server is down the best of them is still tried.
//! - While the client is in use (a connection in the last `in_use_window`), a down server is re-checked
//!   with exponential backoff (`backoff_min` .. `backoff_max`, ±25% jitter) and, with `fastest`, every
//!   server is measured every `measure_interval`. While it is idle nothing is checked at all.
//! - `fastest` keeps its current server until another is better by more than `max(tolerance,
//!   tolerance_ratio × current score)`, so scores that move a little do not make it flap.

mod check;
mod choice;
pub mod passive;

pub(crate) use check::run_checks;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use ss_crypto::{Address, Method};
use tokio::time::Instant;
use tracing::info;

use crate::Server;

pub use ss_config::Strategy;

/// Settings of the balancer; [`Policy::default`] holds the documented defaults.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How servers are picked.
    pub strategy: Strategy,
    /// Where checks send their request (`check_target`): a connect and a request with no payload.
    pub check_target: Address,
    /// Failures in a row that mark a server down.
    pub failures_to_down: u32,
    /// `fastest` switches only to a server better by more than this...
    pub tolerance: Duration,
    /// ...or by more than this share of the current server's score, whichever is larger.
    pub tolerance_ratio: f64,
    /// First wait before re-checking a down server; doubled after each failed check.
    pub backoff_min: Duration,
    /// Longest wait between checks of a down server.
    pub backoff_max: Duration,
    /// With `fastest`, how often each server is measured while the client is in use.
    pub measure_interval: Duration,
    /// The client counts as in use while its last connection is at most this old.
    pub in_use_window: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            strategy: Strategy::Failover,
            check_target: Address::Domain("example.com".into(), 443),
            failures_to_down: 3,
            tolerance: Duration::from_millis(50),
            tolerance_ratio: 0.2,
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            measure_interval: Duration::from_secs(30),
            in_use_window: Duration::from_secs(60),
        }
    }
}

/// TCP connections or UDP associations: chosen separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP connections.
    Tcp,
    /// UDP associations.
    Udp,
}

/// What one use of a server showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The server answered: connect time plus the wait for its first byte.
    Answered(Duration),
    /// Refused, reset, or silent until a timeout.
    Failed,
}

/// A server's identity across list changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerId {
    host: String,
    port: u16,
    method: Method,
}

impl ServerId {
    /// The identity of `server`.
    pub fn of(server: &Server) -> ServerId {
        ServerId { host: server.host.clone(), port: server.port, method: server.method }
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// The balancer: one per ss-local, shared by every listener.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    state: Mutex<State>,
    /// Counts servers going down or up, for whoever waits for that ([`Balancer::changes`]).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Balancer {
    fn default() -> Balancer {
        Balancer::new(Policy::default())
    }
}

#[derive(Debug, Default)]
struct State {
    health: HashMap<ServerId, Health>,
    tcp: choice::Choice,
    udp: choice::Choice,
    last_use: Option<Instant>,
}

/// What is known about one server.
#[derive(Debug, Clone, Default)]
struct Health {
    /// EWMA of answered latencies, in milliseconds; `None` before the first answer.
    score: Option<f64>,
    failures: u32,
    down: bool,
    backoff: Duration,
    next_check: Option<Instant>,
    last_check: Option<Instant>,
    last_sample: Option<Instant>,
    checking: bool,
}

/// Weight of a new sample in the score: recent behaviour counts, one outlier does not decide.
const EWMA_ALPHA: f64 = 0.3;

impl Balancer {
    /// A balancer with `policy`.
    pub fn new(policy: Policy) -> Balancer {
        Balancer { policy, state: Mutex::default(), changes: tokio::sync::watch::Sender::new(0) }
    }

    /// A receiver that sees a new value each time a server goes down or comes back up.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The balancer's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The servers of `servers` in the order a new connection of `kind` should try them: the strategy's
    /// choice, then the other servers that are up in list order, then the down ones, best first.
    pub fn order<'s>(&self, kind: Kind, servers: &'s [Server]) -> Vec<&'s Server> {
        // One server: nothing to choose, and nothing to measure (no checks run), so no lock.
        if servers.len() <= 1 {
            return servers.iter().collect();
        }
        let now = Instant::now();
        let mut state = self.lock();
        state.last_use = Some(now);
        let ids: Vec<ServerId> = servers.iter().map(ServerId::of).collect();
        let State { health, tcp, udp, .. } = &mut *state;
        let choice = match kind {
            Kind::Tcp => tcp,
            Kind::Udp => udp,
        };
        let up: Vec<usize> =
            (0..servers.len()).filter(|&i| !health.get(&ids[i]).is_some_and(|h| h.down)).collect();
        let mut order = Vec::with_capacity(servers.len());
        if let Some(first) = choice.pick(&self.policy, kind, servers, &ids, &up, health) {
            order.push(first);
        }
        let first = order.first().copied();
        order.extend(up.iter().copied().filter(|&i| Some(i) != first));
        let mut down: Vec<usize> = (0..servers.len()).filter(|i| !up.contains(i)).collect();
        down.sort_by(|&a, &b| score_of(health, &ids[a]).total_cmp(&score_of(health, &ids[b])));
        order.extend(down);
        order.into_iter().map(|i| &servers[i]).collect()
    }

    /// Records what a real connection (or a check) through `server` showed.
    pub fn report(&self, server: &ServerId, outcome: Outcome) {
        let now = Instant::now();
        let mut state = self.lock();
        let health = state.health.entry(server.clone()).or_default();
        health.checking = false;
        match outcome {
            Outcome::Answered(latency) => {
                let sample = latency.as_secs_f64() * 1000.0;
                health.score = Some(match health.score {
                    Some(score) => score + EWMA_ALPHA * (sample - score),
                    None => sample,
                });
                health.failures = 0;
                health.last_sample = Some(now);
                health.next_check = None;
                if health.down {
                    health.down = false;
                    info!(server = %server, score_ms = sample as u64, "server is up again");
                    self.changes.send_modify(|count| *count += 1);
                }
            }
            Outcome::Failed => {
                health.failures = health.failures.saturating_add(1);
                if health.down {
                    // A failed re-check: wait longer before the next.
                    health.backoff =
                        (health.backoff * 2).clamp(self.policy.backoff_min, self.policy.backoff_max);
                    health.next_check = Some(now + jitter(health.backoff));
                } else if health.failures >= self.policy.failures_to_down {
                    health.down = true;
                    health.backoff = self.policy.backoff_min;
                    health.next_check = Some(now + jitter(health.backoff));
                    info!(server = %server, failures = health.failures, "server is down; new connections go elsewhere");
                    self.changes.send_modify(|count| *count += 1);
                }
            }
        }
    }

    /// The servers of `servers` to check now, each marked as being checked: down servers whose backoff
    /// has run out and, with `fastest` while the client is in use, servers not measured for a
    /// `measure_interval`. Nothing at all while idle: a down server is re-checked once the client is
    /// in use again (and meanwhile tried last).
    pub fn due_checks(&self, servers: &[Server]) -> Vec<Server> {
        let now = Instant::now();
        let mut state = self.lock();
        let in_use = state.last_use.is_some_and(|used| now.duration_since(used) <= self.policy.in_use_window);
        let measuring = in_use && self.policy.strategy == Strategy::Fastest;
        // Servers gone from the list (an online config's update) are forgotten, so the table stays as
        // small as the list.
        let current: Vec<ServerId> = servers.iter().map(ServerId::of).collect();
        state.health.retain(|id, _| current.contains(id));
        let mut due = Vec::new();
        for server in servers {
            let health = state.health.entry(ServerId::of(server)).or_default();
            if health.checking {
                continue;
            }
            let recheck = in_use && health.down && health.next_check.is_some_and(|at| at <= now);
            let stale = health
                .last_sample
                .max(health.last_check)
                .is_none_or(|at| now.duration_since(at) >= self.policy.measure_interval);
            if recheck || (measuring && !health.down && stale) {
                health.checking = true;
                health.last_check = Some(now);
                due.push(server.clone());
            }
        }
        due
    }

    /// Logs the table at info: server, state, score, failures in a row and the last check.
    pub fn log_table(&self, servers: &[Server]) {
        let now = Instant::now();
        let state = self.lock();
        info!(strategy = ?self.policy.strategy, servers = servers.len(), "server table");
        for server in servers {
            let id = ServerId::of(server);
            let health = state.health.get(&id).cloned().unwrap_or_default();
            info!(
                server = %id,
                state = if health.down { "down" } else { "up" },
                score_ms = health.score.map(|s| s.round() as u64),
                failures = health.failures,
                last_check_secs_ago = health.last_check.map(|at| now.duration_since(at).as_secs()),
                "server"
            );
        }
    }

    /// Whether `server` is marked down.
    pub fn is_down(&self, server: &ServerId) -> bool {
        self.lock().health.get(server).is_some_and(|h| h.down)
    }

    /// The score of `server` in milliseconds, if it has one.
    pub fn score(&self, server: &ServerId) -> Option<f64> {
        self.lock().health.get(server).and_then(|h| h.score)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Starts the balancer's tasks for `settings` in `tasks`, until `shutdown`: the checks (with more than
/// one server: with one there is nothing to choose) and, on Unix, the SIGUSR1 handler that logs the
/// table.
pub(crate) fn start(
    settings: &std::sync::Arc<crate::Settings>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: &tokio_util::sync::CancellationToken,
) {
    let updatable = settings.server_list.as_ref().is_some_and(crate::ServerList::is_updatable);
    if settings.servers.len() > 1 || updatable {
        let list = settings.clone();
        tasks.spawn(run_checks(
            settings.balancer.clone(),
            move || list.current_servers().to_vec(),
            settings.socket,
            settings.connect_timeout,
            shutdown.clone(),
        ));
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (settings, shutdown) = (settings.clone(), shutdown.clone());
        match signal(SignalKind::user_defined1()) {
            Ok(mut usr1) => {
                tasks.spawn(async move {
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            received = usr1.recv() => if received.is_none() { return },
                        }
                        settings.balancer.log_table(&settings.current_servers());
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "no SIGUSR1 handler: the server table cannot be asked for"),
        }
    }
}

/// A server's score for ordering: unknown counts as worse than any known.
fn score_of(health: &HashMap<ServerId, Health>, id: &ServerId) -> f64 {
    health.get(id).and_then(|h| h.score).unwrap_or(f64::INFINITY)
}

/// `wait` ±25%, so that several clients (or servers) do not re-check in step.
fn jitter(wait: Duration) -> Duration {
    let factor = 0.75 + f64::from(OsRng.next_u32() % 1001) / 2000.0;
    wait.mul_f64(factor)
}

#[cfg(test)]
mod tests;
