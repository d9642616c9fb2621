//! The load generator's SOCKS5 client (RFC 1928, no authentication): CONNECT and UDP ASSOCIATE to IPv4
//! loopback targets.
//!
//! ```text
//! CONNECT:       05 01 00 | 05 01 00 01 <ip4> <port>     (greeting and request in one write)
//!                       ◀ 05 00 | 05 00 00 <atyp> <bound address> <port>
//! UDP datagram:  00 00 00 01 <ip4> <port> <payload>      (both ways, to and from the relay)
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Opens a CONNECT to `target` through the SOCKS5 proxy at `proxy`; returns the stream once the proxy
/// replied "succeeded". TCP_NODELAY is set so that the client adds no Nagle delay.
pub async fn connect(proxy: SocketAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    request(&mut stream, 1, target).await?;
    Ok(stream)
}

/// A UDP association: the control connection (the association lives as long as it does) and a UDP socket
/// connected to the proxy's relay address.
#[derive(Debug)]
pub struct UdpAssociation {
    _control: TcpStream,
    /// Connected to the relay: `send` and `recv` talk to it alone.
    pub socket: UdpSocket,
    header: Vec<u8>,
}

impl UdpAssociation {
    /// Asks the proxy at `proxy` for a UDP relay; datagrams built by [`UdpAssociation::datagram`] go to
    /// `target`.
    pub async fn open(proxy: SocketAddr, target: SocketAddr) -> io::Result<UdpAssociation> {
        let socket = UdpSocket::bind((proxy.ip(), 0)).await?;
        super::targets::roomy(&socket);
        let mut control = TcpStream::connect(proxy).await?;
        // The client's own UDP address, as RFC 1928 asks (some proxies accept only datagrams from it).
        let mut relay = request(&mut control, 3, socket.local_addr()?).await?;
        if relay.ip().is_unspecified() {
            relay.set_ip(proxy.ip());
        }
        socket.connect(relay).await?;
        Ok(UdpAssociation { _control: control, socket, header: address(target, &[0, 0, 0]) })
    }

    /// One SOCKS5 UDP datagram to the target carrying `payload`.
    pub fn datagram(&self, payload: &[u8]) -> Vec<u8> {
        let mut datagram = self.header.clone();
        datagram.extend_from_slice(payload);
        datagram
    }
}

/// Sends greeting and request for `command` in one write, reads both replies; returns the bound address.
async fn request(stream: &mut TcpStream, command: u8, target: SocketAddr) -> io::Result<SocketAddr> {
    stream.write_all(&address(target, &[5, 1, 0, 5, command, 0])).await?;
    // Method reply (VER METHOD), then VER REP RSV ATYP.
    let mut head = [0u8; 2 + 4];
    stream.read_exact(&mut head).await?;
    let [version, method, _, code, _, address_type] = head;
    if [version, method] != [5, 0] {
        return Err(io::Error::other(format!("SOCKS5 method reply {:?}", [version, method])));
    }
    let ip_len = match address_type {
        1 => 4,
        4 => 16,
        other => return Err(io::Error::other(format!("SOCKS5 reply with address type {other}"))),
    };
    let mut bound = vec![0u8; ip_len + 2];
    stream.read_exact(&mut bound).await?;
    if code != 0 {
        return Err(io::Error::other(format!("SOCKS5 reply code {code}")));
    }
    let port = u16::from_be_bytes([bound[ip_len], bound[ip_len + 1]]);
    let ip: IpAddr = match ip_len {
        4 => <[u8; 4]>::try_from(&bound[..4]).map(IpAddr::from).map_err(io::Error::other)?,
        _ => <[u8; 16]>::try_from(&bound[..16]).map(IpAddr::from).map_err(io::Error::other)?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// `prefix` followed by `target` in SOCKS5 form.
fn address(target: SocketAddr, prefix: &[u8]) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    match target.ip() {
        IpAddr::V4(ip) => {
            bytes.push(1);
            bytes.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            bytes.push(4);
            bytes.extend_from_slice(&ip.octets());
        }
    }
    bytes.extend_from_slice(&target.port().to_be_bytes());
    bytes
}
