//! UDP end to end, in-process: SOCKS5 UDP ASSOCIATE -> ss-local -> ss-server -> loopback UDP target.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_tests::udp::*;
use ss_tests::*;
use tokio::time::timeout;

/// The largest payload whose sealed datagram still fits in one UDP datagram (65,507 bytes) both ways:
/// what the protocol adds (salt or 2022 headers, tag) plus the larger of the target address (requests)
/// and the source address (replies). Larger payloads are dropped, never truncated.
fn largest_payload(method: Method, target: &Address, source: &Address) -> usize {
    let overhead = match method {
        Method::Blake3ChaCha20Poly1305 => 24 + 8 + 8 + 1 + 8 + 8 + 2 + 16,
        Method::Blake3Aes128Gcm | Method::Blake3Aes256Gcm => 16 + 1 + 8 + 8 + 2 + 16,
        Method::Aes128Gcm
        | Method::Aes192Gcm
        | Method::Aes256Gcm
        | Method::ChaCha20IetfPoly1305
        | Method::XChaCha20IetfPoly1305 => method.salt_len() + 16,
    };
    65_507 - overhead - target.encoded_len().max(source.encoded_len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_relays_datagrams_of_every_size() {
    for method in Method::ALL {
        let server = start_server(server_settings(method)).await;
        let local = start_local(local_settings_udp(method, server.addr)).await;
        let echo4 = udp_echo_server("127.0.0.1:0").await;
        let echo6 = udp_echo_server("[::1]:0").await;
        let association = timeout(STEP, socks5_udp_associate(local.addr)).await.unwrap().unwrap();
        for (target, source) in [
            (Address::Ip(echo4), Address::Ip(echo4)),
            (Address::Ip(echo6), Address::Ip(echo6)),
            (Address::domain("localhost", echo4.port()).unwrap(), Address::Ip(echo4)),
        ] {
            for size in [1, 1200, 8000, largest_payload(method, &target, &source)] {
                let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                association.send(&target, &payload).await;
                let (from, back) = timeout(STEP, association.recv())
                    .await
                    .unwrap_or_else(|_| panic!("no reply: {method} {target} {size}"));
                assert_eq!(from, source, "{method} {target} {size}");
                assert!(back == payload, "{method} {target} {size}: payload differs");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_datagrams_on_several_associations() {
    let method = Method::Blake3Aes128Gcm;
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings_udp(method, server.addr)).await;
    let echo = udp_echo_server("127.0.0.1:0").await;
    let mut tasks = tokio::task::JoinSet::new();
    for association_number in 0..4u32 {
        let proxy = local.addr;
        tasks.spawn(async move {
            let association = socks5_udp_associate(proxy).await.unwrap();
            for i in 0..200u32 {
                let message = format!("association {association_number} datagram {i}");
                association.send(&Address::Ip(echo), message.as_bytes()).await;
                let (_, back) = timeout(STEP, association.recv()).await.expect("lost datagram");
                assert_eq!(back, message.as_bytes());
            }
        });
    }
    timeout(Duration::from_secs(60), async {
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_control_connection_ends_the_association() {
    let method = Method::Aes128Gcm;
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings_udp(method, server.addr)).await;
    let echo = udp_echo_server("127.0.0.1:0").await;
    let association = socks5_udp_associate(local.addr).await.unwrap();
    association.send(&Address::Ip(echo), b"before").await;
    assert_eq!(timeout(STEP, association.recv()).await.unwrap().1, b"before");
    let UdpAssociation { control, relay, socket } = association;
    drop(control);
    // The relay socket is closed once the association ends: datagrams to it get no answer, and the
    // kernel reports the port unreachable on the next send.
    let deadline = tokio::time::Instant::now() + STEP;
    let mut datagram = vec![0, 0, 0];
    Address::Ip(echo).write_to(&mut datagram);
    datagram.extend_from_slice(b"after");
    socket.connect(relay).await.unwrap();
    loop {
        assert!(tokio::time::Instant::now() < deadline, "association still open");
        if socket.send(&datagram).await.is_err() {
            break;
        }
        let mut buf = [0u8; 64];
        match timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
            Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_association_cap_evicts_the_oldest() {
    let method = Method::ChaCha20IetfPoly1305;
    let mut settings = server_settings(method);
    settings.max_udp_associations = 3;
    let stats = settings.stats.clone();
    let server = start_server(settings).await;
    let local = start_local(local_settings_udp(method, server.addr)).await;
    let echo = udp_echo_server("127.0.0.1:0").await;
    let mut associations = Vec::new();
    for i in 0..5u8 {
        let association = socks5_udp_associate(local.addr).await.unwrap();
        association.send(&Address::Ip(echo), &[i]).await;
        assert_eq!(timeout(STEP, association.recv()).await.unwrap().1, [i]);
        associations.push(association);
        assert!(stats.udp_associations.load(Ordering::Relaxed) <= 3);
    }
    assert_eq!(stats.udp_associations.load(Ordering::Relaxed), 3);
    // The evicted ones come back as new associations when they speak again.
    associations[0].send(&Address::Ip(echo), b"again").await;
    assert_eq!(timeout(STEP, associations[0].recv()).await.unwrap().1, b"again");
}

/// RFC 1928, section 7: the association belongs to the address and port of its first datagram; another
/// port of the same client IP neither reaches the target nor takes the replies over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_association_belongs_to_its_first_sender() {
    let method = Method::Aes128Gcm;
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings_udp(method, server.addr)).await;
    let canary = ss_tests::probing::UdpCanary::bind("127.0.0.1:0").await.unwrap();
    let target = Address::Ip(canary.addr());
    let association = timeout(STEP, socks5_udp_associate(local.addr)).await.unwrap().unwrap();
    association.send(&target, b"first sender").await;
    assert_eq!(canary.datagrams_within(1, STEP).await.len(), 1, "the first sender's datagram");

    let intruder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut datagram = vec![0, 0, 0];
    target.write_to(&mut datagram);
    datagram.extend_from_slice(b"another port");
    intruder.send_to(&datagram, association.relay).await.unwrap();
    // Sent after the intruder's, through the same relay socket: once it has arrived, the intruder's
    // datagram has been dealt with.
    association.send(&target, b"first sender again").await;
    let arrived: Vec<Vec<u8>> =
        canary.datagrams_within(2, STEP).await.into_iter().map(|(_, bytes)| bytes).collect();
    assert_eq!(
        arrived,
        vec![b"first sender".to_vec(), b"first sender again".to_vec()],
        "only the first sender reaches the target"
    );
}
