//! The run: for each round, each method, each implementation (in an order that rotates every round), a
//! fresh server and local, then every workload against them in a fixed order.
//!
//! ```text
//! round 1: aes-128-gcm: ours, rust, libev │ aes-256-gcm: ours, rust, libev │ ...
//! round 2: aes-128-gcm: rust, libev, ours │ ...
//! ```
//!
//! Per pair: fresh RSS, then RSS per idle connection (while the processes are still fresh, so memory freed
//! by earlier workloads cannot hide the cost), then bulk 1 stream down and up (with CPU time), the same
//! through an HTTP CONNECT tunnel on the same port (ours only), bulk over several streams,
//! request/response, connection rate, UDP, then the workloads at volume ([`volume`]: UDP at rising rates,
//! many busy connections, busy connections beside an idle crowd). A failed step is recorded and the pair moves on to its next
//! step; a dead process ends the pair's round.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use ss_crypto::Method;
use tokio::time::timeout;

use super::process::{clock_ticks_per_second, Flavour, Implementation, Pair};
use super::report::{Metric, Results};
use super::targets::Targets;
use super::volume;
use super::workloads::{self, Direction, Front};

/// How much each workload does.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Bytes per bulk measurement (each single-stream direction, and the parallel one in all).
    pub bulk_bytes: u64,
    /// Streams of the parallel bulk measurement.
    pub streams: usize,
    /// Connections of the request/response measurement.
    pub request_connections: usize,
    /// Request (and response) size, bytes.
    pub request_size: usize,
    /// Length of the request/response measurement.
    pub request_duration: Duration,
    /// Parallel clients of the connection-rate measurement.
    pub connect_workers: usize,
    /// Length of the connection-rate measurement.
    pub connect_duration: Duration,
    /// UDP datagrams in flight.
    pub udp_window: usize,
    /// UDP payload per datagram, bytes.
    pub udp_payload: usize,
    /// Length of the UDP measurement.
    pub udp_duration: Duration,
    /// Idle connections held open for the memory measurement.
    pub idle_connections: usize,
    /// Offered UDP rates, datagrams/s, ascending ([`volume::udp_offered`]).
    pub udp_rates: Vec<u64>,
    /// Time each offered rate is held.
    pub udp_step: Duration,
    /// Extra rates tried between the last that held and the first that did not.
    pub udp_refinements: usize,
    /// Connections downloading at once ([`volume::busy`]).
    pub busy_connections: usize,
    /// Their measured window (after a warm-up of a quarter of it).
    pub busy_window: Duration,
    /// Busy connections measured alone and beside the idle crowd.
    pub crowd_busy: usize,
    /// The idle crowd.
    pub crowd_idle: usize,
}

impl Sizes {
    /// The full suite: about a minute per implementation and method.
    pub fn full() -> Sizes {
        Sizes {
            bulk_bytes: 512 << 20,
            streams: 8,
            request_connections: 50,
            request_size: 128,
            request_duration: Duration::from_secs(5),
            connect_workers: 16,
            connect_duration: Duration::from_secs(3),
            udp_window: 16,
            udp_payload: 1200,
            udp_duration: Duration::from_secs(3),
            idle_connections: 2000,
            udp_rates: vec![5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 320_000],
            udp_step: Duration::from_secs(2),
            udp_refinements: 3,
            busy_connections: 1000,
            busy_window: Duration::from_secs(8),
            crowd_busy: 100,
            crowd_idle: 10_000,
        }
    }

    /// Most connections open at once in any workload (the open-file limit is fitted to it).
    pub fn most_connections(&self) -> usize {
        self.idle_connections.max(self.busy_connections).max(self.crowd_idle + self.crowd_busy)
    }

    /// A smoke run: every workload, small, a few seconds per implementation and method.
    pub fn quick() -> Sizes {
        Sizes {
            bulk_bytes: 16 << 20,
            request_duration: Duration::from_millis(500),
            connect_duration: Duration::from_millis(300),
            udp_duration: Duration::from_millis(300),
            idle_connections: 200,
            udp_rates: vec![2_000, 8_000],
            udp_step: Duration::from_millis(300),
            udp_refinements: 1,
            busy_connections: 100,
            busy_window: Duration::from_secs(1),
            crowd_busy: 20,
            crowd_idle: 500,
            ..Sizes::full()
        }
    }
}

/// The workloads of a pair, in the order they run (`proxy-bench --only` picks some).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Fresh RSS and RSS per idle connection.
    Memory,
    /// Bulk over one stream each way, with CPU per byte (and through HTTP CONNECT for ours).
    Bulk,
    /// Bulk over several streams.
    Parallel,
    /// Request/response over many connections.
    Requests,
    /// New connections per second.
    Connects,
    /// UDP echo with a fixed number of datagrams in flight.
    Udp,
    /// UDP offered at rising rates.
    UdpRates,
    /// Many connections downloading at once.
    Busy,
    /// Busy connections beside an idle crowd.
    Crowd,
}

/// What to run.
#[derive(Debug)]
pub struct Suite {
    /// The implementations to compare (ours first).
    pub implementations: Vec<Implementation>,
    /// The methods, in table order.
    pub methods: Vec<Method>,
    /// Rounds; every figure is the median over them.
    pub runs: usize,
    /// Workload sizes.
    pub sizes: Sizes,
    /// The workloads to run; empty: all.
    pub only: Vec<Workload>,
}

impl Suite {
    /// Runs every round and returns all values. Progress goes to stderr.
    pub async fn run(&self) -> Result<Results> {
        let targets = Targets::start().await.context("starting the loopback targets")?;
        let ticks_per_second = clock_ticks_per_second();
        let mut results = Results::default();
        for round in 0..self.runs {
            for &method in &self.methods {
                let mut order: Vec<&Implementation> =
                    self.implementations.iter().filter(|i| i.flavour.supports(method)).collect();
                if !order.is_empty() {
                    let len = order.len();
                    order.rotate_left(round % len);
                }
                for implementation in order {
                    let mut run = PairRun {
                        method,
                        flavour: implementation.flavour,
                        targets,
                        sizes: &self.sizes,
                        only: &self.only,
                        ticks_per_second,
                        results: &mut results,
                        summary: Vec::new(),
                    };
                    run.measure(implementation).await;
                    eprintln!(
                        "[{}/{}] {method} {}: {}",
                        round + 1,
                        self.runs,
                        implementation.flavour.name(),
                        run.summary.join(", ")
                    );
                }
            }
        }
        Ok(results)
    }
}

/// One implementation and method in one round.
struct PairRun<'a> {
    method: Method,
    flavour: Flavour,
    targets: Targets,
    sizes: &'a Sizes,
    only: &'a [Workload],
    ticks_per_second: u64,
    results: &'a mut Results,
    summary: Vec<String>,
}

impl PairRun<'_> {
    async fn measure(&mut self, implementation: &Implementation) {
        let pair = match Pair::start(implementation, self.method).await {
            Ok(pair) => pair,
            Err(error) => return self.fail("start", &error),
        };
        let sizes = self.sizes.clone();
        let (socks, targets, ticks_per_second) = (pair.socks, self.targets, self.ticks_per_second);

        let fresh = pair.rss_kib().map(|kib| vec![(Metric::FreshRss, kib as f64 / 1024.0)]);
        if self.wants(Workload::Memory)
            && !self.step(&pair, "fresh RSS", Duration::from_secs(1), async { fresh }).await
        {
            return;
        }

        let idle = async {
            let before = pair.rss_kib()?;
            let open = workloads::idle_connections(socks, targets.echo, sizes.idle_connections, 50).await?;
            let after = pair.rss_kib()?;
            drop(open);
            let per_connection = (after as f64 - before as f64) / sizes.idle_connections as f64;
            Ok(vec![(Metric::IdleRss, per_connection)])
        };
        if self.wants(Workload::Memory)
            && !self.step(&pair, "idle connections", Duration::from_secs(120), idle).await
        {
            return;
        }

        // Generous: 5 MB/s would be a broken proxy, not a slow one.
        let bulk_limit = Duration::from_secs(30 + sizes.bulk_bytes / 5_000_000);
        let single = async {
            let cpu_before = pair.cpu_ticks()?;
            let down = workloads::bulk(socks, targets.bulk, Direction::Down, 1, sizes.bulk_bytes).await?;
            let up = workloads::bulk(socks, targets.bulk, Direction::Up, 1, sizes.bulk_bytes).await?;
            let cpu_ms = (pair.cpu_ticks()? - cpu_before) as f64 * 1e3 / ticks_per_second as f64;
            let megabytes = 2.0 * sizes.bulk_bytes as f64 / 1e6;
            Ok(vec![(Metric::BulkDown, down), (Metric::BulkUp, up), (Metric::CpuPerMb, cpu_ms / megabytes)])
        };
        if self.wants(Workload::Bulk) && !self.step(&pair, "bulk, 1 stream", bulk_limit * 2, single).await {
            return;
        }

        // Ours only (the peers' default local ports speak SOCKS5 alone), right after the SOCKS5 figures
        // it is compared with, so both meet the processes in the same state.
        if self.wants(Workload::Bulk) && self.flavour == Flavour::Ours {
            let connect = async {
                let down = workloads::bulk_via(
                    Front::HttpConnect,
                    socks,
                    targets.bulk,
                    Direction::Down,
                    1,
                    sizes.bulk_bytes,
                )
                .await?;
                let up = workloads::bulk_via(
                    Front::HttpConnect,
                    socks,
                    targets.bulk,
                    Direction::Up,
                    1,
                    sizes.bulk_bytes,
                )
                .await?;
                Ok(vec![(Metric::ConnectBulkDown, down), (Metric::ConnectBulkUp, up)])
            };
            if !self.step(&pair, "bulk via HTTP CONNECT", bulk_limit * 2, connect).await {
                return;
            }
        }

        let parallel = async {
            let rate = workloads::bulk(socks, targets.bulk, Direction::Down, sizes.streams, sizes.bulk_bytes)
                .await?;
            Ok(vec![(Metric::BulkDownParallel, rate)])
        };
        if self.wants(Workload::Parallel)
            && !self.step(&pair, "bulk, parallel streams", bulk_limit, parallel).await
        {
            return;
        }

        let requests = async {
            let figures = workloads::request_response(
                socks,
                targets.echo,
                sizes.request_connections,
                sizes.request_size,
                sizes.request_duration,
            )
            .await?;
            Ok(vec![
                (Metric::RequestP50, figures.p50_us),
                (Metric::RequestP99, figures.p99_us),
                (Metric::RequestRate, figures.per_second),
            ])
        };
        if self.wants(Workload::Requests)
            && !self
                .step(&pair, "request/response", sizes.request_duration + Duration::from_secs(30), requests)
                .await
        {
            return;
        }

        let connects = async {
            let figures =
                workloads::connect_rate(socks, targets.echo, sizes.connect_workers, sizes.connect_duration)
                    .await?;
            Ok(vec![
                (Metric::ConnectRate, figures.per_second),
                (Metric::ConnectP50, figures.p50_us),
                (Metric::ConnectP99, figures.p99_us),
            ])
        };
        if self.wants(Workload::Connects)
            && !self
                .step(&pair, "connection rate", sizes.connect_duration + Duration::from_secs(30), connects)
                .await
        {
            return;
        }

        let udp = async {
            let rate = workloads::udp_rate(
                socks,
                targets.udp_echo,
                sizes.udp_window,
                sizes.udp_payload,
                sizes.udp_duration,
            )
            .await?;
            Ok(vec![(Metric::UdpRate, rate)])
        };
        if self.wants(Workload::Udp)
            && !self.step(&pair, "UDP", sizes.udp_duration + Duration::from_secs(30), udp).await
        {
            return;
        }

        let udp_step = sizes.udp_step + Duration::from_secs(1);
        let offered = async {
            let found = volume::udp_offered(&pair, socks, targets.udp_echo, &sizes, ticks_per_second).await?;
            Ok(vec![
                (Metric::UdpSustained, found.sustained),
                (Metric::UdpCpuPerDatagram, found.cpu_us_per_datagram),
            ])
        };
        let steps = sizes.udp_rates.len() + sizes.udp_refinements;
        let limit = udp_step * steps as u32 + Duration::from_secs(30);
        if self.wants(Workload::UdpRates) && !self.step(&pair, "UDP at rising rates", limit, offered).await {
            return;
        }

        let busy = async {
            let figures =
                volume::busy(&pair, socks, targets.bulk, sizes.busy_connections, sizes.busy_window).await?;
            Ok(vec![
                (Metric::BusyAggregate, figures.aggregate),
                (Metric::BusySlowestShare, figures.slowest_share),
                (Metric::BusyRss, figures.rss_mib),
            ])
        };
        if self.wants(Workload::Busy)
            && !self
                .step(&pair, "busy connections", sizes.busy_window * 2 + Duration::from_secs(60), busy)
                .await
        {
            return;
        }

        let crowd = async {
            let alone = volume::busy(&pair, socks, targets.bulk, sizes.crowd_busy, sizes.busy_window).await?;
            let idle = workloads::idle_connections(socks, targets.echo, sizes.crowd_idle, 100).await?;
            let beside =
                volume::busy(&pair, socks, targets.bulk, sizes.crowd_busy, sizes.busy_window).await?;
            drop(idle);
            Ok(vec![(Metric::CrowdRatio, beside.aggregate / alone.aggregate.max(f64::MIN_POSITIVE))])
        };
        if self.wants(Workload::Crowd) {
            self.step(&pair, "idle crowd", sizes.busy_window * 4 + Duration::from_secs(300), crowd).await;
        }
    }

    fn wants(&self, workload: Workload) -> bool {
        self.only.is_empty() || self.only.contains(&workload)
    }

    /// Runs one workload under a time limit; records its figures or its failure (with the proxies' logs
    /// when one of them died). False when a process died, so the pair's remaining steps are skipped.
    async fn step(
        &mut self,
        pair: &Pair,
        name: &str,
        limit: Duration,
        workload: impl Future<Output = Result<Vec<(Metric, f64)>>>,
    ) -> bool {
        let outcome = match timeout(limit, workload).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow!("took over {limit:?}")),
        };
        let outcome = outcome.and_then(|figures| pair.check_alive().map(|()| figures));
        match outcome {
            Ok(figures) => {
                for (metric, value) in figures {
                    self.results.record(self.method, self.flavour, metric, value);
                    self.summary.push(format!("{metric:?} {value:.1}"));
                }
                true
            }
            Err(error) => {
                let alive = pair.check_alive();
                let error = match &alive {
                    Ok(()) => error,
                    Err(dead) => error.context(dead.to_string()),
                };
                self.fail(name, &error);
                alive.is_ok()
            }
        }
    }

    fn fail(&mut self, step: &str, error: &anyhow::Error) {
        let message = format!("{step}: {error:#}");
        eprintln!("FAILED {} {}: {message}", self.method, self.flavour.name());
        self.summary.push(format!("{step} FAILED"));
        self.results.failures.push((self.method, self.flavour, message));
    }
}
