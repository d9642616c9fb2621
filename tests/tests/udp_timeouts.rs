//! ss-server's UDP associations end after the UDP timeout without traffic, and after 20 s when they only
//! ever spoke to port 53 (DNS), counted by `Stats::udp_associations`.
//!
//! The waiting is done on tokio's paused clock, the datagrams on the real one: with the clock paused, an
//! idle runtime jumps to its next timer even while a datagram sits unread in a socket (tokio advances
//! the clock after polling for I/O with a zero timeout), so an association could time out before its
//! datagram was handled. Each exchange therefore runs with the clock resumed and ends when its echo came
//! back (the relay handles a socket's datagrams one after another, so every datagram sent before was
//! handled too); then the clock is paused and moved with `sleep_until`, which fires the relay's timers
//! in order before the test looks.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_server::Stats;
use ss_tests::probing::{address_bytes, sealed_udp_request};
use ss_tests::udp::udp_echo_server;
use ss_tests::{server_settings, start_server, test_key, RunningServer, STEP};
use tokio::net::UdpSocket;
use tokio::time::{sleep_until, timeout, Instant};

const METHOD: Method = Method::Aes128Gcm;
const UDP_TIMEOUT: Duration = Duration::from_secs(60);
/// ss-server's idle timeout for associations that only spoke to port 53 (`DNS_TIMEOUT`).
const DNS_TIMEOUT: Duration = Duration::from_secs(20);
/// A loopback address and the DNS port, where nothing answers: the association is made all the same.
const SILENT_DNS: &str = "127.53.53.53:53";
/// The same address on another port.
const SILENT_OTHER: &str = "127.53.53.53:9";

#[tokio::test]
async fn associations_idle_out_after_the_udp_timeout_and_dns_only_ones_after_20_s() {
    timeout(Duration::from_secs(600), async {
        let Relay { server, stats, echo, client, dns } = Relay::start().await;
        let dns_client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let start = Instant::now();
        dns_client.send_to(&request(dns, b"a query nobody answers"), server.addr).await.expect("send");
        exchange(&client, server.addr, echo, b"first").await;
        tokio::time::pause();
        assert_eq!(associations(&stats), 2, "one association per client");

        sleep_until(start + DNS_TIMEOUT - Duration::from_secs(1)).await;
        assert_eq!(associations(&stats), 2, "the DNS association ended before 20 s");
        sleep_until(start + DNS_TIMEOUT + Duration::from_secs(1)).await;
        assert_eq!(associations(&stats), 1, "the DNS-only association outlived 20 s");

        // A datagram from the client at 40 s (to a port where nothing answers, so no reply counts) moves
        // its association's end to 100 s. A second client's exchange marks when it was handled.
        sleep_until(start + Duration::from_secs(40)).await;
        tokio::time::resume();
        let silent: SocketAddr = SILENT_OTHER.parse().expect("address");
        client.send_to(&request(silent, b"nobody answers"), server.addr).await.expect("send");
        let witness = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        exchange(&witness, server.addr, echo, b"witness").await;
        tokio::time::pause();
        assert_eq!(associations(&stats), 2, "the client's and the witness's");
        sleep_until(start + UDP_TIMEOUT + Duration::from_secs(1)).await;
        assert_eq!(associations(&stats), 2, "an association ended {UDP_TIMEOUT:?} after its first datagram");
        sleep_until(start + Duration::from_secs(40) + UDP_TIMEOUT - Duration::from_secs(1)).await;
        assert_eq!(associations(&stats), 2, "an association ended before the UDP timeout");
        sleep_until(start + Duration::from_secs(40) + UDP_TIMEOUT + Duration::from_secs(2)).await;
        assert_eq!(associations(&stats), 0, "an association outlived the UDP timeout");
    })
    .await
    .expect("the test took too long");
}

#[tokio::test]
async fn an_association_that_also_spoke_to_another_port_keeps_the_udp_timeout() {
    timeout(Duration::from_secs(600), async {
        let Relay { server, stats, echo, client, dns } = Relay::start().await;
        let start = Instant::now();
        client.send_to(&request(dns, b"a query nobody answers"), server.addr).await.expect("send");
        exchange(&client, server.addr, echo, b"and something else").await;
        tokio::time::pause();
        sleep_until(start + DNS_TIMEOUT + Duration::from_secs(5)).await;
        assert_eq!(associations(&stats), 1, "ended with the DNS timeout though it spoke to another port");
        sleep_until(start + UDP_TIMEOUT + Duration::from_secs(2)).await;
        assert_eq!(associations(&stats), 0, "the association outlived the UDP timeout");
    })
    .await
    .expect("the test took too long");
}

/// A server with the test's UDP timeout, an echo target, a client socket and the silent DNS address.
struct Relay {
    server: RunningServer,
    stats: Arc<Stats>,
    echo: SocketAddr,
    client: UdpSocket,
    dns: SocketAddr,
}

impl Relay {
    async fn start() -> Relay {
        let mut settings = server_settings(METHOD);
        settings.udp_timeout = UDP_TIMEOUT;
        let stats = settings.stats.clone();
        let server = start_server(settings).await;
        let echo = udp_echo_server("127.0.0.1:0").await;
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let dns = SILENT_DNS.parse().expect("address");
        Relay { server, stats, echo, client, dns }
    }
}

fn associations(stats: &Arc<Stats>) -> usize {
    stats.udp_associations.load(Ordering::Relaxed)
}

/// A classic datagram from a client for `target`.
fn request(target: SocketAddr, payload: &[u8]) -> Vec<u8> {
    sealed_udp_request(METHOD, &address_bytes(&Address::Ip(target)), payload, 0, 0, 0)
}

/// Sends `payload` to the echo target through the server and waits for it to come back.
async fn exchange(client: &UdpSocket, server: SocketAddr, echo: SocketAddr, payload: &[u8]) {
    client.send_to(&request(echo, payload), server).await.expect("send");
    let mut reply = vec![0u8; 2048];
    let (len, _) = timeout(STEP, client.recv_from(&mut reply)).await.expect("echo came back").expect("recv");
    let codec = ss_crypto::udp::UdpClassic::new(METHOD, &test_key(METHOD)).expect("a classic method");
    let (source, range) = codec.open(&mut reply[..len]).expect("a sealed reply");
    assert_eq!((source, &reply[range]), (Address::Ip(echo), payload));
}
