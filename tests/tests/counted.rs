//! A single-key server counting its traffic as one user ([`ss_server::Settings::count_as`], what the
//! metrics and the manager's per-port statistics read): every payload byte of a TCP connection and of
//! UDP datagrams is counted at the four ends, for each method, and the server relays as before.

use std::time::Duration;

use ss_crypto::{Address, Method};
use ss_server::accounting::Counts;
use ss_server::users::User;
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Waits until `done` holds of `owner`'s counts (the relay folds a connection's counts in as it ends).
async fn counts_when(owner: &User, done: impl Fn(&Counts) -> bool) -> Counts {
    let waited = timeout(STEP, async {
        loop {
            let counts = owner.usage().counts();
            if done(&counts) {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("counts stayed at {:?}", owner.usage().counts()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counted_single_key_server_counts_every_payload_byte() {
    let echo = echo_server("127.0.0.1:0").await;
    let udp_echo = ss_tests::udp::udp_echo_server("127.0.0.1:0").await;
    for method in Method::ALL {
        let mut settings = server_settings(method);
        let owner = settings.count_as("main");
        let server = start_server(settings).await;
        let local = start_local(ss_tests::udp::local_settings_udp(method, server.addr)).await;

        let message = vec![0x61; 5000];
        let mut stream =
            timeout(STEP, socks5_connect(local.addr, &Address::Ip(echo))).await.unwrap().unwrap();
        stream.write_all(&message).await.unwrap();
        let mut back = vec![0; message.len()];
        timeout(STEP, stream.read_exact(&mut back)).await.unwrap().unwrap();
        drop(stream);
        let counts = counts_when(&owner, |counts| counts.tcp_closed == 1).await;
        assert_eq!(counts.tcp_opened, 1, "{method}");
        let bytes =
            [counts.client_to_proxy, counts.proxy_to_target, counts.target_to_proxy, counts.proxy_to_client];
        assert_eq!(bytes, [5000; 4], "{method}: c>p, p>t, t>p, p>c");

        let association =
            timeout(STEP, ss_tests::udp::socks5_udp_associate(local.addr)).await.unwrap().unwrap();
        association.send(&Address::Ip(udp_echo), &[7; 300]).await;
        let (_, payload) = timeout(STEP, association.recv()).await.unwrap();
        assert_eq!(payload.len(), 300, "{method}");
        let counts = counts_when(&owner, |counts| counts.udp_packets_out == 1).await;
        assert_eq!((counts.udp_associations, counts.udp_packets_in), (1, 1), "{method}");
        assert_eq!(counts.client_to_proxy, 5300, "{method}: TCP and UDP payload together");
        assert_eq!(counts.proxy_to_client, 5300, "{method}");
    }
}
