//! shadowsocks-libev's ss-manager protocol, served by ss-server itself (`manager_address`,
//! `--manager-address`): a panel adds and removes ports and reads their traffic over datagrams, and
//! each port is served in this process ([`ports`]), not by a process of its own.
//!
//! The address is `host:port` (UDP; it must be a loopback address, since the protocol has no
//! authentication) or a unix datagram socket path (anything with a `/` or without a `:`). Over a unix
//! socket a reply goes to the sender's own bound path; a sender without one gets none. One command per
//! datagram ([`command`]); commands are handled one at a time, in order.
//!
//! Traffic (`ping`) is what libev's ss-server reports to its manager: bytes from and to the clients of
//! the port since it was added (payload bytes here: salts, tags and length fields are not counted).
//! Nothing is sent unasked: libev's ss-manager answers `ping` and sends a panel nothing else.

pub mod command;
pub mod ports;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{UdpSocket, UnixDatagram};
use tokio_util::sync::CancellationToken;

use command::Command;
pub use ports::{Launcher, Ports};

/// Largest datagram read (libev refuses requests over 32 KiB).
const MAX_DATAGRAM: usize = 64 * 1024;

/// Where the manager listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A UDP `host:port`.
    Udp(String),
    /// A unix datagram socket.
    Unix(PathBuf),
}

impl Address {
    /// Reads `manager_address`: a path has a `/` or no `:`.
    pub fn parse(text: &str) -> Address {
        match text.contains('/') || !text.contains(':') {
            true => Address::Unix(PathBuf::from(text)),
            false => Address::Udp(text.to_string()),
        }
    }
}

/// The manager's bound socket.
#[derive(Debug)]
pub enum Socket {
    /// On UDP.
    Udp(UdpSocket),
    /// On a unix datagram socket, whose file is removed when the manager stops.
    Unix(UnixDatagram, PathBuf),
}

impl Socket {
    /// Binds `address`. A UDP address must be loopback only; a stale socket file is replaced.
    pub async fn bind(address: &Address) -> anyhow::Result<Socket> {
        match address {
            Address::Udp(text) => {
                let addrs = loopback(text).await?;
                let socket = UdpSocket::bind(addrs.as_slice())
                    .await
                    .with_context(|| format!("binding the manager on UDP {text}"))?;
                Ok(Socket::Udp(socket))
            }
            Address::Unix(path) => {
                remove_stale_socket(path);
                let socket = UnixDatagram::bind(path)
                    .with_context(|| format!("binding the manager on {}", path.display()))?;
                // Only our user may send commands, whatever the umask.
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("making {} private", path.display()))?;
                Ok(Socket::Unix(socket, path.clone()))
            }
        }
    }

    /// What the socket is bound to, for the log.
    pub fn describe(&self) -> String {
        match self {
            Socket::Udp(socket) => match socket.local_addr() {
                Ok(addr) => format!("UDP {addr}"),
                Err(_) => "UDP".into(),
            },
            Socket::Unix(_, path) => path.display().to_string(),
        }
    }
}

/// The addresses of a UDP `manager_address`, which must all be loopback (`--check` calls this too).
pub async fn loopback(text: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host(text).await.with_context(|| format!("manager_address {text}"))?.collect();
    if addrs.is_empty() || addrs.iter().any(|addr| !addr.ip().is_loopback()) {
        anyhow::bail!(
            "manager_address {text}: not a loopback address (the protocol has no authentication; use \
             127.0.0.1, ::1 or a unix socket path)"
        );
    }
    Ok(addrs)
}

/// Answers commands on `socket` until `shutdown`, then waits for the ports to drain.
pub async fn serve(socket: Socket, ports: Arc<Ports>, shutdown: CancellationToken) {
    tracing::info!(address = %socket.describe(), "manager listening (ss-manager protocol)");
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = receive(&socket, &mut buf) => received,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!(%error, "manager: receive failed");
                continue;
            }
        };
        let Some(reply) = answer(&ports, &buf[..len]).await else { continue };
        if let Err(error) = send(&socket, reply.as_bytes(), &peer).await {
            tracing::debug!(%error, "manager: reply not sent");
        }
    }
    ports.drain_all().await;
    if let Socket::Unix(_, path) = &socket {
        let _ = std::fs::remove_file(path);
    }
}

/// The reply to one datagram (`None`: no reply).
pub async fn answer(ports: &Ports, datagram: &[u8]) -> Option<String> {
    let command = match command::parse(datagram) {
        Ok(command) => command,
        Err(error) => {
            tracing::warn!(%error, "manager: command refused");
            return Some("err".into());
        }
    };
    match command {
        Command::Add(spec) => match ports.add(spec).await {
            Ok(()) => Some("ok".into()),
            Err(error @ ports::AddError::Bind(_)) => {
                tracing::warn!(error = format!("{error:#}"), "manager: add failed");
                Some(error.to_string())
            }
            Err(error) => {
                tracing::warn!(%error, "manager: add refused");
                Some("err".into())
            }
        },
        Command::Remove(port) => {
            ports.remove(port).await;
            Some("ok".into())
        }
        Command::List => {
            let list = ports.list().await;
            Some(command::list_reply(list.iter().map(|(spec, method)| (spec, method.clone()))))
        }
        Command::Ping => Some(command::stat_reply(ports.traffic().await)),
        Command::Stat => None,
    }
}

/// Whom to answer.
enum Peer {
    Udp(SocketAddr),
    Unix(Option<PathBuf>),
}

async fn receive(socket: &Socket, buf: &mut [u8]) -> std::io::Result<(usize, Peer)> {
    match socket {
        Socket::Udp(socket) => {
            let (len, from) = socket.recv_from(buf).await?;
            Ok((len, Peer::Udp(from)))
        }
        Socket::Unix(socket, _) => {
            let (len, from) = socket.recv_from(buf).await?;
            Ok((len, Peer::Unix(from.as_pathname().map(Path::to_path_buf))))
        }
    }
}

async fn send(socket: &Socket, reply: &[u8], peer: &Peer) -> std::io::Result<()> {
    match (socket, peer) {
        (Socket::Udp(socket), Peer::Udp(to)) => socket.send_to(reply, to).await.map(drop),
        (Socket::Unix(socket, _), Peer::Unix(Some(to))) => socket.send_to(reply, to).await.map(drop),
        _ => Ok(()),
    }
}

/// Removes a socket file left by an earlier run (never a file of another kind).
fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt as _;
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_udp_or_a_path() {
        assert_eq!(Address::parse("127.0.0.1:6001"), Address::Udp("127.0.0.1:6001".into()));
        assert_eq!(Address::parse("[::1]:6001"), Address::Udp("[::1]:6001".into()));
        assert_eq!(Address::parse("localhost:6001"), Address::Udp("localhost:6001".into()));
        assert_eq!(Address::parse("/run/ss/manager.sock"), Address::Unix("/run/ss/manager.sock".into()));
        assert_eq!(Address::parse("manager.sock"), Address::Unix("manager.sock".into()));
    }

    #[tokio::test]
    async fn a_udp_manager_must_be_on_loopback() {
        let error = Socket::bind(&Address::Udp("0.0.0.0:0".into())).await.unwrap_err().to_string();
        assert!(error.contains("not a loopback address"), "{error}");
        let socket = Socket::bind(&Address::Udp("127.0.0.1:0".into())).await.unwrap();
        assert!(socket.describe().starts_with("UDP 127.0.0.1:"));
    }
}
