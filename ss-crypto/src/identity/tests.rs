//! Known answers captured from shadowsocks-rust 1.25's `sslocal` with `password: "iPSK:uPSK"` (a
//! SOCKS5 CONNECT to 127.0.0.1:80 sending `hello`), and round trips of our own headers.

use super::*;
use crate::tcp::{Decryptor, Encryptor};
use crate::{Address, Salt};

/// iPSK bytes 1..=n, uPSK bytes 101..=100+n, as the capture used.
fn keys(method: Method) -> (Key, Key) {
    let n = method.key_len() as u8;
    let ipsk = Key::from_bytes(method, &(1..=n).collect::<Vec<u8>>()).unwrap();
    let upsk = Key::from_bytes(method, &(101..=100 + n).collect::<Vec<u8>>()).unwrap();
    (ipsk, upsk)
}

/// (method, the start of the captured stream, its header's timestamp)
const CAPTURES: [(Method, &str, u64); 2] = [
    (
        Method::Blake3Aes256Gcm,
        "a743bc7553c719bc7a142d90110b67c7fd9bef04cc2943b58d96b929a9cda1e89aa3d190d23f79246af2bcc44907d3a9\
         cd3164c53518e77e62bd4ae2fcb1f7387af1b1412cd3ec0e2c41b6f64f68ba9dd9fe46d3d853cfa91a003aed53e73b39\
         6f95319880b555d232",
        CAPTURE_TIME,
    ),
    (
        Method::Blake3Aes128Gcm,
        "05934842eac505ba0aefe2e0e530cfa4afe85245259b58822bcd540b25c67ea29a887004715a508ddb35357de45e5049\
         15492039a1539e8084ae0d7284b99c14c597681a4b7551611f44423b020fb3523b731e88803480f7fc",
        CAPTURE_TIME,
    ),
];

/// Within a few seconds of both captures' header timestamps.
const CAPTURE_TIME: u64 = 1_795_867_045;

#[test]
fn shadowsocks_rust_identity_headers_name_the_user_and_the_stream_opens_with_the_upsk() {
    for (method, hex_stream, now) in CAPTURES {
        let (ipsk, upsk) = keys(method);
        let mut stream = hex::decode(hex_stream).unwrap();
        let salt_len = method.salt_len();
        let header: [u8; 16] = stream[salt_len..salt_len + 16].try_into().unwrap();
        let named = open_tcp_identity(method, &ipsk, &stream[..salt_len], &header).unwrap();
        assert_eq!(named, UserHash::of(&upsk), "{method}");
        // Our client side writes the same header for the same salt.
        let ours = seal_tcp_identity(method, &ipsk, &stream[..salt_len], &upsk).unwrap();
        assert_eq!(ours, header, "{method}");

        let mut server = Decryptor::request_identified(method, &upsk);
        let decoded = server.decrypt(&mut stream, now).unwrap();
        assert_eq!(decoded.target, Some(Address::Ip("127.0.0.1:80".parse().unwrap())), "{method}");
        // The wrong key does not open the stream.
        let mut stream = hex::decode(hex_stream).unwrap();
        assert!(Decryptor::request_identified(method, &ipsk).decrypt(&mut stream, now).is_err());
    }
}

#[test]
fn our_identity_stream_round_trips_through_a_chain() {
    let method = Method::Blake3Aes128Gcm;
    let (ipsk, upsk) = keys(method);
    let relay_ipsk = Key::from_bytes(method, &[9; 16]).unwrap();
    let salt = Salt::from_slice(method, &[3; 16]).unwrap();
    let target = Address::domain("example.com", 443).unwrap();
    let chain = [relay_ipsk.clone(), ipsk.clone()];
    let mut wire = Vec::new();
    Encryptor::request_with_identity(method, &chain, &upsk, salt, &target, &[])
        .encrypt(b"hi", 100, &mut wire)
        .unwrap();
    // The relay's header names the server's iPSK, the server's names the user.
    let first: [u8; 16] = wire[16..32].try_into().unwrap();
    assert_eq!(open_tcp_identity(method, &relay_ipsk, &wire[..16], &first), Some(UserHash::of(&ipsk)));
    let second: [u8; 16] = wire[32..48].try_into().unwrap();
    assert_eq!(open_tcp_identity(method, &ipsk, &wire[..16], &second), Some(UserHash::of(&upsk)));
    // What the server sees once the relay removed its header.
    let mut at_server: Vec<u8> = wire[..16].iter().chain(&wire[32..]).copied().collect();
    let decoded = Decryptor::request_identified(method, &upsk).decrypt(&mut at_server, 100).unwrap();
    assert_eq!(decoded.target, Some(target));
    assert_eq!(&at_server[decoded.payload], b"hi");
}

#[test]
fn udp_identity_headers_depend_on_the_packet_and_round_trip() {
    let method = Method::Blake3Aes256Gcm;
    let (ipsk, upsk) = keys(method);
    let separate = [7u8; 16];
    let header = seal_udp_identity(method, &ipsk, &separate, &upsk).unwrap();
    assert_eq!(open_udp_identity(method, &ipsk, &separate, &header), Some(UserHash::of(&upsk)));
    let other = seal_udp_identity(method, &ipsk, &[8; 16], &upsk).unwrap();
    assert_ne!(header, other, "the XOR with the ids makes every packet's header different");
}

#[test]
fn no_identity_headers_for_chacha_or_classic() {
    for method in [Method::Blake3ChaCha20Poly1305, Method::Aes256Gcm] {
        let key = Key::generate(method, &mut rand_core::OsRng);
        assert!(!supports_identity_headers(method));
        assert_eq!(seal_tcp_identity(method, &key, &[0; 32], &key), None);
    }
}

#[test]
fn a_trial_finds_the_key_of_the_first_record_and_only_that_one() {
    for method in [Method::Aes128Gcm, Method::ChaCha20IetfPoly1305, Method::Blake3ChaCha20Poly1305] {
        let right = Key::generate(method, &mut rand_core::OsRng);
        let wrong = Key::generate(method, &mut rand_core::OsRng);
        let salt = Salt::random(method, &mut rand_core::OsRng);
        let mut wire = Vec::new();
        let target = Address::domain("example.com", 80).unwrap();
        Encryptor::request(method, &right, salt, &target, &[]).encrypt(b"x", 5, &mut wire).unwrap();
        let head = &wire[..first_record_len(method)];
        assert!(first_record_opens(method, &right, head), "{method}");
        assert!(!first_record_opens(method, &wrong, head), "{method}");
        assert!(!first_record_opens(method, &right, &head[..head.len() - 1]), "short head: {method}");
        assert_eq!(&wire[..head.len()], head, "the trial leaves the bytes as they were");
    }
}

#[test]
fn a_multi_user_udp_packet_names_its_user_and_the_reply_opens_with_the_upsk() {
    use crate::udp::{Header2022, Origin, Sender, Udp2022, XNONCE_LEN};
    for method in [Method::Blake3Aes128Gcm, Method::Blake3Aes256Gcm] {
        let (ipsk, upsk) = keys(method);
        let client = Udp2022::with_identity(method, std::slice::from_ref(&ipsk), &upsk).unwrap();
        let target = Address::domain("example.com", 53).unwrap();
        let header = Header2022 { session_id: 5, packet_id: 9, sender: Sender::Client, timestamp: 100 };
        let mut packet = Vec::new();
        client.seal(&header, &[], &target, b"query", &[0; XNONCE_LEN], &mut packet).unwrap();
        let mut plain = Vec::new();
        let single = Udp2022::new(method, &upsk).unwrap();
        single.seal(&header, &[], &target, b"query", &[0; XNONCE_LEN], &mut plain).unwrap();
        assert_eq!(packet.len(), plain.len() + 16, "{method}: one identity header more");
        assert_eq!(client.overhead(), single.overhead() + 16);

        // The server: separate header under its iPSK, identity header, then the user's cipher.
        let server_identity = Udp2022::new(method, &ipsk).unwrap();
        let separate = server_identity.separate_header(&packet).unwrap();
        assert_eq!(u64::from_be_bytes(separate[..8].try_into().unwrap()), 5);
        let eih: [u8; 16] = packet[16..32].try_into().unwrap();
        assert_eq!(open_udp_identity(method, &ipsk, &separate, &eih), Some(UserHash::of(&upsk)));
        let user = Udp2022::new(method, &upsk).unwrap();
        assert!(
            server_identity.open(&mut packet.clone(), 100, Origin::Client).is_err(),
            "not the iPSK's body"
        );
        let opened = user.open_identified(&mut packet, &separate, 100).unwrap();
        assert_eq!((opened.header, opened.address), (header, target.clone()));
        assert_eq!(&packet[opened.payload], b"query");

        // The reply: the user's key throughout, no identity header.
        let reply = Header2022 {
            session_id: 77,
            packet_id: 1,
            sender: Sender::Server { client_session_id: 5 },
            timestamp: 100,
        };
        let mut sealed = Vec::new();
        user.seal(&reply, &[], &target, b"answer", &[0; XNONCE_LEN], &mut sealed).unwrap();
        let opened = client.open(&mut sealed, 100, Origin::Server).unwrap();
        assert_eq!(&sealed[opened.payload], b"answer", "{method}");
    }
}
