//! ss-server's Prometheus metrics (`metrics` / `--metrics`): one registry for the process, whatever
//! the number of server entries, served by [`ss_net::metrics_http`].
//!
//! Names shared with outline-ss-server keep its names, labels and buckets, so its dashboards work:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `shadowsocks_data_bytes` | untyped (a counter without `_total`, as outline's) | `dir` (`c>p`, `p>t`, `p<t`, `c<p`), `proto` (`tcp`, `udp`), `access_key` | payload bytes per user |
//! | `shadowsocks_tcp_probes` | histogram (buckets 0, 49, 50, 51, 73, 91) | `port`, `status` (the refusal reason) | bytes a refused TCP client sent before it was closed |
//! | `shadowsocks_time_to_cipher_ms` | histogram (0.1, 1, 10, 100, 1000) | `proto`, `found_key` | time a multi-user server took to find a TCP connection's user |
//! | `shadowsocks_udp_nat_entries_added` / `_removed` | untyped | | UDP associations opened / ended |
//! | `shadowsocks_keys` | gauge | | keys (users) served, a single-key entry counting one |
//!
//! The rest are ours, under the same `shadowsocks_` prefix (counters end in `_total`, added by the
//! encoder); `server` is the entry's `host:port`:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `shadowsocks_refusals_total` | counter | `server`, `reason` | refused connections and datagrams ([`crate::rejections`]) |
//! | `shadowsocks_tcp_connections` | gauge | `server`, `state` (`handshake`, `relaying`) | TCP connections now (a refused one is in its handshake until closed) |
//! | `shadowsocks_udp_associations` | gauge | `server` | UDP associations now |
//! | `shadowsocks_replay_filter_salts` | gauge | `server` | salts the replay filter remembers |
//! | `shadowsocks_resolver_lookups_total` / `_failures_total` | counter | `server` | name lookups sent, failed |
//! | `shadowsocks_plugin_restarts_total` | counter | `plugin` | SIP003 plugin restarts |
//!
//! plus [`ss_net::metrics_process`]'s descriptors and build info.
//!
//! Everything but the two histograms is read at scrape time from counters the server keeps anyway: a
//! connection's bytes from its user's [`crate::accounting::Usage`] (folded in per connection, never a
//! shared counter per record), the rest from [`crate::Stats`], the replay filter, the admission and the
//! resolver. The histograms take one observation per refused connection or per user search. A
//! single-key entry's traffic is counted as a user named after the entry (`host:port`,
//! [`crate::Settings::count_as`]); the user's bytes include what the usage store restored at start.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use ss_net::metrics_process::{samples, single, Kind, ProcessCollector};

use crate::rejections::{Reason, REASONS};
use crate::Shared;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The metrics of one process: its server entries, their histograms and its plugins.
#[derive(Debug)]
pub struct ServerMetrics {
    entries: Mutex<Vec<Arc<EntryMetrics>>>,
    plugins: Mutex<Vec<(String, Arc<AtomicU64>)>>,
    probes: Histograms,
    time_to_cipher: Histograms,
}

/// What one server entry records, and how the scrape finds its running state.
#[derive(Debug)]
pub struct EntryMetrics {
    server: String,
    port: String,
    probes: Histograms,
    time_to_cipher: Histograms,
    /// The entry's running server ([`crate::run_on`] attaches it); gone once it stopped.
    shared: Mutex<Weak<Shared>>,
}

impl ServerMetrics {
    /// Metrics with no entries yet.
    pub fn new() -> Arc<ServerMetrics> {
        Arc::new(ServerMetrics {
            entries: Mutex::default(),
            plugins: Mutex::default(),
            probes: Family::new_with_constructor(probe_histogram),
            time_to_cipher: Family::new_with_constructor(cipher_histogram),
        })
    }

    /// The metrics of a server entry listening on `host:port` (the `server` label); put them in its
    /// [`crate::Settings::metrics`].
    pub fn entry(&self, host: &str, port: u16) -> Arc<EntryMetrics> {
        let server = match host.contains(':') {
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        };
        let entry = Arc::new(EntryMetrics {
            server,
            port: port.to_string(),
            probes: self.probes.clone(),
            time_to_cipher: self.time_to_cipher.clone(),
            shared: Mutex::new(Weak::new()),
        });
        lock(&self.entries).push(entry.clone());
        entry
    }

    /// Reports the restarts of the plugin `name` ([`ss_net::plugin::Plugin::restarts`]).
    pub fn plugin(&self, name: String, restarts: Arc<AtomicU64>) {
        lock(&self.plugins).push((name, restarts));
    }

    /// A registry of everything: the histograms, the scrape-time collector, the process's own.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "shadowsocks_tcp_probes",
            "Histogram of number of bytes from client to proxy, for detecting possible probes",
            self.probes.clone(),
        );
        registry.register(
            "shadowsocks_time_to_cipher_ms",
            "Time needed to find the cipher (the user of a multi-user server)",
            self.time_to_cipher.clone(),
        );
        registry.register_collector(Box::new(Scrape(self.clone())));
        registry.register_collector(Box::new(ProcessCollector::new("ss-server")));
        registry
    }
}

impl EntryMetrics {
    /// The label this entry's samples carry: `host:port`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Points the scrape at the running server.
    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        *lock(&self.shared) = Arc::downgrade(shared);
    }

    /// A TCP client refused for `reason` sent `bytes` before it was closed.
    pub(crate) fn probe(&self, reason: Reason, bytes: u64) {
        let labels = vec![("port", self.port.clone()), ("status", reason.name().to_owned())];
        self.probes.get_or_create(&labels).observe(bytes as f64);
    }

    /// A search for a connection's user took `took`, and found one or not.
    pub(crate) fn cipher_search(&self, found: bool, took: Duration) {
        let labels = vec![("proto", "tcp".to_owned()), ("found_key", found.to_string())];
        self.time_to_cipher.get_or_create(&labels).observe(took.as_secs_f64() * 1000.0);
    }
}

fn probe_histogram() -> Histogram {
    Histogram::new([0.0, 49.0, 50.0, 51.0, 73.0, 91.0])
}

fn cipher_histogram() -> Histogram {
    Histogram::new([0.1, 1.0, 10.0, 100.0, 1000.0])
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The collector reading every entry's counters at scrape time.
#[derive(Debug)]
struct Scrape(Arc<ServerMetrics>);

/// `dir` label values, in [`crate::accounting::Usage::udp_bytes`]' order (outline-ss-server's).
const DIRECTIONS: [&str; 4] = ["c>p", "p>t", "p<t", "c<p"];

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut all = lock(&self.0.entries);
        // An entry only this list still holds belongs to a server that stopped and whose settings are
        // gone (a port the manager removed): forgotten, so panels adding and removing ports do not grow it.
        all.retain(|entry| Arc::strong_count(entry) > 1);
        let entries: Vec<(String, Arc<Shared>)> = all
            .iter()
            .filter_map(|entry| Some((entry.server.clone(), lock(&entry.shared).upgrade()?)))
            .collect();
        drop(all);
        let server = |name: &str| vec![("server", name.to_owned())];
        let mut bytes = Vec::new();
        let mut keys = 0;
        for (_, shared) in &entries {
            let users = match (&shared.settings.users, &shared.settings.owner) {
                (Some(users), _) => users.current().users().to_vec(),
                (None, Some(owner)) => vec![owner.clone()],
                (None, None) => Vec::new(),
            };
            keys += users.len().max(1) as u64;
            for user in users {
                let counts = user.usage().counts();
                let all = [
                    counts.client_to_proxy,
                    counts.proxy_to_target,
                    counts.target_to_proxy,
                    counts.proxy_to_client,
                ];
                let udp = user.usage().udp_bytes();
                for (index, dir) in DIRECTIONS.iter().enumerate() {
                    for (proto, value) in
                        [("tcp", all[index].saturating_sub(udp[index])), ("udp", udp[index])]
                    {
                        let labels = vec![
                            ("dir", dir.to_string()),
                            ("proto", proto.to_owned()),
                            ("access_key", user.name().to_owned()),
                        ];
                        bytes.push((labels, value));
                    }
                }
            }
        }
        let text = "Bytes transferred by the proxy, per access key";
        samples(&mut encoder, "shadowsocks_data_bytes", text, Kind::Untyped, bytes)?;
        single(&mut encoder, "shadowsocks_keys", "Count of access keys", Kind::Gauge, keys)?;
        let stats = |get: fn(&Shared) -> u64| entries.iter().map(|(_, shared)| get(shared)).sum::<u64>();
        let added = stats(|shared| shared.settings.stats.udp_associations_added.load(Ordering::Relaxed));
        let live = stats(|shared| shared.settings.stats.udp_associations.load(Ordering::Relaxed) as u64);
        let text = "Entries added to the UDP NAT table";
        single(&mut encoder, "shadowsocks_udp_nat_entries_added", text, Kind::Untyped, added)?;
        let text = "Entries removed from the UDP NAT table";
        single(
            &mut encoder,
            "shadowsocks_udp_nat_entries_removed",
            text,
            Kind::Untyped,
            added.saturating_sub(live),
        )?;

        let refusals = entries.iter().flat_map(|(name, shared)| {
            REASONS.iter().map(move |reason| {
                let labels = vec![("server", name.clone()), ("reason", reason.name().to_owned())];
                (labels, shared.settings.stats.rejections.total(*reason))
            })
        });
        let text = "Refused connections and datagrams, by reason";
        samples(&mut encoder, "shadowsocks_refusals", text, Kind::Counter, refusals)?;
        let connections = entries.iter().flat_map(|(name, shared)| {
            let relaying = shared.settings.stats.tcp_relaying.load(Ordering::Relaxed) as u64;
            [("handshake", shared.admission.in_handshake() as u64), ("relaying", relaying)]
                .map(|(state, value)| (vec![("server", name.clone()), ("state", state.to_owned())], value))
        });
        let text = "TCP connections now, in their handshake or relaying";
        samples(&mut encoder, "shadowsocks_tcp_connections", text, Kind::Gauge, connections)?;
        let per_server =
            |get: fn(&Shared) -> u64| entries.iter().map(move |(name, shared)| (server(name), get(shared)));
        let text = "UDP associations now";
        let associations =
            per_server(|shared| shared.settings.stats.udp_associations.load(Ordering::Relaxed) as u64);
        samples(&mut encoder, "shadowsocks_udp_associations", text, Kind::Gauge, associations)?;
        let text = "Salts the replay filter remembers";
        samples(
            &mut encoder,
            "shadowsocks_replay_filter_salts",
            text,
            Kind::Gauge,
            per_server(|shared| shared.replay.len() as u64),
        )?;
        let text = "Name lookups sent to the name servers";
        samples(
            &mut encoder,
            "shadowsocks_resolver_lookups",
            text,
            Kind::Counter,
            per_server(|shared| shared.resolver.lookups().0),
        )?;
        let text = "Name lookups that failed (not found, timed out, server failure)";
        samples(
            &mut encoder,
            "shadowsocks_resolver_failures",
            text,
            Kind::Counter,
            per_server(|shared| shared.resolver.lookups().1),
        )?;
        let plugins: Vec<_> = lock(&self.0.plugins)
            .iter()
            .map(|(name, restarts)| (vec![("plugin", name.clone())], restarts.load(Ordering::Relaxed)))
            .collect();
        samples(&mut encoder, "shadowsocks_plugin_restarts", "SIP003 plugin restarts", Kind::Counter, plugins)
    }
}

/// A refused client sent `bytes` in all (the metrics' probe sizes).
pub(crate) fn observe_probe(shared: &Shared, reason: Option<Reason>, bytes: u64) {
    if let (Some(metrics), Some(reason)) = (&shared.settings.metrics, reason) {
        metrics.probe(reason, bytes);
    }
}

/// Counts a TCP connection among those relaying for as long as it lives.
pub(crate) struct Relaying<'a>(&'a crate::Stats);

impl<'a> Relaying<'a> {
    pub(crate) fn new(stats: &'a crate::Stats) -> Relaying<'a> {
        stats.tcp_relaying.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Relaying(stats)
    }
}

impl Drop for Relaying<'_> {
    fn drop(&mut self) {
        self.0.tcp_relaying.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
