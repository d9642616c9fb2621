//! UDP test support: a loopback UDP echo server and a minimal SOCKS5 UDP ASSOCIATE client.

use std::net::SocketAddr;

use ss_crypto::{Address, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A UDP echo server on `bind` (a loopback address).
pub async fn udp_echo_server(bind: &str) -> SocketAddr {
    let socket = UdpSocket::bind(bind).await.expect("bind UDP echo");
    let addr = socket.local_addr().expect("UDP echo address");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

/// A SOCKS5 UDP association: the control connection (keep it open) and the relay address.
pub struct UdpAssociation {
    /// The TCP control connection; dropping it ends the association.
    pub control: TcpStream,
    /// The relay's UDP address to send SOCKS5 UDP datagrams to.
    pub relay: SocketAddr,
    /// The application's UDP socket.
    pub socket: UdpSocket,
}

impl UdpAssociation {
    /// Sends `payload` to `target` through the relay.
    pub async fn send(&self, target: &Address, payload: &[u8]) {
        let mut datagram = vec![0, 0, 0];
        target.write_to(&mut datagram);
        datagram.extend_from_slice(payload);
        self.socket.send_to(&datagram, self.relay).await.expect("send to relay");
    }

    /// Receives one datagram: the source address and the payload.
    pub async fn recv(&self) -> (Address, Vec<u8>) {
        let mut buf = vec![0u8; 65_536];
        let (len, _) = self.socket.recv_from(&mut buf).await.expect("recv from relay");
        assert_eq!(&buf[..3], &[0, 0, 0], "RSV and FRAG");
        let (source, used) = Address::parse(&buf[3..len]).expect("source address");
        (source, buf[3 + used..len].to_vec())
    }
}

/// Opens a SOCKS5 UDP ASSOCIATE through `proxy`.
pub async fn socks5_udp_associate(proxy: SocketAddr) -> std::io::Result<UdpAssociation> {
    let mut control = TcpStream::connect(proxy).await?;
    let mut request = vec![5, 1, 0, 5, 3, 0];
    Address::Ip(SocketAddr::from(([0, 0, 0, 0], 0))).write_to(&mut request);
    control.write_all(&request).await?;
    let mut head = [0u8; 6];
    control.read_exact(&mut head).await?;
    if head[..2] != [5, 0] || head[2..4] != [5, 0] {
        return Err(std::io::Error::other(format!("UDP ASSOCIATE refused: {head:?}")));
    }
    let mut rest = vec![0u8; if head[5] == 4 { 16 + 2 } else { 4 + 2 }];
    control.read_exact(&mut rest).await?;
    let mut bound = vec![head[5]];
    bound.extend_from_slice(&rest);
    let (relay, _) = Address::parse(&bound).map_err(std::io::Error::other)?;
    let Address::Ip(relay) = relay else { return Err(std::io::Error::other("relay is not an IP")) };
    let socket = UdpSocket::bind(if relay.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }).await?;
    Ok(UdpAssociation { control, relay, socket })
}

/// Local settings with UDP ASSOCIATE enabled.
pub fn local_settings_udp(method: Method, server: SocketAddr) -> ss_local::Settings {
    let mut settings = crate::local_settings(method, server);
    settings.udp = true;
    settings
}
