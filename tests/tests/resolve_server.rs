//! ss-server's name resolution end to end: configured with the test's DNS server as `nameserver`, it
//! relays TCP and UDP to a name that resolves to 127.0.0.1, and a flood of UDP datagrams for names that
//! never answer neither grows its memory (datagrams waiting, tasks) nor stops other names.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand_core::OsRng;
use ss_crypto::{Address, Method, Salt};
use ss_net::ResolveSettings;
use ss_tests::dns::{Behaviour, TestDns};
use ss_tests::udp::*;
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};

const METHOD: Method = Method::Aes128Gcm;
/// ss-server's bounds on datagrams waiting for a name, per association and per server socket
/// (ss-server/src/udp.rs).
const MAX_AWAITING_PER_ASSOCIATION: usize = 16;
const MAX_AWAITING_RESOLUTION: usize = 256;

fn loopback() -> Behaviour {
    Behaviour::Answer { addrs: vec![[127, 0, 0, 1].into()], ttl: 60 }
}

/// A server and a local resolving with `dns`; the server's counters.
async fn start(
    dns: &TestDns,
    lookup_timeout: Duration,
) -> (RunningServer, RunningServer, Arc<ss_server::Stats>) {
    let mut settings = server_settings(METHOD);
    settings.resolve = ResolveSettings {
        nameservers: vec![dns.addr],
        timeout: lookup_timeout,
        max_in_flight: 4,
        ..ResolveSettings::default()
    };
    let stats = settings.stats.clone();
    let server = start_server(settings).await;
    let local = start_local(local_settings_udp(METHOD, server.addr)).await;
    (server, local, stats)
}

fn tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

async fn tcp_round_trip(local: &RunningServer, target: &Address) {
    let mut stream = timeout(STEP, socks5_connect(local.addr, target)).await.unwrap().unwrap();
    stream.write_all(b"over a resolved name").await.unwrap();
    let mut back = [0u8; 20];
    timeout(STEP, stream.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"over a resolved name");
}

async fn udp_round_trip(local: &RunningServer, target: &Address) {
    let association = timeout(STEP, socks5_udp_associate(local.addr)).await.unwrap().unwrap();
    association.send(target, b"datagram to a name").await;
    let (_, back) = timeout(STEP, association.recv()).await.expect("no UDP reply");
    assert_eq!(back, b"datagram to a name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_tcp_and_udp_to_a_name_from_the_configured_name_server() {
    let dns = TestDns::start(&[("echo.test", loopback())]).await;
    let (_server, local, _) = start(&dns, Duration::from_secs(5)).await;
    let tcp_echo = echo_server("127.0.0.1:0").await;
    let udp_echo = udp_echo_server("127.0.0.1:0").await;
    tcp_round_trip(&local, &Address::domain("echo.test", tcp_echo.port()).unwrap()).await;
    udp_round_trip(&local, &Address::domain("echo.test", udp_echo.port()).unwrap()).await;
    assert!(dns.queries("echo.test") > 0, "the name was asked of the test's server");
    // localhost still comes from /etc/hosts.
    tcp_round_trip(&local, &Address::domain("localhost", tcp_echo.port()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flood_for_a_name_that_never_answers_stays_bounded() {
    let zone = [
        ("never.test", Behaviour::Never),
        ("echo.test", loopback()),
        ("fresh-tcp.test", loopback()),
        ("fresh-udp.test", loopback()),
    ];
    let dns = TestDns::start(&zone).await;
    // The flood and the other names must be done within it (asserted below): 10 s leaves room on a loaded
    // machine (at 5 s, a run beside three builds saw the first datagrams' lookups time out mid-flood).
    let lookup_timeout = Duration::from_secs(10);
    let (server, local, stats) = start(&dns, lookup_timeout).await;
    let udp_echo = udp_echo_server("127.0.0.1:0").await;
    let good = Address::domain("echo.test", udp_echo.port()).unwrap();
    udp_round_trip(&local, &good).await;
    let idle_tasks = tasks();

    let flood = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    let peaks = flood_never(server.addr, &stats, &[flood], 40, 50).await;
    let (most_awaiting, most_tasks) = (peaks.awaiting, peaks.tasks);
    assert!(most_awaiting <= MAX_AWAITING_PER_ASSOCIATION, "{most_awaiting} datagrams waited at once");
    let drops = stats.udp_unresolved_drops.load(Ordering::Relaxed);
    assert!(drops >= (2000 - MAX_AWAITING_PER_ASSOCIATION) as u64, "{drops} dropped");
    assert!(
        most_tasks <= idle_tasks + MAX_AWAITING_PER_ASSOCIATION + 16,
        "{most_tasks} tasks, {idle_tasks} idle"
    );
    assert!(
        started.elapsed() < lookup_timeout,
        "the flood outlasted the lookup timeout; counts above are moot"
    );

    // Meanwhile other names keep resolving, from other associations: cached ones and fresh ones.
    let tcp_echo = echo_server("127.0.0.1:0").await;
    tcp_round_trip(&local, &Address::domain("fresh-tcp.test", tcp_echo.port()).unwrap()).await;
    udp_round_trip(&local, &good).await;
    udp_round_trip(&local, &Address::domain("fresh-udp.test", udp_echo.port()).unwrap()).await;
    assert!(started.elapsed() < lookup_timeout, "other names waited for the flood's lookup");

    // After the timeout nothing of the flood remains.
    timeout(lookup_timeout + STEP, async {
        while stats.udp_awaiting_resolution.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("datagrams still waiting after the lookup timeout");
    assert!(started.elapsed() >= lookup_timeout / 2, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_many_associations_stays_within_the_servers_bound() {
    let dns = TestDns::start(&[("never.test", Behaviour::Never)]).await;
    let (server, _local, stats) = start(&dns, Duration::from_secs(5)).await;
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    // 32 associations x 16 datagrams: each within its own bound, twice the server's.
    let peaks = flood_never(server.addr, &stats, &clients, 8, 2).await;
    assert!(peaks.awaiting <= MAX_AWAITING_RESOLUTION, "{} datagrams waited at once", peaks.awaiting);
    let drops = stats.udp_unresolved_drops.load(Ordering::Relaxed);
    assert!(drops >= (32 * 16 - MAX_AWAITING_RESOLUTION) as u64, "{drops} dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_over_the_in_flight_bound_are_dropped_and_counted() {
    let names = ["n1.test", "n2.test", "n3.test", "n4.test", "n5.test", "n6.test"];
    let zone: Vec<_> = names.iter().map(|&name| (name, Behaviour::Never)).collect();
    let dns = TestDns::start(&zone).await;
    let (_server, local, stats) = start(&dns, Duration::from_secs(3)).await;
    let association = timeout(STEP, socks5_udp_associate(local.addr)).await.unwrap().unwrap();
    for name in names {
        association.send(&Address::domain(name, 9).unwrap(), b"x").await;
    }
    // Four lookups fit (max_in_flight = 4); the datagrams for the other two names are dropped at once.
    timeout(STEP, async {
        while stats.udp_unresolved_drops.load(Ordering::Relaxed) < 2
            || stats.udp_awaiting_resolution.load(Ordering::Relaxed) < 4
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let drops = stats.udp_unresolved_drops.load(Ordering::Relaxed);
        let awaiting = stats.udp_awaiting_resolution.load(Ordering::Relaxed);
        panic!("{drops} dropped, {awaiting} waiting")
    });
    assert_eq!(stats.udp_unresolved_drops.load(Ordering::Relaxed), 2);
    assert_eq!(stats.udp_awaiting_resolution.load(Ordering::Relaxed), 4);
}

/// The most datagrams waiting and live tasks seen during a flood.
struct Peaks {
    awaiting: usize,
    tasks: usize,
}

/// Sends sealed datagrams for "never.test" straight to the server: `batches` rounds in which every
/// client socket (one association each) sends `per_client`, each round small enough for the socket
/// buffers and counted by the server (dropped or waiting) before the next.
async fn flood_never(
    server: SocketAddr,
    stats: &ss_server::Stats,
    clients: &[UdpSocket],
    batches: usize,
    per_client: usize,
) -> Peaks {
    let never = Address::domain("never.test", 9).unwrap();
    let key = test_key(METHOD);
    let handled = || {
        stats.udp_unresolved_drops.load(Ordering::Relaxed) as usize
            + stats.udp_awaiting_resolution.load(Ordering::Relaxed)
    };
    let mut peaks = Peaks { awaiting: 0, tasks: 0 };
    let mut sent = handled();
    for batch in 1..=batches {
        for client in clients {
            for _ in 0..per_client {
                let mut datagram = Vec::new();
                let salt = Salt::random(METHOD, &mut OsRng);
                ss_crypto::udp::UdpClassic::new(METHOD, &key)
                    .unwrap()
                    .seal(salt, &never, &[0x42; 200], &mut datagram)
                    .expect("seals");
                client.send_to(&datagram, server).await.unwrap();
                sent += 1;
            }
        }
        timeout(STEP, async {
            while handled() < sent {
                peaks.awaiting = peaks.awaiting.max(stats.udp_awaiting_resolution.load(Ordering::Relaxed));
                peaks.tasks = peaks.tasks.max(tasks());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("batch {batch}: {} of {sent} datagrams handled", handled()));
    }
    peaks
}
