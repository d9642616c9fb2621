//! Several servers on the client, end to end on loopback: three ss-servers, each behind a small front
//! proxy the test controls, so one can be killed (refused), blocked (accepts, never answers) or slowed
//! (a delay on every chunk), and so that the test can count what reaches each server.
//!
//! The front counts every connection it accepts (checks included) and, separately, the connections
//! that carried a real payload (over 500 bytes upward: a check with aes-128-gcm carries about 60).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_local::balance::{Balancer, Policy, ServerId, Strategy};
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const METHOD: Method = Method::Aes128Gcm;
/// A payload big enough to tell a real connection from a check at the front.
const PAYLOAD: usize = 1000;
/// How long the test client waits for its echo before giving up on a connection.
const CLIENT_WAIT: Duration = Duration::from_secs(1);

/// Whole-test bound.
const TEST_LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_leaves_a_dead_and_a_silent_server_and_comes_back() {
    timeout(TEST_LIMIT, failover_scenario()).await.expect("test took too long");
}

async fn failover_scenario() {
    let echo = echo_server("127.0.0.1:0").await;
    let fronts = [Front::start().await, Front::start().await, Front::start().await];
    let policy = Policy {
        backoff_min: Duration::from_millis(500),
        backoff_max: Duration::from_secs(2),
        check_target: Address::Ip(echo),
        ..Policy::default()
    };
    // A long idle timeout: a silent server must be noticed by the first-byte deadline (the connect
    // timeout, 2 s), not when its connections end.
    let (local, balancer) = local_for(&fronts, policy, Duration::from_secs(600)).await;
    let (a, b) = (ServerId::of(&entry(fronts[0].addr)), ServerId::of(&entry(fronts[1].addr)));

    for _ in 0..3 {
        round_trip(local, echo).await.expect("all servers up");
    }
    assert_eq!(served(&fronts), [3, 0, 0], "failover uses the first server");

    // Killed: refused at once, so every connection still succeeds (through b) promptly.
    fronts[0].kill().await;
    for _ in 0..4 {
        let started = Instant::now();
        round_trip(local, echo).await.expect("the next server takes over within the connection");
        assert!(started.elapsed() < Duration::from_secs(2), "within a connect timeout");
    }
    assert!(balancer.is_down(&a), "three refusals in a row mark it down");
    assert_eq!(served(&fronts), [3, 4, 0]);

    // Blocked: b accepts and never answers. Connections through it fail until it is marked down.
    fronts[1].set(Mode::Block);
    let mut changes = balancer.changes();
    changes.borrow_and_update();
    let attempts: Vec<_> = (0..3).map(|_| tokio::spawn(round_trip(local, echo))).collect();
    for attempt in attempts {
        assert!(attempt.await.unwrap().is_err(), "a silent server gives the client nothing");
    }
    // Each failure counts when its request has waited a connect timeout for a first byte.
    let silent_since = Instant::now();
    while !balancer.is_down(&b) {
        changes.changed().await.unwrap();
    }
    assert!(silent_since.elapsed() < Duration::from_secs(5), "down a connect timeout after the requests");
    let before = served(&fronts);
    for _ in 0..5 {
        round_trip(local, echo).await.expect("no connection fails once the server is down");
    }
    assert_eq!(served(&fronts)[2] - before[2], 5, "the third server serves them");
    assert_eq!(served(&fronts)[1], before[1], "nothing more reaches the silent server");

    // Recovery: both come back; the re-checks (with backoff) find them and failover returns to a.
    fronts[0].revive().await;
    fronts[1].set(Mode::Pass);
    while balancer.is_down(&a) || balancer.is_down(&b) {
        changes.changed().await.unwrap();
    }
    let before = served(&fronts);
    round_trip(local, echo).await.unwrap();
    assert_eq!(served(&fronts)[0], before[0] + 1, "back on the first server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastest_avoids_the_slow_server_and_does_not_flap_between_close_ones() {
    timeout(TEST_LIMIT, fastest_scenario()).await.expect("test took too long");
}

async fn fastest_scenario() {
    let echo = echo_server("127.0.0.1:0").await;
    let fronts = [Front::start().await, Front::start().await, Front::start().await];
    // The slow one first, so that list order alone would pick it; the other two within 10 ms.
    fronts[0].set(Mode::Delay(Duration::from_millis(300)));
    fronts[2].set(Mode::Delay(Duration::from_millis(10)));
    let policy = Policy {
        strategy: Strategy::Fastest,
        check_target: Address::Ip(echo),
        measure_interval: Duration::from_millis(500),
        ..Policy::default()
    };
    let (local, _balancer) = local_for(&fronts, policy, Duration::from_secs(10)).await;
    // Warm-up: the first connections go by list order while the checks measure every server.
    for _ in 0..3 {
        round_trip(local, echo).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = served(&fronts);
    for _ in 0..30 {
        round_trip(local, echo).await.unwrap();
    }
    let after = served(&fronts);
    let delta: Vec<usize> = (0..3).map(|i| after[i] - before[i]).collect();
    assert_eq!(delta[0], 0, "the slow server is avoided: {delta:?}");
    assert!(delta[1] == 30 || delta[2] == 30, "one fast server, no flapping between close ones: {delta:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_sends_nothing() {
    timeout(TEST_LIMIT, idle_scenario()).await.expect("test took too long");
}

async fn idle_scenario() {
    let echo = echo_server("127.0.0.1:0").await;
    let fronts = [Front::start().await, Front::start().await, Front::start().await];
    let policy = Policy {
        strategy: Strategy::Fastest,
        check_target: Address::Ip(echo),
        measure_interval: Duration::from_millis(300),
        // The check task looks once a second: a window of two holds at least one look.
        in_use_window: Duration::from_secs(2),
        ..Policy::default()
    };
    let (local, _balancer) = local_for(&fronts, policy, Duration::from_secs(10)).await;
    round_trip(local, echo).await.unwrap();
    // Timing is the behaviour here: past the in-use window, then a quiet stretch of several check
    // intervals in which nothing may reach any server.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = accepted(&fronts);
    assert!(before.iter().sum::<usize>() >= 3, "in use, fastest measured the servers: {before:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(accepted(&fronts), before, "nothing on the wire while idle");
}

/// ss-local in front of `fronts` (one ss-server behind each), with `policy`; its balancer for checks.
async fn local_for(fronts: &[Front], policy: Policy, idle: Duration) -> (SocketAddr, Arc<Balancer>) {
    let mut settings = ss_local::Settings::new(fronts.iter().map(|front| entry(front.addr)).collect());
    settings.balancer = Arc::new(Balancer::new(policy));
    settings.connect_timeout = Duration::from_secs(2);
    settings.idle_timeout = idle;
    let balancer = settings.balancer.clone();
    let local = start_local(settings).await;
    let addr = local.addr;
    // The shutdown token goes with the test's runtime.
    std::mem::forget(local);
    (addr, balancer)
}

fn entry(addr: SocketAddr) -> ss_local::Server {
    ss_local::Server::new(addr.ip().to_string(), addr.port(), METHOD, test_key(METHOD))
}

/// One connection through ss-local to the echo target: a payload out, the same back within the wait.
async fn round_trip(local: SocketAddr, echo: SocketAddr) -> std::io::Result<()> {
    let exchange = async {
        let mut stream = socks5_connect(local, &Address::Ip(echo)).await?;
        let payload = vec![7u8; PAYLOAD];
        stream.write_all(&payload).await?;
        let mut back = vec![0u8; PAYLOAD];
        stream.read_exact(&mut back).await?;
        Ok(())
    };
    timeout(CLIENT_WAIT, exchange).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

fn served(fronts: &[Front; 3]) -> [usize; 3] {
    fronts.each_ref().map(|front| front.served.load(Ordering::SeqCst))
}

fn accepted(fronts: &[Front; 3]) -> [usize; 3] {
    fronts.each_ref().map(|front| front.accepted.load(Ordering::SeqCst))
}

/// What a front does with the connections it accepts.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Pass,
    /// Accept, read, never forward or answer.
    Block,
    /// Forward with this delay before each chunk from the server.
    Delay(Duration),
}

/// A proxy in front of one ss-server that the test can kill, revive, block or slow.
struct Front {
    addr: SocketAddr,
    backend: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    accepted: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Front {
    async fn start() -> Front {
        let server = start_server(server_settings(METHOD)).await;
        let backend = server.addr;
        std::mem::forget(server);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = Front {
            addr: listener.local_addr().unwrap(),
            backend,
            mode: Arc::new(Mutex::new(Mode::Pass)),
            accepted: Arc::default(),
            served: Arc::default(),
            task: Mutex::new(None),
        };
        front.serve(listener);
        front
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Closes the listener: new connections are refused; open ones go on. Returns once the listener
    /// is gone (a connection queued on a listener being dropped would be reset, not refused).
    async fn kill(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    async fn revive(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let (backend, mode, accepted, served) =
            (self.backend, self.mode.clone(), self.accepted.clone(), self.served.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let mode = *mode.lock().unwrap();
                tokio::spawn(forward(client, backend, mode, served.clone()));
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }
}

async fn forward(client: TcpStream, backend: SocketAddr, mode: Mode, served: Arc<AtomicUsize>) {
    let (mut client_read, mut client_write) = client.into_split();
    let upward = Arc::new(AtomicU64::new(0));
    let count = |n: usize| {
        let before = upward.fetch_add(n as u64, Ordering::SeqCst);
        if before < 500 && before + n as u64 >= 500 {
            served.fetch_add(1, Ordering::SeqCst);
        }
    };
    if let Mode::Block = mode {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            count(n);
        }
        // Never answers and never closes, even after the peer's FIN (a check half-closes at once):
        // the connection is held until the test's runtime ends.
        std::future::pending::<()>().await;
        drop(client_write);
        return;
    }
    let delay = match mode {
        Mode::Delay(delay) => delay,
        _ => Duration::ZERO,
    };
    let Ok(server) = TcpStream::connect(backend).await else { return };
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            count(n);
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            // Timing is the behaviour: this front is the slow path.
            tokio::time::sleep(delay).await;
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        // The end is slow too: a check's answer may be an EOF alone.
        tokio::time::sleep(delay).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}
