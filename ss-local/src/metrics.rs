//! ss-local's Prometheus metrics (`metrics` / `--metrics`), per server (`server` label: `host:port`),
//! served by [`ss_net::metrics_http`]:
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `shadowsocks_local_bytes_total{server,dir}` | counter | payload bytes of TCP connections through the server, `dir` `up` (to it) or `down` |
//! | `shadowsocks_local_connections_total{server}` | counter | TCP connections opened to the server |
//! | `shadowsocks_local_connect_failures_total{server}` | counter | connects to the server that failed or timed out |
//! | `shadowsocks_local_connect_time_ms{server}` | histogram | time to open a TCP connection to the server |
//! | `shadowsocks_local_server_chosen_total{server}` | counter | times the balancer tried the server first |
//! | `shadowsocks_local_server_down{server}` | gauge | 1 while the balancer has the server marked down |
//! | `shadowsocks_local_server_score_ms{server}` | gauge | the balancer's latency score of the server, once it has one |
//! | `shadowsocks_plugin_restarts_total{plugin}` | counter | SIP003 plugin restarts |
//!
//! plus [`ss_net::metrics_process`]'s descriptors and build info. A connection's bytes are added once,
//! when it ends (the relay already counts them), and connects once each: the relay's records touch
//! nothing shared.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use ss_net::metrics_process::{samples, Kind, ProcessCollector};

use crate::balance::ServerId;
use crate::{Server, Settings};

type Labels = Vec<(&'static str, String)>;

/// The metrics of one ss-local process.
#[derive(Debug)]
pub struct LocalMetrics {
    servers: Mutex<HashMap<String, Arc<Counters>>>,
    connect_time: Family<Labels, Histogram, fn() -> Histogram>,
    plugins: Mutex<Vec<(String, Arc<AtomicU64>)>>,
    /// The running ss-local's settings: its server list and balancer, read at scrape time.
    settings: Mutex<Weak<Settings>>,
}

#[derive(Debug, Default)]
struct Counters {
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
    failures: AtomicU64,
    chosen: AtomicU64,
}

impl LocalMetrics {
    /// Metrics with nothing counted yet.
    pub fn new() -> Arc<LocalMetrics> {
        Arc::new(LocalMetrics {
            servers: Mutex::default(),
            connect_time: Family::new_with_constructor(connect_histogram),
            plugins: Mutex::default(),
            settings: Mutex::new(Weak::new()),
        })
    }

    /// Reports the restarts of the plugin `name` ([`ss_net::plugin::Plugin::restarts`]).
    pub fn plugin(&self, name: String, restarts: Arc<AtomicU64>) {
        lock(&self.plugins).push((name, restarts));
    }

    /// A registry of everything: the connect-time histogram, the per-server counters, the process.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "shadowsocks_local_connect_time_ms",
            "Time to open a TCP connection to the server",
            self.connect_time.clone(),
        );
        registry.register_collector(Box::new(Scrape(self.clone())));
        registry.register_collector(Box::new(ProcessCollector::new("ss-local")));
        registry
    }

    /// Reports the balancer's view of the servers of the running `settings`.
    pub(crate) fn watch(&self, settings: &Arc<Settings>) {
        *lock(&self.settings) = Arc::downgrade(settings);
    }

    /// The balancer put `server` first for a new connection.
    pub(crate) fn chosen(&self, server: &Server) {
        self.counters(server).chosen.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection to `server` opened in `took`.
    pub(crate) fn connected(&self, server: &Server, took: Duration) {
        self.counters(server).connections.fetch_add(1, Ordering::Relaxed);
        let labels = vec![("server", label(server))];
        self.connect_time.get_or_create(&labels).observe(took.as_secs_f64() * 1000.0);
    }

    /// A connect to `server` failed or timed out.
    pub(crate) fn connect_failed(&self, server: &Server) {
        self.counters(server).failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection through `server` ended having moved `up` and `down` payload bytes.
    pub(crate) fn relayed(&self, server: &Server, up: u64, down: u64) {
        let counters = self.counters(server);
        counters.up.fetch_add(up, Ordering::Relaxed);
        counters.down.fetch_add(down, Ordering::Relaxed);
    }

    fn counters(&self, server: &Server) -> Arc<Counters> {
        lock(&self.servers).entry(label(server)).or_default().clone()
    }
}

fn label(server: &Server) -> String {
    ServerId::of(server).to_string()
}

fn connect_histogram() -> Histogram {
    Histogram::new([1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0])
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the per-server counters at scrape time.
#[derive(Debug)]
struct Scrape(Arc<LocalMetrics>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut servers: Vec<(String, Arc<Counters>)> =
            lock(&self.0.servers).iter().map(|(name, counters)| (name.clone(), counters.clone())).collect();
        servers.sort_by(|a, b| a.0.cmp(&b.0));
        let each = |get: fn(&Counters) -> u64| -> Vec<(Labels, u64)> {
            servers.iter().map(|(name, counters)| (vec![("server", name.clone())], get(counters))).collect()
        };
        let bytes = servers.iter().flat_map(|(name, counters)| {
            [("up", &counters.up), ("down", &counters.down)].map(|(dir, value)| {
                (vec![("server", name.clone()), ("dir", dir.to_owned())], value.load(Ordering::Relaxed))
            })
        });
        let text = "Payload bytes of TCP connections through the server";
        samples(&mut encoder, "shadowsocks_local_bytes", text, Kind::Counter, bytes)?;
        let text = "TCP connections opened to the server";
        let connections = each(|c| c.connections.load(Ordering::Relaxed));
        samples(&mut encoder, "shadowsocks_local_connections", text, Kind::Counter, connections)?;
        let text = "Connects to the server that failed or timed out";
        let failures = each(|c| c.failures.load(Ordering::Relaxed));
        samples(&mut encoder, "shadowsocks_local_connect_failures", text, Kind::Counter, failures)?;
        let text = "Times the balancer tried the server first";
        let chosen = each(|c| c.chosen.load(Ordering::Relaxed));
        samples(&mut encoder, "shadowsocks_local_server_chosen", text, Kind::Counter, chosen)?;
        if let Some(settings) = lock(&self.0.settings).upgrade() {
            let servers: Vec<ServerId> = settings.current_servers().iter().map(ServerId::of).collect();
            let balancer = &settings.balancer;
            let down =
                servers.iter().map(|id| (vec![("server", id.to_string())], u64::from(balancer.is_down(id))));
            let text = "1 while the balancer has the server marked down";
            samples(&mut encoder, "shadowsocks_local_server_down", text, Kind::Gauge, down)?;
            let scores = servers.iter().filter_map(|id| {
                let score = balancer.score(id)?;
                Some((vec![("server", id.to_string())], score.round() as u64))
            });
            let text = "The balancer's latency score of the server (connect plus first byte, averaged)";
            samples(&mut encoder, "shadowsocks_local_server_score_ms", text, Kind::Gauge, scores)?;
        }
        let plugins: Vec<(Labels, u64)> = lock(&self.0.plugins)
            .iter()
            .map(|(name, restarts)| (vec![("plugin", name.clone())], restarts.load(Ordering::Relaxed)))
            .collect();
        samples(&mut encoder, "shadowsocks_plugin_restarts", "SIP003 plugin restarts", Kind::Counter, plugins)
    }
}
