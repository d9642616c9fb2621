//! A SIP003 plugin for tests that the real plugins cannot serve: it relays TCP, and with the option
//! `udp` also UDP (SIP003u), unchanged between its two addresses, so it can stand on either side.
//!
//! ```text
//!   client side (default):  listens on SS_LOCAL_HOST:SS_LOCAL_PORT,   forwards to SS_REMOTE_HOST:SS_REMOTE_PORT
//!   option `server`:        listens on SS_REMOTE_HOST:SS_REMOTE_PORT, forwards to SS_LOCAL_HOST:SS_LOCAL_PORT
//! ```
//!
//! Options (SS_PLUGIN_OPTIONS): `server`, `udp` (relay UDP too), `no_tcp` (UDP only), `ignore_sigterm`
//! (for the test that a plugin deaf to SIGTERM is killed after the grace period). It prints one line to stderr when it
//! listens, and one line per UDP peer it sees.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{lookup_host, TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let options = ss_net::plugin::options::decode(&std::env::var("SS_PLUGIN_OPTIONS").unwrap_or_default());
    let flag = |name: &str| options.iter().any(|(key, _)| key == name);
    let remote = resolve(&var("SS_REMOTE_HOST")?, &var("SS_REMOTE_PORT")?).await?;
    let local = resolve(&var("SS_LOCAL_HOST")?, &var("SS_LOCAL_PORT")?).await?;
    let (listen, forward) = if flag("server") { (remote, local) } else { (local, remote) };
    if flag("ignore_sigterm") {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|error| error.to_string())?;
        tokio::spawn(async move { while terminate.recv().await.is_some() {} });
    }
    if flag("udp") {
        let socket = UdpSocket::bind(listen).await.map_err(|error| format!("bind UDP {listen}: {error}"))?;
        tokio::spawn(relay_udp(Arc::new(socket), forward));
    }
    if flag("no_tcp") {
        eprintln!("sip003-relay: listening on {listen} (UDP only), forwarding to {forward}");
        return std::future::pending().await;
    }
    let listener = TcpListener::bind(listen).await.map_err(|error| format!("bind {listen}: {error}"))?;
    eprintln!("sip003-relay: listening on {listen}, forwarding to {forward}");
    loop {
        let (mut inbound, _) = listener.accept().await.map_err(|error| error.to_string())?;
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(forward).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn resolve(host: &str, port: &str) -> Result<SocketAddr, String> {
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let mut addrs = lookup_host((host, port)).await.map_err(|error| format!("{host}: {error}"))?;
    addrs.next().ok_or_else(|| format!("{host}: no address"))
}

/// One upstream socket per peer, replies sent back to that peer.
async fn relay_udp(socket: Arc<UdpSocket>, forward: SocketAddr) {
    let peers: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65_536];
    while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
        let upstream = {
            let mut peers = peers.lock().await;
            match peers.get(&peer) {
                Some(upstream) => upstream.clone(),
                None => {
                    let bind: SocketAddr = if forward.is_ipv4() {
                        ([127, 0, 0, 1], 0).into()
                    } else {
                        "[::1]:0".parse().unwrap_or(forward)
                    };
                    let Ok(upstream) = UdpSocket::bind(bind).await else { continue };
                    if upstream.connect(forward).await.is_err() {
                        continue;
                    }
                    eprintln!("sip003-relay: UDP from {peer}");
                    let upstream = Arc::new(upstream);
                    peers.insert(peer, upstream.clone());
                    let (back, upstream_reader) = (socket.clone(), upstream.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(len) = upstream_reader.recv(&mut buf).await {
                            let _ = back.send_to(&buf[..len], peer).await;
                        }
                    });
                    upstream
                }
            }
        };
        let _ = upstream.send(&buf[..len]).await;
    }
}
