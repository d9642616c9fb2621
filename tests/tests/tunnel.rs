//! Tunnels (libev's ss-tunnel as a mode of ss-local): a local port forwarded, TCP and UDP, to a fixed
//! target through ss-server. DNS through the tunnel with real clients (hickory's resolver, and `dig`)
//! reaching the test DNS server on loopback behind the server; per-client UDP associations; the ss-local
//! binary with libev's tunnel flags; SOCKS5 listeners of their own mode beside tunnels.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ss_config::{Forward, Local, Mode, Protocol};
use ss_crypto::Method;
use ss_local::Listener;
use ss_net::{ResolveSettings, Resolver};
use ss_tests::dns::{Behaviour, TestDns};
use ss_tests::udp::udp_echo_server;
use ss_tests::{echo_server, local_settings, server_settings, start_server, RunningServer, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const METHODS: [Method; 2] = [Method::Aes256Gcm, Method::Blake3Aes256Gcm];

/// ss-server, and ss-local with one tunnel (TCP and UDP) to `target`; the tunnel's address.
struct Tunnel {
    addr: SocketAddr,
    _server: RunningServer,
    shutdown: CancellationToken,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn tunnel(method: Method, target: SocketAddr) -> Tunnel {
    let server = start_server(server_settings(method)).await;
    let local = Local {
        address: "127.0.0.1".into(),
        port: 0,
        protocol: Protocol::Tunnel(Forward { host: target.ip().to_string(), port: target.port() }),
        mode: Mode::TcpAndUdp,
    };
    let listener = Listener::bind(&local, &ss_net::SocketOptions::default()).await.expect("bind the tunnel");
    let addr = listener.tcp.as_ref().and_then(|tcp| tcp.local_addr().ok()).expect("tunnel address");
    assert_eq!(listener.udp.as_ref().and_then(|udp| udp.local_addr().ok()), Some(addr), "one port for both");
    let shutdown = CancellationToken::new();
    let settings = local_settings(method, server.addr);
    tokio::spawn(ss_local::run_listeners(settings, vec![listener], shutdown.clone()));
    Tunnel { addr, _server: server, shutdown }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

fn zone() -> Vec<(&'static str, Behaviour)> {
    let many = (1..=40).map(ip).collect();
    vec![
        ("a.test", Behaviour::Answer { addrs: vec![ip(1)], ttl: 60 }),
        // More records than fit a UDP answer: the resolver gets it truncated and asks again over TCP.
        ("many.test", Behaviour::Answer { addrs: many, ttl: 60 }),
    ]
}

#[tokio::test]
async fn a_resolver_pointed_at_the_tunnel_reaches_the_dns_server_over_udp_and_tcp() {
    for method in METHODS {
        let dns = TestDns::start(&zone()).await;
        let tunnel = tunnel(method, dns.addr).await;
        let settings = ResolveSettings { nameservers: vec![tunnel.addr], ..ResolveSettings::default() };
        let resolver = std::sync::Arc::new(Resolver::new(&settings).expect("resolver"));
        let answer = timeout(STEP, resolver.resolve("a.test")).await.expect("in time");
        assert_eq!(answer.expect("a.test resolves").to_vec(), [ip(1)], "{method}");
        assert!(dns.queries("a.test") >= 1);
        let many = timeout(STEP, resolver.resolve("many.test")).await.expect("in time");
        assert!(!many.expect("many.test resolves").is_empty(), "{method}");
        // At least the truncated UDP answer and the TCP retry.
        assert!(dns.queries("many.test") >= 2, "{method}: {}", dns.queries("many.test"));
    }
}

#[tokio::test]
async fn dig_through_the_tunnel_over_udp_and_tcp() {
    let Some(dig) = ss_tests::peers::program("dig", "apt-get install dnsutils") else { return };
    let dns = TestDns::start(&zone()).await;
    let tunnel = tunnel(Method::Blake3Aes256Gcm, dns.addr).await;
    for transport in ["+notcp", "+tcp"] {
        let output = timeout(
            STEP,
            tokio::process::Command::new(&dig)
                .args(["@127.0.0.1", "-p", &tunnel.addr.port().to_string(), "a.test", "A", "+short"])
                .args(["+tries=1", "+time=5", transport])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("dig in time")
        .expect("dig runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            stdout.trim(),
            "192.0.2.1",
            "dig {transport}: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(dns.queries("a.test") >= 2);
}

#[tokio::test]
async fn tcp_connections_go_to_the_fixed_target() {
    let echo = echo_server("127.0.0.1:0").await;
    let tunnel = tunnel(Method::Aes128Gcm, echo).await;
    for round in 0..3u8 {
        let mut stream = timeout(STEP, TcpStream::connect(tunnel.addr)).await.unwrap().unwrap();
        let message = [round; 5000];
        stream.write_all(&message).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        timeout(STEP, stream.read_to_end(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, message);
    }
}

#[tokio::test]
async fn each_udp_client_has_its_own_association_and_gets_only_its_replies() {
    for method in METHODS {
        let echo = udp_echo_server("127.0.0.1:0").await;
        let tunnel = tunnel(method, echo).await;
        let clients =
            [UdpSocket::bind("127.0.0.1:0").await.unwrap(), UdpSocket::bind("127.0.0.1:0").await.unwrap()];
        for round in 0..3u8 {
            for (index, client) in clients.iter().enumerate() {
                client.send_to(&[index as u8, round], tunnel.addr).await.unwrap();
            }
            for (index, client) in clients.iter().enumerate() {
                let mut buf = [0u8; 16];
                let (len, from) =
                    timeout(STEP, client.recv_from(&mut buf)).await.expect("reply in time").unwrap();
                assert_eq!(from, tunnel.addr, "replies come from the tunnel's port");
                assert_eq!(&buf[..len], [index as u8, round], "{method}");
            }
        }
    }
}

#[tokio::test]
async fn a_tunnel_whose_server_is_gone_closes_the_connection() {
    let echo = echo_server("127.0.0.1:0").await;
    let tunnel = tunnel(Method::Aes128Gcm, echo).await;
    // A port nobody listens on once the listener is dropped.
    let dead = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let local = Local {
        address: "127.0.0.1".into(),
        port: 0,
        protocol: Protocol::Tunnel(Forward { host: echo.ip().to_string(), port: echo.port() }),
        mode: Mode::TcpOnly,
    };
    let listener = Listener::bind(&local, &ss_net::SocketOptions::default()).await.unwrap();
    assert!(listener.udp.is_none(), "tcp_only has no UDP socket");
    let addr = listener.tcp.as_ref().unwrap().local_addr().unwrap();
    let shutdown = tunnel.shutdown.child_token();
    tokio::spawn(ss_local::run_listeners(local_settings(Method::Aes128Gcm, dead), vec![listener], shutdown));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(b"hello").await;
    let mut buf = [0u8; 8];
    let read = timeout(Duration::from_secs(30), stream.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// The ss-local executable with libev's ss-tunnel flags: `-l PORT -L host:port` (a DNS tunnel, `-u`
/// for UDP) and a second tunnel on its own port (`-L PORT:host:port`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_libev_tunnel_flags() {
    use ss_tests::subprocess::{binaries, free_port, Launch, Subprocess};
    let method = Method::Blake3Aes256Gcm;
    let server = start_server(server_settings(method)).await;
    let dns = TestDns::start(&zone()).await;
    let echo = echo_server("127.0.0.1:0").await;
    let binary = &binaries().await.local;
    let mut failures = Vec::new();
    for _ in 0..3 {
        let (dns_port, echo_port) = (free_port(), free_port());
        let args = [
            "-s".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            server.addr.port().to_string(),
            "-m".into(),
            method.to_string(),
            "-k".into(),
            ss_tests::test_password(method),
            "-u".into(),
            "-l".into(),
            dns_port.to_string(),
            "-L".into(),
            dns.addr.to_string(),
            "-L".into(),
            format!("{echo_port}:{echo}"),
        ];
        // The own-port tunnel is bound last: once it accepts, both are up.
        let echo_tunnel = SocketAddr::from(([127, 0, 0, 1], echo_port));
        let local = match Subprocess::start(&Launch::new(binary).args(&args), echo_tunnel).await {
            Ok(local) => local,
            Err(failure) => {
                failures.push(failure);
                continue;
            }
        };
        let settings = ResolveSettings {
            nameservers: vec![SocketAddr::from(([127, 0, 0, 1], dns_port))],
            ..ResolveSettings::default()
        };
        let resolver = std::sync::Arc::new(Resolver::new(&settings).expect("resolver"));
        let answer = timeout(STEP, resolver.resolve("a.test")).await.expect("in time");
        assert_eq!(answer.map(|addrs| addrs.to_vec()), Ok(vec![ip(1)]), "{}", local.log());
        let mut stream = TcpStream::connect(echo_tunnel).await.expect("connect");
        stream.write_all(b"through the second tunnel").await.expect("write");
        let mut back = [0u8; 25];
        timeout(STEP, stream.read_exact(&mut back)).await.expect("in time").expect("echo");
        assert_eq!(&back, b"through the second tunnel");
        let (status, log) = local.terminate().await;
        assert!(status.success(), "{status}\n{log}");
        return;
    }
    panic!("ss-local did not start:\n{}", failures.join("\n"));
}

/// `locals[].mode` is each listener's own: a SOCKS5 listener with UDP beside one without, whatever the
/// process-wide setting says.
#[tokio::test]
async fn each_socks5_listener_has_its_own_mode() {
    let method = Method::Aes256Gcm;
    let server = start_server(server_settings(method)).await;
    let socks = |mode| Local { address: "127.0.0.1".into(), port: 0, protocol: Protocol::Socks, mode };
    let with_udp = Listener::bind(&socks(Mode::TcpAndUdp), &ss_net::SocketOptions::default()).await.unwrap();
    let udp_only = Listener::bind(&socks(Mode::UdpOnly), &ss_net::SocketOptions::default()).await.unwrap();
    let addr = |listener: &Listener| listener.tcp.as_ref().unwrap().local_addr().unwrap();
    let (with_udp_addr, udp_only_addr) = (addr(&with_udp), addr(&udp_only));
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let settings = local_settings(method, server.addr);
    assert!(!settings.udp, "the process-wide default has no UDP");
    tokio::spawn(ss_local::run_listeners(settings, vec![with_udp, udp_only], shutdown));

    let echo = udp_echo_server("127.0.0.1:0").await;
    let association = timeout(STEP, ss_tests::udp::socks5_udp_associate(with_udp_addr))
        .await
        .unwrap()
        .expect("UDP ASSOCIATE");
    association.send(&ss_crypto::Address::Ip(echo), b"datagram").await;
    let (_, payload) = timeout(STEP, association.recv()).await.expect("reply in time");
    assert_eq!(payload, b"datagram");

    let tcp_echo = echo_server("127.0.0.1:0").await;
    let refused =
        timeout(STEP, ss_tests::socks5_connect(udp_only_addr, &ss_crypto::Address::Ip(tcp_echo))).await;
    assert!(refused.expect("answered in time").is_err(), "udp_only refuses CONNECT");
    let associated = timeout(STEP, ss_tests::udp::socks5_udp_associate(udp_only_addr)).await.unwrap();
    assert!(associated.is_ok(), "but takes UDP ASSOCIATE");
}
