use prometheus_client::encoding::prometheus_text;

use super::*;

fn text(metrics: &Arc<ServerMetrics>) -> String {
    let mut text = String::new();
    prometheus_text::encode(&mut text, &metrics.registry()).unwrap();
    text
}

#[test]
fn probes_and_searches_land_in_outlines_buckets() {
    let metrics = ServerMetrics::new();
    let entry = metrics.entry("::", 8388);
    assert_eq!(entry.server(), "[::]:8388");
    entry.probe(Reason::Authentication, 50);
    entry.probe(Reason::Authentication, 90);
    entry.cipher_search(true, Duration::from_micros(500));
    let text = text(&metrics);
    let probes = r#"shadowsocks_tcp_probes_bucket{port="8388",status="authentication",le="#;
    for (le, count) in [("49", 0), ("50", 1), ("73", 1), ("91", 2), ("+Inf", 2)] {
        assert!(text.contains(&format!("{probes}\"{le}\"}} {count}\n")), "le {le}: {text}");
    }
    assert!(
        text.contains(r#"shadowsocks_tcp_probes_sum{port="8388",status="authentication"} 140"#),
        "{text}"
    );
    let search = r#"shadowsocks_time_to_cipher_ms_bucket{proto="tcp",found_key="true",le="#;
    assert!(
        text.contains(&format!("{search}\"0.1\"}} 0\n")) && text.contains(&format!("{search}\"1\"}} 1\n"))
    );
}

#[test]
fn a_server_not_running_reports_nothing_of_its_own() {
    let metrics = ServerMetrics::new();
    let _entry = metrics.entry("127.0.0.1", 8388);
    metrics.plugin("obfs-server".into(), Arc::new(AtomicU64::new(2)));
    let text = text(&metrics);
    assert!(!text.contains("shadowsocks_data_bytes"), "{text}");
    assert!(!text.contains("shadowsocks_refusals_total"), "{text}");
    assert!(text.contains("shadowsocks_keys 0\n"), "{text}");
    assert!(text.contains("shadowsocks_plugin_restarts_total{plugin=\"obfs-server\"} 2\n"), "{text}");
    assert!(text.contains("# TYPE shadowsocks_udp_nat_entries_added untyped\n"), "{text}");
}

#[test]
fn entries_whose_settings_are_gone_are_forgotten_at_the_next_scrape() {
    let metrics = ServerMetrics::new();
    let kept = metrics.entry("127.0.0.1", 8388);
    for port in 9000..9100 {
        // A port a manager added and removed: its settings (the only other holder) are dropped.
        drop(metrics.entry("127.0.0.1", port));
    }
    assert_eq!(lock(&metrics.entries).len(), 101);
    text(&metrics);
    let left: Vec<String> = lock(&metrics.entries).iter().map(|entry| entry.server().to_owned()).collect();
    assert_eq!(left, [kept.server().to_owned()]);
}
