//! One host floods the server with garbage connections; clients on another host must not notice.
//!
//! The server runs as a child process with RLIMIT_NOFILE 1,024 (soft and hard, the common default) and
//! its default 10 s handshake timeout. From 127.0.0.1, 200 connections a second for 30 s each send 64
//! random bytes and stay open: 2,000 of them would be in their handshake at once, twice the descriptor
//! limit. Meanwhile a client on 127.0.0.2 makes a real request every 100 ms. It must be served (99% or
//! more, each within two handshake timeouts), the server must never fail an accept for want of
//! descriptors, and once the flood is over its descriptor count must come back to the idle level.
//!
//! What makes it hold (ss-server's `admission` module and `ss_net::process`): the open-file limit is
//! raised to the hard limit and the connection cap fitted to it, so accept cannot run out of
//! descriptors; one source may have a quarter of the slots in their handshake with the normal deadline,
//! as many again with half the deadline, and connections beyond that are closed at once.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use ss_crypto::{Address, Method};
use ss_tests::probing::{random_bytes, round_trip_from};
use ss_tests::subprocess::{binaries, open_fds, Launch, Subprocess};
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{interval, sleep_until, timeout, Instant};

const NOFILE: u64 = 1024;
const HANDSHAKE: Duration = Duration::from_secs(10);
const FLOOD_RATE_PER_SECOND: u64 = 200;
const FLOOD_TIME: Duration = Duration::from_secs(30);
const VALID_EVERY: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_flood_from_one_host_leaves_clients_on_another_unaffected() {
    raise_fd_limit();
    let binaries = binaries().await;
    let method = Method::Aes128Gcm;
    let password = test_password(method);
    let server = Subprocess::start_on_free_port(|port| {
        Launch::new(&binaries.server)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-m", method.name(), "-k", &password])
            .args(["--allow-private-targets"])
            .nofile(NOFILE)
    })
    .await;
    let ready = Instant::now();
    let pid = server.pid();
    let target = Address::Ip(echo_server("127.0.0.1:0").await);
    // The readiness probe's connection (it sent nothing) is held until its handshake deadline.
    sleep_until(ready + HANDSHAKE + Duration::from_millis(500)).await;
    let idle_fds = open_fds(pid).expect("open descriptors").len();

    let flood_end = Instant::now() + FLOOD_TIME;
    let flood = tokio::spawn(flood(server.addr, flood_end));
    let served = Arc::new(AtomicUsize::new(0));
    let mut valid = JoinSet::new();
    let mut ticks = interval(VALID_EVERY);
    while Instant::now() < flood_end {
        ticks.tick().await;
        let (served, target) = (served.clone(), target.clone());
        let server = server.addr;
        valid.spawn(async move {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
            let request = round_trip_from(source, server, method, &target, b"still served?");
            if let Ok(Ok(back)) = timeout(2 * HANDSHAKE, request).await {
                if back == b"still served?" {
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let attempts = valid.len();
    while valid.join_next().await.is_some() {}
    let flooded = flood.await.expect("flood task");
    let served = served.load(Ordering::Relaxed);
    eprintln!(
        "{flooded} garbage connections from 127.0.0.1; {served} of {attempts} requests from 127.0.0.2 served"
    );
    assert!(flooded >= 5_000, "the flood did not happen: {flooded} connections");
    assert!(served * 100 >= attempts * 99, "only {served} of {attempts} served\n{}", server.log());
    assert_eq!(
        server.lines_containing("accept failed"),
        0,
        "accept ran out of descriptors\n{}",
        server.log()
    );

    // Every flood connection is gone by its handshake deadline; the descriptors come back.
    let deadline = Instant::now() + 2 * HANDSHAKE;
    let mut now_open = open_fds(pid).expect("open descriptors").len();
    while now_open > idle_fds && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now_open = open_fds(pid).expect("open descriptors").len();
    }
    assert!(
        now_open <= idle_fds,
        "{now_open} descriptors open after the flood, {idle_fds} before\n{}",
        server.log()
    );
}

/// Opens garbage connections from 127.0.0.1 at the flood rate until `end`, each kept open until the
/// server closes it; returns how many were opened.
async fn flood(server: std::net::SocketAddr, end: Instant) -> usize {
    let mut ticks = interval(Duration::from_secs(1) / FLOOD_RATE_PER_SECOND as u32);
    let mut held = JoinSet::new();
    let mut opened = 0;
    while Instant::now() < end {
        ticks.tick().await;
        let Ok(Ok(mut stream)) = timeout(STEP, TcpStream::connect(server)).await else { continue };
        opened += 1;
        held.spawn(async move {
            let _ = stream.write_all(&random_bytes(64)).await;
            let mut sink = [0u8; 64];
            // The server closes it at once (over the budget) or at its handshake deadline.
            let _ = timeout(2 * HANDSHAKE, async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
        while held.try_join_next().is_some() {}
    }
    held.abort_all();
    opened
}

/// Raises this process's soft descriptor limit to its hard limit: the flood holds a few thousand.
fn raise_fd_limit() {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

/// The open-file limit: raised to the hard limit by default, set by libev's `-n`/`nofile`, logged, and
/// the connection cap fitted to it, by both binaries (one start-up path, `ss_net::process::run_main`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_or_set_and_the_cap_fitted_to_it() {
    let binaries = binaries().await;
    let method = Method::Aes128Gcm;
    let password = test_password(method);
    for (name, binary) in [("ss-server", &binaries.server), ("ss-local", &binaries.local)] {
        for (nofile_flag, expected) in [(None, 2048), (Some("1000"), 1000)] {
            let process = Subprocess::start_on_free_port(|port| {
                let port = port.to_string();
                // ss-local listens on -l and never dials its server (port 9) here.
                let (server_port, local_port) =
                    if name == "ss-server" { (&*port, None) } else { ("9", Some(&*port)) };
                let mut launch = Launch::new(binary)
                    .args(["-s", "127.0.0.1", "-p", server_port, "-m", method.name(), "-k", &password])
                    .nofile(2048);
                if let Some(local_port) = local_port {
                    launch = launch.args(["-l", local_port]);
                }
                match nofile_flag {
                    Some(value) => launch.args(["-n", value]),
                    None => launch,
                }
            })
            .await;
            let limits = std::fs::read_to_string(format!("/proc/{}/limits", process.pid())).expect("limits");
            let soft: Vec<&str> = limits
                .lines()
                .find(|line| line.starts_with("Max open files"))
                .map(|line| line.split_whitespace().skip(3).take(2).collect())
                .expect("Max open files line");
            assert_eq!(soft[0], expected.to_string(), "{name}: soft limit with -n {nofile_flag:?}\n{limits}");
            let (cap, _) = ss_net::process::fit_to_descriptors(expected, 1, 10_000, 0);
            let logged = format!("nofile={expected} max_connections={cap}");
            assert_eq!(process.lines_containing(&logged), 1, "{name}: {logged}\n{}", process.log());
        }
    }
}
