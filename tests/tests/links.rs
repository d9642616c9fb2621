//! `--print-url` and `--qr` of the real binaries: the links they print say what the config says, the
//! QR codes they draw decode (with `rqrr`) to the same links, and a printed link given back to ss-local
//! as `--server-url` reaches the server it names.
//!
//! Every address is loopback; the in-process ss-server listens on port 0.

use std::path::Path;
use std::process::Stdio;

use ss_config::{parse_ss_url, Plugin};
use ss_crypto::{Address, Method};
use ss_tests::subprocess::{binaries as built, quiet_command, Launch, Subprocess};
use ss_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const PSK_128: &str = "AAECAwQFBgcICQoLDA0ODw==";

#[tokio::test]
async fn print_url_prints_each_server_and_its_qr_code_decodes_to_it() {
    let binaries = built().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("servers.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"servers":[
                {{"server":"example.com","server_port":8388,"method":"2022-blake3-aes-128-gcm","password":"{PSK_128}",
                  "remarks":"Tokyo #1"}},
                {{"server":"2001:db8::1","server_port":443,"method":"aes-256-gcm",
                  "password":"a long and varied password 1234","plugin":"obfs-local",
                  "plugin_opts":"obfs=tls;obfs-host=www.example.com","tag":"v6"}}
            ]}}"#
        ),
    )
    .expect("write config");

    for binary in [&binaries.local, &binaries.server] {
        let (links, drawings) = print_url(binary, &config, true).await;
        assert_eq!(links.len(), 2, "{links:?}");
        assert!(links[0]
            .starts_with("ss://2022-blake3-aes-128-gcm:AAECAwQFBgcICQoLDA0ODw%3D%3D@example.com:8388"));
        assert!(links[0].ends_with("#Tokyo%20%231"), "{}", links[0]);

        let first = parse_ss_url(&links[0]).expect("first link");
        assert_eq!(
            (first.method(), first.password(), first.tag.as_deref()),
            (Method::Blake3Aes128Gcm, PSK_128, Some("Tokyo #1"))
        );
        let second = parse_ss_url(&links[1]).expect("second link");
        assert_eq!(
            (second.host.as_str(), second.port, second.method()),
            ("2001:db8::1", 443, Method::Aes256Gcm)
        );
        assert_eq!(second.password(), "a long and varied password 1234");
        let plugin = Plugin::new("obfs-local", Some("obfs=tls;obfs-host=www.example.com".into()));
        assert_eq!((second.plugin, second.tag.as_deref()), (Some(plugin), Some("v6")));
        // base64url of "aes-256-gcm:password" for a classic method, the plugin percent-encoded.
        assert!(links[1].contains("@[2001:db8::1]:443/?plugin=obfs-local%3Bobfs%3Dtls%3Bobfs-host%3D"));

        assert_eq!(drawings.len(), 2);
        for (link, drawing) in links.iter().zip(&drawings) {
            assert_eq!(&decode_qr(drawing), link);
        }
    }

    // Without --qr: only the links, one a line.
    let (links, drawings) = print_url(&binaries.local, &config, false).await;
    assert_eq!((links.len(), drawings.len()), (2, 0));
}

#[tokio::test]
async fn a_printed_link_given_to_server_url_reaches_the_server() {
    let binaries = built().await;
    let method = Method::ChaCha20IetfPoly1305;
    let server = start_server(server_settings(method)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("local.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"server":"127.0.0.1","server_port":{},"method":"{method}","password":"{}"}}"#,
            server.addr.port(),
            test_password(method)
        ),
    )
    .expect("write config");
    let (links, _) = print_url(&binaries.local, &config, false).await;
    let [link] = links.as_slice() else { panic!("{links:?}") };

    let local = Subprocess::start_on_free_port(|port| {
        Launch::new(&binaries.local).args(["--server-url", link, "-l", &port.to_string()])
    })
    .await;
    let echo = echo_server("127.0.0.1:0").await;
    let mut stream = timeout(STEP, socks5_connect(local.addr, &Address::Ip(echo)))
        .await
        .expect("SOCKS5 connect timed out")
        .unwrap_or_else(|error| panic!("SOCKS5 connect: {error}\n{}", local.log()));
    stream.write_all(b"through the printed link").await.expect("write");
    let mut back = [0u8; 24];
    timeout(STEP, stream.read_exact(&mut back)).await.expect("echo timed out").expect("echo");
    assert_eq!(&back, b"through the printed link");
}

#[tokio::test]
async fn a_classic_method_given_by_its_key_has_no_link_and_the_exit_code_says_so() {
    let binaries = built().await;
    let mut command = quiet_command(&binaries.server);
    let key = "AAECAwQFBgcICQoLDA0ODw==";
    command.args(["-s", "127.0.0.1", "-p", "8388", "-m", "aes-128-gcm", "--key", key, "--print-url"]);
    let output = timeout(STEP, command.stdout(Stdio::piped()).output()).await.expect("exit").expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("127.0.0.1:8388") && stderr.contains("raw key"), "{stderr}");
}

/// Runs `binary -c config --print-url [--qr]`: the links (lines starting `ss://`) and the drawings between.
async fn print_url(binary: &Path, config: &Path, qr: bool) -> (Vec<String>, Vec<String>) {
    let mut command = quiet_command(binary);
    command.arg("-c").arg(config).arg("--print-url").stdout(Stdio::piped());
    if qr {
        command.arg("--qr");
    }
    let output = timeout(STEP, command.output()).await.expect("did not exit").expect("run");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert!(
        output.status.success(),
        "{}: {}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let (mut links, mut drawings) = (Vec::new(), Vec::<String>::new());
    for line in stdout.lines() {
        if line.starts_with("ss://") {
            links.push(line.to_owned());
            if qr {
                drawings.push(String::new());
            }
        } else if let Some(drawing) = drawings.last_mut() {
            drawing.push_str(line);
            drawing.push('\n');
        } else {
            panic!("{line:?} before any link:\n{stdout}");
        }
    }
    (links, drawings)
}

/// The text of a QR code drawn in half blocks: a block (half) is a light module, a space a dark one.
fn decode_qr(drawing: &str) -> String {
    const SCALE: usize = 4;
    let mut modules: Vec<Vec<bool>> = Vec::new(); // true: dark
    for line in drawing.lines() {
        let (top, bottom): (Vec<bool>, Vec<bool>) =
            line.chars().map(|c| (!matches!(c, '▀' | '█'), !matches!(c, '▄' | '█'))).unzip();
        modules.push(top);
        modules.push(bottom);
    }
    let (width, height) = (modules[0].len() * SCALE, modules.len() * SCALE);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
        if modules[y / SCALE][x / SCALE] {
            0
        } else {
            255
        }
    });
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in:\n{drawing}");
    let (_, text) = grids[0].decode().unwrap_or_else(|error| panic!("{error}:\n{drawing}"));
    text
}
