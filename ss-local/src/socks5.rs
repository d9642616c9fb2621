//! The server side of SOCKS5 (RFC 1928) as spoken by ss-local: no authentication or username/password
//! (RFC 1929, when the local port has users), CONNECT, UDP ASSOCIATE.
//!
//! Parsing is pure ([`parse_greeting`], [`parse_request`], [`parse_udp_header`]) and incremental: the stream
//! parsers answer `Ok(None)` until the buffer holds a whole message. [`handshake`] drives them over a socket
//! with buffered reads and hands back anything the client pipelined behind its request.
//!
//! Greeting (client) and method selection (server):
//!
//! ```text
//! +-----+----------+----------+        +-----+--------+
//! | VER | NMETHODS | METHODS  |        | VER | METHOD |
//! +-----+----------+----------+        +-----+--------+
//! | 05  |    1     | NMETHODS |        | 05  | 00/FF  |
//! +-----+----------+----------+        +-----+--------+
//! ```
//!
//! Request (client) and reply (server); the address is the Shadowsocks one, [`Address`]:
//!
//! ```text
//! +-----+-----+-----+------+----------+----------+
//! | VER | CMD | RSV | ATYP | DST.ADDR | DST.PORT |    CMD: 01 CONNECT, 02 BIND, 03 UDP ASSOCIATE
//! +-----+-----+-----+------+----------+----------+    ATYP: 01 IPv4 (4), 03 domain (len u8 + name),
//! | 05  |  1  | 00  |  1   | variable |  u16 BE  |          04 IPv6 (16)
//! +-----+-----+-----+------+----------+----------+
//!
//! +-----+-----+-----+------+----------+----------+
//! | VER | REP | RSV | ATYP | BND.ADDR | BND.PORT |    REP: see [`Reply`]
//! +-----+-----+-----+------+----------+----------+
//! | 05  |  1  | 00  |  1   | variable |  u16 BE  |
//! +-----+-----+-----+------+----------+----------+
//! ```
//!
//! UDP relay datagram, both directions:
//!
//! ```text
//! +-----+------+------+----------+----------+----------+
//! | RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//! +-----+------+------+----------+----------+----------+
//! |  2  |  1   |  1   | variable |  u16 BE  | variable |
//! +-----+------+------+----------+----------+----------+
//! ```
//!
//! RSV bytes are not checked: clients in the wild are not careful with them and they carry nothing.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ss_crypto::{Address, AddressError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::inbound::Users;

/// The protocol version byte that starts every greeting, request and reply.
pub const VERSION: u8 = 0x05;

/// `0.0.0.0:0`, the bound address to send with replies that bind nothing (failures, BIND refused).
pub const UNSPECIFIED_ADDRESS: Address = Address::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));

const METHOD_NO_AUTH: u8 = 0x00;
const METHOD_PASSWORD: u8 = 0x02;
/// RFC 1929's subnegotiation version.
const PASSWORD_VERSION: u8 = 0x01;
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;

/// Room asked of each read: more than the longest greeting (257 bytes) or request (262 bytes), so a client
/// that pipelines greeting, request and data is usually served by a single read.
const READ_CHUNK: usize = 1024;

/// The client's first message: the authentication methods it offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    /// Method codes in the client's order (0x00 = no authentication, 0x02 = username/password, ...).
    pub methods: Vec<u8>,
}

impl Greeting {
    /// Whether the client accepts "no authentication", the only method ss-local speaks.
    pub fn offers_no_auth(&self) -> bool {
        self.methods.contains(&METHOD_NO_AUTH)
    }
}

/// What the client asks the server to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// 0x01: open a TCP connection to the target.
    Connect,
    /// 0x02: listen for one inbound connection (not supported; answer [`Reply::CommandNotSupported`]).
    Bind,
    /// 0x03: relay UDP datagrams for as long as this TCP connection stays open.
    UdpAssociate,
    /// Any other code (answer [`Reply::CommandNotSupported`]).
    Other(u8),
}

/// The client's request: a command and the address it applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// DST.ADDR and DST.PORT. For UDP ASSOCIATE, where the client will send from (often `0.0.0.0:0`).
    pub target: Address,
}

/// The header in front of every datagram on a UDP association.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpHeader {
    /// Fragment number; anything but 0 means the datagram is a fragment, and ss-local drops those.
    pub frag: u8,
    /// Where the datagram goes (client to relay) or came from (relay to client).
    pub target: Address,
}

/// The reply code sent back for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// 0x00
    Succeeded = 0x00,
    /// 0x01
    GeneralFailure = 0x01,
    /// 0x02: connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// 0x03
    NetworkUnreachable = 0x03,
    /// 0x04
    HostUnreachable = 0x04,
    /// 0x05
    ConnectionRefused = 0x05,
    /// 0x06
    TtlExpired = 0x06,
    /// 0x07
    CommandNotSupported = 0x07,
    /// 0x08
    AddressTypeNotSupported = 0x08,
}

/// A completed handshake: the request still awaiting its reply, and the bytes read past it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The client's request; the caller answers it with [`send_reply`].
    pub request: Request,
    /// Bytes the client sent after its request without waiting for the reply. They belong to the
    /// connection's payload and must be forwarded before anything read later.
    pub early: Vec<u8>,
}

/// Why a SOCKS5 exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    /// The version byte is not 5 (a SOCKS4 or HTTP client, or noise).
    #[error("unsupported SOCKS version {0:#04x}")]
    UnsupportedVersion(u8),
    /// The client does not offer "no authentication"; it has been told so with method 0xFF.
    #[error("client offers no acceptable authentication method (only no-auth is supported)")]
    NoAcceptableMethod,
    /// The address type is not 1, 3 or 4; during [`handshake`] the client has been sent reply 0x08.
    #[error("unsupported address type {0:#04x}")]
    UnknownAddressType(u8),
    /// A domain name that is empty or not UTF-8; during [`handshake`] the client has been sent reply 0x01.
    #[error("invalid domain name in SOCKS5 address")]
    InvalidDomain,
    /// A UDP datagram too short to hold its header.
    #[error("UDP datagram shorter than its SOCKS5 header")]
    TruncatedDatagram,
    /// Username/password authentication failed (wrong pair or a malformed message); the client has been
    /// told when it could be.
    #[error("SOCKS5 username/password authentication failed")]
    AuthenticationFailed,
    /// The client closed the connection before the handshake was complete.
    #[error("connection closed during the SOCKS5 handshake")]
    UnexpectedEof,
    /// Reading from or writing to the client failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Parses a greeting at the start of `buf`; `Ok(None)` until it is complete.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<(Greeting, usize)>, Socks5Error> {
    let Some(&version) = buf.first() else { return Ok(None) };
    check_version(version)?;
    let Some(&count) = buf.get(1) else { return Ok(None) };
    let end = 2 + usize::from(count);
    let Some(methods) = buf.get(2..end) else { return Ok(None) };
    Ok(Some((Greeting { methods: methods.to_vec() }, end)))
}

/// An RFC 1929 user name and password, as sent.
pub type Credentials = (Vec<u8>, Vec<u8>);

/// Parses an RFC 1929 username/password message at the start of `buf`; `Ok(None)` until it is complete.
///
/// ```text
/// | VER 01 | ULEN | UNAME | PLEN | PASSWD |
/// ```
pub fn parse_password(buf: &[u8]) -> Result<Option<(Credentials, usize)>, Socks5Error> {
    let Some(&version) = buf.first() else { return Ok(None) };
    if version != PASSWORD_VERSION {
        return Err(Socks5Error::AuthenticationFailed);
    }
    let Some(&user_len) = buf.get(1) else { return Ok(None) };
    let user_end = 2 + usize::from(user_len);
    let Some(&password_len) = buf.get(user_end) else { return Ok(None) };
    let end = user_end + 1 + usize::from(password_len);
    let Some(password) = buf.get(user_end + 1..end) else { return Ok(None) };
    Ok(Some(((buf[2..user_end].to_vec(), password.to_vec()), end)))
}

/// Parses a request at the start of `buf`; `Ok(None)` until it is complete.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, Socks5Error> {
    let Some(&version) = buf.first() else { return Ok(None) };
    check_version(version)?;
    let (Some(&command), Some(address)) = (buf.get(1), buf.get(3..)) else { return Ok(None) };
    match Address::parse(address) {
        Ok((target, used)) => Ok(Some((Request { command: command.into(), target }, 3 + used))),
        Err(AddressError::Incomplete) => Ok(None),
        Err(error) => Err(complete_input_error(error)),
    }
}

/// Parses the header of a UDP relay datagram; returns it and its length (the payload follows).
pub fn parse_udp_header(datagram: &[u8]) -> Result<(UdpHeader, usize), Socks5Error> {
    let [_, _, frag, address @ ..] = datagram else { return Err(Socks5Error::TruncatedDatagram) };
    let (target, used) = Address::parse(address).map_err(complete_input_error)?;
    Ok((UdpHeader { frag: *frag, target }, 3 + used))
}

/// Appends an unfragmented UDP relay header for `target` to `out`; the caller appends the payload.
pub fn write_udp_header(target: &Address, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0]);
    target.write_to(out);
}

/// Appends a reply to `out`. `bound` is BND.ADDR/BND.PORT: the relay's address for UDP ASSOCIATE,
/// the local end of the connection for CONNECT, [`UNSPECIFIED_ADDRESS`] when nothing was bound.
pub fn encode_reply(reply: Reply, bound: &Address, out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, reply.into(), 0]);
    bound.write_to(out);
}

/// Runs the server side of the handshake up to the request: greeting, method selection, request.
///
/// The request is returned unanswered, whatever its command; the caller acts on it and calls
/// [`send_reply`]. Reads are buffered, so bytes pipelined after the request end up in
/// [`Handshake::early`]. The function returns at EOF, but a client that stalls can hold it forever:
/// callers bound it with a timeout.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<Handshake, Socks5Error> {
    handshake_with(stream, None).await
}

/// [`handshake`], requiring username/password authentication (RFC 1929) against `users` when given.
pub async fn handshake_with<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    users: Option<&Users>,
) -> Result<Handshake, Socks5Error> {
    let mut buf = Vec::with_capacity(READ_CHUNK);

    let greeting = read_message(stream, &mut buf, parse_greeting).await?;
    let wanted = if users.is_some() { METHOD_PASSWORD } else { METHOD_NO_AUTH };
    if !greeting.methods.contains(&wanted) {
        stream.write_all(&[VERSION, METHOD_NONE_ACCEPTABLE]).await?;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    stream.write_all(&[VERSION, wanted]).await?;
    if let Some(users) = users {
        let (user, password) = read_message(stream, &mut buf, parse_password).await?;
        let allowed = users.check(&user, &password);
        stream.write_all(&[PASSWORD_VERSION, if allowed { 0x00 } else { 0x01 }]).await?;
        if !allowed {
            return Err(Socks5Error::AuthenticationFailed);
        }
    }

    match read_message(stream, &mut buf, parse_request).await {
        Ok(request) => Ok(Handshake { request, early: buf }),
        Err(error) => {
            if let Some(reply) = failure_reply(&error) {
                // The client gets its answer if it can still take one; the parse error is what matters.
                let _ = send_reply(stream, reply, &UNSPECIFIED_ADDRESS).await;
            }
            Err(error)
        }
    }
}

/// Writes a reply to the client.
pub async fn send_reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reply: Reply,
    bound: &Address,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(3 + bound.encoded_len());
    encode_reply(reply, bound, &mut out);
    stream.write_all(&out).await
}

impl From<u8> for Command {
    fn from(code: u8) -> Self {
        match code {
            0x01 => Command::Connect,
            0x02 => Command::Bind,
            0x03 => Command::UdpAssociate,
            other => Command::Other(other),
        }
    }
}

impl From<Command> for u8 {
    fn from(command: Command) -> Self {
        match command {
            Command::Connect => 0x01,
            Command::Bind => 0x02,
            Command::UdpAssociate => 0x03,
            Command::Other(code) => code,
        }
    }
}

impl From<Reply> for u8 {
    fn from(reply: Reply) -> Self {
        reply as u8
    }
}

/// Reads until `parse` finds a whole message at the front of `buf`, then removes it from `buf`.
async fn read_message<S, T, P>(stream: &mut S, buf: &mut Vec<u8>, parse: P) -> Result<T, Socks5Error>
where
    S: AsyncRead + Unpin,
    P: Fn(&[u8]) -> Result<Option<(T, usize)>, Socks5Error>,
{
    loop {
        if let Some((message, used)) = parse(buf)? {
            buf.drain(..used);
            return Ok(message);
        }
        // Messages are at most 262 bytes and parsing stops at the first complete one, so this stays bounded.
        buf.reserve(READ_CHUNK);
        if stream.read_buf(buf).await? == 0 {
            return Err(Socks5Error::UnexpectedEof);
        }
    }
}

/// Maps an address error in input known to be whole. Stream parsers turn an incomplete address into
/// "read more" before calling this.
fn complete_input_error(error: AddressError) -> Socks5Error {
    match error {
        AddressError::Incomplete => Socks5Error::TruncatedDatagram,
        AddressError::UnknownType(atyp) => Socks5Error::UnknownAddressType(atyp),
        AddressError::InvalidDomain => Socks5Error::InvalidDomain,
    }
}

fn check_version(version: u8) -> Result<(), Socks5Error> {
    if version == VERSION {
        Ok(())
    } else {
        Err(Socks5Error::UnsupportedVersion(version))
    }
}

/// The reply owed to a client whose request could not be parsed, if it is still a SOCKS5 client.
fn failure_reply(error: &Socks5Error) -> Option<Reply> {
    match error {
        Socks5Error::UnknownAddressType(_) => Some(Reply::AddressTypeNotSupported),
        Socks5Error::InvalidDomain => Some(Reply::GeneralFailure),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{duplex, ReadBuf};

    const GREETING: &[u8] = &[5, 1, 0];

    fn ip(addr: &str) -> Address {
        Address::Ip(addr.parse().unwrap())
    }

    fn domain(name: &str, port: u16) -> Address {
        Address::domain(name, port).unwrap()
    }

    /// Every request layout, as bytes and as what they must parse to.
    fn sample_requests() -> Vec<(Vec<u8>, Request)> {
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0x01, 0xBB]);
        let mut name = vec![5, 1, 0, 3, 11];
        name.extend_from_slice(b"example.com");
        name.extend_from_slice(&[0, 80]);
        let request = |command, target| Request { command, target };
        vec![
            (vec![5, 1, 0, 1, 127, 0, 0, 1, 0x1F, 0x90], request(Command::Connect, ip("127.0.0.1:8080"))),
            (v6, request(Command::Connect, ip("[::1]:443"))),
            (name, request(Command::Connect, domain("example.com", 80))),
            (vec![5, 3, 0, 1, 0, 0, 0, 0, 0, 0], request(Command::UdpAssociate, ip("0.0.0.0:0"))),
            (vec![5, 2, 0, 1, 192, 168, 1, 1, 0x04, 0xD2], request(Command::Bind, ip("192.168.1.1:1234"))),
            (vec![5, 9, 0, 1, 10, 0, 0, 1, 0, 1], request(Command::Other(9), ip("10.0.0.1:1"))),
        ]
    }

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn greetings_parse() {
        let (greeting, used) = parse_greeting(&[5, 2, 2, 0, 0xAA]).unwrap().unwrap();
        assert_eq!((greeting.methods.as_slice(), used), (&[2, 0][..], 4));
        assert!(greeting.offers_no_auth());
        let (greeting, _) = parse_greeting(&[5, 1, 2]).unwrap().unwrap();
        assert!(!greeting.offers_no_auth());
        let (greeting, used) = parse_greeting(&[5, 0]).unwrap().unwrap();
        assert!(greeting.methods.is_empty() && used == 2);
    }

    #[test]
    fn requests_parse_in_every_layout() {
        for (bytes, expected) in sample_requests() {
            let (request, used) = parse_request(&concat(&[&bytes, b"tail"])).unwrap().unwrap();
            assert_eq!((request, used), (expected, bytes.len()));
        }
    }

    #[test]
    fn truncated_messages_need_more_bytes() {
        let greeting = [5, 3, 0, 1, 2];
        for len in 0..greeting.len() {
            assert!(matches!(parse_greeting(&greeting[..len]), Ok(None)), "greeting cut at {len}");
        }
        assert!(matches!(parse_greeting(&greeting), Ok(Some((_, 5)))));
        for (bytes, _) in sample_requests() {
            for len in 0..bytes.len() {
                assert!(matches!(parse_request(&bytes[..len]), Ok(None)), "{bytes:?} cut at {len}");
            }
            assert!(matches!(parse_request(&bytes), Ok(Some((_, used))) if used == bytes.len()));
        }
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        assert!(matches!(parse_greeting(&[4, 1, 0]), Err(Socks5Error::UnsupportedVersion(4))));
        assert!(matches!(parse_greeting(b"G"), Err(Socks5Error::UnsupportedVersion(b'G'))));
        assert!(matches!(parse_request(&[4]), Err(Socks5Error::UnsupportedVersion(4))));
        assert!(matches!(parse_request(&[5, 1, 0, 5]), Err(Socks5Error::UnknownAddressType(5))));
        assert!(matches!(parse_request(&[5, 1, 0, 3, 0, 0, 80]), Err(Socks5Error::InvalidDomain)));
        assert!(matches!(parse_request(&[5, 1, 0, 3, 1, 0xFF, 0, 80]), Err(Socks5Error::InvalidDomain)));
        assert!(matches!(parse_udp_header(&[0, 0]), Err(Socks5Error::TruncatedDatagram)));
        assert!(matches!(parse_udp_header(&[0, 0, 0, 1, 1, 2]), Err(Socks5Error::TruncatedDatagram)));
        assert!(matches!(parse_udp_header(&[0, 0, 0, 7]), Err(Socks5Error::UnknownAddressType(7))));
    }

    #[test]
    fn udp_headers_parse_and_encode() {
        let datagram = [0, 0, 0, 1, 8, 8, 8, 8, 0, 53, 0xDE, 0xAD];
        let (header, used) = parse_udp_header(&datagram).unwrap();
        assert_eq!(header, UdpHeader { frag: 0, target: ip("8.8.8.8:53") });
        assert_eq!(&datagram[used..], &[0xDE, 0xAD]);
        let mut out = Vec::new();
        write_udp_header(&ip("8.8.8.8:53"), &mut out);
        assert_eq!(out, datagram[..used]);

        let (fragment, _) = parse_udp_header(&[0, 0, 3, 3, 1, b'a', 0, 1]).unwrap();
        assert_eq!(fragment, UdpHeader { frag: 3, target: domain("a", 1) });
    }

    #[test]
    fn replies_encode() {
        let mut out = Vec::new();
        encode_reply(Reply::Succeeded, &ip("127.0.0.1:1080"), &mut out);
        assert_eq!(out, [5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38]);
        out.clear();
        encode_reply(Reply::HostUnreachable, &domain("a.b", 80), &mut out);
        assert_eq!(out, [5, 4, 0, 3, 3, b'a', b'.', b'b', 0, 80]);
        out.clear();
        encode_reply(Reply::CommandNotSupported, &ip("[::1]:1"), &mut out);
        assert_eq!(out, concat(&[&[5, 7, 0, 4], &Ipv6Addr::LOCALHOST.octets(), &[0, 1]]));
        let codes = [
            Reply::Succeeded,
            Reply::GeneralFailure,
            Reply::NotAllowed,
            Reply::NetworkUnreachable,
            Reply::HostUnreachable,
            Reply::ConnectionRefused,
            Reply::TtlExpired,
            Reply::CommandNotSupported,
            Reply::AddressTypeNotSupported,
        ];
        for (code, reply) in codes.into_iter().enumerate() {
            assert_eq!(usize::from(u8::from(reply)), code);
        }
    }

    #[test]
    fn command_codes_round_trip() {
        for code in 0..=u8::MAX {
            assert_eq!(u8::from(Command::from(code)), code);
        }
    }

    /// An in-memory client: hands out `input` in reads of the scripted sizes, records what is written.
    struct Scripted {
        input: Vec<u8>,
        at: usize,
        chunks: std::vec::IntoIter<usize>,
        reads: usize,
        written: Vec<u8>,
    }

    impl Scripted {
        fn new(input: Vec<u8>, chunks: Vec<usize>) -> Self {
            Scripted { input, at: 0, chunks: chunks.into_iter(), reads: 0, written: Vec::new() }
        }
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            this.reads += 1;
            let len =
                this.chunks.next().unwrap_or(usize::MAX).min(this.input.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.input[this.at..this.at + len]);
            this.at += len;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn handshake_returns_every_request_unanswered() {
        for (bytes, expected) in sample_requests() {
            let mut client = Scripted::new(concat(&[GREETING, &bytes]), vec![]);
            let handshake = handshake(&mut client).await.unwrap();
            assert_eq!(handshake, Handshake { request: expected, early: vec![] });
            assert_eq!(client.written, [5, 0], "only the method selection; the reply is the caller's");
        }
    }

    #[tokio::test]
    async fn pipelined_data_is_kept_and_read_in_one_go() {
        let (connect, _) = &sample_requests()[2];
        let mut client = Scripted::new(concat(&[&[5, 2, 2, 0], connect, b"GET / HTTP/1.1\r\n"]), vec![]);
        let handshake = handshake(&mut client).await.unwrap();
        assert_eq!(handshake.early, b"GET / HTTP/1.1\r\n");
        assert_eq!(client.reads, 1, "no byte-by-byte reads");
    }

    #[tokio::test]
    async fn pipelined_data_survives_a_real_pipe() {
        let (mut client, mut server) = duplex(4096);
        let (connect, expected) = &sample_requests()[0];
        client.write_all(&concat(&[GREETING, connect, b"early bytes"])).await.unwrap();
        let handshake = handshake(&mut server).await.unwrap();
        assert_eq!((&handshake.request, handshake.early.as_slice()), (expected, &b"early bytes"[..]));
        let mut selection = [0; 2];
        client.read_exact(&mut selection).await.unwrap();
        assert_eq!(selection, [5, 0]);
    }

    #[tokio::test]
    async fn handshake_fed_one_byte_at_a_time() {
        for (bytes, expected) in sample_requests() {
            // A one-byte pipe: every read on the server side gets at most one byte.
            let (mut client, mut server) = duplex(1);
            let talk = async {
                client.write_all(GREETING).await.unwrap();
                let mut selection = [0; 2];
                client.read_exact(&mut selection).await.unwrap();
                assert_eq!(selection, [5, 0]);
                client.write_all(&bytes).await.unwrap();
                client.write_all(b"data").await.unwrap();
                client.shutdown().await.unwrap();
            };
            let listen = async {
                let handshake = handshake(&mut server).await.unwrap();
                let mut payload = handshake.early;
                server.read_to_end(&mut payload).await.unwrap();
                (handshake.request, payload)
            };
            let ((), (request, payload)) = tokio::join!(talk, listen);
            assert_eq!((request, payload.as_slice()), (expected, &b"data"[..]));
        }
    }

    #[test]
    fn password_messages_parse_and_need_every_byte() {
        let message = [1, 5, b'a', b'l', b'i', b'c', b'e', 2, b'p', b'w'];
        for len in 0..message.len() {
            assert!(matches!(parse_password(&message[..len]), Ok(None)), "cut at {len}");
        }
        let ((user, password), used) = parse_password(&concat(&[&message, b"x"])).unwrap().unwrap();
        assert_eq!((user.as_slice(), password.as_slice(), used), (&b"alice"[..], &b"pw"[..], message.len()));
        assert!(matches!(parse_password(&[5, 1, 0]), Err(Socks5Error::AuthenticationFailed)));
    }

    #[tokio::test]
    async fn with_users_only_the_right_password_gets_through() {
        let users = Users::new([("alice", "pw")]);
        let request = &sample_requests()[0].0;
        let login = |password: &[u8]| {
            concat(&[&[5, 1, 2], &[1, 5], b"alice", &[password.len() as u8], password, request])
        };
        let mut client = Scripted::new(login(b"pw"), vec![]);
        let handshake = handshake_with(&mut client, Some(&users)).await.unwrap();
        assert_eq!(handshake.request, sample_requests()[0].1);
        assert_eq!(client.written, [5, 2, 1, 0], "method 2 chosen, then status 0");

        let mut client = Scripted::new(login(b"nope"), vec![]);
        assert!(matches!(
            handshake_with(&mut client, Some(&users)).await,
            Err(Socks5Error::AuthenticationFailed)
        ));
        assert_eq!(client.written, [5, 2, 1, 1], "status 1, and no request read");

        let mut client = Scripted::new(concat(&[GREETING, request]), vec![]);
        assert!(matches!(
            handshake_with(&mut client, Some(&users)).await,
            Err(Socks5Error::NoAcceptableMethod)
        ));
        assert_eq!(client.written, [5, 0xFF], "no-auth only is not enough");
    }

    #[tokio::test]
    async fn eof_anywhere_in_the_handshake_is_an_error() {
        let full = concat(&[GREETING, &sample_requests()[2].0]);
        for cut in 0..full.len() {
            let (mut client, mut server) = duplex(1024);
            client.write_all(&full[..cut]).await.unwrap();
            client.shutdown().await.unwrap();
            let result = handshake(&mut server).await;
            assert!(matches!(result, Err(Socks5Error::UnexpectedEof)), "cut at {cut}: {result:?}");
        }
    }

    #[tokio::test]
    async fn client_without_no_auth_is_refused() {
        let mut client = Scripted::new(vec![5, 2, 1, 2], vec![]);
        assert!(matches!(handshake(&mut client).await, Err(Socks5Error::NoAcceptableMethod)));
        assert_eq!(client.written, [5, 0xFF]);
    }

    #[tokio::test]
    async fn wrong_version_gets_no_answer() {
        let mut client = Scripted::new(b"GET / HTTP/1.1\r\n\r\n".to_vec(), vec![]);
        assert!(matches!(handshake(&mut client).await, Err(Socks5Error::UnsupportedVersion(b'G'))));
        assert!(client.written.is_empty());

        let mut client = Scripted::new(concat(&[GREETING, &[4, 1, 0, 1]]), vec![]);
        assert!(matches!(handshake(&mut client).await, Err(Socks5Error::UnsupportedVersion(4))));
        assert_eq!(client.written, [5, 0]);
    }

    #[tokio::test]
    async fn bad_addresses_are_answered_then_refused() {
        let mut client = Scripted::new(concat(&[GREETING, &[5, 1, 0, 2, 1, 2, 3, 4]]), vec![]);
        assert!(matches!(handshake(&mut client).await, Err(Socks5Error::UnknownAddressType(2))));
        assert_eq!(client.written, [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);

        let mut client = Scripted::new(concat(&[GREETING, &[5, 1, 0, 3, 0, 0, 80]]), vec![]);
        assert!(matches!(handshake(&mut client).await, Err(Socks5Error::InvalidDomain)));
        assert_eq!(client.written, [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn caller_refuses_bind_with_send_reply() {
        let mut client = Scripted::new(concat(&[GREETING, &sample_requests()[4].0]), vec![]);
        let handshake = handshake(&mut client).await.unwrap();
        assert_eq!(handshake.request.command, Command::Bind);
        send_reply(&mut client, Reply::CommandNotSupported, &UNSPECIFIED_ADDRESS).await.unwrap();
        assert_eq!(client.written, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    fn any_address() -> impl Strategy<Value = Address> {
        prop_oneof![
            any::<(u32, u16)>()
                .prop_map(|(ip, port)| Address::Ip(SocketAddr::new(Ipv4Addr::from(ip).into(), port))),
            any::<(u128, u16)>()
                .prop_filter("mapped addresses encode as IPv4", |(ip, _)| Ipv6Addr::from(*ip)
                    .to_ipv4_mapped()
                    .is_none())
                .prop_map(|(ip, port)| Address::Ip(SocketAddr::new(Ipv6Addr::from(ip).into(), port))),
            ("[a-z0-9.-]{1,255}", any::<u16>()).prop_map(|(name, port)| Address::Domain(name, port)),
        ]
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((_, used))) = parse_greeting(&bytes) {
                prop_assert!(used <= bytes.len());
            }
            if let Ok(Some((_, used))) = parse_request(&bytes) {
                prop_assert!(used <= bytes.len());
            }
            if let Ok((_, used)) = parse_udp_header(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn udp_headers_round_trip(target in any_address(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut datagram = Vec::new();
            write_udp_header(&target, &mut datagram);
            datagram.extend_from_slice(&payload);
            let (header, used) = parse_udp_header(&datagram).unwrap();
            prop_assert_eq!(header, UdpHeader { frag: 0, target });
            prop_assert_eq!(&datagram[used..], payload.as_slice());
        }

        #[test]
        fn handshake_is_indifferent_to_read_splits(
            target in any_address(),
            early in proptest::collection::vec(any::<u8>(), 0..64),
            chunks in proptest::collection::vec(1..40usize, 0..40),
        ) {
            let mut input = concat(&[GREETING, &[5, 1, 0]]);
            target.write_to(&mut input);
            input.extend_from_slice(&early);
            let mut client = Scripted::new(input, chunks);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let handshake = runtime.block_on(handshake(&mut client)).unwrap();
            prop_assert_eq!(handshake.request, Request { command: Command::Connect, target });
            // Whatever the split, the early bytes and the rest of the stream add up to what was sent.
            let mut payload = handshake.early;
            payload.extend_from_slice(&client.input[client.at..]);
            prop_assert_eq!(payload, early);
        }
    }
}
