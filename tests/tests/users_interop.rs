//! Multi-user interop with shadowsocks-rust 1.25 (SIP023 identity headers, AES 2022 methods; its
//! server reads `users` only inside `servers[]` entries): its `sslocal` with `password: "iPSK:uPSK"`
//! against our ss-server with `users`, and our ss-local with the same chain against its `ssserver`
//! with `users`. TCP here; UDP in the same shape at the bottom.

use std::sync::Arc;

use ss_config::users::UserEntry;
use ss_crypto::{Address, Key, Method};
use ss_server::users::Users;
use ss_tests::peers::{start_peer_with_config, SHADOWSOCKS_RUST};
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const METHODS: [Method; 2] = [Method::Blake3Aes128Gcm, Method::Blake3Aes256Gcm];

fn user_key(method: Method, n: u8) -> Key {
    Key::from_bytes(method, &[n; 32][..method.key_len()]).unwrap()
}

fn entries(method: Method) -> Vec<UserEntry> {
    (1..=3).map(|n| UserEntry::new(format!("user{n}"), user_key(method, n))).collect()
}

/// A shadowsocks-rust config: a server entry with users (`local_port` None) or a local whose password
/// is the `iPSK:uPSK` chain of user `n`.
fn rust_config(method: Method, server_port: u16, local_port: Option<u16>, n: u8) -> String {
    let ipsk = test_key(method).to_base64();
    match local_port {
        Some(local_port) => format!(
            r#"{{"server":"127.0.0.1","server_port":{server_port},"method":"{method}","password":"{ipsk}:{}",
                "local_address":"127.0.0.1","local_port":{local_port},"mode":"tcp_and_udp"}}"#,
            user_key(method, n).to_base64()
        ),
        None => {
            let users: Vec<String> = (1..=3)
                .map(|n| format!(r#"{{"name":"user{n}","password":"{}"}}"#, user_key(method, n).to_base64()))
                .collect();
            format!(
                r#"{{"servers":[{{"server":"127.0.0.1","server_port":{server_port},"method":"{method}",
                    "password":"{ipsk}","users":[{}]}}],"mode":"tcp_and_udp"}}"#,
                users.join(",")
            )
        }
    }
}

async fn echo_through(socks: std::net::SocketAddr, target: &Address, what: &str) {
    let mut stream = timeout(STEP, socks5_connect(socks, target)).await.unwrap().unwrap();
    stream.write_all(b"multi-user interop").await.unwrap();
    let mut back = [0u8; 18];
    let read = timeout(STEP, stream.read_exact(&mut back)).await.unwrap();
    assert!(read.is_ok() && &back == b"multi-user interop", "{what}: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn their_local_with_a_user_chain_through_our_server_with_users() {
    let Some(sslocal) = SHADOWSOCKS_RUST.local_binary().await else { return };
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    for method in METHODS {
        let users = Arc::new(Users::new(method, &entries(method)));
        let server =
            start_server(ss_server::Settings { users: Some(users), ..server_settings(method) }).await;
        for n in [2, 3] {
            let local = start_peer_with_config(&sslocal, |port| {
                rust_config(method, server.addr.port(), Some(port), n)
            })
            .await;
            echo_through(
                local.addr,
                &echo,
                &format!("sslocal user{n} -> ss-server {method}\n{}", local.log()),
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_local_with_a_user_chain_through_their_server_with_users() {
    let Some(ssserver) = SHADOWSOCKS_RUST.server_binary().await else { return };
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    for method in METHODS {
        let server = start_peer_with_config(&ssserver, |port| rust_config(method, port, None, 0)).await;
        for n in [1, 3] {
            let mut settings = local_settings(method, server.addr);
            settings.servers[0].key = user_key(method, n);
            settings.servers[0].identity_keys = vec![test_key(method)];
            let local = start_local(settings).await;
            echo_through(
                local.addr,
                &echo,
                &format!("ss-local user{n} -> ssserver {method}\n{}", server.log()),
            )
            .await;
        }
    }
}

async fn udp_echo_through(socks: std::net::SocketAddr, echo: std::net::SocketAddr, what: &str) {
    let association = timeout(STEP, ss_tests::udp::socks5_udp_associate(socks)).await.unwrap().unwrap();
    association.send(&Address::Ip(echo), b"multi-user datagram").await;
    let reply = timeout(STEP, association.recv()).await;
    assert!(matches!(&reply, Ok((_, payload)) if payload == b"multi-user datagram"), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_their_local_through_our_server_and_our_local_through_their_server() {
    let Some(sslocal) = SHADOWSOCKS_RUST.local_binary().await else { return };
    let Some(ssserver) = SHADOWSOCKS_RUST.server_binary().await else { return };
    let echo = ss_tests::udp::udp_echo_server("127.0.0.1:0").await;
    for method in METHODS {
        let users = Arc::new(Users::new(method, &entries(method)));
        let ours = start_server(ss_server::Settings { users: Some(users), ..server_settings(method) }).await;
        let theirs_local =
            start_peer_with_config(&sslocal, |port| rust_config(method, ours.addr.port(), Some(port), 2))
                .await;
        udp_echo_through(
            theirs_local.addr,
            echo,
            &format!("sslocal -> ss-server {method}\n{}", theirs_local.log()),
        )
        .await;

        let theirs_server =
            start_peer_with_config(&ssserver, |port| rust_config(method, port, None, 0)).await;
        let mut settings = ss_tests::udp::local_settings_udp(method, theirs_server.addr);
        settings.servers[0].key = user_key(method, 3);
        settings.servers[0].identity_keys = vec![test_key(method)];
        let local = start_local(settings).await;
        udp_echo_through(
            local.addr,
            echo,
            &format!("ss-local -> ssserver {method}\n{}", theirs_server.log()),
        )
        .await;
    }
}
