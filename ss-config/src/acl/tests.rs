//! Tests of the ACL parser and the decisions of [`Acl`], including the 50,000-rule lookup figure.

use std::net::IpAddr;
use std::time::Instant;

use super::*;

fn parse(text: &str) -> Parsed {
    Acl::parse(text.as_bytes()).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn decided(route: Route) -> HostRoute {
    HostRoute::Decided { route, in_both: false }
}

#[test]
fn every_section_name_and_alias() {
    let lists = "[bypass_list]\n||bypass.test\n10.0.0.0/8\n[proxy_list]\n||proxy.test\n";
    for (mode, default) in [
        ("", Route::Proxy),
        ("[proxy_all]", Route::Proxy),
        ("[accept_all]", Route::Proxy),
        ("[bypass_all]", Route::Bypass),
        ("[reject_all]", Route::Bypass),
    ] {
        let acl = parse(&format!("{mode}\n{lists}")).acl;
        assert_eq!(acl.route_ip(ip("192.0.2.1")), default, "{mode}");
        assert_eq!(acl.route_host("a.bypass.test"), decided(Route::Bypass), "{mode}");
        assert_eq!(acl.route_host("proxy.test"), decided(Route::Proxy), "{mode}");
    }
    let aliases = parse("[black_list]\n||b.test\n[white_list]\n||w.test\n").acl;
    assert_eq!(aliases.route_host("b.test"), decided(Route::Bypass));
    assert_eq!(aliases.route_host("w.test"), decided(Route::Proxy));

    let outbound = parse("[outbound_block_list]\n||blocked.test\n203.0.113.0/24\n").acl;
    assert!(outbound.blocks_host("x.blocked.test") && !outbound.blocks_host("open.test"));
    assert!(outbound.blocks_ip(ip("203.0.113.9")) && !outbound.blocks_ip(ip("198.51.100.1")));
    let all = parse("[outbound_block_all]\n[outbound_allow_list]\n||ok.test\n198.51.100.7\n").acl;
    assert!(all.blocks_host("other.test") && !all.blocks_host("ok.test"));
    assert!(all.blocks_ip(ip("198.51.100.8")) && !all.blocks_ip(ip("198.51.100.7")));
    assert!(all.explicitly_allows_ip(ip("198.51.100.7")) && !outbound.explicitly_allows_ip(ip("10.0.0.1")));
    let reopened = parse("[outbound_block_all]\n[outbound_allow_all]\n").acl;
    assert!(!reopened.blocks_host("other.test"));
}

#[test]
fn lines_before_any_section_are_bypassed() {
    let acl = parse("# header\n||early.test\n127.0.0.0/8\n[proxy_list]\n||late.test\n").acl;
    assert_eq!(acl.route_host("early.test"), decided(Route::Bypass));
    assert_eq!(acl.route_ip(ip("127.0.0.1")), Route::Bypass);
    assert_eq!(acl.route_host("late.test"), decided(Route::Proxy));
}

#[test]
fn bypass_wins_over_proxy_and_a_name_in_both_is_flagged() {
    let parsed = parse("[bypass_list]\n||both.test\n10.0.0.0/8\n[proxy_list]\n||both.test\n10.0.0.1\n");
    assert_eq!(
        parsed.acl.route_host("www.both.test"),
        HostRoute::Decided { route: Route::Bypass, in_both: true }
    );
    assert_eq!(parsed.acl.route_ip(ip("10.0.0.1")), Route::Bypass, "IPs: bypass first too");
    assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
    assert!(parsed.warnings[0].starts_with("line 5:") && parsed.warnings[0].contains("both"));
}

#[test]
fn a_name_is_resolved_only_when_the_deciding_list_has_ip_rules() {
    // Default proxy: only bypass IP rules could change the answer.
    let no_ips = parse("[bypass_list]\n||b.test\n[proxy_list]\n10.0.0.0/8\n").acl;
    assert_eq!(no_ips.route_host("elsewhere.test"), decided(Route::Proxy));
    let bypass_ips = parse("[bypass_list]\n10.0.0.0/8\n").acl;
    assert_eq!(bypass_ips.route_host("elsewhere.test"), HostRoute::ResolveFirst);
    assert_eq!(bypass_ips.route_host("10.1.1.1"), decided(Route::Bypass), "an IP literal is not resolved");
    // Default bypass: only proxy IP rules could.
    let reject = parse("[bypass_all]\n[bypass_list]\n10.0.0.0/8\n").acl;
    assert_eq!(reject.route_host("elsewhere.test"), decided(Route::Bypass));
    let reject_with_proxy_ips = parse("[bypass_all]\n[proxy_list]\n192.0.2.0/24\n").acl;
    assert_eq!(reject_with_proxy_ips.route_host("elsewhere.test"), HostRoute::ResolveFirst);
    // A host rule that matches decides without resolving.
    let both = parse("[bypass_list]\n||b.test\n10.0.0.0/8\n").acl;
    assert_eq!(both.route_host("b.test"), decided(Route::Bypass));
}

#[test]
fn server_side_client_admission() {
    let black = parse("[black_list]\n192.0.2.0/24\n").acl;
    assert!(!black.admits_client(ip("192.0.2.5")) && black.admits_client(ip("198.51.100.5")));
    let white = parse("[reject_all]\n[white_list]\n127.0.0.1\n::1\n").acl;
    assert!(white.admits_client(ip("127.0.0.1")) && white.admits_client(ip("::1")));
    assert!(!white.admits_client(ip("127.0.0.2")) && !white.admits_client(ip("::ffff:127.0.0.2")));
    assert!(white.admits_client(ip("::ffff:127.0.0.1")), "IPv4-mapped clients count as IPv4");
}

#[test]
fn bad_lines_are_skipped_with_a_warning_naming_the_line() {
    let long = format!("||{}.test", "a".repeat(MAX_LINE));
    let mut text =
        format!("[bypass_list]\r\n||crlf.test\r\n\r\n  # indented comment\n||bücher.test\n{long}\n");
    text.push_str("([unclosed\n[no_such_section]\n||hidden.test\n[proxy_list]\n||after.test\n||.\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(b"||bad\xff.test\n||last.test");
    let parsed = Acl::parse(&bytes).unwrap();
    let lines: Vec<&str> = parsed.warnings.iter().map(|w| w.split(':').next().unwrap()).collect();
    assert_eq!(
        lines,
        ["line 5", "line 6", "line 7", "line 8", "line 12", "line 13"],
        "{:?}",
        parsed.warnings
    );
    assert!(parsed.warnings[1].contains("longer than") && parsed.warnings[2].contains("regex"));
    assert!(parsed.warnings[3].contains("[no_such_section]") && parsed.warnings[4].contains("no domain"));
    assert!(parsed.warnings[5].contains("UTF-8"));
    let acl = parsed.acl;
    assert_eq!(acl.route_host("crlf.test"), decided(Route::Bypass), "CRLF line endings");
    assert_eq!(
        acl.route_host("hidden.test"),
        decided(Route::Proxy),
        "lines of an unknown section are skipped"
    );
    assert_eq!(acl.route_host("after.test"), decided(Route::Proxy));
    assert_eq!(acl.route_host("last.test"), decided(Route::Proxy), "the last line needs no newline");
    assert_eq!(acl.route_host("xn--bcher-kva.test"), decided(Route::Proxy));
}

#[test]
fn warnings_are_capped() {
    let text = "\u{e9}\n".repeat(MAX_WARNINGS + 50);
    let warnings = parse(&text).warnings;
    assert_eq!(warnings.len(), MAX_WARNINGS + 1);
    assert_eq!(warnings[MAX_WARNINGS], "... and 50 more skipped lines");
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("ss-acl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rules.acl");
    std::fs::write(&path, "[bypass_list]\n\u{e9}\n").unwrap();
    let parsed = Acl::load(&path).unwrap();
    assert_eq!(
        parsed.warnings,
        [format!("{}: line 2: not ASCII (write names in punycode), skipped", path.display())]
    );
    let missing = Acl::load(&dir.join("missing.acl")).unwrap_err().to_string();
    assert!(missing.contains("missing.acl"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A list shaped like the large ones users load: mostly domain rules in both spellings, CIDRs of both
/// families, and a few hundred real regexes. Rule `i` is deterministic, so lookups know what must match.
fn generated(rules: usize) -> String {
    let mut text = String::from("[proxy_all]\n[bypass_list]\n");
    for i in 0..rules {
        let line = match i % 10 {
            0..=3 => format!("||d{i}.example{}.com", i % 97),
            4..=6 => format!(r"(^|\.)s{i}\.site{}\.net$", i % 89),
            7 => format!("{}.{}.{}.0/24", 1 + i / 65536 % 200, i / 256 % 256, i % 256),
            8 => format!("2001:db8:{:x}:{:x}::/64", i / 65536, i % 65536),
            _ if i % 100 == 9 => format!(r"^ads?{i}[a-z]*\.tracker\.org$"),
            _ => format!("|exact{i}.example.org"),
        };
        text.push_str(&line);
        text.push('\n');
    }
    text
}

fn probes() -> Vec<(String, bool)> {
    vec![
        ("www.d40.example40.com".into(), true),
        ("d40.example40.com".into(), true),
        ("d41.example40.com".into(), false),
        ("cdn.s54.site54.net".into(), true),
        ("s55.site54.net".into(), false),
        ("exact19.example.org".into(), true),
        ("sub.exact19.example.org".into(), false),
        ("ad1009xyz.tracker.org".into(), true),
        ("ad1019.tracker.org".into(), false),
        ("a.very.long.name.that.matches.nothing.at.all.example.com".into(), false),
    ]
}

#[test]
fn fifty_thousand_rules_compile_and_answer_correctly() {
    let parsed = parse(&generated(50_000));
    assert!(parsed.warnings.is_empty(), "{:?}", &parsed.warnings[..3.min(parsed.warnings.len())]);
    for (host, bypassed) in probes() {
        let expected = if bypassed { Route::Bypass } else { Route::Proxy };
        let route = match parsed.acl.route_host(&host) {
            HostRoute::Decided { route, .. } => route,
            HostRoute::ResolveFirst => parsed.acl.route_ip(ip("192.0.2.1")),
        };
        assert_eq!(route, expected, "{host}");
    }
    // Rule 7 is 1.0.7.0/24; rule 8 is 2001:db8:0:8::/64.
    assert_eq!(parsed.acl.route_ip(ip("1.0.7.200")), Route::Bypass);
    assert_eq!(parsed.acl.route_ip(ip("2001:db8:0:8::1")), Route::Bypass);
    assert_eq!(parsed.acl.route_ip(ip("2001:db8:0:9::1")), Route::Proxy);
}

/// The lookup figure in the README. Run optimised:
/// `cargo test -p ss-config --release --lib -- --ignored --nocapture acl_lookup_figure`
#[test]
#[ignore = "a measurement: run optimised, with --nocapture"]
fn acl_lookup_figure() {
    let started = Instant::now();
    let acl = parse(&generated(50_000)).acl;
    let compile = started.elapsed();
    let hosts: Vec<String> = probes().into_iter().map(|(host, _)| host).collect();
    let ips = [ip("1.0.7.200"), ip("9.9.9.9"), ip("2001:db8:0:8::1"), ip("2001:db8:ffff::1")];
    let rounds = 20_000;
    let started = Instant::now();
    let mut bypassed = 0usize;
    for _ in 0..rounds {
        for host in &hosts {
            bypassed +=
                usize::from(matches!(acl.route_host(host), HostRoute::Decided { route: Route::Bypass, .. }));
        }
    }
    let per_host = started.elapsed() / (rounds * hosts.len() as u32);
    let started = Instant::now();
    for _ in 0..rounds {
        for ip in ips {
            bypassed += usize::from(acl.route_ip(ip) == Route::Bypass);
        }
    }
    let per_ip = started.elapsed() / (rounds * ips.len() as u32);
    println!("50,000 rules: compiled in {compile:?}; route_host {per_host:?} per name, route_ip {per_ip:?} per address ({bypassed})");
    assert!(per_host.as_nanos() < 1000 && per_ip.as_nanos() < 1000, "lookups must stay under a microsecond");
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever bytes a file holds, parsing never panics, and a broken line costs a warning, not the file.
        #[test]
        fn any_file_parses_or_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Acl::parse(&bytes);
        }

        /// A `||domain` rule in the bypass list covers the domain and every subdomain, whatever comments
        /// surround it, and nothing that merely ends with the same letters.
        #[test]
        fn a_suffix_rule_covers_exactly_its_domain_and_subdomains(
            domain in "[a-z]{1,10}\\.(test|example)",
            label in "[a-z0-9]{1,10}",
            noise in proptest::collection::vec("[ -~]{0,40}", 0..5),
        ) {
            let comments: Vec<String> = noise.iter().map(|line| format!("# {line}")).collect();
            let text = format!("[proxy_all]\n{}\n[bypass_list]\n||{domain}\r\n", comments.join("\n"));
            let acl = Acl::parse(text.as_bytes()).unwrap().acl;
            prop_assert_eq!(acl.route_host(&domain), decided(Route::Bypass));
            prop_assert_eq!(acl.route_host(&format!("{label}.{domain}")), decided(Route::Bypass));
            prop_assert_ne!(acl.route_host(&format!("{label}{domain}")), decided(Route::Bypass));
        }
    }
}

#[test]
fn route_lists_give_each_lists_rules_as_data() {
    let parsed = Acl::parse(b"[bypass_all]\n[proxy_list]\n||Example.com\n|exact.example\n^rx[0-9]+\\.test$\n10.1.0.0/16\n10.0.0.0/8\n[bypass_list]\n::1\n").unwrap();
    assert!(parsed.acl.bypasses_by_default());
    let (bypass, proxy) = parsed.acl.route_lists();
    assert_eq!(proxy.suffixes, ["example.com"]);
    assert_eq!(proxy.exact, ["exact.example"]);
    assert_eq!(proxy.regexes, [r"^rx[0-9]+\.test$"]);
    assert_eq!(proxy.nets, ["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()], "overlapping blocks merged");
    assert_eq!(bypass.nets, ["::1/128".parse::<ipnet::IpNet>().unwrap()]);
    assert!(bypass.suffixes.is_empty() && bypass.exact.is_empty() && bypass.regexes.is_empty());
}
