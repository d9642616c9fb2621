//! The measurements, each driven through one pair's SOCKS5 port against the in-process targets.
//!
//! Connections are opened before a throughput clock starts, so bulk figures leave out the SOCKS5 handshake
//! (but include the server's connect to the target, which classic methods make only once the first bytes
//! arrive). Latencies are taken per operation with `Instant` and reported as nearest-rank percentiles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use super::http_connect;
use super::socks5::{self, UdpAssociation};
use super::targets::{self, IO_CHUNK};

/// Which way bulk data flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Target to client (a download).
    Down,
    /// Client to target (an upload).
    Up,
}

/// How the load generator opens its tunnels through the proxy's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    /// SOCKS5 CONNECT.
    Socks5,
    /// HTTP CONNECT (ss-local's HTTP front end on the same port).
    HttpConnect,
}

/// Moves `total` bytes in `direction` over `streams` connections at once (an equal share each) through
/// the proxy at `socks` to the bulk target; returns MB/s (10^6 bytes per second) of payload.
pub async fn bulk(
    socks: SocketAddr,
    target: SocketAddr,
    direction: Direction,
    streams: usize,
    total: u64,
) -> Result<f64> {
    bulk_via(Front::Socks5, socks, target, direction, streams, total).await
}

/// [`bulk`], with the tunnels opened through `front`.
pub async fn bulk_via(
    front: Front,
    proxy: SocketAddr,
    target: SocketAddr,
    direction: Direction,
    streams: usize,
    total: u64,
) -> Result<f64> {
    let share = total / streams as u64;
    let mut connections = Vec::with_capacity(streams);
    for _ in 0..streams {
        let stream = match front {
            Front::Socks5 => socks5::connect(proxy, target).await.context("SOCKS5 connect")?,
            Front::HttpConnect => http_connect::connect(proxy, target).await.context("HTTP CONNECT")?,
        };
        connections.push(stream);
    }
    let source: Arc<[u8]> = targets::pattern(IO_CHUNK).into();
    let started = Instant::now();
    let mut transfers = JoinSet::new();
    for stream in connections {
        transfers.spawn(transfer(stream, direction, share, source.clone()));
    }
    while let Some(done) = transfers.join_next().await {
        done??;
    }
    Ok((share * streams as u64) as f64 / started.elapsed().as_secs_f64() / 1e6)
}

async fn transfer(mut stream: TcpStream, direction: Direction, bytes: u64, source: Arc<[u8]>) -> Result<()> {
    match direction {
        Direction::Down => {
            stream.write_all(&targets::command(b'D', bytes)).await?;
            let mut buf = vec![0u8; IO_CHUNK];
            let mut remaining = bytes;
            while remaining > 0 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("download ended {remaining} bytes early");
                }
                remaining = remaining.saturating_sub(n as u64);
            }
        }
        Direction::Up => {
            stream.write_all(&targets::command(b'U', bytes)).await?;
            let mut remaining = bytes;
            while remaining > 0 {
                let len = remaining.min(source.len() as u64) as usize;
                stream.write_all(&source[..len]).await?;
                remaining -= len as u64;
            }
            let mut ack = [0u8; 1];
            stream.read_exact(&mut ack).await.context("waiting for the upload's acknowledgement")?;
        }
    }
    Ok(())
}

/// Request/response figures.
#[derive(Clone, Copy, Debug)]
pub struct RequestResponse {
    /// Median round-trip time, µs.
    pub p50_us: f64,
    /// 99th percentile round-trip time, µs.
    pub p99_us: f64,
    /// Completed requests per second over all connections.
    pub per_second: f64,
}

/// `connections` connections to the echo target, each sending a `size`-byte request and waiting for its
/// echo, back to back, for `duration`.
pub async fn request_response(
    socks: SocketAddr,
    echo: SocketAddr,
    connections: usize,
    size: usize,
    duration: Duration,
) -> Result<RequestResponse> {
    let request: Arc<[u8]> = targets::pattern(size).into();
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut stream = socks5::connect(socks, echo).await.context("SOCKS5 connect")?;
        // Warm-up round trips: the whole chain exists (and the proxies' buffers are allocated) after them.
        for _ in 0..3 {
            round_trip(&mut stream, &request).await?;
        }
        streams.push(stream);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut clients = JoinSet::new();
    for mut stream in streams {
        let request = request.clone();
        clients.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                round_trip(&mut stream, &request).await?;
                latencies.push(sent.elapsed().as_nanos() as u64);
            }
            anyhow::Ok(latencies)
        });
    }
    let (latencies, elapsed) = gather(clients, started).await?;
    Ok(RequestResponse {
        p50_us: percentile(&latencies, 0.50) / 1e3,
        p99_us: percentile(&latencies, 0.99) / 1e3,
        per_second: latencies.len() as f64 / elapsed,
    })
}

/// Every client's latencies (ns), sorted, and the seconds since `started` once the last client is done.
async fn gather(mut clients: JoinSet<Result<Vec<u64>>>, started: Instant) -> Result<(Vec<u64>, f64)> {
    let mut latencies = Vec::new();
    while let Some(done) = clients.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok((latencies, elapsed))
}

async fn round_trip(stream: &mut TcpStream, request: &[u8]) -> Result<()> {
    stream.write_all(request).await?;
    let mut response = vec![0u8; request.len()];
    stream.read_exact(&mut response).await?;
    Ok(())
}

/// Connection-rate figures.
#[derive(Clone, Copy, Debug)]
pub struct ConnectRate {
    /// Connections set up, used and closed per second over all workers.
    pub per_second: f64,
    /// Median setup latency, µs.
    pub p50_us: f64,
    /// 99th percentile setup latency, µs.
    pub p99_us: f64,
}

/// `workers` clients in parallel, each for `duration` in a loop: connect to the proxy, SOCKS5 CONNECT to
/// the echo target, send one byte, read its echo, close. Setup latency runs from the TCP connect to the
/// echo: the whole chain (client, local, server, target) is up only then.
pub async fn connect_rate(
    socks: SocketAddr,
    echo: SocketAddr,
    workers: usize,
    duration: Duration,
) -> Result<ConnectRate> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut clients = JoinSet::new();
    for _ in 0..workers {
        clients.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let begun = Instant::now();
                let _stream = connect_and_ping(socks, echo).await?;
                latencies.push(begun.elapsed().as_nanos() as u64);
            }
            anyhow::Ok(latencies)
        });
    }
    let (latencies, elapsed) = gather(clients, started).await?;
    Ok(ConnectRate {
        per_second: latencies.len() as f64 / elapsed,
        p50_us: percentile(&latencies, 0.50) / 1e3,
        p99_us: percentile(&latencies, 0.99) / 1e3,
    })
}

/// A SOCKS5 connection to the echo target, proven end to end by one echoed byte.
async fn connect_and_ping(socks: SocketAddr, echo: SocketAddr) -> Result<TcpStream> {
    let mut stream = socks5::connect(socks, echo).await.context("SOCKS5 connect")?;
    stream.write_all(&[0x5a]).await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.context("waiting for the echo")?;
    Ok(stream)
}

/// Echoed UDP datagrams per second through one association, with `window` datagrams of `payload` bytes
/// in flight for `duration`. A datagram not back within 20 ms counts as lost and the window refills.
pub async fn udp_rate(
    socks: SocketAddr,
    echo: SocketAddr,
    window: usize,
    payload: usize,
    duration: Duration,
) -> Result<f64> {
    const LOST_AFTER: Duration = Duration::from_millis(20);
    let association = UdpAssociation::open(socks, echo).await.context("SOCKS5 UDP ASSOCIATE")?;
    let datagram = association.datagram(&targets::pattern(payload));
    let socket = &association.socket;
    let mut buf = vec![0u8; 65_536];

    // The relays may set up their sockets on the first datagram: wait for one echo before measuring.
    let warm_until = Instant::now() + Duration::from_secs(5);
    loop {
        socket.send(&datagram).await?;
        if let Ok(received) = timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
            received?;
            break;
        }
        if Instant::now() >= warm_until {
            bail!("no UDP echo came back within 5 s");
        }
    }

    let started = Instant::now();
    let deadline = started + duration;
    let (mut in_flight, mut echoed) = (0usize, 0u64);
    while Instant::now() < deadline {
        while in_flight < window {
            socket.send(&datagram).await?;
            in_flight += 1;
        }
        match timeout(LOST_AFTER, socket.recv(&mut buf)).await {
            Ok(received) => {
                // Only full echoes count (a late warm-up echo is one too, which does not matter).
                if received? >= payload {
                    echoed += 1;
                }
                in_flight = in_flight.saturating_sub(1);
            }
            Err(_) => in_flight = 0,
        }
    }
    Ok(echoed as f64 / started.elapsed().as_secs_f64())
}

/// Opens `count` proxied connections to the echo target, `concurrency` at a time, each proven by an echoed
/// byte, and returns them open.
pub async fn idle_connections(
    socks: SocketAddr,
    echo: SocketAddr,
    count: usize,
    concurrency: usize,
) -> Result<Vec<TcpStream>> {
    let mut open = Vec::with_capacity(count);
    while open.len() < count {
        let mut batch = JoinSet::new();
        for _ in 0..(count - open.len()).min(concurrency) {
            batch.spawn(connect_and_ping(socks, echo));
        }
        while let Some(done) = batch.join_next().await {
            open.push(done??);
        }
    }
    Ok(open)
}

/// Nearest-rank percentile `q` (0..=1) of sorted values, as f64; 0 for no values.
fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
