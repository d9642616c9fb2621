//! The loopback servers at the far end of the tunnel, run inside the bench process.
//!
//! - bulk: a source and sink. The client's first 9 bytes are a command, `D` or `U` and a big-endian u64
//!   `n`. `D`: the target sends `n` bytes. `U`: the target reads `n` bytes, then answers one byte, so the
//!   client sees when the upload has arrived without half-closing (shadowsocks-libev relays no half-close).
//!   Either way it then waits for the client to close.
//! - echo: sends back whatever arrives (request/response, connection setup, idle connections).
//! - UDP echo: sends every datagram back to where it came from.
//!
//! Target sockets set TCP_NODELAY so that the load generator adds no Nagle delay of its own.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Length of a bulk command: `D` or `U`, then the byte count as a big-endian u64.
pub const COMMAND_LEN: usize = 9;

/// Size of the reads and writes of bulk transfers.
pub const IO_CHUNK: usize = 256 * 1024;

/// Where the targets listen.
#[derive(Clone, Copy, Debug)]
pub struct Targets {
    /// The bulk source and sink.
    pub bulk: SocketAddr,
    /// The TCP echo.
    pub echo: SocketAddr,
    /// The UDP echo.
    pub udp_echo: SocketAddr,
}

impl Targets {
    /// Binds the three targets on 127.0.0.1 and serves them for the life of the runtime.
    pub async fn start() -> io::Result<Targets> {
        let bulk = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let udp_echo = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        roomy(&udp_echo);
        let targets =
            Targets { bulk: bulk.local_addr()?, echo: echo.local_addr()?, udp_echo: udp_echo.local_addr()? };
        let source: Arc<[u8]> = pattern(IO_CHUNK).into();
        tokio::spawn(serve(bulk, move |stream| serve_bulk(stream, source.clone())));
        tokio::spawn(serve(echo, serve_echo));
        tokio::spawn(serve_udp_echo(udp_echo));
        Ok(targets)
    }
}

/// A bulk command for `bytes` in the given direction (`b'D'` down to the client, `b'U'` up from it).
pub fn command(direction: u8, bytes: u64) -> [u8; COMMAND_LEN] {
    let mut command = [0u8; COMMAND_LEN];
    command[0] = direction;
    command[1..].copy_from_slice(&bytes.to_be_bytes());
    command
}

/// Bytes that are not all zero (no implementation should care, but no one gets to cheat either).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handler(stream));
            }
            // Out of file descriptors, say: the measurement that caused it reports the failure.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

async fn serve_bulk(mut stream: TcpStream, source: Arc<[u8]>) -> io::Result<()> {
    let mut command = [0u8; COMMAND_LEN];
    stream.read_exact(&mut command).await?;
    let mut count = [0u8; 8];
    count.copy_from_slice(&command[1..]);
    let mut remaining = u64::from_be_bytes(count);
    match command[0] {
        b'D' => {
            while remaining > 0 {
                let len = remaining.min(source.len() as u64) as usize;
                stream.write_all(&source[..len]).await?;
                remaining -= len as u64;
            }
        }
        b'U' => {
            let mut buf = vec![0u8; IO_CHUNK];
            while remaining > 0 {
                let len = remaining.min(buf.len() as u64) as usize;
                let n = stream.read(&mut buf[..len]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                remaining -= n as u64;
            }
            stream.write_all(&[1]).await?;
        }
        _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unknown bulk command")),
    }
    let mut rest = [0u8; 64];
    while stream.read(&mut rest).await? > 0 {}
    Ok(())
}

async fn serve_echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

async fn serve_udp_echo(socket: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    loop {
        if let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    }
}

/// Gives a load-generator or target UDP socket 4 MiB of buffers each way (capped by the kernel's
/// `rmem_max`/`wmem_max`), so what loses datagrams at high rates is the proxy, not the harness.
pub fn roomy(socket: &UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
}
