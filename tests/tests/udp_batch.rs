//! Bursts through the batched UDP paths (ss-net's udp_batch): SOCKS5 UDP ASSOCIATE -> ss-local ->
//! ss-server -> loopback UDP echo, with datagrams written back to back so that ss-local and ss-server
//! find many waiting at once (one recvmmsg), and replies of equal size leave in GSO runs.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_net::udp_batch::{self, BatchSender};
use ss_tests::udp::*;
use ss_tests::*;
use tokio::time::timeout;

const BURST: usize = 200;
/// Mixed sizes, small enough that a whole burst fits the kernel's default receive buffer (208 KiB,
/// where a small datagram costs about 1 KiB) of each socket on the way even when a debug build falls
/// behind: the test checks batching, not capacity (larger bursts overflowed ss-local's relay socket,
/// counted in RcvbufErrors).
const SIZES: [usize; 6] = [1, 32, 100, 200, 16, 150];

fn payload(i: usize, size: usize) -> Vec<u8> {
    let mut bytes = format!("datagram {i:03} ").into_bytes();
    bytes.resize(size.max(bytes.len()), (i % 251) as u8);
    bytes
}

/// Receives `count` replies; returns their payloads in arrival order.
async fn replies(association: &UdpAssociation, count: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match timeout(STEP, association.recv()).await {
            Ok((_, payload)) => got.push(payload),
            Err(_) => panic!("{} of {count} replies came back", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_mixed_sizes_comes_back_whole_and_in_order() {
    for method in [Method::Aes128Gcm, Method::Blake3Aes128Gcm] {
        let server = start_server(server_settings(method)).await;
        let local = start_local(local_settings_udp(method, server.addr)).await;
        let echo = udp_echo_server("127.0.0.1:0").await;
        let association = timeout(STEP, socks5_udp_associate(local.addr)).await.unwrap().unwrap();
        let sent: Vec<Vec<u8>> = (0..BURST).map(|i| payload(i, SIZES[i % SIZES.len()])).collect();
        for bytes in &sent {
            association.send(&Address::Ip(echo), bytes).await;
        }
        let got = replies(&association, BURST).await;
        // One client, one association, one echo: every hop keeps the order it received in.
        assert!(got == sent, "{method}: the burst came back different (lost, changed or reordered)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gso_burst_from_the_application_reaches_the_server_whole() {
    gso_burst_comes_back(1200).await;
}

/// A kernel that refuses a GSO run: on a loopback of MTU 1,280, 1,400-byte segments do not fit (Linux
/// 6.18 says EMSGSIZE; older kernels EINVAL, after which quinn-udp turns GSO off). The sender falls back
/// to single sends, which the kernel fragments, and everything still arrives.
#[test]
fn a_refused_gso_run_goes_singly_and_arrives() {
    let thread = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
        for args in [&["link", "set", "lo", "up"][..], &["link", "set", "lo", "mtu", "1280"]] {
            match Command::new("ip").args(args).status() {
                Ok(status) if status.success() => {}
                other => return Err(format!("ip {}: {other:?}", args.join(" "))),
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        runtime.block_on(async {
            let finished = timeout(Duration::from_secs(60), gso_burst_comes_back(1400)).await;
            assert!(finished.is_ok(), "the test did not finish in 60 s");
        });
        println!("GSO segments after the refusals: {}", udp_batch::gso_segments());
        Ok::<_, String>(())
    });
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            ss_tests::skip::skip(&format!("no network namespace: {reason}"), "run as root with iproute2")
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// 40 SOCKS5 datagrams with payloads of `size` bytes and a shorter last one, sent by the application
/// as GSO runs, come back through ss-local, ss-server and the echo.
async fn gso_burst_comes_back(size: usize) {
    let method = Method::Blake3Aes256Gcm;
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings_udp(method, server.addr)).await;
    let echo = udp_echo_server("127.0.0.1:0").await;
    let association = timeout(STEP, socks5_udp_associate(local.addr)).await.unwrap().unwrap();
    // Opening datagram: ss-local learns the application's port from it.
    association.send(&Address::Ip(echo), b"hello").await;
    assert_eq!(timeout(STEP, association.recv()).await.unwrap().1, b"hello");

    // Handed to the kernel as GSO runs (one sendmsg each where it has GSO; ss-local's relay socket
    // then gets them as GRO buffers).
    let mut sender = BatchSender::new();
    let mut sent = HashMap::new();
    for i in 0..40 {
        let bytes = payload(i, if i == 39 { 500 } else { size });
        sender
            .push(association.relay, i, |out: &mut Vec<u8>| {
                out.extend_from_slice(&[0, 0, 0]);
                Address::Ip(echo).write_to(out);
                out.extend_from_slice(&bytes);
                Ok::<_, ()>(())
            })
            .unwrap();
        sent.insert(bytes, i);
    }
    let outcomes: Vec<_> = timeout(STEP, sender.send(&association.socket)).await.unwrap().collect();
    assert!(outcomes.iter().all(|&(_, sent)| sent), "{outcomes:?}");
    for payload in replies(&association, sent.len()).await {
        assert!(sent.remove(&payload).is_some(), "a reply that was not sent, or twice");
    }
    assert!(sent.is_empty());
}
