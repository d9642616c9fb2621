//! Replay windows that must neither close too late nor reopen: a 2022 salt is taken the moment its
//! fixed header authenticates; classic datagrams and ended 2022 UDP sessions cannot be replayed; ss-local
//! keeps an old server session's window beside the new one's; the classic filter survives a restart.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use ss_crypto::udp::{self, Header2022, Origin, Sender, Udp2022};
use ss_crypto::{Address, Encryptor, Method, Salt};
use ss_net::stream::EncryptWriter;
use ss_net::unix_now;
use ss_tests::udp::*;
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Waits briefly for a datagram that must not come; the wait is bounded, so a late reply is the only
/// thing it can miss.
async fn assert_silent(socket: &UdpSocket, what: &str) {
    let mut buf = vec![0u8; 65_536];
    if let Ok(Ok((len, from))) = timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await {
        panic!("{what}: got {len} bytes from {from}");
    }
}

/// A complete client request to `target` carrying `payload`, as bytes on the wire.
async fn request_bytes(method: Method, target: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let salt = Salt::random(method, &mut OsRng);
    let encryptor = Encryptor::request(method, &test_key(method), salt, &Address::Ip(target), &[]);
    let mut bytes = Vec::new();
    let mut writer = EncryptWriter::new(&mut bytes, encryptor);
    writer.write_all(payload).await.expect("seal");
    bytes
}

/// Sends `bytes` and reads whatever comes back until the server closes: empty for a refused request
/// (nothing is ever written to one), some response bytes for a served one.
async fn send_and_collect(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    read_some(&mut stream).await
}

/// The first bytes the server sends, or nothing if it closes first.
async fn read_some(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let read = timeout(STEP, stream.read(&mut buf)).await.expect("server neither answered nor closed");
    buf.truncate(read.unwrap_or(0));
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2022_salt_is_taken_when_the_fixed_header_authenticates_not_when_the_header_ends() {
    for method in Method::ALL.into_iter().filter(|m| m.is_2022()) {
        let settings = server_settings(method);
        let stats = settings.stats.clone();
        let server = start_server(settings).await;
        let echo = echo_server("127.0.0.1:0").await;
        let request = request_bytes(method, echo, b"ping").await;
        // Salt, then the fixed header: type, timestamp, length, tag.
        let fixed_end = method.salt_len() + 1 + 8 + 2 + 16;

        // The original stalls after its fixed header (a slow client, or a censor holding it back) ...
        let mut original = TcpStream::connect(server.addr).await.unwrap();
        original.write_all(&request[..fixed_end]).await.unwrap();
        timeout(STEP, async {
            while stats.salts_recorded.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the salt was not recorded while the variable header was outstanding");

        // ... so a complete copy sent meanwhile is the replay ...
        let mut copy = TcpStream::connect(server.addr).await.unwrap();
        copy.write_all(&request).await.unwrap();
        // ... (the original finishes first: the copy is held until the handshake deadline) ...
        original.write_all(&request[fixed_end..]).await.unwrap();
        assert!(!read_some(&mut original).await.is_empty(), "{method}: the original must be served");
        // ... and is refused.
        assert!(read_some(&mut copy).await.is_empty(), "{method}: the copy was served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_classic_datagram_draws_no_reply_and_opens_no_association() {
    for method in Method::ALL.into_iter().filter(|m| !m.is_2022()) {
        let settings = server_settings(method);
        let stats = settings.stats.clone();
        let server = start_server(settings).await;
        let echo = udp_echo_server("127.0.0.1:0").await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut datagram = Vec::new();
        let salt = Salt::random(method, &mut OsRng);
        udp::UdpClassic::new(method, &test_key(method))
            .unwrap()
            .seal(salt, &Address::Ip(echo), b"once", &mut datagram)
            .expect("seals");
        client.send_to(&datagram, server.addr).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (len, _) = timeout(STEP, client.recv_from(&mut buf)).await.unwrap().unwrap();
        let (_, payload) =
            udp::UdpClassic::new(method, &test_key(method)).unwrap().open(&mut buf[..len]).unwrap();
        assert_eq!(&buf[payload], b"once");

        client.send_to(&datagram, server.addr).await.unwrap();
        assert_silent(&client, "the same datagram again").await;
        for _ in 0..5 {
            let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            attacker.send_to(&datagram, server.addr).await.unwrap();
            assert_silent(&attacker, "the datagram replayed from another port").await;
        }
        assert_eq!(
            stats.udp_associations.load(Ordering::Relaxed),
            1,
            "{method}: replays opened associations"
        );
    }
}

/// A 2022 client session on a raw socket.
struct Session2022 {
    cipher: Udp2022,
    id: u64,
    socket: UdpSocket,
}

impl Session2022 {
    async fn new(method: Method) -> Session2022 {
        let cipher = Udp2022::new(method, &test_key(method)).unwrap();
        Session2022 { cipher, id: OsRng.next_u64(), socket: UdpSocket::bind("127.0.0.1:0").await.unwrap() }
    }

    fn packet(&self, packet_id: u64, target: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let header =
            Header2022 { session_id: self.id, packet_id, sender: Sender::Client, timestamp: unix_now() };
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::new();
        self.cipher.seal(&header, &[], &Address::Ip(target), payload, &nonce, &mut out).expect("seals");
        out
    }

    /// Sends `packet`, returns the reply's payload and the server session that sent it.
    async fn exchange(&self, server: SocketAddr, packet: &[u8]) -> (Vec<u8>, u64) {
        self.socket.send_to(packet, server).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let (len, _) = timeout(STEP, self.socket.recv_from(&mut buf)).await.unwrap().unwrap();
        let opened = self.cipher.open(&mut buf[..len], unix_now(), Origin::Server).unwrap();
        (buf[opened.payload].to_vec(), opened.header.session_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_2022_session_gets_no_fresh_window_for_a_replay() {
    for method in Method::ALL.into_iter().filter(|m| m.is_2022()) {
        let mut settings = server_settings(method);
        settings.max_udp_associations = 1;
        let stats = settings.stats.clone();
        let server = start_server(settings).await;
        let echo = udp_echo_server("127.0.0.1:0").await;
        let (first, second) = (Session2022::new(method).await, Session2022::new(method).await);
        let captured = first.packet(1, echo, b"one");
        assert_eq!(first.exchange(server.addr, &captured).await.0, b"one");
        // A second session takes the only slot: the first one's association is evicted.
        let (two, serving_second) = second.exchange(server.addr, &second.packet(1, echo, b"two")).await;
        assert_eq!(two, b"two");

        let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        attacker.send_to(&captured, server.addr).await.unwrap();
        assert_silent(&attacker, "a packet of the evicted session replayed").await;
        let (still, still_serving) = second.exchange(server.addr, &second.packet(2, echo, b"still")).await;
        assert_eq!(still, b"still");
        assert_eq!(still_serving, serving_second, "{method}: the replay evicted the live association");
        assert_eq!(stats.udp_associations.load(Ordering::Relaxed), 1);

        // The real client coming back goes on where it was.
        assert_eq!(first.exchange(server.addr, &first.packet(2, echo, b"back")).await.0, b"back", "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_2022_session_gets_no_fresh_window_for_a_replay() {
    let method = Method::Blake3Aes256Gcm;
    let mut settings = server_settings(method);
    settings.udp_timeout = Duration::from_secs(1);
    let stats = settings.stats.clone();
    let server = start_server(settings).await;
    let echo = udp_echo_server("127.0.0.1:0").await;
    let client = Session2022::new(method).await;
    let captured = client.packet(1, echo, b"one");
    assert_eq!(client.exchange(server.addr, &captured).await.0, b"one");
    // Timing is the behaviour here: the association idles out after the (shortened) UDP timeout.
    timeout(STEP, async {
        while stats.udp_associations.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the association did not expire");

    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    attacker.send_to(&captured, server.addr).await.unwrap();
    assert_silent(&attacker, "a packet of the expired session replayed").await;
    assert_eq!(stats.udp_associations.load(Ordering::Relaxed), 0, "the replay opened an association");
    assert_eq!(client.exchange(server.addr, &client.packet(2, echo, b"back")).await.0, b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ss_local_keeps_an_old_server_session_window_beside_the_new_one() {
    let method = Method::Blake3Aes256Gcm;
    // A hand-driven server: it answers from two server sessions, then replays an old packet.
    let fake_server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = start_local(local_settings_udp(method, fake_server.local_addr().unwrap())).await;
    let association = socks5_udp_associate(local.addr).await.unwrap();
    let target = Address::Ip("127.0.0.1:9".parse().unwrap());
    association.send(&target, b"hello").await;
    let cipher = Udp2022::new(method, &test_key(method)).unwrap();
    let mut buf = vec![0u8; 2048];
    let (len, client) = timeout(STEP, fake_server.recv_from(&mut buf)).await.unwrap().unwrap();
    let client_session_id =
        cipher.open(&mut buf[..len], unix_now(), Origin::Client).unwrap().header.session_id;
    let reply = |session_id: u64, packet_id: u64, payload: &[u8]| {
        let header = Header2022 {
            session_id,
            packet_id,
            sender: Sender::Server { client_session_id },
            timestamp: unix_now(),
        };
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::new();
        cipher.seal(&header, &[], &target, payload, &nonce, &mut out).expect("seals");
        out
    };
    let (old, new) = (OsRng.next_u64(), OsRng.next_u64());
    let old_first = reply(old, 1, b"old 1");
    for packet in [old_first.clone(), reply(new, 1, b"new 1"), old_first, reply(old, 2, b"old 2")] {
        fake_server.send_to(&packet, client).await.unwrap();
    }
    let mut received = Vec::new();
    for _ in 0..3 {
        received.push(timeout(STEP, association.recv()).await.unwrap().1);
    }
    assert_eq!(received, [b"old 1".to_vec(), b"new 1".to_vec(), b"old 2".to_vec()], "the replay got through");
    assert_silent(&association.socket, "nothing more").await;
}

/// An in-process server (TCP only) whose end can be awaited, so its final snapshot is on disk.
async fn start_until_stopped(
    settings: ss_server::Settings,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let listeners = ss_server::Listeners { tcp: vec![listener], udp: Vec::new() };
    let handle = tokio::spawn(ss_server::run(settings, listeners, shutdown.clone()));
    (addr, shutdown, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_replay_from_before_a_restart_is_refused_and_a_corrupt_snapshot_is_ignored() {
    init_logs();
    let method = Method::Aes256Gcm;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.snapshot");
    let settings = || {
        let mut settings = server_settings(method);
        settings.replay_snapshot = Some(path.clone());
        settings
    };
    let echo = echo_server("127.0.0.1:0").await;
    let recorded = request_bytes(method, echo, b"before the restart").await;

    let (addr, shutdown, first) = start_until_stopped(settings()).await;
    assert!(!send_and_collect_closing(addr, &recorded).await.is_empty(), "served the first time");
    shutdown.cancel();
    timeout(STEP, first).await.expect("server stopped").unwrap();
    assert!(path.exists(), "snapshot written at shutdown");

    let (addr, shutdown, second) = start_until_stopped(settings()).await;
    assert!(send_and_collect(addr, &recorded).await.is_empty(), "the replay after the restart was served");
    let fresh = request_bytes(method, echo, b"fresh").await;
    assert!(!send_and_collect_closing(addr, &fresh).await.is_empty(), "a fresh request is served");
    shutdown.cancel();
    timeout(STEP, second).await.unwrap().unwrap();

    std::fs::write(&path, b"\x00 not a snapshot at all").unwrap();
    let (addr, shutdown, third) = start_until_stopped(settings()).await;
    let another = request_bytes(method, echo, b"after the damage").await;
    assert!(!send_and_collect_closing(addr, &another).await.is_empty(), "a corrupt file is not fatal");
    shutdown.cancel();
    timeout(STEP, third).await.unwrap().unwrap();
}

/// Like [`send_and_collect`], then closes our side so the server's drain at shutdown is immediate.
async fn send_and_collect_closing(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    let received = read_some(&mut stream).await;
    drop(stream);
    received
}
