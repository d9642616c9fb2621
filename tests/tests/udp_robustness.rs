//! UDP under hostile input: floods of random datagrams, replayed 2022 packets, oversize datagrams, and a
//! DNS lookup through the whole path.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use ss_crypto::udp::{Header2022, Origin, Sender, Udp2022};
use ss_crypto::{Address, Method};
use ss_tests::udp::*;
use ss_tests::*;
use tokio::net::UdpSocket;
use tokio::time::timeout;

/// Waits briefly for a datagram that must not come; the wait is bounded, so a late reply is the only
/// thing it can miss.
async fn assert_silent(socket: &UdpSocket, what: &str) {
    let mut buf = vec![0u8; 65_536];
    if let Ok(Ok((len, from))) = timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await {
        panic!("{what}: got {len} bytes from {from}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_datagrams_gets_no_answer_and_leaves_no_state() {
    for method in [Method::Aes128Gcm, Method::Blake3Aes128Gcm, Method::Blake3ChaCha20Poly1305] {
        let settings = server_settings(method);
        let stats = settings.stats.clone();
        let server = start_server(settings).await;
        let prober = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut pool = vec![0u8; 2 * 65_536];
        OsRng.fill_bytes(&mut pool);
        let mut seed = OsRng.next_u64() | 1;
        for _ in 0..100_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Half small (like real probes), half anywhere up to the largest UDP payload.
            let len =
                if seed & 1 == 0 { (seed >> 8) as usize % 1_500 } else { (seed >> 8) as usize % 65_508 };
            let start = (seed >> 32) as usize % 65_536;
            let datagram = &mut pool[start..start + len];
            datagram.iter_mut().take(48).for_each(|byte| *byte = OsRng.next_u32() as u8);
            let _ = prober.send_to(datagram, server.addr).await;
        }
        assert_silent(&prober, "random datagrams").await;

        // The server still serves. It handles its socket's datagrams in the order they came, so once
        // this one's echo is back, every datagram of the flood was handled: the association for it is
        // the only one.
        let local = start_local(local_settings_udp(method, server.addr)).await;
        let echo = udp_echo_server("127.0.0.1:0").await;
        let association = socks5_udp_associate(local.addr).await.unwrap();
        association.send(&Address::Ip(echo), b"still alive").await;
        assert_eq!(timeout(STEP, association.recv()).await.unwrap().1, b"still alive", "{method}");
        assert_eq!(stats.udp_associations.load(Ordering::Relaxed), 1, "{method}: state from garbage");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_2022_packet_from_elsewhere_is_dropped_and_replies_stay_home() {
    for method in Method::ALL.into_iter().filter(|m| m.is_2022()) {
        let server = start_server(server_settings(method)).await;
        let echo = udp_echo_server("127.0.0.1:0").await;
        let cipher = Udp2022::new(method, &test_key(method)).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let session_id = OsRng.next_u64();
        let packet = |packet_id: u64, payload: &[u8]| {
            let header =
                Header2022 { session_id, packet_id, sender: Sender::Client, timestamp: ss_net::unix_now() };
            let mut nonce = [0u8; 24];
            OsRng.fill_bytes(&mut nonce);
            let mut out = Vec::new();
            cipher.seal(&header, &[], &Address::Ip(echo), payload, &nonce, &mut out).expect("seals");
            out
        };
        let open_reply = |bytes: &mut [u8]| {
            let opened = cipher.open(bytes, ss_net::unix_now(), Origin::Server).unwrap();
            assert_eq!(opened.header.sender, Sender::Server { client_session_id: session_id });
            bytes[opened.payload].to_vec()
        };
        let first = packet(1, b"first");
        client.send_to(&first, server.addr).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (len, _) = timeout(STEP, client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(open_reply(&mut buf[..len]), b"first");

        attacker.send_to(&first, server.addr).await.unwrap();
        assert_silent(&attacker, "replay from another port").await;

        client.send_to(&packet(2, b"second"), server.addr).await.unwrap();
        let (len, _) = timeout(STEP, client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(open_reply(&mut buf[..len]), b"second", "{method}: replies must still come home");
        assert_silent(&attacker, "replies after the replay").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_datagrams_are_dropped_not_truncated() {
    let method = Method::Aes256Gcm;
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings_udp(method, server.addr)).await;
    let echo = udp_echo_server("127.0.0.1:0").await;
    let association = socks5_udp_associate(local.addr).await.unwrap();
    // 32 bytes of salt, 7 of address and 16 of tag do not fit around this payload in 65,507 bytes.
    let too_big = vec![7u8; 65_507 - 32 - 7 - 16 + 1];
    association.send(&Address::Ip(echo), &too_big).await;
    assert_silent(&association.socket, "oversize datagram").await;
    association.send(&Address::Ip(echo), b"small").await;
    assert_eq!(timeout(STEP, association.recv()).await.unwrap().1, b"small");
}

/// A DNS server on loopback that answers every A query with 127.0.0.1.
async fn dns_server() -> std::net::SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 512];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let query = &buf[..len];
            let mut answer = query[..2].to_vec(); // id
            answer.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]); // response, 1 question, 1 answer
            answer.extend_from_slice(&query[12..]); // the question
            answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
            let _ = socket.send_to(&answer, from).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_query_through_udp_associate_gets_its_answer() {
    for method in [Method::ChaCha20IetfPoly1305, Method::Blake3Aes256Gcm] {
        let server = start_server(server_settings(method)).await;
        let local = start_local(local_settings_udp(method, server.addr)).await;
        let dns = dns_server().await;
        let association = socks5_udp_associate(local.addr).await.unwrap();
        let mut query = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["proxied", "example", "test"] {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
        association.send(&Address::Ip(dns), &query).await;
        let (source, answer) = timeout(STEP, association.recv()).await.unwrap();
        assert_eq!(source, Address::Ip(dns));
        assert_eq!(&answer[..2], &[0xbe, 0xef], "{method}: same query id");
        assert_eq!(answer[3] & 0x0f, 0, "no error");
        assert_eq!(&answer[answer.len() - 4..], &[127, 0, 0, 1], "{method}: the A record");
    }
}
