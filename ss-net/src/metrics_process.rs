//! What both binaries report about themselves on the metrics endpoint, and the small encoding helpers
//! their collectors share.
//!
//! [`ProcessCollector`] reads, at scrape time:
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `process_open_fds` | gauge | descriptors open now (entries of `/proc/self/fd`; absent where there is none) |
//! | `process_max_fds` | gauge | the soft open-file limit (`RLIMIT_NOFILE`) |
//! | `shadowsocks_build_info{version,program}` | gauge | always 1; the labels say which build runs |
//!
//! The first two have the names Prometheus's own process collectors use, so existing descriptor alerts
//! work unchanged.
//!
//! Collectors read counters the proxy keeps anyway and encode them through [`samples`] and [`single`]:
//! nothing is copied into a metric on the data path.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// How a value is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; exposed with the `_total` suffix prometheus-client adds.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Only goes up, but exposed under its exact name without `_total` (type `untyped`): for names
    /// that must match another server's (outline-ss-server's `shadowsocks_data_bytes`).
    Untyped,
}

impl Kind {
    fn metric_type(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Untyped => MetricType::Unknown,
        }
    }
}

/// Encodes one metric with a sample per label set. Nothing is written when there are no samples (a
/// family without members has no lines, as in prometheus-client's own families).
pub fn samples<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: Kind,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, kind.metric_type())?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            Kind::Counter => ConstCounter::new(value).encode(sample)?,
            Kind::Gauge | Kind::Untyped => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

/// Encodes one metric with a single sample and no labels.
pub fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: Kind,
    value: u64,
) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, kind.metric_type())?;
    match kind {
        Kind::Counter => ConstCounter::new(value).encode(metric),
        Kind::Gauge | Kind::Untyped => ConstGauge::new(value).encode(metric),
    }
}

/// Descriptors and build of the process; `program` is `ss-server` or `ss-local`.
#[derive(Debug)]
pub struct ProcessCollector {
    program: &'static str,
}

impl ProcessCollector {
    /// The collector of `program`.
    pub fn new(program: &'static str) -> ProcessCollector {
        ProcessCollector { program }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        if let Some(open) = open_descriptors() {
            single(&mut encoder, "process_open_fds", "Open file descriptors", Kind::Gauge, open)?;
        }
        if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
            single(&mut encoder, "process_max_fds", "The open-file limit (soft)", Kind::Gauge, soft)?;
        }
        let labels = [("version", env!("CARGO_PKG_VERSION")), ("program", self.program)];
        samples(
            &mut encoder,
            "shadowsocks_build_info",
            "Which build runs (always 1)",
            Kind::Gauge,
            [(labels, 1)],
        )
    }
}

/// Descriptors open now, counted in `/proc/self/fd` (Linux); `None` where that does not exist.
fn open_descriptors() -> Option<u64> {
    // The directory's own descriptor, open while it is read, is not one of ours.
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::prometheus_text;
    use prometheus_client::registry::Registry;

    use super::*;

    fn text(collector: impl Collector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            single(&mut encoder, "a", "A", Kind::Counter, 3)?;
            samples(&mut encoder, "b", "B", Kind::Untyped, [([("dir", "c>p")], 5), ([("dir", "p>t")], 6)])?;
            samples(&mut encoder, "c", "C", Kind::Gauge, Vec::<([(&str, &str); 1], u64)>::new())
        }
    }

    #[test]
    fn counters_get_total_untyped_keep_their_name_and_empty_families_vanish() {
        let text = text(Fixed);
        assert!(text.contains("# TYPE a_total counter\na_total 3\n"), "{text}");
        assert!(text.contains("# TYPE b untyped\nb{dir=\"c>p\"} 5\nb{dir=\"p>t\"} 6\n"), "{text}");
        assert!(!text.contains("# TYPE c"), "{text}");
    }

    #[test]
    fn the_process_reports_its_descriptors_and_build() {
        let text = text(ProcessCollector::new("ss-test"));
        let value = |name: &str| {
            let line = text.lines().find(|line| line.starts_with(&format!("{name} ")))?;
            line.split(' ').nth(1)?.parse::<u64>().ok()
        };
        // Standard input, output and error at least (other tests open and close more meanwhile).
        let open = value("process_open_fds").unwrap();
        assert!(open >= 3, "{text}");
        assert!(value("process_max_fds").unwrap() >= open, "{text}");
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!("shadowsocks_build_info{{version=\"{version}\",program=\"ss-test\"}} 1"))
        );
    }
}
