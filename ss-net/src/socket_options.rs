//! The TCP and UDP socket options both binaries set, in one place: every listener, accepted connection
//! and outbound connection of ss-local and ss-server is made or tuned here.
//!
//! | option        | key / flag                   | where                                  | default |
//! |---------------|------------------------------|----------------------------------------|---------|
//! | TCP Fast Open | `fast_open`, `--fast-open`   | TCP listeners (queue of 1024), outbound (`TCP_FASTOPEN_CONNECT`) | off |
//! | SO_REUSEPORT  | `reuse_port`, `--reuse-port` | TCP and UDP listeners                  | off     |
//! | MPTCP         | `mptcp`, `--mptcp`           | TCP listeners and outbound sockets     | off     |
//! | TCP_NODELAY   | `no_delay`, `--no-delay`     | accepted (via the listener) and outbound sockets | on |
//! | keep-alive    | `keep_alive` (seconds)       | accepted (via the listener) and outbound sockets | 15 s |
//!
//! No-delay and keep-alive are set once on each listener: Linux copies a listener's options to the
//! connections it accepts, so an accepted connection costs no system call for them.
//!
//! Where the kernel refuses an option (no MPTCP, no `TCP_FASTOPEN_CONNECT`), the socket is made without
//! it and one warning per process says so; the connection itself never fails for an optional feature.
//! `SO_REUSEPORT` is the exception: it is what the operator asked for to share a port, so a failure is
//! the bind's error.
//!
//! Keep-alive: after `keep_alive` seconds of silence the kernel probes every third of that (at least
//! 1 s) and gives up after three unanswered probes, so a dead peer is found after about twice
//! `keep_alive` (30 s by default), before the 60 s idle timeout would end the connection anyway, and a
//! NAT on the way sees traffic often enough to keep its mapping.
//!
//! TCP Fast Open on outbound sockets uses `TCP_FASTOPEN_CONNECT`: `connect` returns at once when the
//! kernel holds a cookie for the peer, and the first write (ss-local's salt, header and first payload)
//! travels in the SYN. Without a cookie the kernel asks for one in an ordinary handshake. A listener only
//! accepts data in a SYN when `net.ipv4.tcp_fastopen` has the server bit (2); a warning says so.

use std::io;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

/// Queue of Fast Open requests not yet through their handshake, per listener (as long as the backlog).
pub const FAST_OPEN_QUEUE: u32 = 1024;
/// Probes sent to a silent peer before the connection is given up.
const KEEP_ALIVE_PROBES: u32 = 3;

/// The socket options of one binary, from its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// TCP Fast Open on listeners and outbound connections.
    pub fast_open: bool,
    /// `SO_REUSEPORT` on listeners, so that several processes can serve one port.
    pub reuse_port: bool,
    /// Multipath TCP sockets where the kernel has it.
    pub mptcp: bool,
    /// `TCP_NODELAY` on accepted and outbound sockets.
    pub no_delay: bool,
    /// Silence before keep-alive probes start; `None` turns keep-alive off.
    pub keep_alive: Option<Duration>,
}

impl Default for SocketOptions {
    fn default() -> SocketOptions {
        SocketOptions {
            fast_open: false,
            reuse_port: false,
            mptcp: false,
            no_delay: true,
            keep_alive: Some(Duration::from_secs(15)),
        }
    }
}

impl SocketOptions {
    /// A TCP listener on `addr` with a `backlog`-long queue. Must be called within a Tokio runtime.
    pub fn listen_tcp(&self, addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
        let socket = self.tcp_socket(addr)?;
        socket.set_reuse_address(true)?;
        if self.reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        // Inherited by every accepted connection (see `tune_listener`).
        self.tune(&SockRef::from(&socket));
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        let listener = std::net::TcpListener::from(socket);
        if self.fast_open {
            match enable_fast_open_listener(&listener) {
                Ok(()) => warn_without_server_bit(),
                Err(error) => {
                    warn_once(&FAST_OPEN_WARNING, || format!("TCP Fast Open is off on listeners: {error}"))
                }
            }
        }
        TcpListener::from_std(listener)
    }

    /// A TCP listener on `host:port` (an IP literal or a name: the first of its addresses that binds)
    /// with a [`BACKLOG`](crate::accept::BACKLOG)-long queue.
    pub async fn listen_tcp_host(&self, host: &str, port: u16) -> io::Result<TcpListener> {
        first_that_binds(host, port, |addr| self.listen_tcp(addr, crate::accept::BACKLOG)).await
    }

    /// A UDP socket on `host:port` (an IP literal or a name: the first of its addresses that binds).
    pub async fn bind_udp_host(&self, host: &str, port: u16) -> io::Result<UdpSocket> {
        first_that_binds(host, port, |addr| self.bind_udp(addr)).await
    }

    /// A UDP socket bound to `addr`, sharing the port when `reuse_port` is set.
    pub fn bind_udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if self.reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.set_nonblocking(true)?;
        UdpSocket::from_std(socket.into())
    }

    /// Connects to `addr` with the outbound options (MPTCP, Fast Open, no-delay, keep-alive).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = self.tcp_socket(addr)?;
        self.tune(&SockRef::from(&socket));
        if self.fast_open {
            if let Err(error) =
                nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::TcpFastOpenConnect, &true)
            {
                warn_once(&FAST_OPEN_CONNECT_WARNING, || {
                    format!("TCP Fast Open is off on outbound connections: {error}")
                });
            }
        }
        TcpSocket::from_std_stream(socket.into()).connect(addr).await
    }

    /// Sets the per-connection options (no-delay, keep-alive) on a listener, whoever made it: Linux
    /// copies a listener's socket options to every connection it accepts, so accepting then costs no
    /// system call for them (five per connection when each accepted socket was tuned).
    pub fn tune_listener(&self, listener: &TcpListener) {
        self.tune(&SockRef::from(listener));
    }

    /// A non-blocking stream socket for `addr`'s family: MPTCP when asked for and available, else TCP.
    fn tcp_socket(&self, addr: SocketAddr) -> io::Result<Socket> {
        let domain = Domain::for_address(addr);
        let socket = match self.mptcp {
            false => Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
            true => match Socket::new(domain, Type::STREAM, Some(Protocol::MPTCP)) {
                Ok(socket) => socket,
                Err(error) => {
                    warn_once(&MPTCP_WARNING, || {
                        format!("MPTCP is not available ({error}); using plain TCP")
                    });
                    Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?
                }
            },
        };
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// No-delay and keep-alive. Failures are ignored: neither is worth failing a connection for, and the
    /// only errors are on sockets that are already dead.
    fn tune(&self, socket: &SockRef<'_>) {
        let _ = socket.set_tcp_nodelay(self.no_delay);
        if let Some(idle) = self.keep_alive {
            let interval = (idle / KEEP_ALIVE_PROBES).max(Duration::from_secs(1));
            let keep_alive =
                TcpKeepalive::new().with_time(idle).with_interval(interval).with_retries(KEEP_ALIVE_PROBES);
            let _ = socket.set_tcp_keepalive(&keep_alive);
        }
    }
}

/// Resolves `host` and returns the first socket `bind` makes, or the last error.
async fn first_that_binds<T>(
    host: &str,
    port: u16,
    mut bind: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, format!("{host} resolved to no address"));
    for addr in tokio::net::lookup_host((host, port)).await? {
        match bind(addr) {
            Ok(socket) => return Ok(socket),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

static FAST_OPEN_WARNING: Once = Once::new();
static FAST_OPEN_CONNECT_WARNING: Once = Once::new();
static FAST_OPEN_SYSCTL_WARNING: Once = Once::new();
static MPTCP_WARNING: Once = Once::new();

/// Logs `message` the first time `once` is reached in this process.
fn warn_once(once: &Once, message: impl FnOnce() -> String) {
    once.call_once(|| tracing::warn!("{}", message()));
}

/// Sets `TCP_FASTOPEN` (queue length [`FAST_OPEN_QUEUE`]) on a listening socket.
///
/// tokio-tfo sets the option on the listener handed to it; an option belongs to the socket, not to the
/// descriptor, so handing it a duplicate descriptor sets it on ours, without unsafe code of our own.
fn enable_fast_open_listener(listener: &std::net::TcpListener) -> io::Result<()> {
    let duplicate = listener.try_clone()?;
    drop(tokio_tfo::TfoListener::from_std(duplicate)?);
    Ok(())
}

/// Warns once when the kernel would ignore Fast Open data sent to our listeners.
fn warn_without_server_bit() {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fastopen") else { return };
    match text.trim().parse::<u32>() {
        Ok(flags) if flags & 2 == 0 => warn_once(&FAST_OPEN_SYSCTL_WARNING, || {
            format!(
                "net.ipv4.tcp_fastopen is {flags}: listeners accept Fast Open data only with bit 2 set \
                 (sysctl -w net.ipv4.tcp_fastopen=3)"
            )
        }),
        _ => {}
    }
}

/// Whether this kernel (in this network namespace) has MPTCP switched on.
pub fn mptcp_available() -> bool {
    std::fs::read_to_string("/proc/sys/net/mptcp/enabled").is_ok_and(|text| text.trim() == "1")
}

#[cfg(test)]
mod tests;
