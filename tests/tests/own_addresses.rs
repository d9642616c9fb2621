//! The server refuses its host's own addresses as targets (ss-server's `own_addresses` module), over
//! every path a request can take: SOCKS5 CONNECT and UDP ASSOCIATE through ss-local, and Shadowsocks TCP
//! and UDP sent straight to the server.
//!
//! A VPS has its public addresses on its interfaces; this machine's are not ours to use, so each test
//! makes a network namespace of its own (`unshare(CLONE_NEWNET)` on a thread of its own, which the
//! runtimes' threads then inherit), brings its loopback up and adds 192.0.2.1/24 and 2001:db8::1/64
//! (documentation ranges, never routed) to it. Canaries listen on those two addresses. The range rule
//! allows the documentation ranges, so with the default policy the refusals come from the own-address
//! rule alone; a control run with `--allow-private-targets` (`TargetPolicy::AllowAll`) must reach every
//! canary. Nothing leaves the namespace.
//!
//! Needs root (CAP_SYS_ADMIN) and `ip` (iproute2). Without them the test fails when `CI` is set and is
//! reported as skipped otherwise (`ss_tests::skip`).

use std::process::Command;
use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_net::unix_now;
use ss_server::TargetPolicy;
use ss_tests::probing::{
    address_bytes, random_salt, record_response, sealed_first_flight, sealed_udp_request, Canary, UdpCanary,
};
use ss_tests::udp::{local_settings_udp, socks5_udp_associate};
use ss_tests::{socks5_connect, start_local, start_server, test_key, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::timeout;

/// How long the canaries are watched for a late arrival after the refused requests were sent.
const GRACE: Duration = Duration::from_millis(500);
const PAYLOAD: &[u8] = b"the host's own address";
const OWN_V4: &str = "192.0.2.1";
const OWN_V6: &str = "2001:db8::1";

#[test]
fn own_addresses_are_refused_by_default_and_reached_when_allowed() {
    let ran = in_network_namespace(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            for method in [Method::Aes256Gcm, Method::Blake3Aes128Gcm] {
                let refused = requests_reaching_canaries(method, TargetPolicy::PublicOnly).await;
                assert_eq!(refused, Hits::default(), "{method}: the default policy let requests through");
                let allowed = requests_reaching_canaries(method, TargetPolicy::AllowAll).await;
                assert_eq!(allowed, Hits { tcp: 4, udp: 4 }, "{method}: the control run");
            }
        });
    });
    if let Err(reason) = ran {
        ss_tests::skip::skip(&reason, "run as root with iproute2 installed");
    }
}

/// Connections and datagrams that arrived at the canaries.
#[derive(Debug, Default, PartialEq, Eq)]
struct Hits {
    tcp: usize,
    udp: usize,
}

/// Starts a server with `policy` and an ss-local, asks for each canary over the four paths, and counts
/// what arrived.
async fn requests_reaching_canaries(method: Method, policy: TargetPolicy) -> Hits {
    let tcp = [Canary::bind(&format!("{OWN_V4}:0")).await, Canary::bind(&format!("[{OWN_V6}]:0")).await]
        .map(|canary| canary.expect("bind a canary on the namespace's own address"));
    let udp =
        [UdpCanary::bind(&format!("{OWN_V4}:0")).await, UdpCanary::bind(&format!("[{OWN_V6}]:0")).await]
            .map(|canary| canary.expect("bind a UDP canary on the namespace's own address"));

    let mut settings = ss_server::Settings::new(method, test_key(method));
    settings.policy = policy;
    settings.handshake_timeout = Duration::from_secs(2);
    let server = start_server(settings).await;
    let local = start_local(local_settings_udp(method, server.addr)).await;
    let association =
        timeout(STEP, socks5_udp_associate(local.addr)).await.expect("associate").expect("associate");
    let direct_udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let session_id = rand_session_id();

    for (n, (canary, udp_canary)) in tcp.iter().zip(&udp).enumerate() {
        // SOCKS5 CONNECT: echoed when allowed, closed without a byte when refused.
        let mut stream =
            socks5_connect(local.addr, &Address::Ip(canary.addr())).await.expect("SOCKS5 connect");
        stream.write_all(PAYLOAD).await.expect("write");
        let mut back = Vec::new();
        let _ = timeout(STEP, async {
            let mut buf = [0u8; 64];
            while let Ok(read) = stream.read(&mut buf).await {
                if read == 0 {
                    break;
                }
                back.extend_from_slice(&buf[..read]);
                if back.len() >= PAYLOAD.len() {
                    break;
                }
            }
        })
        .await;
        let expected: &[u8] = match policy {
            TargetPolicy::AllowAll => PAYLOAD,
            _ => &[],
        };
        assert_eq!(back, expected, "{policy:?}: SOCKS5 to {}", canary.addr());

        // Shadowsocks TCP straight to the server.
        let salt = random_salt(method);
        let flight = sealed_first_flight(
            method,
            salt,
            &address_bytes(&Address::Ip(canary.addr())),
            PAYLOAD,
            unix_now(),
        );
        let _ = record_response(server.addr, method, salt, &flight, PAYLOAD.len()).await;

        // SOCKS5 UDP, and a Shadowsocks datagram straight to the server.
        association.send(&Address::Ip(udp_canary.addr()), PAYLOAD).await;
        let raw = address_bytes(&Address::Ip(udp_canary.addr()));
        let datagram = sealed_udp_request(method, &raw, PAYLOAD, session_id, n as u64 + 1, unix_now());
        direct_udp.send_to(&datagram, server.addr).await.expect("send");
    }

    let mut hits = Hits::default();
    for canary in &tcp {
        let late = canary.connections_within(GRACE).await.len();
        hits.tcp += late.max(canary.connections().await.len());
    }
    for canary in &udp {
        hits.udp += canary.datagrams_within(2, GRACE).await.len();
    }
    hits
}

fn rand_session_id() -> u64 {
    u64::from_be_bytes(random_salt(Method::Aes128Gcm).as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Runs `test` on a thread in a new network namespace with the test addresses on its loopback. Returns
/// why not if the namespace cannot be made.
fn in_network_namespace(test: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let thread = std::thread::spawn(move || {
        if let Err(error) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            return Err(format!("unshare(CLONE_NEWNET): {error}"));
        }
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", &format!("{OWN_V4}/24"), "dev", "lo"],
            &["-6", "addr", "add", &format!("{OWN_V6}/64"), "dev", "lo", "nodad"],
        ] {
            match Command::new("ip").args(args).status() {
                Ok(status) if status.success() => {}
                other => return Err(format!("ip {}: {other:?}", args.join(" "))),
            }
        }
        test();
        Ok(())
    });
    match thread.join() {
        Ok(outcome) => outcome.map_err(|reason| format!("cannot make a network namespace: {reason}")),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
