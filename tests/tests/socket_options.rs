//! Socket options and Happy Eyeballs seen taking effect through an ss-local / ss-server pair, each test
//! in a network namespace of its own, where it may change the kernel's per-namespace settings
//! (`net.ipv4.tcp_fastopen`, `net.mptcp.enabled`) and firewall without touching the machine's:
//!
//! - Happy Eyeballs: a name whose first address (IPv6, `ipv6_first`) is a black hole (an nftables rule
//!   drops its SYNs) and whose second is the page server: the page arrives long before the 10 s connect
//!   timeout, and no sooner than the 250 ms attempt delay (so the black hole was tried first).
//! - TCP Fast Open: with the server bit on in the namespace, repeated connections from ss-local to
//!   ss-server carry their first flight in the SYN (the kernel's TCPFastOpenActive/Passive counters).
//! - MPTCP: where the kernel has it, the pair talks MPTCP (MPCapableSYNRX counter); with MPTCP switched
//!   off in the namespace, the same settings fall back to TCP and still carry the page.
//!
//! Needs root (CAP_SYS_ADMIN), `ip` (iproute2) and `nft` (nftables): without them the tests fail when
//! `CI` is set and are reported as skipped otherwise. Counters are read from /proc/thread-self/net, the
//! namespace of the test's own thread (/proc/self/net would be the process's).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use ss_crypto::{Address, Method};
use ss_net::SocketOptions;
use ss_tests::dns::{Behaviour, TestDns};
use ss_tests::{http_get, page_server};
use ss_tests::{local_settings, server_settings, socks5_connect, STEP};
use tokio_util::sync::CancellationToken;

const METHOD: Method = Method::Aes128Gcm;
const PAGE: &str = "<html>through the pair</html>";
const BLACK_HOLE: &str = "2001:db8::99";

#[test]
fn happy_eyeballs_passes_over_a_black_holed_address() {
    in_namespace(|| async {
        let page = page_server(PAGE).await;
        let addrs = vec![BLACK_HOLE.parse().unwrap(), [127, 0, 0, 1].into()];
        let dns = TestDns::start(&[("dual.test", Behaviour::Answer { addrs, ttl: 60 })]).await;
        let mut settings = server_settings(METHOD);
        settings.resolve.nameservers = vec![dns.addr];
        settings.resolve.ipv6_first = true;
        settings.connect_timeout = Duration::from_secs(10);
        let pair = Pair::start(settings, SocketOptions::default()).await;

        let started = Instant::now();
        let body = pair.fetch(&Address::Domain("dual.test".into(), page.addr.port())).await;
        let elapsed = started.elapsed();
        assert_eq!(body, PAGE);
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}: the black hole held the connection");
        assert!(
            elapsed >= Duration::from_millis(250),
            "took {elapsed:?}: the IPv6 address was not tried first"
        );
        assert_eq!(page.page_requests(), 1);
    });
}

#[test]
fn fast_open_carries_the_first_flight_in_the_syn() {
    in_namespace(|| async {
        std::fs::write("/proc/sys/net/ipv4/tcp_fastopen", "3").expect("enable TFO in the namespace");
        let page = page_server(PAGE).await;
        let options = SocketOptions { fast_open: true, ..SocketOptions::default() };
        let pair = Pair::start(server_settings(METHOD), options).await;
        // The first connection fetches the cookie; the later ones send data in their SYN.
        for _ in 0..3 {
            assert_eq!(pair.fetch(&Address::Ip(page.addr)).await, PAGE);
        }
        let active = counter("TcpExt", "TCPFastOpenActive");
        let passive = counter("TcpExt", "TCPFastOpenPassive");
        assert!(active >= 2 && passive >= 2, "TFO active {active}, passive {passive}");
    });
}

#[test]
fn mptcp_where_the_kernel_has_it_and_plain_tcp_where_it_is_off() {
    in_namespace(|| async {
        let page = page_server(PAGE).await;
        let options = SocketOptions { mptcp: true, ..SocketOptions::default() };
        if ss_net::socket_options::mptcp_available() {
            let pair = Pair::start(server_settings(METHOD), options).await;
            assert_eq!(pair.fetch(&Address::Ip(page.addr)).await, PAGE);
            assert_eq!(pair.protocol(), Some(socket2::Protocol::MPTCP));
            assert!(counter("MPTcpExt", "MPCapableSYNRX") >= 1, "no MPTCP handshake reached the server");
        } else {
            ss_tests::skip::skip("the kernel has no MPTCP (net.mptcp.enabled)", "run on a kernel with MPTCP");
        }
        if std::fs::write("/proc/sys/net/mptcp/enabled", "0").is_ok()
            || !ss_net::socket_options::mptcp_available()
        {
            let pair = Pair::start(server_settings(METHOD), options).await;
            assert_eq!(pair.fetch(&Address::Ip(page.addr)).await, PAGE);
            assert_eq!(pair.protocol(), Some(socket2::Protocol::TCP), "the fallback is plain TCP");
        }
    });
}

/// An in-process ss-server (its listener made with `options`) and an ss-local with the same options.
struct Pair {
    local: SocketAddr,
    server_listener: socket2::Socket,
    stop: CancellationToken,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Pair {
    async fn start(mut server: ss_server::Settings, options: SocketOptions) -> Pair {
        server.socket = options;
        let listener = options.listen_tcp("127.0.0.1:0".parse().unwrap(), 64).expect("server listener");
        let server_addr = listener.local_addr().unwrap();
        let server_listener = socket2::SockRef::from(&listener).try_clone().expect("dup the listener");
        let stop = CancellationToken::new();
        let listeners = ss_server::Listeners { tcp: vec![listener], udp: vec![] };
        tokio::spawn(ss_server::run(server, listeners, stop.clone()));

        let mut local = local_settings(METHOD, server_addr);
        local.socket = options;
        let local_listener = options.listen_tcp("127.0.0.1:0".parse().unwrap(), 64).expect("local listener");
        let local_addr = local_listener.local_addr().unwrap();
        tokio::spawn(ss_local::run(local, vec![local_listener], stop.clone()));
        Pair { local: local_addr, server_listener, stop }
    }

    async fn fetch(&self, target: &Address) -> String {
        let fetched = tokio::time::timeout(STEP, async {
            let stream = socks5_connect(self.local, target).await?;
            http_get(stream, "page.test").await
        });
        fetched.await.expect("page within the step").expect("page through the pair")
    }

    /// The protocol of the server's listening socket.
    fn protocol(&self) -> Option<socket2::Protocol> {
        self.server_listener.protocol().unwrap()
    }
}

/// One counter of /proc/thread-self/net/netstat (`group` is e.g. `TcpExt`): a header line of names
/// followed by a line of values.
fn counter(group: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("netstat");
    let prefix = format!("{group}:");
    let lines: Vec<&str> = text.lines().filter(|line| line.starts_with(&prefix)).collect();
    let [names, values] = lines[..] else { panic!("no {group} in netstat") };
    let column = names.split_whitespace().position(|field| field == name).expect("counter name");
    values.split_whitespace().nth(column).and_then(|value| value.parse().ok()).expect("counter value")
}

/// Runs `test` on a runtime inside a fresh network namespace with loopback up, 2001:db8::1/64 on it
/// and an nftables rule dropping every packet to [`BLACK_HOLE`]; skips (or fails in CI) when the
/// namespace cannot be made.
fn in_namespace<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
        let setup: [&[&str]; 5] = [
            &["ip", "link", "set", "lo", "up"],
            &["ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "lo", "nodad"],
            &["nft", "add", "table", "inet", "hole"],
            &["nft", "add", "chain", "inet", "hole", "out", "{ type filter hook output priority 0; }"],
            &["nft", "add", "rule", "inet", "hole", "out", "ip6", "daddr", BLACK_HOLE, "drop"],
        ];
        for args in setup {
            match Command::new(args[0]).args(&args[1..]).status() {
                Ok(status) if status.success() => {}
                other => return Err(format!("{}: {other:?}", args.join(" "))),
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let finished =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(60), test()).await });
        assert!(finished.is_ok(), "the test did not finish in 60 s");
        Ok(())
    });
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => ss_tests::skip::skip(
            &format!("no network namespace: {reason}"),
            "run as root with iproute2 and nftables",
        ),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
