//! Name resolution that cannot stall a server: an asynchronous resolver (hickory) behind a per-lookup
//! timeout, a bound on lookups in flight, a TTL-respecting cache, and one shared query per name.
//!
//! ```text
//! resolve(name) ─▶ cache (fresh?) ──────────────────────────────────────────▶ addresses
//!               ─▶ a lookup of this name in flight? ── join it ─────────────▶ addresses / error
//!               ─▶ take a slot (TCP: wait up to the timeout; UDP: none free = Busy)
//!                  ─▶ one task queries the name servers (timeout) ─▶ cache ─▶ every waiter
//! ```
//!
//! - The system's configuration is read once: name servers, search list and options from
//!   `/etc/resolv.conf`, static names from `/etc/hosts` (`localhost` resolves even without it, RFC 6761).
//!   [`ResolveSettings::nameservers`] replaces the system's servers and keeps the rest.
//! - A lookup that outlives [`ResolveSettings::timeout`] ends with [`ResolveError::TimedOut`]; nothing of
//!   it remains afterwards (no thread, no task, no socket), so a name that never answers costs one slot
//!   for that long and nothing more.
//! - At most [`ResolveSettings::max_in_flight`] names are being looked up at once. Concurrent requests
//!   for the same name share one lookup, so a flood of requests for one name holds one slot.
//! - Answers are cached for their TTL (the smallest TTL among the answer records, at most a day), up
//!   to [`ResolveSettings::cache_capacity`] names; "no such name" answers for their negative TTL (at most
//!   [`MAX_NEGATIVE_TTL`]). Timeouts and server failures are not cached. A name keeps at most
//!   [`MAX_ADDRESSES`] addresses, IPv4 first unless [`ResolveSettings::ipv6_first`].
//! - The cache uses tokio's clock, so tests drive TTLs with a paused clock.
//!
//! No address policy is applied here: callers check every returned address before they use it.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::TokioResolver;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Most addresses kept for one name; the TCP connect loop tries them one after another.
pub const MAX_ADDRESSES: usize = 16;
/// Longest a positive answer is cached, whatever its TTL.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest a "no such name" answer is cached, whatever its SOA says.
pub const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(5 * 60);

/// Where and how a [`Resolver`] resolves, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveSettings {
    /// Name servers to ask (UDP, then TCP for truncated answers); empty: the system's.
    pub nameservers: Vec<SocketAddr>,
    /// Longest one lookup may take, every name server and retry included.
    pub timeout: Duration,
    /// Most names being looked up at once.
    pub max_in_flight: usize,
    /// Most names kept in the cache.
    pub cache_capacity: usize,
    /// Put IPv6 addresses before IPv4 ones.
    pub ipv6_first: bool,
}

impl Default for ResolveSettings {
    fn default() -> Self {
        ResolveSettings {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            max_in_flight: 64,
            cache_capacity: 4096,
            ipv6_first: false,
        }
    }
}

/// Why a name gave no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Every lookup slot is taken (and, for a caller that may wait, stayed taken for the timeout).
    #[error("too many name lookups in flight")]
    Busy,
    /// The name servers did not answer within the timeout.
    #[error("name resolution timed out")]
    TimedOut,
    /// The name does not exist or has no address.
    #[error("name resolved to no address")]
    NotFound,
    /// Anything else: a malformed name, a server failure, a refused query.
    #[error("name resolution failed: {0}")]
    Failed(Arc<str>),
}

/// The addresses of a name, in the order to try them.
pub type Addresses = Arc<[IpAddr]>;

type Outcome = Result<Addresses, ResolveError>;

/// The resolver; share it behind an `Arc`.
pub struct Resolver {
    dns: TokioResolver,
    timeout: Duration,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    cache_capacity: usize,
    state: Mutex<State>,
    /// Lookups sent to the name servers (cache hits and joined lookups not counted), and of those the
    /// ones that failed (not found, timed out, server failure): for the metrics.
    lookups: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct State {
    cache: HashMap<Box<str>, Cached>,
    /// Names being looked up; the sender side lives in the lookup's task.
    pending: HashMap<Box<str>, watch::Receiver<Option<Outcome>>>,
}

struct Cached {
    outcome: Outcome,
    expires: Instant,
}

/// A lookup that was started or joined without waiting for a slot: see [`Resolver::try_resolve`].
#[derive(Debug)]
pub struct Lookup(LookupState);

#[derive(Debug)]
enum LookupState {
    Done(Outcome),
    Waiting(watch::Receiver<Option<Outcome>>),
}

impl Resolver {
    /// A resolver with `settings`. If the system's configuration cannot be read (and no name servers
    /// are given), it asks 127.0.0.1:53 as the C library would, and says so in the log.
    pub fn new(settings: &ResolveSettings) -> Result<Resolver, ResolveError> {
        let (system, mut options) = match hickory_resolver::system_conf::read_system_conf() {
            Ok(system) => system,
            Err(error) => {
                if settings.nameservers.is_empty() {
                    tracing::warn!(%error, "cannot read /etc/resolv.conf; asking 127.0.0.1:53");
                }
                let local = NameServerConfig::udp_and_tcp(IpAddr::from([127, 0, 0, 1]));
                (ResolverConfig::from_name_servers(vec![local]), ResolverOpts::default())
            }
        };
        let config = match settings.nameservers.as_slice() {
            [] => system,
            servers => {
                let servers = servers.iter().map(|&server| name_server(server)).collect();
                ResolverConfig::from_parts(system.domain().cloned(), system.search().to_vec(), servers)
            }
        };
        // A and AAAA are asked in parallel and both awaited: each gets two tries (hickory counts the
        // retries) of 2/5 of the budget, so a server that never answers AAAA costs the AAAA query,
        // not the A answer, before the lookup as a whole runs out.
        options.timeout = settings.timeout * 2 / 5;
        options.attempts = 1;
        options.ip_strategy =
            if settings.ipv6_first { LookupIpStrategy::Ipv6AndIpv4 } else { LookupIpStrategy::Ipv4AndIpv6 };
        // Our cache is the one that counts (tokio clock, bounded); hickory's would only hide TTL expiry.
        options.cache_size = 0;
        // Building fails only for encrypted transports, which are not configured here.
        let dns = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|error| ResolveError::Failed(error.to_string().into()))?;
        let max_in_flight = settings.max_in_flight.max(1);
        Ok(Resolver {
            dns,
            timeout: settings.timeout,
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            cache_capacity: settings.cache_capacity,
            state: Mutex::new(State::default()),
            lookups: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The addresses of `host`, waiting for a free slot for up to the timeout when all are taken
    /// (for TCP connections, which may wait a little).
    pub async fn resolve(self: &Arc<Self>, host: &str) -> Result<Addresses, ResolveError> {
        let key = host.to_ascii_lowercase().into_boxed_str();
        if let Some(lookup) = self.join(&key) {
            return lookup.wait().await;
        }
        let slot = tokio::time::timeout(self.timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| ResolveError::Busy)?
            .map_err(|_| ResolveError::Busy)?;
        self.start(key, slot).wait().await
    }

    /// Like [`resolve`](Self::resolve) but never waits for a slot: [`ResolveError::Busy`] at once when
    /// every slot is taken by other names (for UDP datagrams, which are dropped then). A cached answer
    /// is in the returned [`Lookup`] already ([`Lookup::ready`]).
    pub fn try_resolve(self: &Arc<Self>, host: &str) -> Result<Lookup, ResolveError> {
        let key = host.to_ascii_lowercase().into_boxed_str();
        if let Some(lookup) = self.join(&key) {
            return Ok(lookup);
        }
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| ResolveError::Busy)?;
        Ok(self.start(key, slot))
    }

    /// Lookups sent to the name servers since start, and how many of them failed.
    pub fn lookups(&self) -> (u64, u64) {
        (self.lookups.load(Ordering::Relaxed), self.failures.load(Ordering::Relaxed))
    }

    /// Names being looked up right now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.slots.available_permits()
    }

    /// The cached answer or the lookup in flight for `key`, if either exists.
    fn join(&self, key: &str) -> Option<Lookup> {
        Self::joined(&mut self.lock(), key)
    }

    fn joined(state: &mut State, key: &str) -> Option<Lookup> {
        if let Some(cached) = state.cache.get(key) {
            if cached.expires > Instant::now() {
                return Some(Lookup(LookupState::Done(cached.outcome.clone())));
            }
            state.cache.remove(key);
        }
        let pending = state.pending.get(key)?;
        Some(Lookup(LookupState::Waiting(pending.clone())))
    }

    /// Starts the lookup of `key` in its own task, unless another caller started it (or cached its
    /// answer) while this one waited for a slot: then the slot goes back and that lookup is joined.
    fn start(self: &Arc<Self>, key: Box<str>, slot: OwnedSemaphorePermit) -> Lookup {
        let (sender, receiver) = watch::channel(None);
        {
            let mut state = self.lock();
            if let Some(lookup) = Self::joined(&mut state, &key) {
                return lookup;
            }
            state.pending.insert(key.clone(), receiver.clone());
        }
        tokio::spawn(Pending { resolver: self.clone(), key, sender, _slot: slot }.run());
        Lookup(LookupState::Waiting(receiver))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `outcome` for `key` when it is cacheable, making room if the cache is full.
    fn remember(state: &mut State, capacity: usize, key: Box<str>, outcome: &Outcome, ttl: Duration) {
        if ttl.is_zero() || capacity == 0 {
            return;
        }
        let now = Instant::now();
        if state.cache.len() >= capacity && !state.cache.contains_key(&key) {
            state.cache.retain(|_, cached| cached.expires > now);
            if state.cache.len() >= capacity {
                // Still full of fresh answers: drop the one that would expire first.
                let soonest = state.cache.iter().min_by_key(|(_, cached)| cached.expires);
                if let Some(soonest) = soonest.map(|(name, _)| name.clone()) {
                    state.cache.remove(&soonest);
                }
            }
        }
        state.cache.insert(key, Cached { outcome: outcome.clone(), expires: now + ttl });
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("timeout", &self.timeout)
            .field("in_flight", &self.in_flight())
            .field("max_in_flight", &self.max_in_flight)
            .field("cache_capacity", &self.cache_capacity)
            .finish_non_exhaustive()
    }
}

impl Lookup {
    /// The outcome, if it was known when the lookup was made (a cached answer).
    pub fn ready(&self) -> Option<&Result<Addresses, ResolveError>> {
        match &self.0 {
            LookupState::Done(outcome) => Some(outcome),
            LookupState::Waiting(_) => None,
        }
    }

    /// Waits for the outcome; bounded by the resolver's timeout, counted from the lookup's start.
    pub async fn wait(self) -> Result<Addresses, ResolveError> {
        match self.0 {
            LookupState::Done(outcome) => outcome,
            LookupState::Waiting(mut receiver) => match receiver.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone().unwrap_or(Err(ResolveError::TimedOut)),
                // The lookup's task is gone (its runtime shut down).
                Err(_) => Err(ResolveError::Failed("lookup abandoned".into())),
            },
        }
    }
}

/// One name being looked up: owns its slot until the outcome is published. Dropped unfinished (its
/// runtime shutting down), it still removes its name from the pending table.
struct Pending {
    resolver: Arc<Resolver>,
    key: Box<str>,
    sender: watch::Sender<Option<Outcome>>,
    _slot: OwnedSemaphorePermit,
}

impl Pending {
    async fn run(self) {
        let resolver = &self.resolver;
        let (outcome, ttl) =
            match tokio::time::timeout(resolver.timeout, resolver.dns.lookup_ip(&*self.key)).await {
                Err(_) => (Err(ResolveError::TimedOut), Duration::ZERO),
                Ok(Ok(answer)) => {
                    let ttl = answer.as_lookup().answers().iter().map(|record| record.ttl).min();
                    let addresses: Addresses = answer.iter().take(MAX_ADDRESSES).collect();
                    let ttl = Duration::from_secs(ttl.unwrap_or(0).into()).min(MAX_TTL);
                    if addresses.is_empty() {
                        (Err(ResolveError::NotFound), Duration::ZERO)
                    } else {
                        (Ok(addresses), ttl)
                    }
                }
                Ok(Err(error)) => failure(&error),
            };
        resolver.lookups.fetch_add(1, Ordering::Relaxed);
        if outcome.is_err() {
            resolver.failures.fetch_add(1, Ordering::Relaxed);
        }
        // Cached and no longer pending in one step: a caller sees one or the other, never neither.
        {
            let mut state = resolver.lock();
            let key = self.key.clone();
            Resolver::remember(&mut state, resolver.cache_capacity, key, &outcome, ttl);
            self.leave(&mut state);
        }
        self.sender.send_replace(Some(outcome));
    }

    /// Removes this lookup from the pending table (and only this one: a later lookup of the same
    /// name may have taken its place).
    fn leave(&self, state: &mut State) {
        let ours = state
            .pending
            .get(&self.key)
            .is_some_and(|receiver| receiver.same_channel(&self.sender.subscribe()));
        if ours {
            state.pending.remove(&self.key);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.leave(&mut self.resolver.lock());
    }
}

/// The outcome of a failed lookup and how long to cache it.
fn failure(error: &NetError) -> (Outcome, Duration) {
    if let NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(no_records)) = error {
        let ttl = Duration::from_secs(no_records.negative_ttl.unwrap_or(0).into()).min(MAX_NEGATIVE_TTL);
        return (Err(ResolveError::NotFound), ttl);
    }
    if matches!(error, NetError::Timeout) {
        return (Err(ResolveError::TimedOut), Duration::ZERO);
    }
    (Err(ResolveError::Failed(error.to_string().into())), Duration::ZERO)
}

/// A name server at `addr` over UDP, and TCP on the same port for truncated answers.
fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(last: u8) -> Outcome {
        Ok(Arc::from([IpAddr::from([192, 0, 2, last])]))
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_keeps_its_capacity_dropping_expired_then_soonest_to_expire() {
        let mut state = State::default();
        let names = |state: &State| {
            let mut names: Vec<_> = state.cache.keys().map(|name| name.to_string()).collect();
            names.sort();
            names
        };
        for (name, ttl) in [("a", 10), ("b", 100), ("c", 50), ("d", 55)] {
            Resolver::remember(&mut state, 3, name.into(), &found(1), Duration::from_secs(ttl));
        }
        assert_eq!(names(&state), ["b", "c", "d"], "the one expiring soonest made room");

        tokio::time::advance(Duration::from_secs(60)).await;
        Resolver::remember(&mut state, 3, "e".into(), &found(2), Duration::from_secs(10));
        assert_eq!(names(&state), ["b", "e"], "every expired one went");
    }

    #[test]
    fn zero_ttls_and_a_zero_capacity_cache_nothing() {
        let mut state = State::default();
        Resolver::remember(&mut state, 2, "a".into(), &found(1), Duration::ZERO);
        Resolver::remember(&mut state, 0, "b".into(), &found(2), Duration::from_secs(10));
        assert!(state.cache.is_empty());
    }

    #[test]
    fn failures_map_to_their_kind() {
        assert_eq!(failure(&NetError::Timeout), (Err(ResolveError::TimedOut), Duration::ZERO));
        let (outcome, ttl) = failure(&NetError::from("refused"));
        assert!(matches!(outcome, Err(ResolveError::Failed(_))) && ttl.is_zero());
    }

    #[test]
    fn a_configured_server_is_asked_over_udp_and_tcp_on_its_port() {
        let server = name_server("127.0.0.1:5353".parse().unwrap());
        assert_eq!(server.ip, IpAddr::from([127, 0, 0, 1]));
        let ports: Vec<u16> = server.connections.iter().map(|connection| connection.port).collect();
        assert_eq!(ports, [5353, 5353]);
    }

    #[tokio::test]
    async fn a_cached_name_needs_no_slot_and_ignores_case() {
        let settings = ResolveSettings { max_in_flight: 1, ..ResolveSettings::default() };
        let resolver = Arc::new(Resolver::new(&settings).unwrap());
        resolver.lock().cache.insert(
            "cached.test".into(),
            Cached { outcome: found(9), expires: Instant::now() + Duration::from_secs(60) },
        );
        let cached = resolver.try_resolve("CACHED.test").unwrap();
        assert_eq!(cached.ready(), Some(&found(9)));
        assert_eq!(resolver.in_flight(), 0);
        assert_eq!(resolver.lookups(), (0, 0), "a cache hit sends no lookup");
    }

    #[tokio::test]
    async fn a_lookup_sent_and_its_failure_are_counted() {
        // A loopback port nobody serves DNS on: the lookup fails (refused, or at the timeout).
        let settings = ResolveSettings {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_secs(2),
            ..ResolveSettings::default()
        };
        let resolver = Arc::new(Resolver::new(&settings).unwrap());
        let outcome = tokio::time::timeout(Duration::from_secs(20), resolver.resolve("nowhere.test")).await;
        assert!(outcome.unwrap().is_err());
        assert_eq!(resolver.lookups(), (1, 1));
    }
}
