//! UDP interop with real peers run as subprocesses: shadowsocks-libev 3.3.5 (classic methods) and
//! shadowsocks-rust 1.25.0 (every method), both started with `"mode":"tcp_and_udp"`.
//!
//! ```text
//! SOCKS5 UDP ASSOCIATE -> our ss-local (in-process) -> their server (subprocess)  -> loopback UDP echo
//! SOCKS5 UDP ASSOCIATE -> their local (subprocess)  -> our ss-server (in-process) -> loopback UDP echo
//! ```
//!
//! Each round sends datagrams of a few sizes one at a time to an IPv4 echo target and checks every reply's
//! payload and source address. libev drops datagrams above about 2.7 KB, so its sizes stop at 2000 bytes;
//! shadowsocks-rust also gets 8000. A missing peer binary skips the test locally and fails it in CI (see
//! `ss_tests::skip`).

use std::net::SocketAddr;
use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_tests::peers::{
    start_peer_with_mode, Implementation, PeerMode, PeerProcess, PeerRole, LIBEV, SHADOWSOCKS_RUST,
};
use ss_tests::udp::{local_settings_udp, socks5_udp_associate, udp_echo_server, UdpAssociation};
use ss_tests::{server_settings, start_local, start_server, STEP};
use tokio::time::{timeout, Instant};

/// Upper bound for one method's whole round of checks.
const ROUND: Duration = Duration::from_secs(60);

/// The first datagram of a round, resent until it is echoed: a peer is judged ready by its TCP port,
/// and it may bind its UDP socket a moment later.
const WARM_UP: &[u8] = b"udp interop warm-up";
/// How long one warm-up attempt waits for its echo, and how long all of them may take.
const WARM_UP_TRY: Duration = Duration::from_millis(500);
const WARM_UP_TOTAL: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_local_to_libev_server() {
    our_local_to_their_server(LIBEV).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libev_local_to_our_server() {
    their_local_to_our_server(LIBEV).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_local_to_rust_server() {
    our_local_to_their_server(SHADOWSOCKS_RUST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_local_to_our_server() {
    their_local_to_our_server(SHADOWSOCKS_RUST).await;
}

/// Datagram sizes each peer relays: libev drops datagrams above about 2.7 KB.
fn sizes(implementation: Implementation) -> &'static [usize] {
    if implementation.server == LIBEV.server {
        &[1, 512, 1200, 2000]
    } else {
        &[1, 512, 1200, 2000, 8000]
    }
}

async fn our_local_to_their_server(implementation: Implementation) {
    let Some(server_binary) = implementation.server_binary().await else { return };
    let echo = udp_echo_server("127.0.0.1:0").await;
    for method in implementation.methods() {
        let theirs =
            start_peer_with_mode(&server_binary, method, PeerRole::Server, PeerMode::TcpAndUdp).await;
        let ours = start_local(local_settings_udp(method, theirs.addr)).await;
        check_round(ours.addr, echo, sizes(implementation), method, &theirs).await;
    }
}

async fn their_local_to_our_server(implementation: Implementation) {
    let Some(local_binary) = implementation.local_binary().await else { return };
    let echo = udp_echo_server("127.0.0.1:0").await;
    for method in implementation.methods() {
        let ours = start_server(server_settings(method)).await;
        let role = PeerRole::Local { server: ours.addr };
        let theirs = start_peer_with_mode(&local_binary, method, role, PeerMode::TcpAndUdp).await;
        check_round(theirs.addr, echo, sizes(implementation), method, &theirs).await;
    }
}

/// One association through the SOCKS5 proxy at `socks`, a datagram of each size to `echo`; a failure
/// names the method and shows the peer's log.
async fn check_round(
    socks: SocketAddr,
    echo: SocketAddr,
    sizes: &[usize],
    method: Method,
    peer: &PeerProcess,
) {
    let outcome = timeout(ROUND, exchange(socks, echo, sizes))
        .await
        .unwrap_or_else(|_| Err(format!("round took over {ROUND:?}")));
    if let Err(why) = outcome {
        panic!("{method}, peer at {}: {why}\n{}", peer.addr, peer.log());
    }
}

async fn exchange(socks: SocketAddr, echo: SocketAddr, sizes: &[usize]) -> Result<(), String> {
    let association = timeout(STEP, socks5_udp_associate(socks))
        .await
        .map_err(|_| "UDP ASSOCIATE timed out".to_owned())?
        .map_err(|e| format!("UDP ASSOCIATE: {e}"))?;
    let target = Address::Ip(echo);
    warm_up(&association, &target).await?;
    for &size in sizes {
        let payload = payload(size);
        association.send(&target, &payload).await;
        let (source, back) = loop {
            let reply = timeout(STEP, receive(&association))
                .await
                .map_err(|_| format!("no reply to the {size}-byte datagram within {STEP:?}"))??;
            // A late echo of a resent warm-up datagram is not this datagram's reply.
            if reply.1 != WARM_UP {
                break reply;
            }
        };
        if source != target {
            return Err(format!("the {size}-byte datagram's reply comes from {source}, not {target}"));
        }
        if back != payload {
            return Err(format!("the {size}-byte datagram came back as {} different bytes", back.len()));
        }
    }
    Ok(())
}

/// Sends [`WARM_UP`] until it is echoed, at most for [`WARM_UP_TOTAL`].
async fn warm_up(association: &UdpAssociation, target: &Address) -> Result<(), String> {
    let deadline = Instant::now() + WARM_UP_TOTAL;
    while Instant::now() < deadline {
        association.send(target, WARM_UP).await;
        let Ok(reply) = timeout(WARM_UP_TRY, receive(association)).await else { continue };
        let (source, back) = reply?;
        if back != WARM_UP || source != *target {
            return Err(format!("the warm-up datagram came back from {source} as {} bytes", back.len()));
        }
        return Ok(());
    }
    Err(format!("the warm-up datagram was never echoed within {WARM_UP_TOTAL:?}"))
}

/// One SOCKS5 UDP datagram from the relay: its source address and payload. Unlike
/// `UdpAssociation::recv`, a malformed datagram is an error, so the failure shows the peer's log.
async fn receive(association: &UdpAssociation) -> Result<(Address, Vec<u8>), String> {
    let mut buf = vec![0u8; 65_536];
    let (len, from) =
        association.socket.recv_from(&mut buf).await.map_err(|e| format!("recv from relay: {e}"))?;
    if from != association.relay {
        return Err(format!("datagram from {from}, not from the relay {}", association.relay));
    }
    let datagram = &buf[..len];
    if datagram.len() < 3 || datagram[..3] != [0, 0, 0] {
        return Err(format!("bad SOCKS5 UDP header (RSV, FRAG): {:02x?}", &datagram[..len.min(3)]));
    }
    let (source, used) = Address::parse(&datagram[3..]).map_err(|e| format!("reply source address: {e}"))?;
    Ok((source, datagram[3 + used..].to_vec()))
}

/// `size` pseudo-random bytes, different for every size and the same every run.
fn payload(size: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    blake3::Hasher::new()
        .update(format!("udp interop payload of {size} bytes").as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}
