//! Test support: start our server and local in-process on 127.0.0.1 port 0, local target servers, and a
//! minimal SOCKS5 client. Every address used here is loopback.

use std::net::SocketAddr;
use std::time::Duration;

use ss_crypto::{Address, Key, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Upper bound for any single step of a test.
pub const STEP: Duration = Duration::from_secs(20);

/// A key for `method`: a password for classic methods, a fixed PSK for 2022 ones.
pub fn test_key(method: Method) -> Key {
    if method.is_2022() {
        Key::from_bytes(method, &[0x5c; 32][..method.key_len()]).expect("key length")
    } else {
        Key::from_password(method, "test password for end-to-end runs").expect("classic method")
    }
}

/// The base64 form of [`test_key`] for 2022 methods, the password for classic ones.
pub fn test_password(method: Method) -> String {
    if method.is_2022() {
        test_key(method).to_base64()
    } else {
        "test password for end-to-end runs".to_owned()
    }
}

/// An in-process ss-server; stops when dropped.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Sends the binaries' logs to the test output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Starts ss-server on 127.0.0.1:0 with `settings`.
pub async fn start_server(settings: ss_server::Settings) -> RunningServer {
    init_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind server");
    let addr = listener.local_addr().expect("server address");
    let shutdown = CancellationToken::new();
    tokio::spawn(ss_server::run(settings, vec![listener], shutdown.clone()));
    RunningServer { addr, shutdown }
}

/// Server settings for tests: loopback targets allowed, short handshake deadline.
pub fn server_settings(method: Method) -> ss_server::Settings {
    let mut settings = ss_server::Settings::new(method, test_key(method));
    settings.policy = ss_server::TargetPolicy::AllowAll;
    settings.handshake_timeout = Duration::from_secs(3);
    settings
}

/// Starts ss-local on 127.0.0.1:0 for the given servers.
pub async fn start_local(settings: ss_local::Settings) -> RunningServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind local");
    let addr = listener.local_addr().expect("local address");
    let shutdown = CancellationToken::new();
    tokio::spawn(ss_local::run(settings, vec![listener], shutdown.clone()));
    RunningServer { addr, shutdown }
}

/// Local settings pointing at one server on 127.0.0.1.
pub fn local_settings(method: Method, server: SocketAddr) -> ss_local::Settings {
    ss_local::Settings::new(vec![ss_local::Server {
        host: server.ip().to_string(),
        port: server.port(),
        method,
        key: test_key(method),
    }])
}

/// A TCP echo server on `bind` (a loopback address); echoes until EOF, then closes its side.
pub async fn echo_server(bind: &str) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.expect("bind echo");
    let addr = listener.local_addr().expect("echo address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// Opens a SOCKS5 CONNECT through `proxy` to `target`; returns the stream after a successful reply.
pub async fn socks5_connect(proxy: SocketAddr, target: &Address) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await?;
    let mut request = vec![5, 1, 0, 5, 1, 0];
    target.write_to(&mut request);
    stream.write_all(&request).await?;
    let mut method_reply = [0u8; 2];
    stream.read_exact(&mut method_reply).await?;
    if method_reply != [5, 0] {
        return Err(std::io::Error::other(format!("method reply {method_reply:?}")));
    }
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        _ => return Err(std::io::Error::other(format!("reply {head:?}"))),
    };
    let mut bound = vec![0u8; rest];
    stream.read_exact(&mut bound).await?;
    if head[1] != 0 {
        return Err(std::io::Error::other(format!("SOCKS5 reply code {}", head[1])));
    }
    Ok(stream)
}
