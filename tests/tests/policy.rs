//! Target policy (PROTOCOL.md, "Server safety") end to end: with the default settings the server refuses
//! loopback targets in every spelling a client can send, and connects nowhere.
//!
//! Canary listeners sit on 127.0.0.1:p, [::1]:p (same port, so "localhost" lands on a canary whichever
//! family it resolves to) and 127.0.0.2:q. Valid clients of every method ask for them as 127.0.0.1:p,
//! 127.0.0.2:q, [::1]:p, [::ffff:127.0.0.1]:p (sent as an IPv6 address, address type 4) and
//! "localhost":p. A control run with `TargetPolicy::AllowAll` sends the same requests and must reach the
//! canaries, so the refusals are not an artefact of the test. Only loopback addresses are named here.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ss_crypto::stream::unix_now;
use ss_crypto::{Address, Method, Salt};
use ss_tests::probing::{address_bytes, random_salt, record_response, sealed_first_flight, Canary};
use ss_tests::{server_settings, start_server, test_key, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Handshake deadline of the servers under test.
const HANDSHAKE: Duration = Duration::from_secs(2);
/// After the refused clients saw their close, how long the canaries are watched for a late connection.
const GRACE: Duration = Duration::from_millis(500);
const PAYLOAD: &[u8] = b"must not reach a loopback service";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_refuses_every_loopback_target() {
    let canaries = Canaries::bind().await;
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for method in Method::ALL {
        let mut settings = ss_server::Settings::new(method, test_key(method));
        assert_eq!(settings.policy, ss_server::TargetPolicy::PublicOnly, "the default policy");
        settings.handshake_timeout = HANDSHAKE;
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
