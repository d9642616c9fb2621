//! ss-local's SOCKS5 UDP ASSOCIATE under an ACL: datagrams to bypassed targets (by IP rule, and by host
//! rule for a name resolved here) are sent from ss-local itself and their replies come back with the
//! target as source; proxied ones go through the server, which is seen opening its association only for
//! them, names as names (resolved by the server, even when ss-local looked one up to test its IP rules).

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;

use ss_crypto::{Address, Method};
use ss_net::SharedAcl;
use ss_tests::dns::{Behaviour, TestDns};
use ss_tests::udp::{local_settings_udp, socks5_udp_associate, udp_echo_server};
use ss_tests::{server_settings, start_local, start_server, STEP};
use tokio::time::timeout;

const METHOD: Method = Method::Aes256Gcm;
const RULES: &str = "[proxy_all]\n[bypass_list]\n127.0.0.2/32\n(^|\\.)bypass\\.test$\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_follow_the_acl() {
    timeout(STEP * 2, run()).await.expect("the test timed out");
}

async fn run() {
    let proxied = udp_echo_server("127.0.0.1:0").await;
    let bypassed = udp_echo_server("127.0.0.2:0").await;
    let answer =
        |last| Behaviour::Answer { addrs: vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))], ttl: 60 };
    // ss-local's resolver and the server's, told apart by their query counts.
    let dns = TestDns::start(&[("bypass.test", answer(2)), ("proxied.test", answer(1))]).await;
    let server_dns = TestDns::start(&[("proxied.test", answer(1))]).await;

    let mut settings = server_settings(METHOD);
    settings.resolve.nameservers = vec![server_dns.addr];
    let stats = settings.stats.clone();
    let server = start_server(settings).await;
    let mut acl = tempfile::NamedTempFile::new().expect("temp file");
    acl.write_all(RULES.as_bytes()).expect("write ACL");
    let mut local = local_settings_udp(METHOD, server.addr);
    local.acl = Some(SharedAcl::load(acl.path()).expect("ACL loads"));
    local.resolve.nameservers = vec![dns.addr];
    let local = start_local(local).await;
    let association = socks5_udp_associate(local.addr).await.expect("UDP ASSOCIATE");

    // Bypassed by the IP rule, then by the host rule: echoed straight back, the server never involved.
    association.send(&Address::Ip(bypassed), b"by ip").await;
    assert_eq!(association.recv().await, (Address::Ip(bypassed), b"by ip".to_vec()));
    association.send(&Address::Domain("bypass.test".into(), bypassed.port()), b"by name").await;
    assert_eq!(association.recv().await, (Address::Ip(bypassed), b"by name".to_vec()));
    assert!(dns.queries("bypass.test") > 0, "a bypassed name is resolved here");
    assert_eq!(stats.udp_associations.load(Ordering::SeqCst), 0, "bypassed datagrams reached the server");

    // Proxied: through the server, which now holds an association; the name is sent as a name.
    association.send(&Address::Ip(proxied), b"proxied").await;
    assert_eq!(association.recv().await, (Address::Ip(proxied), b"proxied".to_vec()));
    assert_eq!(stats.udp_associations.load(Ordering::SeqCst), 1);
    let name = Address::Domain("proxied.test".into(), proxied.port());
    association.send(&name, b"proxied name").await;
    let (_, payload) = association.recv().await;
    assert_eq!(payload, b"proxied name");
    // Looked up here only because the bypass list has an IP rule that its address might match; still
    // sent to the server as a name, which the server resolves itself.
    assert!(dns.queries("proxied.test") > 0);
    assert!(server_dns.queries("proxied.test") > 0, "the proxied name did not reach the server as a name");
}
