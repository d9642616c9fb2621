//! Bursts through the batched UDP paths (ss-net's udp_batch): SOCKS5 UDP ASSOCIATE -> ss-local ->
//! ss-server -> loopback UDP echo, with datagrams written back to back so that ss-local and ss-server
//! find many waiting at once (one recvmmsg), and replies of equal size leave in GSO runs.

use std::collections::HashMap;

use ss_crypto::{Address, Method};
use ss_net::udp_batch::BatchSender;
use ss_tests::udp::*;
use ss_tests::*;
use tokio::time::timeout;

const BURST: usize = 200;
/// Mixed sizes, small enough that a whole burst fits the kernel's default receive buffer (208 KiB,
/// where a small datagram costs about 1 KiB) of each socket on the way even when a debug build falls
/// behind: the test checks batching, not capacity (larger bursts overflowed ss-local's relay socket,
/// counted in RcvbufErrors).
const SIZES: [usize; 6] = [1, 32, 100, 200, 16, 150];

fn payload(i: usize, size: usize) -> Vec<u8> {
    let mut bytes = format!("datagram {i:03} ").into_bytes();
    bytes.resize(size.max(bytes.len()), (i % 251) as u8);
    bytes
}

/// Receives `count` replies; returns their payloads in arrival order.
async fn replies(association: &UdpAssociation, count: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match timeout(STEP, association.recv()).await {
            Ok((_, payload)) => got.push(payload),
            Err(_) => panic!("{} of {count} replies came back", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_mixed_sizes_comes_back_whole_and_in_order() {
    for method in [Method::Aes128Gcm, Method::Blake3Aes128Gcm] {
        let server = start_server(server_settings(method)).await;
        let local = start_local(local_settings_udp(method, server.addr)).await;
        let echo = udp_echo_server("127.0.0.1:0").await;
        let association = timeout(STEP, socks5_udp_associate(local.addr)).await.unwrap().unwrap();
        let sent: Vec<Vec<u8>> = (0..BURST).map(|i| payload(i, SIZES[i % SIZES.len()])).collect();
        for bytes in &sent {
            association.send(&Address::Ip(echo), bytes).await;
        }
        let got = replies(&association, BURST).await;
        // One client, one association, one echo: every hop keeps the order it received in.
        assert!(got == sent, "{method}: the burst came back different (lost, changed or reordered)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gso_burst_from_the_application_reaches_the_server_whole() {
    let method = Method::Blake3Aes256Gcm;
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings_udp(method, server.addr)).await;
    let echo = udp_echo_server("127.0.0.1:0").await;
    let association = timeout(STEP, socks5_udp_associate(local.addr)).await.unwrap().unwrap();
    // Opening datagram: ss-local learns the application's port from it.
    association.send(&Address::Ip(echo), b"hello").await;
    assert_eq!(timeout(STEP, association.recv()).await.unwrap().1, b"hello");

    // 40 SOCKS5 datagrams of one size and a shorter last one, handed to the kernel as GSO runs (one
    // sendmsg each where it has GSO; ss-local's relay socket then gets them as GRO buffers).
    let mut sender = BatchSender::new();
    let mut sent = HashMap::new();
    for i in 0..40 {
        let bytes = payload(i, if i == 39 { 500 } else { 1200 });
        sender
            .push(association.relay, i, |out: &mut Vec<u8>| {
                out.extend_from_slice(&[0, 0, 0]);
                Address::Ip(echo).write_to(out);
                out.extend_from_slice(&bytes);
                Ok::<_, ()>(())
            })
            .unwrap();
        sent.insert(bytes, i);
    }
    let outcomes: Vec<_> = timeout(STEP, sender.send(&association.socket)).await.unwrap().collect();
    assert!(outcomes.iter().all(|&(_, sent)| sent), "{outcomes:?}");
    for payload in replies(&association, sent.len()).await {
        assert!(sent.remove(&payload).is_some(), "a reply that was not sent, or twice");
    }
    assert!(sent.is_empty());
}
