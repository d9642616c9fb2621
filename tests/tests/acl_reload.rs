//! The real `ss-server` with `--acl` reloads the file on SIGHUP: new connections follow the new rules,
//! connections already open are not dropped, and a file that cannot be read keeps the rules in force.
//! (ss-local reloads through the same `ss_net::SharedAcl`.)

use ss_crypto::{Address, Method};
use ss_tests::subprocess::{binaries, Launch, Subprocess};
use ss_tests::{
    echo_round_trip, echo_server, local_settings, socks5_connect, start_local, test_password, STEP,
};
use tokio::time::timeout;

const METHOD: Method = Method::Aes256Gcm;
const OPEN: &str = "[outbound_block_list]\n||nothing.test\n";
const BLOCKING: &str = "[outbound_block_list]\n127.0.0.1\n";

#[tokio::test]
async fn sighup_reloads_the_acl_without_dropping_connections() {
    let built = binaries().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rules.acl");
    std::fs::write(&path, OPEN).expect("write ACL");
    let password = test_password(METHOD);
    let acl = path.to_str().expect("UTF-8 path").to_owned();
    let server = Subprocess::start_on_free_port(|port| {
        Launch::new(&built.server).args([
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            "aes-256-gcm",
            "-k",
            &password,
            "--allow-private-targets",
            "--acl",
            &acl,
        ])
    })
    .await;
    let local = start_local(local_settings(METHOD, server.addr)).await;
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let connect = || async { timeout(STEP, socks5_connect(local.addr, &echo)).await.expect("timed out") };

    let mut before = connect().await.expect("SOCKS5 connect");
    assert!(echo_round_trip(&mut before).await, "open rules: echo works\n{}", server.log());

    std::fs::write(&path, BLOCKING).expect("rewrite ACL");
    server.hang_up("ACL reloaded", 1).await;
    let mut blocked = connect().await.expect("SOCKS5 connect");
    assert!(!echo_round_trip(&mut blocked).await, "new rules: 127.0.0.1 blocked\n{}", server.log());
    assert!(echo_round_trip(&mut before).await, "the connection opened before the reload was dropped");

    std::fs::remove_file(&path).expect("remove ACL");
    server.hang_up("ACL reload failed", 1).await;
    let mut still_blocked = connect().await.expect("SOCKS5 connect");
    assert!(!echo_round_trip(&mut still_blocked).await, "a missing file must keep the blocking rules");

    std::fs::write(&path, OPEN).expect("restore ACL");
    server.hang_up("ACL reloaded", 2).await;
    let mut after = connect().await.expect("SOCKS5 connect");
    assert!(echo_round_trip(&mut after).await, "open again after the next reload\n{}", server.log());
    assert!(echo_round_trip(&mut before).await);
    let (status, log) = server.terminate().await;
    assert!(status.success(), "{status}\n{log}");
}
