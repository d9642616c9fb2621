//! The local port's front ends: the client protocol is chosen here, once, from the first byte.
//!
//! ```text
//! first byte 0x05 ─▶ SOCKS5 (socks5.rs; RFC 1929 username/password when users are configured)
//!            0x04 ─▶ SOCKS4 / 4a, CONNECT only (socks4.rs; refused when users are configured)
//!            else ─▶ HTTP: CONNECT (http.rs), absolute-URI requests (forward.rs), the PAC file (pac.rs)
//! ```
//!
//! The first byte is peeked, not read: the SOCKS5 path reads exactly what it read before and allocates
//! nothing more. Every front end ends in a `Request`: a target for the shared relay and an `Answer`
//! that says how to tell the client the outcome, or an HTTP connection for `forward.rs`. A refused or
//! malformed request is answered in its protocol and ends as an error.

mod auth;
pub(crate) mod forward;
pub mod http;
mod pac;
pub mod socks4;

use std::io;

use ss_crypto::Address;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use auth::{Users, UsersError};

use crate::socks5::{self, Reply};
use crate::Settings;

/// What a client asked for, once its front end has parsed the request.
#[derive(Debug)]
pub(crate) enum Request {
    /// A SOCKS5 request, its command still to be acted on.
    Socks5(socks5::Handshake),
    /// A stream to `target` (SOCKS4 CONNECT, HTTP CONNECT); `early` holds bytes sent after the request.
    Connect { target: Address, early: Vec<u8>, answer: Answer },
    /// Plain HTTP proxying: `head` holds the bytes read so far, the first request's head among them.
    Forward { head: Vec<u8> },
}

/// Which client protocols a listener speaks: the default local port and `socks` listeners all of them
/// (as shadowsocks-rust's socks listener also takes HTTP); `"protocol": "http"` listeners only HTTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocols {
    /// SOCKS5, SOCKS4/4a and HTTP, by the first byte.
    #[default]
    Mixed,
    /// SOCKS5 and SOCKS4/4a only.
    Socks,
    /// HTTP only (CONNECT, plain requests, the PAC file).
    Http,
}

/// How a front end tells its client whether the stream to the target is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// SOCKS5 reply.
    Socks5,
    /// SOCKS4 reply.
    Socks4,
    /// `HTTP/1.1 200` to a CONNECT, or an error status.
    Http,
}

/// Reads the client's request in one of `protocols`. Callers bound it with the handshake timeout.
///
/// This is the one place the protocol is chosen.
pub(crate) async fn accept(
    client: &mut TcpStream,
    settings: &Settings,
    protocols: Protocols,
) -> io::Result<Request> {
    let mut first = [0u8; 1];
    if client.peek(&mut first).await? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client closed before sending anything"));
    }
    match (first[0], protocols) {
        (socks5::VERSION, Protocols::Mixed | Protocols::Socks) => {
            socks5::handshake_with(client, settings.users.as_deref())
                .await
                .map(Request::Socks5)
                .map_err(io::Error::other)
        }
        (socks4::VERSION, Protocols::Mixed | Protocols::Socks) => accept_socks4(client, settings).await,
        (_, Protocols::Mixed | Protocols::Http) => http::accept(client, settings).await,
        (other, Protocols::Socks) => {
            Err(io::Error::new(io::ErrorKind::InvalidData, format!("not SOCKS (first byte {other:#04x})")))
        }
    }
}

impl Answer {
    /// Tells the client the stream is open.
    pub(crate) async fn succeeded(self, client: &mut TcpStream) -> io::Result<()> {
        match self {
            Answer::Socks5 => {
                socks5::send_reply(client, Reply::Succeeded, &socks5::UNSPECIFIED_ADDRESS).await
            }
            Answer::Socks4 => client.write_all(&socks4::reply(true)).await,
            Answer::Http => client.write_all(http::CONNECT_ESTABLISHED).await,
        }
    }

    /// Tells the client the stream could not be opened because of `error`.
    pub(crate) async fn failed(self, client: &mut TcpStream, error: &io::Error) -> io::Result<()> {
        match self {
            Answer::Socks5 => {
                // A plugin between restarts is our failure, not the network's.
                let reply = match error.kind() {
                    io::ErrorKind::NotConnected => Reply::GeneralFailure,
                    _ => Reply::HostUnreachable,
                };
                socks5::send_reply(client, reply, &socks5::UNSPECIFIED_ADDRESS).await
            }
            Answer::Socks4 => client.write_all(&socks4::reply(false)).await,
            Answer::Http => client.write_all(&http::error_response(http::status_for(error), "")).await,
        }
    }
}

/// SOCKS4/4a: CONNECT only, and only without authentication.
async fn accept_socks4(client: &mut TcpStream, settings: &Settings) -> io::Result<Request> {
    let mut buf = Vec::with_capacity(64);
    let request = loop {
        match socks4::parse_request(&buf) {
            Ok(Some((request, used))) => {
                buf.drain(..used);
                break request;
            }
            Ok(None) => {}
            Err(error) => {
                let _ = client.write_all(&socks4::reply(false)).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
        buf.reserve(512);
        if client.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the SOCKS4 request"));
        }
    };
    tracing::Span::current().record("target", tracing::field::display(&request.target));
    let refusal = if settings.users.is_some() {
        Some("SOCKS4 refused: authentication is required on this port")
    } else if request.command != 1 || !settings.tcp {
        Some("SOCKS4 command refused (CONNECT only)")
    } else {
        None
    };
    if let Some(reason) = refusal {
        client.write_all(&socks4::reply(false)).await?;
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, reason));
    }
    Ok(Request::Connect { target: request.target, early: buf, answer: Answer::Socks4 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair on loopback: (client, the accepted side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (client, listener.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn the_first_byte_picks_the_protocol_within_what_the_listener_speaks() {
        let settings = Settings::new(vec![]);
        let socks4 = b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00".as_slice();
        let connect = b"CONNECT a.example:443 HTTP/1.1\r\n\r\n".as_slice();
        let cases = [
            (socks4, Protocols::Mixed, Some(Answer::Socks4)),
            (socks4, Protocols::Socks, Some(Answer::Socks4)),
            (connect, Protocols::Mixed, Some(Answer::Http)),
            (connect, Protocols::Http, Some(Answer::Http)),
            (connect, Protocols::Socks, None),
        ];
        for (bytes, protocols, expected) in cases {
            let (mut client, mut accepted) = pair().await;
            client.write_all(bytes).await.unwrap();
            let answer = match accept(&mut accepted, &settings, protocols).await {
                Ok(Request::Connect { answer, .. }) => Some(answer),
                Ok(other) => panic!("{other:?}"),
                Err(_) => None,
            };
            assert_eq!(answer, expected, "{:?} on {protocols:?}", String::from_utf8_lossy(bytes));
        }
        // An HTTP-only listener hands SOCKS bytes to the HTTP parser, which refuses them with a 400.
        let (mut client, mut accepted) = pair().await;
        client.write_all(&[5, 1, 0, b'\r', b'\n', b'\r', b'\n']).await.unwrap();
        assert!(accept(&mut accepted, &settings, Protocols::Http).await.is_err());
        let mut response = [0u8; 12];
        client.read_exact(&mut response).await.unwrap();
        assert_eq!(&response, b"HTTP/1.1 400");
    }
}
