//! The HTTP front end's first request: its head is read (bounded by [`MAX_HEAD`]) and parsed with
//! `httparse`. A CONNECT becomes a stream to its target for the shared relay, with the bytes the client
//! sent after the head kept as early data; any other request goes to `forward.rs`, which serves the
//! connection with hyper from these same bytes.
//!
//! Errors end the connection after one response: `400` for a malformed head, `431` for a head over
//! [`MAX_HEAD`], `407` with a `Basic` challenge when authentication is on and the credentials are
//! missing or wrong, `502`/`504` when the stream cannot be opened (see `status_for`).

use std::io;
use std::net::IpAddr;

use ss_crypto::Address;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Answer, Request};
use crate::Settings;

/// Longest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;

/// Most header lines in a head.
const MAX_HEADERS: usize = 96;

/// The answer to a CONNECT whose stream is open.
pub(crate) const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// The parts of a request head the front end acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// A CONNECT request's target (`host:port`); `None` for other methods.
    pub connect: Option<Address>,
    /// The `Proxy-Authorization` value, if any.
    pub proxy_authorization: Option<Vec<u8>>,
    /// Length of the head in bytes, blank line included.
    pub len: usize,
}

/// Why a head could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP, or HTTP that breaks the grammar.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// A CONNECT whose target is not `host:port`.
    #[error("CONNECT target is not host:port")]
    BadTarget,
}

/// Parses a request head at the start of `buf`; `Ok(None)` until the blank line has arrived.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(HeadError::Malformed(error.to_string())),
    };
    let proxy_authorization = request
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|header| header.value.to_vec());
    let connect = match request.method {
        Some(method) if method.eq_ignore_ascii_case("CONNECT") => {
            Some(connect_target(request.path.unwrap_or_default())?)
        }
        _ => None,
    };
    Ok(Some(Head { connect, proxy_authorization, len }))
}

/// A CONNECT's authority-form target (`example.com:443`, `[::1]:443`) as an address.
fn connect_target(authority: &str) -> Result<Address, HeadError> {
    let authority: hyper::http::uri::Authority = authority.parse().map_err(|_| HeadError::BadTarget)?;
    let port = authority.port_u16().ok_or(HeadError::BadTarget)?;
    address_of(authority.host(), port).ok_or(HeadError::BadTarget)
}

/// `host` (a name, an IPv4 address or a bracketed IPv6 address) and `port` as an address.
pub(crate) fn address_of(host: &str, port: u16) -> Option<Address> {
    let bare = host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')).unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(ip) => Some(Address::Ip((ip, port).into())),
        Err(_) if host.starts_with('[') => None,
        Err(_) => Address::domain(host, port).ok(),
    }
}

/// Reads and acts on the first request head.
pub(crate) async fn accept(client: &mut TcpStream, settings: &Settings) -> io::Result<Request> {
    let mut buf = Vec::with_capacity(1024);
    let head = loop {
        match parse_head(&buf) {
            Ok(Some(head)) => break head,
            Ok(None) if buf.len() >= MAX_HEAD => {
                return refuse(client, 431, "request head too large").await;
            }
            Ok(None) => {}
            Err(error) => return refuse(client, 400, &error.to_string()).await,
        }
        buf.reserve(1024.min(MAX_HEAD.saturating_sub(buf.len())).max(1));
        let room = (MAX_HEAD + 1).saturating_sub(buf.len());
        if (&mut *client).take(room as u64).read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the HTTP request head"));
        }
    };
    if !settings.tcp {
        return refuse(client, 403, "TCP is off (mode udp_only)").await;
    }
    let Some(target) = head.connect else { return Ok(Request::Forward { head: buf }) };
    tracing::Span::current().record("target", tracing::field::display(&target));
    if let Some(users) = &settings.users {
        if !users.check_basic(head.proxy_authorization.as_deref()) {
            client.write_all(&challenge()).await?;
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "HTTP proxy authentication failed"));
        }
    }
    buf.drain(..head.len);
    Ok(Request::Connect { target, early: buf, answer: Answer::Http })
}

/// The status for a stream that could not be opened: 504 when connecting timed out, 502 otherwise.
pub(crate) fn status_for(error: &io::Error) -> u16 {
    match error.kind() {
        io::ErrorKind::TimedOut => 504,
        _ => 502,
    }
}

/// A complete response that closes the connection, with `detail` as its plain-text body.
pub(crate) fn error_response(status: u16, detail: &str) -> Vec<u8> {
    let reason =
        hyper::StatusCode::from_u16(status).ok().and_then(|code| code.canonical_reason()).unwrap_or("");
    let body = if detail.is_empty() { reason } else { detail };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        body.len() + 1
    )
    .into_bytes()
}

/// The 407 answer asking for `Basic` credentials.
pub(crate) fn challenge() -> Vec<u8> {
    let body = "proxy authentication required\n";
    format!(
        "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"ss-local\"\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn refuse(client: &mut TcpStream, status: u16, detail: &str) -> io::Result<Request> {
    client.write_all(&error_response(status, detail)).await?;
    let _ = client.shutdown().await;
    Err(io::Error::new(io::ErrorKind::InvalidData, format!("HTTP {status}: {detail}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_heads_give_their_target_and_length() {
        let head = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic eDp5\r\n\r\n";
        let mut buf = head.to_vec();
        buf.extend_from_slice(b"\x16\x03\x01 early TLS bytes");
        let parsed = parse_head(&buf).unwrap().unwrap();
        assert_eq!(parsed.connect, Some(Address::domain("example.com", 443).unwrap()));
        assert_eq!(parsed.proxy_authorization.as_deref(), Some(&b"Basic eDp5"[..]));
        assert_eq!(parsed.len, head.len());
        for len in 0..head.len() {
            assert_eq!(parse_head(&head[..len]), Ok(None), "cut at {len}");
        }
        let v6 = parse_head(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(v6.connect, Some(Address::Ip("[::1]:8443".parse().unwrap())));
        let v4 = parse_head(b"CONNECT 127.0.0.1:80 HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(v4.connect, Some(Address::Ip("127.0.0.1:80".parse().unwrap())));
    }

    #[test]
    fn other_methods_are_forwarded() {
        let get =
            parse_head(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap().unwrap();
        assert_eq!((get.connect, get.proxy_authorization), (None, None));
    }

    #[test]
    fn bad_heads_are_errors() {
        assert!(matches!(parse_head(b"\x16\x03\x01\x02\x00\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert_eq!(parse_head(b"CONNECT example.com HTTP/1.1\r\n\r\n"), Err(HeadError::BadTarget));
        assert_eq!(parse_head(b"CONNECT example.com:99999 HTTP/1.1\r\n\r\n"), Err(HeadError::BadTarget));
        assert_eq!(parse_head(b"CONNECT [nonsense]:80 HTTP/1.1\r\n\r\n"), Err(HeadError::BadTarget));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
        let request = format!("GET http://a/ HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse_head(request.as_bytes()), Err(HeadError::Malformed(_))));
    }

    proptest::proptest! {
        #[test]
        fn any_head_parses_or_fails_cleanly_and_ends_with_its_blank_line(
            method in proptest::sample::select(vec!["GET http://a/ ", "CONNECT a:1 ", "CONNECT [::1]:1 ", "X "]),
            rest in proptest::collection::vec(proptest::sample::select(b"ab:[]/ \r\n\x00\xff".to_vec()), 0..200),
        ) {
            let mut data = format!("{method}HTTP/1.1\r\n").into_bytes();
            data.extend_from_slice(&rest);
            if let Ok(Some(head)) = parse_head(&data) {
                proptest::prop_assert!(head.len <= data.len());
                proptest::prop_assert_eq!(data[head.len - 1], b'\n');
                proptest::prop_assert_eq!(parse_head(&data[..head.len - 1]), Ok(None));
            }
        }
    }

    #[test]
    fn responses() {
        let text = String::from_utf8(error_response(502, "")).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n") && text.ends_with("\r\n\r\nBad Gateway\n"));
        assert_eq!(status_for(&io::Error::from(io::ErrorKind::TimedOut)), 504);
        assert_eq!(status_for(&io::Error::from(io::ErrorKind::ConnectionRefused)), 502);
        assert!(String::from_utf8(challenge())
            .unwrap()
            .contains("Proxy-Authenticate: Basic realm=\"ss-local\"\r\n"));
    }
}
