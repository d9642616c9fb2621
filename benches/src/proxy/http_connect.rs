//! The load generator's HTTP CONNECT client, for the bulk workload through ss-local's HTTP front end
//! (the same port as SOCKS5; only ours speaks it on its default port).
//!
//! ```text
//! CONNECT 127.0.0.1:<port> HTTP/1.1\r\nHost: 127.0.0.1:<port>\r\n\r\n
//!                                            ◀ HTTP/1.1 200 ...\r\n...\r\n\r\n
//! ```

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest reply head read before giving up.
const MAX_REPLY: usize = 4096;

/// Opens a CONNECT tunnel to `target` through the HTTP proxy at `proxy`; returns the stream once the
/// proxy answered 200. TCP_NODELAY is set, as for SOCKS5.
pub async fn connect(proxy: SocketAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    stream.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await?;
    // Byte by byte up to the blank line, so no tunnel byte is read here (the reply is short and once).
    let mut head = Vec::with_capacity(64);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_REPLY {
            return Err(io::Error::other("CONNECT reply head too long"));
        }
        head.push(stream.read_u8().await?);
    }
    if !(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200")) {
        let line = String::from_utf8_lossy(&head);
        return Err(io::Error::other(format!("CONNECT refused: {}", line.lines().next().unwrap_or(""))));
    }
    Ok(stream)
}
