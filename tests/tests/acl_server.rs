//! ss-server with an ACL (`--acl`): clients refused per the list get the probe treatment, outbound
//! targets are blocked by name (before any lookup) and by resolved address, and the ACL never loosens
//! the private-address policy except through an explicit `[outbound_allow_list]` entry.
//!
//! The client side is an in-process ss-local without ACL; targets are an echo server on 127.0.0.1 and
//! names answered by a DNS server on loopback that counts queries.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_net::SharedAcl;
use ss_server::TargetPolicy;
use ss_tests::dns::{Behaviour, TestDns};
use ss_tests::{
    echo_server, local_settings, server_settings, socks5_connect, start_local, start_server, STEP,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::{timeout, Instant};

const METHOD: Method = Method::Aes256Gcm;

fn acl_file(rules: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(rules.as_bytes()).expect("write ACL");
    file
}

fn loopback(last: u8) -> Behaviour {
    Behaviour::Answer { addrs: vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))], ttl: 60 }
}

/// Whether an echo round trip through ss-local and the server to `target` works; a refused target
/// ends the connection with no data.
async fn echoes(local: SocketAddr, target: Address) -> bool {
    let Ok(mut stream) = socks5_connect(local, &target).await else { return false };
    if stream.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut echoed = [0u8; 4];
    match timeout(STEP, stream.read_exact(&mut echoed)).await {
        Ok(Ok(_)) => &echoed == b"ping",
        Ok(Err(_)) => false,
        Err(_) => panic!("no answer and no close for {target}"),
    }
}

#[tokio::test]
async fn outbound_targets_are_blocked_by_name_and_by_resolved_address() {
    let open = echo_server("127.0.0.1:0").await;
    let blocked = echo_server("127.0.0.2:0").await;
    let dns = TestDns::start(&[
        ("blocked.test", loopback(1)),
        ("open.blocked.test", loopback(1)),
        ("alias.test", loopback(2)),
    ])
    .await;
    let rules =
        "[outbound_block_list]\n||blocked.test\n127.0.0.2\n[outbound_allow_list]\n|open.blocked.test\n";
    let file = acl_file(rules);
    let mut settings = server_settings(METHOD); // loopback allowed by the range policy (AllowAll)
    settings.resolve.nameservers = vec![dns.addr];
    settings.acl = Some(SharedAcl::load(file.path()).expect("ACL"));
    let server = start_server(settings).await;
    let local = start_local(local_settings(METHOD, server.addr)).await;

    let domain = |name: &str, port| Address::Domain(name.to_owned(), port);
    let cases = [
        (domain("blocked.test", open.port()), false, false), // blocked by name: never looked up
        (domain("alias.test", blocked.port()), false, true), // resolves to the blocked 127.0.0.2
        (Address::Ip(blocked), false, false),                // the blocked address itself
        (domain("open.blocked.test", open.port()), true, true), // the allow list wins over the block list
        (Address::Ip(open), true, false),
    ];
    for (target, reachable, looked_up) in cases {
        let works = timeout(STEP, echoes(local.addr, target.clone())).await.expect("case timed out");
        assert_eq!(works, reachable, "{target}");
        if let Address::Domain(name, _) = &target {
            assert_eq!(dns.queries(name) > 0, looked_up, "{name}: {} queries", dns.queries(name));
        }
    }
}

#[tokio::test]
async fn udp_datagrams_to_blocked_targets_are_dropped() {
    use ss_tests::udp::{local_settings_udp, socks5_udp_associate, udp_echo_server};
    let open = udp_echo_server("127.0.0.1:0").await;
    let blocked = udp_echo_server("127.0.0.2:0").await;
    let dns = TestDns::start(&[("blocked.test", loopback(1))]).await;
    let file = acl_file("[outbound_block_list]\n127.0.0.2\n||blocked.test\n");
    let mut settings = server_settings(METHOD);
    settings.resolve.nameservers = vec![dns.addr];
    settings.acl = Some(SharedAcl::load(file.path()).expect("ACL"));
    let server = start_server(settings).await;
    let local = start_local(local_settings_udp(METHOD, server.addr)).await;
    let association = socks5_udp_associate(local.addr).await.expect("UDP ASSOCIATE");

    // Each blocked datagram is sent before an allowed one, over the same association: had it been
    // forwarded, its echo would arrive first or in between.
    for (round, refused) in
        [Address::Ip(blocked), Address::Domain("blocked.test".into(), open.port())].into_iter().enumerate()
    {
        association.send(&refused, b"refused").await;
        association.send(&Address::Ip(open), &[round as u8]).await;
        let (source, payload) = timeout(STEP, association.recv()).await.expect("no echo");
        assert_eq!((source, payload), (Address::Ip(open), vec![round as u8]), "{refused}");
    }
    assert_eq!(dns.queries("blocked.test"), 0, "a blocked name is not looked up");
}

#[tokio::test]
async fn the_acl_loosens_the_private_address_policy_only_by_explicit_allow() {
    let echo = echo_server("127.0.0.1:0").await;
    for (rules, reachable) in [
        ("[outbound_allow_all]\n[outbound_block_list]\n||elsewhere.test\n", false),
        ("[outbound_allow_list]\n127.0.0.1\n", true),
        ("[outbound_allow_list]\n127.0.0.2\n", false),
    ] {
        let file = acl_file(rules);
        let mut settings = server_settings(METHOD);
        settings.policy = TargetPolicy::PublicOnly;
        settings.acl = Some(SharedAcl::load(file.path()).expect("ACL"));
        let server = start_server(settings).await;
        let local = start_local(local_settings(METHOD, server.addr)).await;
        let works = timeout(STEP, echoes(local.addr, Address::Ip(echo))).await.expect("timed out");
        assert_eq!(works, reachable, "{rules}");
    }
}

#[tokio::test]
async fn refused_clients_get_the_silent_treatment_until_the_handshake_deadline() {
    let echo = echo_server("127.0.0.1:0").await;
    // 127.0.0.1 is black-listed; under [reject_all] only the white-listed 127.0.0.3 is served.
    for (rules, refused, admitted) in [
        ("[black_list]\n127.0.0.1\n", "127.0.0.1", "127.0.0.2"),
        ("[reject_all]\n[white_list]\n127.0.0.3\n", "127.0.0.2", "127.0.0.3"),
    ] {
        let file = acl_file(rules);
        let mut settings = server_settings(METHOD);
        settings.handshake_timeout = Duration::from_secs(2);
        settings.acl = Some(SharedAcl::load(file.path()).expect("ACL"));
        let server = start_server(settings).await;

        for (source, served) in [(refused, false), (admitted, true)] {
            let (outcome, elapsed) =
                timeout(STEP, request_from(source, server.addr, echo)).await.expect("timed out");
            if served {
                assert_eq!(outcome, Outcome::Answered, "{rules}: {source}");
            } else {
                assert_eq!(outcome, Outcome::ClosedSilently, "{rules}: {source}");
                assert!(
                    elapsed >= Duration::from_millis(1900),
                    "{source} closed after {elapsed:?}, before the deadline"
                );
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Answered,
    ClosedSilently,
}

/// Sends an honest request for `echo` from the source address `source`, the way a client would, and
/// reports whether the server answered or closed without a byte (and when).
async fn request_from(source: &str, server: SocketAddr, echo: SocketAddr) -> (Outcome, Duration) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source.parse().expect("source"), 0)).expect("bind source");
    let mut stream = socket.connect(server).await.expect("connect");
    let started = Instant::now();
    let key = ss_tests::test_key(METHOD);
    let salt = ss_crypto::Salt::random(METHOD, &mut rand_core::OsRng);
    let mut encryptor = ss_crypto::Encryptor::request(METHOD, &key, salt, &Address::Ip(echo), &[]);
    let mut wire = Vec::new();
    encryptor.encrypt(b"ping", ss_net::unix_now(), &mut wire).expect("seal");
    stream.write_all(&wire).await.expect("send request");
    let mut first = [0u8; 1];
    match stream.read(&mut first).await {
        Ok(0) | Err(_) => (Outcome::ClosedSilently, started.elapsed()),
        Ok(_) => (Outcome::Answered, started.elapsed()),
    }
}
