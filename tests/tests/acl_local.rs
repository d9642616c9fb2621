//! ss-local with an ACL (`--acl`): a table of targets against three rule files, each run through a real
//! ss-local with a DNS server on loopback that counts queries, and a stand-in Shadowsocks server that
//! only counts the connections it gets.
//!
//! A bypassed target is proven direct by an echo round trip (the stand-in server relays nothing); a
//! proxied one by the stand-in server's accept. The query counts show which names were resolved locally:
//! a proxied name never is, unless the deciding list has IP rules (the DNS-leak rule).

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ss_crypto::{Address, Method};
use ss_net::SharedAcl;
use ss_tests::dns::{Behaviour, TestDns};
use ss_tests::{echo_server, local_settings, socks5_connect, start_local, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Server,
}

/// One target: a name or an IP literal, where it must go, and whether ss-local may look the name up.
struct Case {
    target: &'static str,
    via: Via,
    resolved: bool,
}

const fn case(target: &'static str, via: Via, resolved: bool) -> Case {
    Case { target, via, resolved }
}

/// Host rules only (default proxy): names in neither list are not resolved.
const HOST_RULES: &str = "\
# lines before a section would be bypassed
[proxy_all]
[bypass_list]
||bypass.test
||both.test
[proxy_list]
||proxied.test
||both.test
10.0.0.0/8
";

/// The bypass list has an IP rule: an unlisted name must be resolved to test it.
const BYPASS_IP_RULES: &str = "[bypass_list]\n127.0.0.1\n[proxy_list]\n|proxied.test\n";

/// Default bypass; only the proxy list's names go through the server.
const BYPASS_ALL: &str = "[reject_all]\n[white_list]\n(^|\\.)proxied\\.test$\n";

#[tokio::test]
async fn targets_are_routed_by_the_acl_without_leaking_names() {
    use Via::{Direct, Server};
    let table: [(&str, &[Case]); 3] = [
        (
            HOST_RULES,
            &[
                case("bypass.test", Direct, true),
                case("www.both.test", Direct, true), // in both lists: bypass wins (libev's order)
                case("proxied.test", Server, false),
                case("unlisted.test", Server, false), // no IP rule could bypass it: no lookup
                case("127.0.0.1", Server, false),
            ],
        ),
        (
            BYPASS_IP_RULES,
            &[
                case("unlisted.test", Direct, true), // resolves to 127.0.0.1, in the bypass list
                case("far.test", Server, true),      // resolves to 127.0.0.2: proxied, as a name
                case("proxied.test", Server, false),
                case("127.0.0.1", Direct, false),
                case("127.0.0.2", Server, false),
            ],
        ),
        (BYPASS_ALL, &[case("unlisted.test", Direct, true), case("www.proxied.test", Server, false)]),
    ];
    for (rules, cases) in table {
        timeout(STEP * 2, run_table(rules, cases)).await.expect("table timed out");
    }
}

async fn run_table(rules: &str, cases: &[Case]) {
    let echo = echo_server("127.0.0.1:0").await;
    let local_ip =
        |last| Behaviour::Answer { addrs: vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))], ttl: 60 };
    let names: Vec<(&str, Behaviour)> = cases
        .iter()
        .filter(|case| case.target.parse::<IpAddr>().is_err())
        .map(|case| (case.target, local_ip(if case.target == "far.test" { 2 } else { 1 })))
        .collect();
    let dns = TestDns::start(&names).await;

    let (server, mut accepted) = counting_server().await;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(rules.as_bytes()).expect("write ACL");
    let mut settings = local_settings(Method::Aes256Gcm, server);
    settings.acl = Some(SharedAcl::load(file.path()).expect("ACL loads"));
    settings.resolve.nameservers = vec![dns.addr];
    let local = start_local(settings).await;

    for case in cases {
        let target = match case.target.parse::<IpAddr>() {
            Ok(ip) => Address::Ip(SocketAddr::new(ip, echo.port())),
            Err(_) => Address::Domain(case.target.to_owned(), echo.port()),
        };
        let mut stream = socks5_connect(local.addr, &target).await.expect("SOCKS5 CONNECT");
        match case.via {
            Via::Direct => {
                stream.write_all(b"direct?").await.expect("write");
                let mut echoed = [0u8; 7];
                stream.read_exact(&mut echoed).await.expect("echo through a direct connection");
                assert_eq!(&echoed, b"direct?", "{}", case.target);
            }
            Via::Server => {
                let arrived = timeout(STEP, accepted.recv()).await;
                assert!(matches!(arrived, Ok(Some(()))), "{} did not reach the server", case.target);
            }
        }
        if case.target.parse::<IpAddr>().is_err() {
            let queries = dns.queries(case.target);
            assert_eq!(queries > 0, case.resolved, "{}: {queries} local DNS queries", case.target);
        }
    }
    assert!(accepted.try_recv().is_err(), "a bypassed target also reached the server");
}

/// A stand-in Shadowsocks server: it accepts, reports the connection and closes it.
async fn counting_server() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind server");
    let addr = listener.local_addr().expect("server address");
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Closing at once makes a target wrongly proxied fail its echo with an EOF, not a hang.
        while let Ok((stream, _)) = listener.accept().await {
            let _ = sender.send(());
            drop(stream);
        }
    });
    (addr, receiver)
}
