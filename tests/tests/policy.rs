//! Target policy (README, "What the server does": "No SSRF") end to end: with the default settings the
//! server refuses loopback targets in every spelling a client can send, and connects nowhere.
//!
//! Canary listeners sit on 127.0.0.1:p, [::1]:p (same port, so "localhost" lands on a canary whichever
//! family it resolves to) and 127.0.0.2:q. Valid clients of every method ask for them as 127.0.0.1:p,
//! 127.0.0.2:q, [::1]:p, [::ffff:127.0.0.1]:p (sent as an IPv6 address, address type 4) and
//! "localhost":p. A control run with `TargetPolicy::AllowAll` sends the same requests and must reach the
//! canaries, so the refusals are not an artefact of the test. Only loopback addresses are named here.
//!
//! The same over UDP: UDP canary sockets on 127.0.0.1:p, [::1]:p and 127.0.0.2:q record every datagram.
//! Each method's server gets datagrams for the five spellings twice, sealed by hand straight to the
//! server (the mapped form stays address type 4) and through our ss-local's SOCKS5 UDP ASSOCIATE. With
//! the default policy no canary receives anything and the client gets no reply; with `AllowAll` every
//! datagram reaches the canary it names. The policy function itself, over resolved address lists of
//! every class, is unit-tested in ss-server's `policy` module.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ss_crypto::udp::{Origin, Udp2022, UdpClassic};
use ss_crypto::{Address, Method, Salt};
use ss_net::unix_now;
use ss_server::rejections::Reason;
use ss_tests::probing::{
    address_bytes, random_salt, record_response, sealed_first_flight, sealed_udp_request, Canary, UdpCanary,
};
use ss_tests::udp::{local_settings_udp, socks5_udp_associate, UdpAssociation};
use ss_tests::{server_settings, start_local, start_server, test_key, RunningServer, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, Instant};

/// Handshake deadline of the servers under test.
const HANDSHAKE: Duration = Duration::from_secs(2);
/// After the refused clients saw their close, how long the canaries are watched for a late connection.
const GRACE: Duration = Duration::from_millis(500);
const PAYLOAD: &[u8] = b"must not reach a loopback service";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_refuses_every_loopback_target() {
    let canaries = Canaries::bind().await;
    let mut stats = Vec::new();
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for method in Method::ALL {
        let mut settings = ss_server::Settings::new(method, test_key(method));
        assert_eq!(settings.policy, ss_server::TargetPolicy::PublicOnly, "the default policy");
        settings.handshake_timeout = HANDSHAKE;
        stats.push((method, settings.stats.clone()));
        let server = start_server(settings).await;
        for (name, raw_address) in canaries.targets() {
            let label = format!("{method} -> {name}");
            clients.push(tokio::spawn(refused_client(server.addr, method, raw_address, label)));
        }
        servers.push(server);
    }

    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for client in clients {
        match client.await.expect("client task") {
            Ok(closed) => slowest = slowest.max(closed),
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "refused clients saw something else:\n{}", failures.join("\n"));

    // Every client saw its close: the server is done with them. Give it a moment all the same, then
    // check exactly (sentinel through each accept queue).
    for canary in canaries.all() {
        let late = canary.connections_within(GRACE).await;
        assert!(late.is_empty(), "{} was reached by {late:?}", canary.addr());
        let reached = canary.connections().await;
        assert!(reached.is_empty(), "{} was reached by {reached:?}", canary.addr());
    }
    // Each refusal is counted (the summary line's and the metrics' `policy`) before the close.
    for (method, stats) in &stats {
        let counted = stats.rejections.total(Reason::Policy);
        assert_eq!(counted, canaries.targets().len() as u64, "{method}: refusals counted as policy");
    }
    println!(
        "refused requests were closed with FIN at most {slowest:?} after connect (deadline {HANDSHAKE:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_all_control_reaches_the_same_canaries() {
    let canaries = Canaries::bind().await;
    let mut servers = Vec::new();
    for method in Method::ALL {
        let server = start_server(server_settings(method)).await;
        for (name, raw_address) in canaries.targets() {
            let salt = random_salt(method);
            let flight = sealed_first_flight(method, salt, &raw_address, PAYLOAD, unix_now());
            let (_, echoed) = record_response(server.addr, method, salt, &flight, PAYLOAD.len())
                .await
                .unwrap_or_else(|error| panic!("{method} -> {name}: {error}"));
            assert_eq!(echoed, PAYLOAD, "{method} -> {name}");
        }
        servers.push(server);
    }
    let methods = Method::ALL.len();
    let v4 = canaries.v4.connections().await.len();
    let v6 = canaries.v6.connections().await.len();
    let second = canaries.second.connections().await.len();
    assert_eq!(second, methods, "127.0.0.2");
    // 127.0.0.1 and ::ffff:127.0.0.1 on v4, ::1 on v6, "localhost" on either.
    assert!(v4 >= 2 * methods && v6 >= methods && v4 + v6 == 4 * methods, "v4 {v4}, v6 {v6}");
}

#[test]
fn sealed_first_flight_matches_the_encoder() {
    let target = Address::Ip(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)));
    for method in Method::ALL {
        let salt = Salt::from_slice(method, &[7; 32][..method.salt_len()]).expect("salt length");
        let now = 1_700_000_000;
        let ours = sealed_first_flight(method, salt, &address_bytes(&target), PAYLOAD, now);
        assert_eq!(ours, ss_tests::probing::first_flight(method, salt, &target, PAYLOAD, now), "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_drops_datagrams_for_every_loopback_target() {
    let canaries = UdpCanaries::bind().await;
    let mut stats = Vec::new();
    let mut clients = Vec::new();
    for method in Method::ALL {
        let mut settings = ss_server::Settings::new(method, test_key(method));
        assert_eq!(settings.policy, ss_server::TargetPolicy::PublicOnly, "the default policy");
        settings.handshake_timeout = HANDSHAKE;
        stats.push((method, settings.stats.clone()));
        clients.push(UdpClients::start(settings, &canaries).await);
    }

    // Nothing may arrive: watch for a while (the control run shows datagrams arrive well within it),
    // then check exactly (a sentinel through each receive queue).
    let mut late = Vec::new();
    for canary in canaries.all() {
        late.extend(canary.datagrams_within(1, GRACE).await);
    }
    for canary in canaries.all() {
        late.extend(canary.datagrams().await);
    }
    let late: Vec<String> =
        late.iter().map(|(from, bytes)| format!("{from}: {}", String::from_utf8_lossy(bytes))).collect();
    assert!(late.is_empty(), "UDP canaries received:\n{}", late.join("\n"));
    for client in &clients {
        client.assert_no_reply().await;
    }
    // Every datagram was dropped as a policy refusal (each target got two: sealed by hand, and through
    // ss-local).
    for (method, stats) in &stats {
        let counted = stats.rejections.total(Reason::Policy);
        assert_eq!(counted, 2 * canaries.targets().len() as u64, "{method}: drops counted as policy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_all_control_delivers_the_same_datagrams() {
    let canaries = UdpCanaries::bind().await;
    let mut clients = Vec::new();
    let mut expected = Vec::new();
    for method in Method::ALL {
        let client = UdpClients::start(server_settings(method), &canaries).await;
        expected.extend(client.sent.iter().cloned());
        clients.push(client);
    }
    let total = expected.len();
    // Three sockets to watch at once, and the datagrams for "localhost" may land on either of two.
    let deadline = Instant::now() + STEP;
    let received = loop {
        let mut received = Vec::new();
        for canary in canaries.all() {
            let seen = canary.datagrams_within(0, Duration::ZERO).await;
            received.extend(seen.into_iter().map(|(_, bytes)| (canary.addr(), bytes)));
        }
        if received.len() >= total || Instant::now() >= deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for (label, at) in &expected {
        let arrived: Vec<SocketAddr> =
            received.iter().filter(|(_, bytes)| bytes == label.as_bytes()).map(|(addr, _)| *addr).collect();
        assert!(
            arrived.len() == 1 && at.contains(&arrived[0]),
            "{label}: expected once at one of {at:?}, arrived at {arrived:?}"
        );
    }
    assert_eq!(received.len(), total, "every datagram arrives once");
}

#[test]
fn sealed_udp_request_opens_with_ss_crypto() {
    let port = 9u16.to_be_bytes();
    let mapped = [&[4][..], &Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets(), &port].concat();
    let plain = address_bytes(&Address::Ip(SocketAddr::from((Ipv4Addr::LOCALHOST, 9))));
    let named = address_bytes(&Address::domain("localhost", 9).expect("valid name"));
    for method in Method::ALL {
        for raw in [&mapped, &plain, &named] {
            let now = unix_now();
            let mut datagram = sealed_udp_request(method, raw, PAYLOAD, 7, 3, now);
            let (address, payload) = match Udp2022::new(method, &test_key(method)) {
                Some(codec) => {
                    let opened = codec.open(&mut datagram, now, Origin::Client).expect("opens");
                    assert_eq!((opened.header.session_id, opened.header.packet_id), (7, 3), "{method}");
                    (opened.address, opened.payload)
                }
                None => UdpClassic::new(method, &test_key(method))
                    .expect("classic")
                    .open(&mut datagram)
                    .expect("opens"),
            };
            assert_eq!(address_bytes_raw(&address), *raw, "{method}");
            assert_eq!(&datagram[payload], PAYLOAD, "{method}");
        }
    }
}

/// Like [`address_bytes`] but keeps an IPv4-mapped address in its IPv6 form.
fn address_bytes_raw(address: &Address) -> Vec<u8> {
    match address {
        Address::Ip(SocketAddr::V6(v6)) => [&[4][..], &v6.ip().octets(), &v6.port().to_be_bytes()].concat(),
        other => address_bytes(other),
    }
}

/// The UDP canaries: 127.0.0.1:p and [::1]:p on one port, 127.0.0.2:q.
struct UdpCanaries {
    v4: UdpCanary,
    v6: UdpCanary,
    second: UdpCanary,
}

impl UdpCanaries {
    async fn bind() -> UdpCanaries {
        let second = UdpCanary::bind("127.0.0.2:0").await.expect("bind 127.0.0.2");
        for _ in 0..20 {
            let v4 = UdpCanary::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
            if let Ok(v6) = UdpCanary::bind(&format!("[::1]:{}", v4.addr().port())).await {
                return UdpCanaries { v4, v6, second };
            }
        }
        panic!("no UDP port free on both 127.0.0.1 and [::1]");
    }

    fn all(&self) -> [&UdpCanary; 3] {
        [&self.v4, &self.v6, &self.second]
    }

    /// Every loopback spelling of a canary: its name, the raw address bytes a sealed datagram carries,
    /// the address a SOCKS5 client asks for, and where it may land.
    fn targets(&self) -> Vec<(&'static str, Vec<u8>, Address, Vec<SocketAddr>)> {
        let port = self.v4.addr().port();
        let mapped_ip = SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port));
        let mapped = [&[4][..], &Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets(), &port.to_be_bytes()].concat();
        let localhost = Address::domain("localhost", port).expect("valid name");
        let (v4, v6, second) = (self.v4.addr(), self.v6.addr(), self.second.addr());
        vec![
            ("127.0.0.1", address_bytes(&Address::Ip(v4)), Address::Ip(v4), vec![v4]),
            ("127.0.0.2", address_bytes(&Address::Ip(second)), Address::Ip(second), vec![second]),
            ("[::1]", address_bytes(&Address::Ip(v6)), Address::Ip(v6), vec![v6]),
            ("[::ffff:127.0.0.1]", mapped, Address::Ip(mapped_ip), vec![v4]),
            ("localhost", address_bytes(&localhost), localhost, vec![v4, v6]),
        ]
    }
}

/// One method's server and its two UDP clients, each of which sent one datagram per canary spelling.
struct UdpClients {
    _server: RunningServer,
    _local: RunningServer,
    /// Sealed by hand, straight to the server.
    direct: UdpSocket,
    /// Through ss-local's UDP ASSOCIATE.
    association: UdpAssociation,
    /// Each datagram's payload (a unique label) and the canaries it may land on.
    sent: Vec<(String, Vec<SocketAddr>)>,
}

impl UdpClients {
    async fn start(settings: ss_server::Settings, canaries: &UdpCanaries) -> UdpClients {
        let method = settings.method;
        let server = start_server(settings).await;
        let local = start_local(local_settings_udp(method, server.addr)).await;
        let association =
            timeout(STEP, socks5_udp_associate(local.addr)).await.expect("associate").expect("associate");
        let direct = UdpSocket::bind("127.0.0.1:0").await.expect("bind client socket");
        let session_id =
            u64::from_be_bytes(random_salt(Method::Aes128Gcm).as_bytes()[..8].try_into().unwrap());
        let mut sent = Vec::new();
        for (packet_id, (name, raw, address, at)) in (1u64..).zip(canaries.targets()) {
            let label = format!("{method} sealed by hand -> {name}");
            let datagram =
                sealed_udp_request(method, &raw, label.as_bytes(), session_id, packet_id, unix_now());
            direct.send_to(&datagram, server.addr).await.expect("send datagram");
            sent.push((label, at.clone()));
            let label = format!("{method} through ss-local -> {name}");
            association.send(&address, label.as_bytes()).await;
            sent.push((label, at));
        }
        UdpClients { _server: server, _local: local, direct, association, sent }
    }

    /// Neither client got a datagram back (run after the canaries' grace period).
    async fn assert_no_reply(&self) {
        let mut buf = [0u8; 2048];
        match self.direct.try_recv_from(&mut buf) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the server answered a refused datagram: {other:?}"),
        }
        match self.association.socket.try_recv_from(&mut buf) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("ss-local relayed an answer to a refused datagram: {other:?}"),
        }
    }
}

/// A client of the default-policy server: sends a valid request for a loopback target and must see the
/// connection closed with a FIN, without a byte. `Ok` carries when the close came.
async fn refused_client(
    server: SocketAddr,
    method: Method,
    raw_address: Vec<u8>,
    label: String,
) -> Result<Duration, String> {
    let started = Instant::now();
    let flight = sealed_first_flight(method, random_salt(method), &raw_address, PAYLOAD, unix_now());
    let mut stream = timeout(STEP, TcpStream::connect(server))
        .await
        .map_err(|_| format!("{label}: connect timed out"))?
        .map_err(|error| format!("{label}: connect: {error}"))?;
    timeout(STEP, stream.write_all(&flight))
        .await
        .map_err(|_| format!("{label}: write timed out"))?
        .map_err(|error| format!("{label}: write: {error}"))?;
    let mut back = Vec::new();
    let patience = HANDSHAKE + Duration::from_secs(3);
    let read = timeout(patience, stream.read_to_end(&mut back))
        .await
        .map_err(|_| format!("{label}: still open after {patience:?} (relaying?)"))?;
    match read {
        Ok(_) if back.is_empty() => Ok(started.elapsed()),
        Ok(n) => Err(format!("{label}: the server sent {n} bytes")),
        Err(error) => {
            Err(format!("{label}: {error} ({:?}) after {} bytes: not a FIN", error.kind(), back.len()))
        }
    }
}

/// The canary listeners: 127.0.0.1:p and [::1]:p on one port, 127.0.0.2:q.
struct Canaries {
    v4: Canary,
    v6: Canary,
    second: Canary,
}

impl Canaries {
    async fn bind() -> Canaries {
        let second = Canary::bind("127.0.0.2:0").await.expect("bind 127.0.0.2");
        for _ in 0..20 {
            let v4 = Canary::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
            if let Ok(v6) = Canary::bind(&format!("[::1]:{}", v4.addr().port())).await {
                return Canaries { v4, v6, second };
            }
        }
        panic!("no port free on both 127.0.0.1 and [::1]");
    }

    fn all(&self) -> [&Canary; 3] {
        [&self.v4, &self.v6, &self.second]
    }

    /// Every loopback spelling of a canary, as the raw address bytes of a request.
    fn targets(&self) -> Vec<(&'static str, Vec<u8>)> {
        let port = self.v4.addr().port();
        let mut mapped = vec![4];
        mapped.extend_from_slice(&Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets());
        mapped.extend_from_slice(&port.to_be_bytes());
        let localhost = Address::domain("localhost", port).expect("valid name");
        vec![
            ("127.0.0.1", address_bytes(&Address::Ip(self.v4.addr()))),
            ("127.0.0.2", address_bytes(&Address::Ip(self.second.addr()))),
            ("[::1]", address_bytes(&Address::Ip(self.v6.addr()))),
            ("[::ffff:127.0.0.1] (address type 4)", mapped),
            ("localhost", address_bytes(&localhost)),
        ]
    }
}
