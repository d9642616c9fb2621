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
    let method = Method::Blake3Aes256Gcm;
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings(method, server.addr)).await;
    let echo = echo_server("127.0.0.1:0").await;
    let mut stream = socks5_connect(local.addr, &Address::Ip(echo)).await.unwrap();
    stream.write_all(b"all of it").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(STEP, stream.read_to_end(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, b"all of it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_target_port_closes_the_client() {
    let method = Method::Aes128Gcm;
    let server = start_server(server_settings(method)).await;
    let local = start_local(local_settings(method, server.addr)).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut stream = socks5_connect(local.addr, &Address::Ip(closed)).await.unwrap();
    stream.write_all(b"hello?").await.unwrap();
    let mut back = Vec::new();
    let read = timeout(Duration::from_secs(10), stream.read_to_end(&mut back)).await.unwrap();
    assert!(read.is_err() || back.is_empty());
}
