//! Each option read back from the real socket with getsockopt(2), on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Protocol, SockRef};

use super::*;

const LOOPBACK: &str = "127.0.0.1:0";
const STEP: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    LOOPBACK.parse().unwrap()
}

/// A connected pair: ours (made by `options.connect`) and the listener's accepted end.
async fn pair(options: &SocketOptions) -> (TcpStream, TcpStream) {
    let listener = options.listen_tcp(loopback(), 16).unwrap();
    let addr = listener.local_addr().unwrap();
    let (outbound, accepted) =
        tokio::time::timeout(STEP, async { tokio::join!(options.connect(addr), listener.accept()) })
            .await
            .unwrap();
    (outbound.unwrap(), accepted.unwrap().0)
}

#[tokio::test]
async fn outbound_sockets_carry_fast_open_no_delay_and_keep_alive() {
    let options = SocketOptions {
        fast_open: true,
        no_delay: true,
        keep_alive: Some(Duration::from_secs(9)),
        ..SocketOptions::default()
    };
    let (outbound, accepted) = pair(&options).await;
    assert!(getsockopt(&outbound, sockopt::TcpFastOpenConnect).unwrap(), "TCP_FASTOPEN_CONNECT");
    let socket = SockRef::from(&outbound);
    assert!(socket.tcp_nodelay().unwrap());
    assert!(socket.keepalive().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(9));
    assert_eq!(socket.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);

    // Inherited from the listener: accepting sets nothing.
    let socket = SockRef::from(&accepted);
    assert!(socket.tcp_nodelay().unwrap() && socket.keepalive().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(9));
    assert_eq!(socket.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
}

#[tokio::test]
async fn a_listener_made_elsewhere_is_tuned_for_the_connections_it_accepts() {
    let options = SocketOptions { keep_alive: Some(Duration::from_secs(12)), ..SocketOptions::default() };
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    options.tune_listener(&listener);
    let addr = listener.local_addr().unwrap();
    let (_client, accepted) =
        tokio::time::timeout(STEP, async { tokio::join!(TcpStream::connect(addr), listener.accept()) })
            .await
            .unwrap();
    let (accepted, _) = accepted.unwrap();
    let socket = SockRef::from(&accepted);
    assert!(socket.tcp_nodelay().unwrap() && socket.keepalive().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(12));
}

#[tokio::test]
async fn defaults_have_no_fast_open_and_the_documented_keep_alive() {
    let options = SocketOptions::default();
    let (outbound, _accepted) = pair(&options).await;
    assert!(!getsockopt(&outbound, sockopt::TcpFastOpenConnect).unwrap());
    let socket = SockRef::from(&outbound);
    assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(15));
    assert_eq!(socket.tcp_keepalive_interval().unwrap(), Duration::from_secs(5));
    assert_eq!(socket.protocol().unwrap(), Some(Protocol::TCP));
}

#[tokio::test]
async fn no_delay_off_and_keep_alive_off_are_honoured() {
    let options = SocketOptions { no_delay: false, keep_alive: None, ..SocketOptions::default() };
    let (outbound, accepted) = pair(&options).await;
    for stream in [&outbound, &accepted] {
        let socket = SockRef::from(stream);
        assert!(!socket.tcp_nodelay().unwrap());
        assert!(!socket.keepalive().unwrap());
    }
}

#[tokio::test]
async fn reuse_port_lets_two_listeners_share_a_port_and_its_absence_refuses() {
    let sharing = SocketOptions { reuse_port: true, ..SocketOptions::default() };
    let first = sharing.listen_tcp(loopback(), 16).unwrap();
    let addr = first.local_addr().unwrap();
    assert!(SockRef::from(&first).reuse_port().unwrap());
    let second = sharing.listen_tcp(addr, 16).expect("a second SO_REUSEPORT listener on the same port");
    assert_eq!(second.local_addr().unwrap(), addr);
    let error = SocketOptions::default().listen_tcp(addr, 16).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");

    let udp = sharing.bind_udp(loopback()).unwrap();
    let udp_addr = udp.local_addr().unwrap();
    assert!(SockRef::from(&udp).reuse_port().unwrap());
    sharing.bind_udp(udp_addr).expect("a second SO_REUSEPORT UDP socket on the same port");
    let error = SocketOptions::default().bind_udp(udp_addr).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
}

#[tokio::test]
async fn mptcp_sockets_where_the_kernel_has_it() {
    if !mptcp_available() {
        // The fallback is tested in a namespace with MPTCP switched off (tests/tests/socket_options.rs).
        let in_ci = std::env::var("CI").is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"));
        assert!(!in_ci, "net.mptcp.enabled is not 1 on this machine; CI must run on a kernel with MPTCP");
        eprintln!("SKIPPED: mptcp_sockets_where_the_kernel_has_it: no MPTCP in this kernel");
        return;
    }
    let options = SocketOptions { mptcp: true, ..SocketOptions::default() };
    let listener = options.listen_tcp(loopback(), 16).unwrap();
    assert_eq!(SockRef::from(&listener).protocol().unwrap(), Some(Protocol::MPTCP));
    let (outbound, _accepted) = pair(&options).await;
    assert_eq!(SockRef::from(&outbound).protocol().unwrap(), Some(Protocol::MPTCP));
}
