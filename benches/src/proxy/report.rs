//! What is measured, the values of every run, and the markdown report: one table per method with the
//! median of each implementation and the ratios of ours to each peer, a list of where ours loses, and
//! every run's values for judging the noise.

use std::collections::HashMap;
use std::fmt::Write as _;

use ss_crypto::Method;

use super::process::{Flavour, Implementation};
use super::suite::Sizes;

/// A ratio worse than this (in the metric's bad direction) is listed under "where ours loses".
const LOSS_THRESHOLD: f64 = 0.10;

/// One figure in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Single-stream download, MB/s.
    BulkDown,
    /// Single-stream upload, MB/s.
    BulkUp,
    /// Download over several streams at once, MB/s in total.
    BulkDownParallel,
    /// CPU time (user + sys, server + local) over the single-stream transfers, ms per MB moved.
    CpuPerMb,
    /// Single-stream download through an HTTP CONNECT tunnel on the same port, MB/s (ours only).
    ConnectBulkDown,
    /// Single-stream upload through an HTTP CONNECT tunnel, MB/s (ours only).
    ConnectBulkUp,
    /// Request/response median latency, µs.
    RequestP50,
    /// Request/response 99th percentile latency, µs.
    RequestP99,
    /// Request/response throughput, requests per second.
    RequestRate,
    /// New proxied connections per second.
    ConnectRate,
    /// Connection setup median latency, µs.
    ConnectP50,
    /// Connection setup 99th percentile latency, µs.
    ConnectP99,
    /// UDP echoes per second.
    UdpRate,
    /// RSS growth (server + local) per idle proxied connection, KiB.
    IdleRss,
    /// RSS (server + local) right after start, MiB.
    FreshRss,
    /// The highest offered UDP rate echoed with under 1% lost, datagrams/s.
    UdpSustained,
    /// CPU time (user + sys, server + local) per datagram at that rate, µs.
    UdpCpuPerDatagram,
    /// Many connections downloading at once: MB/s in all.
    BusyAggregate,
    /// Of those, the slowest connection's bytes over the mean.
    BusySlowestShare,
    /// RSS (server + local) while they transfer, MiB.
    BusyRss,
    /// A few busy connections' aggregate beside an idle crowd over their aggregate alone.
    CrowdRatio,
}

impl Metric {
    /// Every metric, in table row order.
    pub const ALL: [Metric; 21] = [
        Metric::BulkDown,
        Metric::BulkUp,
        Metric::BulkDownParallel,
        Metric::CpuPerMb,
        Metric::ConnectBulkDown,
        Metric::ConnectBulkUp,
        Metric::RequestP50,
        Metric::RequestP99,
        Metric::RequestRate,
        Metric::ConnectRate,
        Metric::ConnectP50,
        Metric::ConnectP99,
        Metric::UdpRate,
        Metric::UdpSustained,
        Metric::UdpCpuPerDatagram,
        Metric::BusyAggregate,
        Metric::BusySlowestShare,
        Metric::BusyRss,
        Metric::CrowdRatio,
        Metric::IdleRss,
        Metric::FreshRss,
    ];

    /// Whether a higher value is the better one.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::BulkDown
                | Metric::BulkUp
                | Metric::ConnectBulkDown
                | Metric::ConnectBulkUp
                | Metric::BulkDownParallel
                | Metric::RequestRate
                | Metric::ConnectRate
                | Metric::UdpRate
                | Metric::UdpSustained
                | Metric::BusyAggregate
                | Metric::BusySlowestShare
                | Metric::CrowdRatio
        )
    }

    /// The row label, with the workload's size and the better direction.
    pub fn label(self, sizes: &Sizes) -> String {
        let mib = sizes.bulk_bytes >> 20;
        let label = match self {
            Metric::BulkDown => format!("bulk down, 1 stream, {mib} MiB (MB/s)"),
            Metric::BulkUp => format!("bulk up, 1 stream, {mib} MiB (MB/s)"),
            Metric::BulkDownParallel => {
                format!("bulk down, {} streams, {mib} MiB in all (MB/s)", sizes.streams)
            }
            Metric::CpuPerMb => "CPU user+sys, server+local, 1-stream bulk (ms/MB)".to_owned(),
            Metric::ConnectBulkDown => format!("bulk down via HTTP CONNECT, 1 stream, {mib} MiB (MB/s)"),
            Metric::ConnectBulkUp => format!("bulk up via HTTP CONNECT, 1 stream, {mib} MiB (MB/s)"),
            Metric::RequestP50 => format!("req/resp p50, {} conns (µs)", sizes.request_connections),
            Metric::RequestP99 => format!("req/resp p99, {} conns (µs)", sizes.request_connections),
            Metric::RequestRate => format!("req/resp rate, {} conns (req/s)", sizes.request_connections),
            Metric::ConnectRate => format!("new connections, {} clients (conn/s)", sizes.connect_workers),
            Metric::ConnectP50 => "connection setup p50 (µs)".to_owned(),
            Metric::ConnectP99 => "connection setup p99 (µs)".to_owned(),
            Metric::UdpRate => {
                format!("UDP echo, {} B, {} in flight (datagrams/s)", sizes.udp_payload, sizes.udp_window)
            }
            Metric::IdleRss => {
                format!("RSS per idle connection, {} open, server+local (KiB)", sizes.idle_connections)
            }
            Metric::FreshRss => "fresh RSS, server+local (MiB)".to_owned(),
            Metric::UdpSustained => {
                format!(
                    "UDP sustained at < 1% loss, {} B offered at rising rates (datagrams/s)",
                    sizes.udp_payload
                )
            }
            Metric::UdpCpuPerDatagram => {
                "CPU user+sys, server+local, per datagram at that rate (µs)".to_owned()
            }
            Metric::BusyAggregate => {
                format!("{} connections downloading at once, in all (MB/s)", sizes.busy_connections)
            }
            Metric::BusySlowestShare => {
                format!("{} connections: slowest one's bytes / mean", sizes.busy_connections)
            }
            Metric::BusyRss => {
                format!("RSS during the {} busy connections, server+local (MiB)", sizes.busy_connections)
            }
            Metric::CrowdRatio => format!(
                "{} busy beside {} idle / alone (aggregate ratio)",
                sizes.crowd_busy, sizes.crowd_idle
            ),
        };
        let arrow = if self.higher_is_better() { "↑" } else { "↓" };
        format!("{label} {arrow}")
    }

    fn decimals(self) -> usize {
        match self {
            Metric::CpuPerMb | Metric::BusySlowestShare | Metric::CrowdRatio => 2,
            Metric::IdleRss | Metric::FreshRss | Metric::UdpCpuPerDatagram | Metric::BusyRss => 1,
            _ => 0,
        }
    }
}

/// Every run's values, by method, implementation and metric, and what failed.
#[derive(Debug, Default)]
pub struct Results {
    values: HashMap<(Method, Flavour, Metric), Vec<f64>>,
    /// One line per failed measurement: method, implementation, step, error.
    pub failures: Vec<(Method, Flavour, String)>,
}

impl Results {
    /// Adds one run's value.
    pub fn record(&mut self, method: Method, flavour: Flavour, metric: Metric, value: f64) {
        self.values.entry((method, flavour, metric)).or_default().push(value);
    }

    /// The median over runs, if any run produced a value.
    pub fn median(&self, method: Method, flavour: Flavour, metric: Metric) -> Option<f64> {
        median(self.values.get(&(method, flavour, metric))?)
    }

    /// Whether any measurement of ours failed.
    pub fn ours_failed(&self) -> bool {
        self.failures.iter().any(|(_, flavour, _)| *flavour == Flavour::Ours)
    }
}

/// Everything the report says about the run besides the figures.
#[derive(Debug)]
pub struct RunInfo {
    /// When the run started, e.g. `2026-11-23 12:00 UTC`.
    pub date: String,
    /// `full` or `quick`.
    pub mode: &'static str,
    /// Runs per figure.
    pub runs: usize,
    /// CPUs, kernel, niceness and load.
    pub machine: String,
    /// The implementations found (ours first).
    pub implementations: Vec<Implementation>,
    /// Peers that were asked for but not found.
    pub missing: Vec<Flavour>,
    /// Methods measured.
    pub methods: Vec<Method>,
    /// Workload sizes.
    pub sizes: Sizes,
}

/// The whole report as markdown.
pub fn markdown(info: &RunInfo, results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Proxy benchmark: ours vs shadowsocks-rust vs shadowsocks-libev\n");
    let _ = writeln!(
        out,
        "{}, {} mode, median of {} run{} per figure; {}.\n",
        info.date,
        info.mode,
        info.runs,
        if info.runs == 1 { "" } else { "s" },
        info.machine
    );
    for implementation in &info.implementations {
        let note = if implementation.flavour == Flavour::Libev { "; classic methods only" } else { "" };
        let _ = writeln!(
            out,
            "- {}: {} (`{}`, `{}`{note})",
            implementation.flavour.name(),
            implementation.version,
            implementation.server.display(),
            implementation.local.display()
        );
    }
    for flavour in &info.missing {
        let _ = writeln!(out, "- {}: not installed, not measured", flavour.name());
    }
    let _ = writeln!(
        out,
        "\nAbsolute figures on a shared machine are noisy (other jobs, CPU frequency, the load generator \
         sharing the cores with both proxies); compare the ratios, and the spread under \"Every run\". \
         Ratios are ours / peer of the medians: ↑ marks metrics where higher is better, ↓ where lower is \
         better.\n"
    );

    for &method in &info.methods {
        let _ = writeln!(out, "## {method}\n");
        let _ = writeln!(out, "| metric | ours | rust | libev | ours/rust | ours/libev |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for metric in Metric::ALL {
            let ours = results.median(method, Flavour::Ours, metric);
            let rust = results.median(method, Flavour::Rust, metric);
            let libev = results.median(method, Flavour::Libev, metric);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                metric.label(&info.sizes),
                value(ours, metric),
                if Flavour::Rust.supports(method) { value(rust, metric) } else { "–".to_owned() },
                if Flavour::Libev.supports(method) { value(libev, metric) } else { "–".to_owned() },
                ratio(ours, rust),
                ratio(ours, libev),
            );
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Where ours loses by more than {:.0}%\n", LOSS_THRESHOLD * 100.0);
    let losses = losses(info, results);
    if losses.is_empty() {
        let _ = writeln!(out, "Nowhere.\n");
    }
    for loss in losses {
        let _ = writeln!(out, "- {loss}");
    }

    if !results.failures.is_empty() {
        let _ = writeln!(out, "\n## Failed measurements\n");
        for (method, flavour, error) in &results.failures {
            let first_line = error.lines().next().unwrap_or_default();
            let _ = writeln!(out, "- {method}, {}: {first_line}", flavour.name());
        }
    }

    let _ = writeln!(out, "\n<details><summary>Every run</summary>\n");
    let _ = writeln!(out, "| method | metric | ours | rust | libev |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for &method in &info.methods {
        for metric in Metric::ALL {
            let runs = Flavour::ALL.map(|flavour| {
                let values = results.values.get(&(method, flavour, metric));
                values
                    .map(|values| values.iter().map(|&v| format_number(v, metric.decimals())))
                    .map(|values| values.collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            });
            let _ = writeln!(
                out,
                "| {method} | {} | {} | {} | {} |",
                metric.label(&info.sizes),
                runs[0],
                runs[1],
                runs[2]
            );
        }
    }
    let _ = writeln!(out, "\n</details>");
    out
}

/// "method, metric: 0.82× rust" lines where ours is worse than a peer by more than the threshold.
fn losses(info: &RunInfo, results: &Results) -> Vec<String> {
    let mut lines = Vec::new();
    for &method in &info.methods {
        for metric in Metric::ALL {
            let Some(ours) = results.median(method, Flavour::Ours, metric) else { continue };
            for peer in [Flavour::Rust, Flavour::Libev] {
                let Some(theirs) = results.median(method, peer, metric) else { continue };
                if ours <= 0.0 || theirs <= 0.0 {
                    continue;
                }
                let ratio = ours / theirs;
                let worse = if metric.higher_is_better() {
                    ratio < 1.0 - LOSS_THRESHOLD
                } else {
                    ratio > 1.0 + LOSS_THRESHOLD
                };
                if worse {
                    lines.push(format!(
                        "{method}, {}: ours {} vs {} {} ({ratio:.2}×)",
                        metric.label(&info.sizes),
                        format_number(ours, metric.decimals()),
                        peer.name(),
                        format_number(theirs, metric.decimals()),
                    ));
                }
            }
        }
    }
    lines
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        len if len % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

fn value(value: Option<f64>, metric: Metric) -> String {
    value.map_or_else(|| "n/a".to_owned(), |value| format_number(value, metric.decimals()))
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.2}", ours / theirs),
        _ => "–".to_owned(),
    }
}

/// `value` with `decimals` places and thousands separators: 12,345.6.
fn format_number(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, value.abs());
    let (whole, fraction) = text.split_once('.').map_or((text.as_str(), None), |(w, f)| (w, Some(f)));
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if value < 0.0 && text.chars().any(|c| c.is_ascii_digit() && c != '0') { "-" } else { "" };
    match fraction {
        Some(fraction) => format!("{sign}{grouped}.{fraction}"),
        None => format!("{sign}{grouped}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(format_number(1234567.0, 0), "1,234,567");
        assert_eq!(format_number(999.0, 0), "999");
        assert_eq!(format_number(1234.56, 1), "1,234.6");
        assert_eq!(format_number(-2.5, 1), "-2.5");
        assert_eq!(format_number(-0.01, 1), "0.0");
    }
}
