//! TCP end to end, in-process: SOCKS5 client -> ss-local -> ss-server -> loopback target, every method.

use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_reaches_ipv4_ipv6_and_domain_targets() {
    for method in Method::ALL {
        let server = start_server(server_settings(method)).await;
        let local = start_local(local_settings(method, server.addr)).await;
        let echo4 = echo_server("127.0.0.1:0").await;
        let echo6 = echo_server("[::1]:0").await;
        for target in
            [Address::Ip(echo4), Address::Ip(echo6), Address::domain("localhost", echo4.port()).unwrap()]
        {
            let mut stream = timeout(STEP, socks5_connect(local.addr, &target)).await.unwrap().unwrap();
            stream.write_all(b"ping through the tunnel").await.unwrap();
            let mut reply = [0u8; 23];
            timeout(STEP, stream.read_exact(&mut reply)).await.unwrap().unwrap();
            assert_eq!(&reply, b"ping through the tunnel", "{method} {target}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_reply_come_back() {
    for method in Method::ALL {
        let server = start_server(server_settings(method)).await;
        let local = start_local(local_settings(method, server.addr)).await;
        let echo = echo_server("127.0.0.1:0").await;
        let mut stream = socks5_connect(local.addr, &Address::Ip(echo)).await.unwrap();
        stream.write_all(b"all of it").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        timeout(STEP, stream.read_to_end(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, b"all of it", "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_target_port_closes_the_client() {
    for method in Method::ALL {
        a_closed_target_port_closes_the_client_with(method).await;
    }
}

async fn a_closed_target_port_closes_the_client_with(method: Method) {
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings(method, server.addr)).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut stream = socks5_connect(local.addr, &Address::Ip(closed)).await.unwrap();
    stream.write_all(b"hello?").await.unwrap();
    let mut back = Vec::new();
    // Well within the server's 10 s connect timeout: a refused connect must end the client at once.
    let read = timeout(Duration::from_secs(5), stream.read_to_end(&mut back))
        .await
        .unwrap_or_else(|_| panic!("{method}: the client's connection stayed open"));
    // Nothing was relayed, so nothing is cut off: a plain close (FIN), no bytes.
    assert!(matches!(read, Ok(0)), "{method}: {read:?} with {} bytes from a closed port", back.len());
}

/// Streams `len` deterministic bytes through an echo target while reading them back; returns the hashes
/// of what was sent and what came back.
async fn echo_transfer(stream: tokio::net::TcpStream, len: usize) -> (blake3::Hash, blake3::Hash) {
    let (mut read, mut write) = stream.into_split();
    let sender = tokio::spawn(async move {
        let mut hasher = blake3::Hasher::new();
        let mut block = vec![0u8; 64 * 1024];
        let mut sent = 0usize;
        while sent < len {
            let n = block.len().min(len - sent);
            for (i, byte) in block[..n].iter_mut().enumerate() {
                *byte = ((sent + i) as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
            }
            write.write_all(&block[..n]).await.unwrap();
            hasher.update(&block[..n]);
            sent += n;
        }
        write.shutdown().await.unwrap();
        hasher.finalize()
    });
    let mut hasher = blake3::Hasher::new();
    let mut block = vec![0u8; 64 * 1024];
    let mut received = 0usize;
    loop {
        let n = read.read(&mut block).await.unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
        received += n;
    }
    assert_eq!(received, len);
    (sender.await.unwrap(), hasher.finalize())
}

/// A server and a local that spread connections over `threads` threads each, as the binaries do by
/// default.
async fn threaded_pair(method: Method, threads: usize) -> (RunningServer, RunningServer) {
    let mut settings = server_settings(method);
    settings.threads = threads;
    let server = start_server(settings).await;
    let mut settings = local_settings(method, server.addr);
    settings.threads = threads;
    let local = start_local(settings).await;
    (server, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mebibytes_each_way_arrive_intact() {
    for method in Method::ALL {
        let (_server, local) = threaded_pair(method, 2).await;
        let echo = echo_server("127.0.0.1:0").await;
        let stream = socks5_connect(local.addr, &Address::Ip(echo)).await.unwrap();
        let (sent, received) = timeout(Duration::from_secs(240), echo_transfer(stream, 64 << 20))
            .await
            .expect("transfer timed out");
        assert_eq!(sent, received, "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections() {
    for method in Method::ALL {
        two_hundred_concurrent_connections_with(method).await;
    }
}

async fn two_hundred_concurrent_connections_with(method: Method) {
    let (_server, local) = threaded_pair(method, 3).await;
    let echo = echo_server("127.0.0.1:0").await;
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let proxy = local.addr;
        clients.spawn(async move {
            let mut stream = socks5_connect(proxy, &Address::Ip(echo)).await.unwrap();
            let message = format!("connection {i} says hello");
            stream.write_all(message.as_bytes()).await.unwrap();
            let mut back = vec![0u8; message.len()];
            stream.read_exact(&mut back).await.unwrap();
            assert_eq!(back, message.as_bytes());
        });
    }
    timeout(Duration::from_secs(60), async {
        while let Some(result) = clients.join_next().await {
            result.unwrap();
        }
    })
    .await
    .expect("connections timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_closing_first_still_lets_the_client_send() {
    for method in Method::ALL {
        the_target_closing_first_still_lets_the_client_send_with(method).await;
    }
}

async fn the_target_closing_first_still_lets_the_client_send_with(method: Method) {
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings(method, server.addr)).await;
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let target_task = tokio::spawn(async move {
        let (mut stream, _) = target.accept().await.unwrap();
        stream.write_all(b"greeting, then FIN").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        rest
    });
    let mut stream = socks5_connect(local.addr, &Address::Ip(target_addr)).await.unwrap();
    let mut greeting = Vec::new();
    timeout(STEP, stream.read_to_end(&mut greeting)).await.unwrap().unwrap();
    assert_eq!(greeting, b"greeting, then FIN");
    stream.write_all(b"the client still talks after the target's FIN").await.unwrap();
    stream.shutdown().await.unwrap();
    let rest = timeout(STEP, target_task).await.unwrap().unwrap();
    assert_eq!(rest, b"the client still talks after the target's FIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let mut runs = tokio::task::JoinSet::new();
    for method in Method::ALL {
        runs.spawn(idle_connections_are_closed_with(method));
    }
    while let Some(run) = runs.join_next().await {
        run.unwrap();
    }
}

async fn idle_connections_are_closed_with(method: Method) {
    let mut settings = server_settings(method);
    settings.idle_timeout = Duration::from_millis(500);
    let server = start_server(settings).await;
    let local = start_local(local_settings(method, server.addr)).await;
    let echo = echo_server("127.0.0.1:0").await;
    let mut stream = socks5_connect(local.addr, &Address::Ip(echo)).await.unwrap();
    stream.write_all(b"one exchange").await.unwrap();
    let mut back = [0u8; 12];
    stream.read_exact(&mut back).await.unwrap();
    let idle_started = tokio::time::Instant::now();
    let mut rest = Vec::new();
    timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await.expect("not closed").unwrap();
    assert!(rest.is_empty());
    assert!(idle_started.elapsed() >= Duration::from_millis(400), "closed before the idle timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_skipped_for_the_next() {
    let method = Method::Blake3Aes128Gcm;
    let server = start_server(server_settings(method)).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut settings = local_settings(method, dead);
    settings.servers.extend(local_settings(method, server.addr).servers);
    let local = start_local(settings).await;
    let echo = echo_server("127.0.0.1:0").await;
    let mut stream = timeout(STEP, socks5_connect(local.addr, &Address::Ip(echo))).await.unwrap().unwrap();
    stream.write_all(b"via the second server").await.unwrap();
    let mut back = [0u8; 21];
    timeout(STEP, stream.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"via the second server");
}
