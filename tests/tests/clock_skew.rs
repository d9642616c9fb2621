//! Clock-skew diagnostics with the real binaries, the server's clock moved by libfaketime: a server 40 s
//! ahead refuses the requests (and logs how far behind they were), and ss-local, getting nothing back,
//! says the clocks may differ; a server 20 s ahead still serves, and ss-local warns before it fails.
//! Nothing of this changes what goes on the wire (the probe tests cover the refusal's silence).

use std::path::{Path, PathBuf};

use ss_crypto::{Address, Method};
use ss_tests::skip::skip;
use ss_tests::subprocess::{binaries, faketime_library, Launch, Subprocess};
use ss_tests::{echo_round_trip, echo_server, socks5_connect, test_password, STEP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const METHOD: Method = Method::Blake3Aes256Gcm;

/// ss-server with its clock `offset` from ours, and an ss-local (true clock) in front of it.
async fn pair(library: &Path, offset: &str) -> (Subprocess, Subprocess) {
    let built = binaries().await;
    let password = test_password(METHOD);
    let server = Subprocess::start_on_free_port(|port| {
        Launch::new(&built.server)
            .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-k", &password, "-m", METHOD.name()])
            .args(["--allow-private-targets", "--handshake-timeout", "2"])
            .clock_offset(library, offset)
    })
    .await;
    let server_port = server.addr.port().to_string();
    let local = Subprocess::start_on_free_port(|port| {
        Launch::new(&built.local).args(["-s", "127.0.0.1", "-p", &server_port, "-k", &password]).args([
            "-m",
            METHOD.name(),
            "-b",
            "127.0.0.1",
            "-l",
            &port.to_string(),
        ])
    })
    .await;
    (server, local)
}

fn faketime() -> Option<PathBuf> {
    let library = faketime_library();
    if library.is_none() {
        skip("libfaketime is not installed", "apt-get install faketime");
    }
    library
}

#[tokio::test]
async fn a_server_clock_beyond_the_window_is_named_on_both_sides() {
    let Some(library) = faketime() else { return };
    let (server, local) = pair(&library, "+40s").await;
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let mut stream = timeout(STEP, socks5_connect(local.addr, &echo)).await.unwrap().unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut back = Vec::new();
    // The server discards until its handshake deadline (2 s), then closes: nothing comes back.
    let _ = timeout(STEP, stream.read_to_end(&mut back)).await.expect("the connection stayed open");
    assert!(back.is_empty(), "a request 40 s behind the server's clock was served");
    drop(stream);

    let refused = "refused an AEAD-2022 request whose timestamp is";
    assert!(server.wait_for_line(refused, STEP).await, "server log:\n{}", server.log());
    let line = server.log().lines().find(|line| line.contains(refused)).unwrap_or_default().to_owned();
    assert!(
        ["39 s behind", "40 s behind", "41 s behind"].iter().any(|skew| line.contains(skew)),
        "the skew in {line:?}"
    );
    let silent = "the server sent nothing back to a request";
    assert!(local.wait_for_line(silent, STEP).await, "ss-local log:\n{}", local.log());
    assert!(local.log().contains("more than 30 s from its clock"), "{}", local.log());
}

#[tokio::test]
async fn a_server_clock_near_the_limit_is_warned_about_while_it_still_works() {
    let Some(library) = faketime() else { return };
    let (server, local) = pair(&library, "+20s").await;
    let echo = Address::Ip(echo_server("127.0.0.1:0").await);
    let mut stream = timeout(STEP, socks5_connect(local.addr, &echo)).await.unwrap().unwrap();
    assert!(echo_round_trip(&mut stream).await, "20 s is within the window\n{}", server.log());
    drop(stream);

    let warned = "the server's clock is";
    assert!(local.wait_for_line(warned, STEP).await, "ss-local log:\n{}", local.log());
    let log = local.log();
    let line = log.lines().find(|line| line.contains(warned)).unwrap_or_default();
    assert!(
        ["19 s ahead", "20 s ahead", "21 s ahead"].iter().any(|skew| line.contains(skew)),
        "the skew in {line:?}"
    );
    assert_eq!(server.lines_containing("refused an AEAD-2022"), 0, "{}", server.log());
}
