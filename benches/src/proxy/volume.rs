//! The workloads at volume: UDP offered at rising rates, many connections transferring at once, and a
//! few busy connections inside a crowd of idle ones.
//!
//! - [`udp_offered`]: 1,200-byte datagrams (what QUIC and games send) through one association to the UDP
//!   echo, offered at each rate of a rising list for a fixed time; the highest rate whose echoes came
//!   back with under 1% lost, and the proxies' CPU time per datagram at that rate. Sends are paced per
//!   millisecond tick, a tick's share in one burst (a fast sender's shape), echoes are counted by a task
//!   of their own, and the count stops a short grace after the last send. Between the last rate that held
//!   and the first that did not, a few more steps narrow the gap (three halvings: within 1.09x).
//! - [`busy`]: `n` connections each downloading without end from the bulk source for a fixed time; after
//!   a warm-up, the bytes each received in the measured window give the aggregate rate and fairness (the
//!   slowest connection's bytes over the mean), and the proxies' RSS is sampled in the middle of it.
//! - The crowd: the same busy measurement with 100 connections, alone and then beside 10,000 idle ones,
//!   reported as the ratio of the two aggregates (does an idle crowd slow the busy ones?).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::{interval, sleep_until, timeout, Instant, MissedTickBehavior};

use super::process::Pair;
use super::socks5::{self, UdpAssociation};
use super::suite::Sizes;
use super::targets::{self, IO_CHUNK};

/// Loss under which an offered rate counts as sustained.
const MAX_LOSS: f64 = 0.01;
/// How long echoes of a step's last datagrams may take to come back.
const GRACE: Duration = Duration::from_millis(200);

/// What [`udp_offered`] found.
#[derive(Clone, Copy, Debug)]
pub struct UdpOffered {
    /// The highest offered rate (datagrams/s) with under 1% of echoes lost; 0 if none was.
    pub sustained: f64,
    /// Server + local CPU time per datagram relayed at that rate (µs; each datagram crosses both
    /// proxies twice, out and back).
    pub cpu_us_per_datagram: f64,
}

/// Offers `sizes.udp_payload`-byte datagrams at each of `sizes.udp_rates` (ascending, datagrams/s) for
/// `sizes.udp_step` each; stops at the first rate that loses 1% or more, then tries
/// `sizes.udp_refinements` rates between it and the last that held, each halfway (geometrically) across
/// the gap left.
pub async fn udp_offered(
    pair: &Pair,
    socks: SocketAddr,
    echo: SocketAddr,
    sizes: &Sizes,
    ticks_per_second: u64,
) -> Result<UdpOffered> {
    let (payload, step) = (sizes.udp_payload, sizes.udp_step);
    let association = UdpAssociation::open(socks, echo).await.context("SOCKS5 UDP ASSOCIATE")?;
    let datagram = association.datagram(&targets::pattern(payload));
    let socket = Arc::new(association.socket);
    warm_up(&socket, &datagram).await?;
    let mut found = UdpOffered { sustained: 0.0, cpu_us_per_datagram: 0.0 };
    let mut first_failed = None;
    for &rate in &sizes.udp_rates {
        match step_at(pair, &socket, &datagram, payload, rate, step, ticks_per_second).await? {
            Some(passed) => found = passed,
            None => {
                first_failed = Some(rate);
                break;
            }
        }
    }
    // Between the last rate that held and the first that did not, halve the gap (geometrically) a few
    // times, so the figure is not just the list's last step below the limit.
    if let (Some(mut failed), true) = (first_failed, found.sustained > 0.0) {
        for _ in 0..sizes.udp_refinements {
            let rate = ((found.sustained * failed as f64).sqrt() / 100.0).round() as u64 * 100;
            if rate as f64 <= found.sustained || rate >= failed {
                break;
            }
            match step_at(pair, &socket, &datagram, payload, rate, step, ticks_per_second).await? {
                Some(passed) => found = passed,
                None => failed = rate,
            }
        }
    }
    // The association (its control connection, still held by `association`) ends here.
    Ok(found)
}

/// One offered rate: its figures if under 1% was lost, `None` otherwise.
async fn step_at(
    pair: &Pair,
    socket: &Arc<tokio::net::UdpSocket>,
    datagram: &[u8],
    payload: usize,
    rate: u64,
    step: Duration,
    ticks_per_second: u64,
) -> Result<Option<UdpOffered>> {
    let cpu_before = pair.cpu_ticks()?;
    let (sent, echoed) = offer(socket, datagram, payload, rate, step).await?;
    let cpu_us = (pair.cpu_ticks()? - cpu_before) as f64 * 1e6 / ticks_per_second as f64;
    let loss = 1.0 - echoed as f64 / sent.max(1) as f64;
    eprintln!("  UDP offered {rate}/s: {sent} sent, {echoed} echoed, {:.2}% lost", loss * 100.0);
    Ok((loss < MAX_LOSS)
        .then(|| UdpOffered { sustained: rate as f64, cpu_us_per_datagram: cpu_us / echoed.max(1) as f64 }))
}

/// Until one echo came back (the relays may set up their sockets on the first datagram).
async fn warm_up(socket: &tokio::net::UdpSocket, datagram: &[u8]) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        socket.send(datagram).await?;
        if let Ok(received) = timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
            received?;
            // Echoes of the other warm-up datagrams, if any, are read and dropped.
            while let Ok(Ok(_)) = timeout(GRACE, socket.recv(&mut buf)).await {}
            return Ok(());
        }
        if Instant::now() >= until {
            bail!("no UDP echo came back within 5 s");
        }
    }
}

/// One step: `rate` datagrams/s for `step`; returns (sent, full echoes received).
async fn offer(
    socket: &Arc<tokio::net::UdpSocket>,
    datagram: &[u8],
    payload: usize,
    rate: u64,
    step: Duration,
) -> Result<(u64, u64)> {
    let echoed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let counter = {
        let (socket, echoed, done) = (socket.clone(), echoed.clone(), done.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                match timeout(GRACE, socket.recv(&mut buf)).await {
                    Ok(Ok(len)) if len >= payload => {
                        echoed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return,
                    Err(_) if done.load(Ordering::Relaxed) => return,
                    Err(_) => {}
                }
            }
        })
    };
    let started = Instant::now();
    let mut ticks = interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while started.elapsed() < step {
        ticks.tick().await;
        // The datagrams due by now, so that the average rate holds whatever the tick jitter.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            // A full socket buffer here is loss like any other: the datagram is counted as sent.
            let _ = socket.try_send(datagram);
            sent += 1;
        }
    }
    sleep_until(Instant::now() + GRACE).await;
    done.store(true, Ordering::Relaxed);
    let _ = timeout(GRACE * 4, counter).await;
    Ok((sent, echoed.load(Ordering::Relaxed)))
}

/// What [`busy`] found.
#[derive(Clone, Copy, Debug)]
pub struct Busy {
    /// Payload MB/s over all connections in the measured window.
    pub aggregate: f64,
    /// The slowest connection's bytes over the mean (1 is perfectly fair).
    pub slowest_share: f64,
    /// Server + local RSS in the middle of the window, MiB.
    pub rss_mib: f64,
}

/// `connections` connections downloading at once for a warm-up and then `window`.
pub async fn busy(
    pair: &Pair,
    socks: SocketAddr,
    bulk: SocketAddr,
    connections: usize,
    window: Duration,
) -> Result<Busy> {
    let mut streams = Vec::with_capacity(connections);
    let mut opening = JoinSet::new();
    for batch in 0..connections.div_ceil(50) {
        for _ in 0..50.min(connections - batch * 50) {
            opening.spawn(socks5::connect(socks, bulk));
        }
        while let Some(opened) = opening.join_next().await {
            streams.push(opened?.context("SOCKS5 connect")?);
        }
    }
    let counts: Arc<[AtomicU64]> = (0..connections).map(|_| AtomicU64::new(0)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = JoinSet::new();
    for (index, mut stream) in streams.into_iter().enumerate() {
        let (counts, stop) = (counts.clone(), stop.clone());
        readers.spawn(async move {
            stream.write_all(&targets::command(b'D', u64::MAX)).await?;
            let mut buf = vec![0u8; IO_CHUNK / 4];
            while !stop.load(Ordering::Relaxed) {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("a download ended early");
                }
                counts[index].fetch_add(n as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let snapshot =
        |counts: &[AtomicU64]| counts.iter().map(|c| c.load(Ordering::Relaxed)).collect::<Vec<_>>();
    tokio::time::sleep(window / 4).await;
    let before = snapshot(&counts);
    let started = Instant::now();
    tokio::time::sleep(window / 2).await;
    let rss_kib = pair.rss_kib()?;
    tokio::time::sleep_until(started + window).await;
    let after = snapshot(&counts);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    readers.abort_all();
    while let Some(ended) = readers.join_next().await {
        if let Ok(Err(error)) = ended {
            return Err(error);
        }
    }
    let mut moved: Vec<u64> = after.iter().zip(&before).map(|(after, before)| after - before).collect();
    let total: u64 = moved.iter().sum();
    moved.sort_unstable();
    let share = |at: usize| moved[at.min(connections - 1)] as f64 * connections as f64 / total.max(1) as f64;
    eprintln!(
        "  {connections} busy: shares of the mean, min {:.2}, p10 {:.2}, p50 {:.2}, p90 {:.2}, max {:.2}",
        share(0),
        share(connections / 10),
        share(connections / 2),
        share(connections * 9 / 10),
        share(connections - 1)
    );
    let mean = total as f64 / connections as f64;
    let slowest = moved.iter().copied().min().unwrap_or(0) as f64;
    Ok(Busy {
        aggregate: total as f64 / elapsed / 1e6,
        slowest_share: if mean > 0.0 { slowest / mean } else { 0.0 },
        rss_mib: rss_kib as f64 / 1024.0,
    })
}
