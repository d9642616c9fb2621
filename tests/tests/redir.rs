//! Transparent proxying (ss-local's `redir` listeners) on a router made of network namespaces this test
//! creates, with nftables rules inside the router namespace only:
//!
//! ```text
//!  client ns                 router ns                                     remote ns
//!  192.0.2.2       c0 ─ rc   192.0.2.1        rr ─ t0   198.51.100.10 (page on :80, UDP echo on :53)
//!  2001:db8:2::2             2001:db8:2::1    198.51.100.1  2001:db8:3::10
//!                            2001:db8:3::1
//!                            nft: redirect (TCP) or tproxy (TCP+UDP) -> ss-local redir -> ss-server -> remote
//! ```
//!
//! The router does not forward (forwarding stays off), so the client reaches 198.51.100.10 only
//! through ss-local and ss-server: a page or a datagram that arrives proves the diversion worked. UDP
//! replies must come from the address the client wrote to. Threads enter a namespace with setns(2)
//! before they create a runtime, so every socket they (and the servers on their runtime) open lives
//! there; nothing is sent from the host's own namespace. Needs root, iproute2 and nftables: with `CI`
//! set a missing one fails the test, otherwise it is skipped with a visible line.

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ss_config::{Local, Mode, Protocol, TcpRedir};
use ss_crypto::Method;
use ss_local::Listener;
use ss_tests::{local_settings, server_settings, start_server, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const REMOTE_V4: &str = "198.51.100.10";
const REMOTE_V6: &str = "2001:db8:3::10";

#[test]
fn redirect_diverts_tcp_over_ipv4_and_ipv6() {
    run(TcpRedir::Redirect, Listeners::OnePerFamily);
}

#[test]
fn tproxy_diverts_tcp_and_udp_over_ipv4_and_ipv6() {
    run(TcpRedir::Tproxy, Listeners::OnePerFamily);
}

#[test]
fn one_dual_stack_listener_serves_both_families() {
    run(TcpRedir::Redirect, Listeners::DualStack);
    run(TcpRedir::Tproxy, Listeners::DualStack);
}

/// How the router listens: `0.0.0.0` and `::` on two ports, or `::` alone for both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listeners {
    OnePerFamily,
    DualStack,
}

fn run(kind: TcpRedir, listeners: Listeners) {
    let Some(network) = Network::create() else { return };
    let stop = CancellationToken::new();
    let remote = {
        let stop = stop.clone();
        in_namespace(&network.remote, move || serve_remote(stop))
    };
    let (ports_sender, ports) = std::sync::mpsc::channel();
    let router = {
        let stop = stop.clone();
        in_namespace(&network.router, move || serve_router(kind, listeners, ports_sender, stop))
    };
    let Ok((v4, v6)) = ports.recv_timeout(STEP) else {
        stop.cancel();
        panic!("the router's listeners did not start: {:?}", router.join());
    };
    network.divert(kind, v4, v6);
    let client = in_namespace(&network.client, move || client(kind, [v4, v6]));
    let outcome = client.join();
    stop.cancel();
    let _ = (remote.join(), router.join());
    match outcome {
        Ok(()) => {}
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// What the client sees: the page and (with tproxy) UDP answers from the address it asked; and a
/// connection straight to a redir port (not diverted) closed at once instead of looping.
async fn client(kind: TcpRedir, ports: [u16; 2]) {
    for (router, port) in ["192.0.2.1", "2001:db8:2::1"].into_iter().zip(ports) {
        let addr = SocketAddr::new(router.parse().expect("address"), port);
        let mut stream =
            timeout(STEP, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
        let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
        let mut rest = Vec::new();
        let read = timeout(STEP, stream.read_to_end(&mut rest)).await.expect("closed in time");
        assert!(rest.is_empty(), "{kind:?}: a connection to the listener itself got {rest:?}");
        let _ = read;
    }
    for remote in [REMOTE_V4, REMOTE_V6] {
        let addr = SocketAddr::new(remote.parse().expect("address"), 80);
        let mut stream =
            timeout(STEP, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("request");
        let mut page = String::new();
        timeout(STEP, stream.read_to_string(&mut page)).await.expect("page in time").expect("page");
        assert_eq!(page, format!("page from {addr} for GET / HTTP/1.0\r\n\r\n"), "{kind:?}");
        if kind != TcpRedir::Tproxy {
            continue;
        }
        let target = SocketAddr::new(addr.ip(), 53);
        let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = UdpSocket::bind(bind).await.expect("client UDP socket");
        for round in 0..3u8 {
            socket.send_to(&[round; 3], target).await.expect("send");
            let mut buf = [0u8; 64];
            let (len, from) =
                timeout(STEP, socket.recv_from(&mut buf)).await.expect("reply in time").expect("recv");
            assert_eq!(from, target, "the reply comes from the address the client wrote to");
            assert_eq!(&buf[..len], [b'e', round, round, round]);
        }
    }
}

/// The remote machine: a page on port 80 and a UDP echo on port 53 of both its addresses.
async fn serve_remote(stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for remote in [REMOTE_V4, REMOTE_V6] {
        let ip = remote.parse().expect("address");
        let tcp = TcpListener::bind(SocketAddr::new(ip, 80)).await.expect("bind the page");
        tasks.spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let local = stream.local_addr().expect("address");
                let mut request = [0u8; 64];
                let len = stream.read(&mut request).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&request[..len]).into_owned();
                let _ = stream.write_all(format!("page from {local} for {text}").as_bytes()).await;
            }
        });
        let udp = UdpSocket::bind(SocketAddr::new(ip, 53)).await.expect("bind the UDP echo");
        tasks.spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((len, from)) = udp.recv_from(&mut buf[1..]).await {
                buf[0] = b'e';
                let _ = udp.send_to(&buf[..=len], from).await;
            }
        });
    }
    stop.cancelled().await;
}

/// The router: ss-server on its loopback and ss-local's redir listeners (IPv4 and IPv6, each on its
/// own port) on every address; sends the two ports once listening.
async fn serve_router(
    kind: TcpRedir,
    listeners: Listeners,
    ports: std::sync::mpsc::Sender<(u16, u16)>,
    stop: CancellationToken,
) {
    let method = Method::Blake3Aes128Gcm;
    let server = start_server(server_settings(method)).await;
    let mode = if kind == TcpRedir::Tproxy { Mode::TcpAndUdp } else { Mode::TcpOnly };
    let addresses: &[&str] = match listeners {
        Listeners::OnePerFamily => &["0.0.0.0", "::"],
        Listeners::DualStack => &["::"],
    };
    let mut bound = Vec::new();
    for address in addresses {
        let local =
            Local { address: (*address).into(), port: 0, protocol: Protocol::Redir { tcp: kind }, mode };
        bound.push(
            Listener::bind(&local, &ss_net::SocketOptions::default()).await.expect("bind a redir listener"),
        );
    }
    let port = |listener: Option<&Listener>| {
        listener
            .and_then(|listener| listener.tcp.as_ref())
            .and_then(|tcp| tcp.local_addr().ok())
            .map(|a| a.port())
    };
    let (Some(v4), Some(v6)) = (port(bound.first()), port(bound.last())) else { panic!("no ports") };
    assert_eq!(v4 == v6, listeners == Listeners::DualStack);
    let mut settings = local_settings(method, server.addr);
    settings.udp = true;
    settings.udp_timeout = Duration::from_secs(30);
    let _ = ports.send((v4, v6));
    ss_local::run_listeners(settings, bound, stop).await;
}

/// Runs `task` on a thread of its own inside the named namespace, on a runtime made there.
fn in_namespace<F, Fut>(namespace: &str, task: F) -> JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let path = format!("/run/netns/{namespace}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime
            .block_on(async move { timeout(STEP * 3, task()).await.expect("the namespace's task in time") });
    })
}

/// Three namespaces and their links; deleted on drop.
struct Network {
    client: String,
    router: String,
    remote: String,
}

impl Network {
    /// `None` after a skip line when root, `ip` or `nft` is missing (a failure with `CI`).
    fn create() -> Option<Network> {
        if !nix::unistd::Uid::effective().is_root() {
            ss_tests::skip::skip("needs root for network namespaces", "run as root");
            return None;
        }
        ss_tests::peers::program("ip", "apt-get install iproute2")?;
        ss_tests::peers::program("nft", "apt-get install nftables")?;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("ssr{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let network = Network {
            client: format!("{unique}-c"),
            router: format!("{unique}-r"),
            remote: format!("{unique}-t"),
        };
        for namespace in [&network.client, &network.router, &network.remote] {
            ip(&["netns", "add", namespace]);
            ip(&["-n", namespace, "link", "set", "lo", "up"]);
        }
        let (client, router, remote) = (&network.client, &network.router, &network.remote);
        ip(&["-n", client, "link", "add", "c0", "type", "veth", "peer", "name", "rc", "netns", router]);
        ip(&["-n", router, "link", "add", "rr", "type", "veth", "peer", "name", "t0", "netns", remote]);
        for (namespace, link, addresses) in [
            (client, "c0", ["192.0.2.2/24", "2001:db8:2::2/64"]),
            (router, "rc", ["192.0.2.1/24", "2001:db8:2::1/64"]),
            (router, "rr", ["198.51.100.1/24", "2001:db8:3::1/64"]),
            (remote, "t0", ["198.51.100.10/24", "2001:db8:3::10/64"]),
        ] {
            for address in addresses {
                ip(&["-n", namespace, "addr", "add", address, "dev", link, "nodad"]);
            }
            ip(&["-n", namespace, "link", "set", link, "up"]);
        }
        ip(&["-n", client, "route", "add", "default", "via", "192.0.2.1"]);
        ip(&["-n", client, "-6", "route", "add", "default", "via", "2001:db8:2::1"]);
        Some(network)
    }

    /// The router's nftables rules (and, for tproxy, the policy routing that delivers marked packets
    /// locally), diverting what the client sends to the remote range to the redir ports.
    fn divert(&self, kind: TcpRedir, v4: u16, v6: u16) {
        let rules = match kind {
            TcpRedir::Redirect => format!(
                "table inet ssredir {{ chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
                   iifname \"rc\" ip daddr 198.51.100.0/24 meta l4proto tcp redirect to :{v4}
                   iifname \"rc\" ip6 daddr 2001:db8:3::/64 meta l4proto tcp redirect to :{v6}\n}}\n}}\n"
            ),
            TcpRedir::Tproxy => format!(
                "table inet ssredir {{ chain prerouting {{ type filter hook prerouting priority mangle; policy accept;
                   iifname \"rc\" ip daddr 198.51.100.0/24 meta l4proto {{ tcp, udp }} tproxy ip to :{v4} meta mark set 1 accept
                   iifname \"rc\" ip6 daddr 2001:db8:3::/64 meta l4proto {{ tcp, udp }} tproxy ip6 to :{v6} meta mark set 1 accept\n}}\n}}\n"
            ),
        };
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.router, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nft");
        nft.stdin.take().expect("nft's stdin").write_all_blocking(rules.as_bytes());
        assert!(nft.wait().expect("nft").success(), "nft -f refused:\n{rules}");
        if kind == TcpRedir::Tproxy {
            let router = self.router.as_str();
            ip(&["-n", router, "rule", "add", "fwmark", "1", "lookup", "100"]);
            ip(&["-n", router, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"]);
            ip(&["-n", router, "-6", "rule", "add", "fwmark", "1", "lookup", "100"]);
            ip(&["-n", router, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100"]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for namespace in [&self.client, &self.router, &self.remote] {
            let _ = Command::new("ip").args(["netns", "del", namespace]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(output.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

trait WriteAllBlocking {
    fn write_all_blocking(self, bytes: &[u8]);
}

impl WriteAllBlocking for std::process::ChildStdin {
    fn write_all_blocking(mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self, bytes).expect("write the ruleset");
    }
}
