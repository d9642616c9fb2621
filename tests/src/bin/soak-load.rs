//! The load generator of `scripts/soak.sh`: mixed TCP and UDP traffic through a running ss-local
//! (SOCKS5) to echo servers of its own on loopback, with every echoed byte checked.
//!
//! ```text
//! soak-load ports N                         N free loopback ports (TCP and UDP), one a line
//! soak-load run --proxy ADDR --seconds S    [--tcp-workers 8] [--udp-workers 3] [--seed 1]
//! ```
//!
//! TCP workers open a CONNECT, echo 1 to 4 payloads (1 B to 1 MiB, sent in random-sized writes while
//! the echo is read back), half-close and expect a clean EOF; one connection in 20 is dropped halfway
//! through a payload instead, to exercise the teardown of busy relays. UDP workers open an association,
//! send 100 to 1000 datagrams (16 B to 1.4 KB, each carrying a BLAKE3 digest of its body) one at a time,
//! then close the control connection. A payload whose echo hashes differently counts its differing bytes
//! as corrupted. `run` prints progress to stderr every 10 s and `name value` totals to stdout at the end.
//! Payloads come from a seeded generator, so a run can be repeated.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use ss_crypto::Address;
use ss_tests::udp::{socks5_udp_associate, udp_echo_server};
use ss_tests::{echo_server, socks5_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{timeout, timeout_at, Instant};

/// Time allowed for any one step (connect, one echo round, the closing EOF).
const STEP: Duration = Duration::from_secs(30);
/// Time a datagram's echo may take before it counts as lost.
const UDP_WAIT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ports") => ports(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1)),
        Some("run") => Options::parse(&args[1..]).and_then(run),
        _ => Err(io::Error::other("usage: soak-load ports N | soak-load run --proxy ADDR --seconds S")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("soak-load: {error}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    proxy: SocketAddr,
    seconds: u64,
    tcp_workers: u64,
    udp_workers: u64,
    seed: u64,
}

impl Options {
    fn parse(args: &[String]) -> io::Result<Options> {
        let mut options = Options {
            proxy: SocketAddr::from(([127, 0, 0, 1], 1080)),
            seconds: 60,
            tcp_workers: 8,
            udp_workers: 3,
            seed: 1,
        };
        for pair in args.chunks(2) {
            let [name, value] = pair else { return Err(io::Error::other(format!("{pair:?}: no value"))) };
            let number = || value.parse::<u64>().map_err(|_| io::Error::other(format!("{name} {value:?}")));
            match name.as_str() {
                "--proxy" => options.proxy = value.parse().map_err(io::Error::other)?,
                "--seconds" => options.seconds = number()?,
                "--tcp-workers" => options.tcp_workers = number()?,
                "--udp-workers" => options.udp_workers = number()?,
                "--seed" => options.seed = number()?,
                _ => return Err(io::Error::other(format!("unknown option {name}"))),
            }
        }
        Ok(options)
    }
}

/// Totals, printed as `name value` lines.
#[derive(Default)]
struct Stats {
    tcp_sessions: AtomicU64,
    tcp_aborted: AtomicU64,
    tcp_bytes: AtomicU64,
    tcp_corrupted_bytes: AtomicU64,
    tcp_errors: AtomicU64,
    udp_associations: AtomicU64,
    udp_sent: AtomicU64,
    udp_received: AtomicU64,
    udp_bytes: AtomicU64,
    udp_corrupted_bytes: AtomicU64,
    udp_lost: AtomicU64,
    udp_late: AtomicU64,
    udp_errors: AtomicU64,
}

impl Stats {
    fn lines(&self) -> Vec<(&'static str, u64)> {
        [
            ("tcp_sessions", &self.tcp_sessions),
            ("tcp_aborted", &self.tcp_aborted),
            ("tcp_bytes", &self.tcp_bytes),
            ("tcp_corrupted_bytes", &self.tcp_corrupted_bytes),
            ("tcp_errors", &self.tcp_errors),
            ("udp_associations", &self.udp_associations),
            ("udp_sent", &self.udp_sent),
            ("udp_received", &self.udp_received),
            ("udp_bytes", &self.udp_bytes),
            ("udp_corrupted_bytes", &self.udp_corrupted_bytes),
            ("udp_lost", &self.udp_lost),
            ("udp_late", &self.udp_late),
            ("udp_errors", &self.udp_errors),
        ]
        .map(|(name, counter)| (name, counter.load(Relaxed)))
        .to_vec()
    }
}

fn add(counter: &AtomicU64, value: usize) {
    counter.fetch_add(value as u64, Relaxed);
}

/// Prints `count` loopback ports that are free for both TCP and UDP right now.
fn ports(count: usize) -> io::Result<()> {
    let mut held = Vec::new();
    while held.len() < count {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
            println!("{port}");
            held.push((tcp, udp));
        }
    }
    Ok(())
}

fn run(options: Options) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let tcp_echo = echo_server("127.0.0.1:0").await;
        let udp_echo = udp_echo_server("127.0.0.1:0").await;
        let stats = Arc::new(Stats::default());
        let deadline = Instant::now() + Duration::from_secs(options.seconds);
        let mut workers = tokio::task::JoinSet::new();
        for index in 0..options.tcp_workers {
            let (stats, mut rng) = (stats.clone(), Rng(options.seed.wrapping_mul(1000) + index));
            workers.spawn(async move {
                let target = Address::Ip(tcp_echo);
                while Instant::now() < deadline {
                    if let Err(error) = tcp_session(options.proxy, &target, &mut rng, &stats).await {
                        stats.tcp_errors.fetch_add(1, Relaxed);
                        eprintln!("soak-load: tcp: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
        for index in 0..options.udp_workers {
            let (stats, mut rng) = (stats.clone(), Rng(options.seed.wrapping_mul(1000) + 500 + index));
            workers.spawn(async move {
                while Instant::now() < deadline {
                    if let Err(error) = udp_session(options.proxy, udp_echo, &mut rng, &stats, deadline).await
                    {
                        stats.udp_errors.fetch_add(1, Relaxed);
                        eprintln!("soak-load: udp: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
        let start = Instant::now();
        let mut progress = tokio::time::interval_at(start + Duration::from_secs(10), Duration::from_secs(10));
        loop {
            tokio::select! {
                joined = workers.join_next() => if joined.is_none() { break },
                _ = progress.tick() => {
                    let totals: Vec<String> =
                        stats.lines().iter().map(|(name, value)| format!("{name}={value}")).collect();
                    eprintln!("t={}s {}", start.elapsed().as_secs(), totals.join(" "));
                }
            }
        }
        for (name, value) in stats.lines() {
            println!("{name} {value}");
        }
        Ok(())
    })
}

/// One CONNECT: a few echo rounds, then half-close and a clean EOF (or an abort halfway).
async fn tcp_session(proxy: SocketAddr, target: &Address, rng: &mut Rng, stats: &Stats) -> io::Result<()> {
    let stream = timeout(STEP, socks5_connect(proxy, target)).await??;
    let (mut reader, mut writer) = stream.into_split();
    let abort = rng.below(20) == 0;
    for _ in 0..1 + rng.below(4) {
        let payload = rng.payload();
        if abort {
            writer.write_all(&payload[..payload.len() / 2]).await?;
            stats.tcp_aborted.fetch_add(1, Relaxed);
            return Ok(()); // dropped with data in flight both ways
        }
        let seed = rng.next();
        let (sent, received) = timeout(STEP, async {
            tokio::join!(write_in_pieces(&mut writer, &payload, seed), read_len(&mut reader, payload.len()))
        })
        .await?;
        sent?;
        let received = received?;
        if blake3::hash(&received) != blake3::hash(&payload) {
            let differing = received.iter().zip(&payload).filter(|(got, sent)| got != sent).count();
            add(&stats.tcp_corrupted_bytes, differing);
        }
        add(&stats.tcp_bytes, payload.len());
    }
    writer.shutdown().await?;
    let mut extra = Vec::new();
    timeout(STEP, reader.read_to_end(&mut extra)).await??;
    add(&stats.tcp_corrupted_bytes, extra.len());
    stats.tcp_sessions.fetch_add(1, Relaxed);
    Ok(())
}

async fn write_in_pieces(writer: &mut OwnedWriteHalf, payload: &[u8], seed: u64) -> io::Result<()> {
    let mut rng = Rng(seed);
    let mut at = 0;
    while at < payload.len() {
        let end = (at + 1 + rng.below(65_536) as usize).min(payload.len());
        writer.write_all(&payload[at..end]).await?;
        at = end;
    }
    Ok(())
}

async fn read_len(reader: &mut OwnedReadHalf, len: usize) -> io::Result<Vec<u8>> {
    let mut received = vec![0; len];
    reader.read_exact(&mut received).await?;
    Ok(received)
}

/// One association: datagrams sent one at a time, each waiting for its echo.
async fn udp_session(
    proxy: SocketAddr,
    target: SocketAddr,
    rng: &mut Rng,
    stats: &Stats,
    deadline: Instant,
) -> io::Result<()> {
    let association = timeout(STEP, socks5_udp_associate(proxy)).await??;
    stats.udp_associations.fetch_add(1, Relaxed);
    let mut buf = vec![0u8; 65_536];
    for sequence in 0..100 + rng.below(900) {
        if Instant::now() >= deadline {
            break;
        }
        let mut body = vec![0; 16 + rng.below(1385) as usize];
        rng.fill(&mut body);
        body[..8].copy_from_slice(&sequence.to_be_bytes());
        let mut datagram = vec![0, 0, 0];
        Address::Ip(target).write_to(&mut datagram);
        datagram.extend_from_slice(&blake3::hash(&body).as_bytes()[..16]);
        datagram.extend_from_slice(&body);
        association.socket.send_to(&datagram, association.relay).await?;
        stats.udp_sent.fetch_add(1, Relaxed);
        let wait_until = Instant::now() + UDP_WAIT;
        loop {
            let Ok(received) = timeout_at(wait_until, association.socket.recv_from(&mut buf)).await else {
                stats.udp_lost.fetch_add(1, Relaxed);
                break;
            };
            let (len, _) = received?;
            match echoed_sequence(&buf[..len], &Address::Ip(target)) {
                Some(echoed) if echoed == sequence => {
                    stats.udp_received.fetch_add(1, Relaxed);
                    add(&stats.udp_bytes, body.len());
                    break;
                }
                Some(_) => stats.udp_late.fetch_add(1, Relaxed), // the echo of one counted lost earlier
                None => stats.udp_corrupted_bytes.fetch_add(len as u64, Relaxed),
            };
        }
    }
    Ok(()) // dropping the association closes its control connection
}

/// The sequence number of an intact echo from `source`; `None` if the header or digest is wrong.
fn echoed_sequence(datagram: &[u8], source: &Address) -> Option<u64> {
    let (header, rest) = datagram.split_first_chunk::<3>()?;
    let (from, used) = Address::parse(rest).ok()?;
    let (digest, body) = rest.get(used..)?.split_first_chunk::<16>()?;
    let intact = *header == [0, 0, 0] && from == *source && blake3::hash(body).as_bytes()[..16] == *digest;
    let sequence = body.first_chunk::<8>()?;
    intact.then(|| u64::from_be_bytes(*sequence))
}

/// SplitMix64: fast, seedable, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
    }

    /// Mostly small payloads, some medium, one in ten up to 1 MiB.
    fn payload(&mut self) -> Vec<u8> {
        let len = match self.below(10) {
            0 => 65_536 + self.below((1 << 20) - 65_536 + 1),
            1..=3 => 4_096 + self.below(61_440),
            _ => 1 + self.below(4_096),
        };
        let mut payload = vec![0; len as usize];
        self.fill(&mut payload);
        payload
    }
}
