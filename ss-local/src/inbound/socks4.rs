//! SOCKS4 and SOCKS4a requests (CONNECT only), as sent by `curl --socks4a` and older programs.
//!
//! ```text
//! +----+----+---------+--------+--------------+----------------------+
//! | VN | CD | DSTPORT | DSTIP  | USERID, NUL  | (4a) HOSTNAME, NUL   |
//! +----+----+---------+--------+--------------+----------------------+
//! | 04 | 1  | u16 BE  | 4      | variable     | if DSTIP = 0.0.0.x   |
//! +----+----+---------+--------+--------------+----------------------+
//!
//! reply: | 00 | CD (5A granted, 5B rejected) | DSTPORT | DSTIP |
//! ```
//!
//! The user id is ignored (there is no SOCKS4 authentication worth the name); with authentication on,
//! SOCKS4 is refused altogether. BIND (CD 2) and unknown commands get 0x5B.

use std::net::{Ipv4Addr, SocketAddr};

use ss_crypto::Address;

/// The version byte of SOCKS4 and 4a requests.
pub const VERSION: u8 = 0x04;

/// Longest user id or host name accepted (each NUL-terminated); longer ones are an error.
const MAX_FIELD: usize = 255;

/// A parsed SOCKS4/4a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Command code: 1 CONNECT, 2 BIND.
    pub command: u8,
    /// The target: an IPv4 address (SOCKS4) or a name (SOCKS4a).
    pub target: Address,
}

/// Why a SOCKS4 request could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks4Error {
    /// The first byte is not 4.
    #[error("not a SOCKS4 request")]
    NotSocks4,
    /// A user id or host name with no NUL within 255 bytes.
    #[error("SOCKS4 user id or host name too long")]
    FieldTooLong,
    /// A SOCKS4a host name that is empty or not valid.
    #[error("invalid SOCKS4a host name")]
    InvalidHost,
}

/// Parses a request at the start of `buf`; `Ok(None)` until it is complete, else the request and its length.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, Socks4Error> {
    let Some(&version) = buf.first() else { return Ok(None) };
    if version != VERSION {
        return Err(Socks4Error::NotSocks4);
    }
    let Some(fixed) = buf.get(..8) else { return Ok(None) };
    let command = fixed[1];
    let port = u16::from_be_bytes([fixed[2], fixed[3]]);
    let ip = Ipv4Addr::new(fixed[4], fixed[5], fixed[6], fixed[7]);
    let Some(user_end) = nul_terminated(&buf[8..])? else { return Ok(None) };
    let mut used = 8 + user_end + 1;
    let [0, 0, 0, last] = ip.octets() else {
        return Ok(Some((Request { command, target: Address::Ip(SocketAddr::new(ip.into(), port)) }, used)));
    };
    if last == 0 {
        // 0.0.0.0 is not a 4a marker; nobody can connect to it.
        return Ok(Some((Request { command, target: Address::Ip(SocketAddr::new(ip.into(), port)) }, used)));
    }
    let Some(host_end) = nul_terminated(&buf[used..])? else { return Ok(None) };
    let host = std::str::from_utf8(&buf[used..used + host_end]).map_err(|_| Socks4Error::InvalidHost)?;
    let target = Address::domain(host, port).map_err(|_| Socks4Error::InvalidHost)?;
    used += host_end + 1;
    Ok(Some((Request { command, target }, used)))
}

/// The 8-byte reply: granted (0x5A) or rejected (0x5B), with an all-zero address.
pub fn reply(granted: bool) -> [u8; 8] {
    [0, if granted { 0x5A } else { 0x5B }, 0, 0, 0, 0, 0, 0]
}

/// The length of a NUL-terminated field at the start of `buf` (NUL excluded), `None` when incomplete.
fn nul_terminated(buf: &[u8]) -> Result<Option<usize>, Socks4Error> {
    match buf.iter().take(MAX_FIELD + 1).position(|&byte| byte == 0) {
        Some(len) => Ok(Some(len)),
        None if buf.len() > MAX_FIELD => Err(Socks4Error::FieldTooLong),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socks4_and_4a_requests_parse_and_need_every_byte() {
        let v4 = b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00".to_vec();
        let v4a = b"\x04\x01\x01\xbb\x00\x00\x00\x07\x00example.com\x00".to_vec();
        let expected = [
            (v4.clone(), Request { command: 1, target: Address::Ip("127.0.0.1:80".parse().unwrap()) }),
            (v4a.clone(), Request { command: 1, target: Address::domain("example.com", 443).unwrap() }),
        ];
        for (bytes, request) in expected {
            for len in 0..bytes.len() {
                assert_eq!(parse_request(&bytes[..len]), Ok(None), "cut at {len}");
            }
            let mut longer = bytes.clone();
            longer.extend_from_slice(b"early data");
            assert_eq!(parse_request(&longer), Ok(Some((request, bytes.len()))));
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        assert_eq!(parse_request(b"\x05\x01"), Err(Socks4Error::NotSocks4));
        let mut long_user = b"\x04\x01\x00\x50\x7f\x00\x00\x01".to_vec();
        long_user.extend(std::iter::repeat_n(b'u', 256));
        assert_eq!(parse_request(&long_user), Err(Socks4Error::FieldTooLong));
        assert_eq!(parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00"), Err(Socks4Error::InvalidHost));
        assert_eq!(
            parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\xff\x00"),
            Err(Socks4Error::InvalidHost)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly_and_a_request_needs_all_its_bytes(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            ip_last in 0u8..3,
        ) {
            // A valid start (4a marker half the time), then anything.
            let mut data = vec![4, 1, 0, 80, 0, 0, 0, ip_last];
            data.extend_from_slice(&tail);
            if let Ok(Some((_, used))) = parse_request(&data) {
                proptest::prop_assert!((9..=data.len()).contains(&used));
                proptest::prop_assert_eq!(parse_request(&data[..used - 1]), Ok(None));
            }
        }
    }

    #[test]
    fn replies() {
        assert_eq!(reply(true), [0, 0x5A, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reply(false)[1], 0x5B);
    }
}
