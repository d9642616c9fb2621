//! The SOCKS5-style address that starts every Shadowsocks request and UDP datagram.
//!
//! ```text
//! +------+----------------------+----------+
//! | ATYP | address              | port     |
//! +------+----------------------+----------+
//! | 0x01 | 4 bytes IPv4         | u16 BE   |
//! | 0x03 | len u8 + len bytes   | u16 BE   |   len in 1..=255
//! | 0x04 | 16 bytes IPv6        | u16 BE   |
//! +------+----------------------+----------+
//! ```
//!
//! One parser, [`Address::parse`], serves TCP headers, UDP datagrams and SOCKS5 requests alike.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;

/// Longest possible encoded address: ATYP, length byte, 255-byte name, port.
pub const MAX_ADDRESS_LEN: usize = 1 + 1 + 255 + 2;

/// A target or source address: an IP socket address, or a domain name with a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IPv4 or IPv6 address and port.
    Ip(SocketAddr),
    /// A domain name (1..=255 bytes) and port, resolved by whoever connects.
    Domain(String, u16),
}

/// Why bytes did not parse as an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The input ends before the address does.
    #[error("address is incomplete")]
    Incomplete,
    /// The address type byte is not 1, 3 or 4.
    #[error("unknown address type {0:#04x}")]
    UnknownType(u8),
    /// A domain name that is empty or not UTF-8.
    #[error("invalid domain name")]
    InvalidDomain,
}

impl Address {
    /// Parses an address at the start of `buf`; returns it and the number of bytes it took.
    pub fn parse(buf: &[u8]) -> Result<(Address, usize), AddressError> {
        let (&atyp, rest) = buf.split_first().ok_or(AddressError::Incomplete)?;
        match atyp {
            ATYP_IPV4 => {
                let bytes: [u8; 4] = take(rest, 0)?;
                let port = port_at(rest, 4)?;
                Ok((Address::Ip(SocketAddr::new(Ipv4Addr::from(bytes).into(), port)), 1 + 4 + 2))
            }
            ATYP_IPV6 => {
                let bytes: [u8; 16] = take(rest, 0)?;
                let port = port_at(rest, 16)?;
                Ok((Address::Ip(SocketAddr::new(Ipv6Addr::from(bytes).into(), port)), 1 + 16 + 2))
            }
            ATYP_DOMAIN => {
                let len = usize::from(*rest.first().ok_or(AddressError::Incomplete)?);
                let name = rest.get(1..1 + len).ok_or(AddressError::Incomplete)?;
                let port = port_at(rest, 1 + len)?;
                if len == 0 {
                    return Err(AddressError::InvalidDomain);
                }
                let name = std::str::from_utf8(name).map_err(|_| AddressError::InvalidDomain)?;
                Ok((Address::Domain(name.to_owned(), port), 1 + 1 + len + 2))
            }
            other => Err(AddressError::UnknownType(other)),
        }
    }

    /// The number of bytes [`Address::write_to`] produces.
    pub fn encoded_len(&self) -> usize {
        match self {
            Address::Ip(SocketAddr::V4(_)) => 1 + 4 + 2,
            Address::Ip(SocketAddr::V6(_)) => 1 + 16 + 2,
            Address::Domain(name, _) => 1 + 1 + name.len().min(255) + 2,
        }
    }

    /// Appends the encoded address to `out`. IPv4-mapped IPv6 addresses are sent as IPv4, as peers expect.
    ///
    /// A domain name longer than 255 bytes cannot be encoded; it is truncated here, so callers must
    /// refuse such names first ([`Address::domain`] does).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Address::Ip(addr) => match addr.ip().to_canonical() {
                IpAddr::V4(ip) => {
                    out.push(ATYP_IPV4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(ATYP_IPV6);
                    out.extend_from_slice(&ip.octets());
                }
            },
            Address::Domain(name, _) => {
                let name = &name.as_bytes()[..name.len().min(255)];
                out.push(ATYP_DOMAIN);
                out.push(name.len() as u8);
                out.extend_from_slice(name);
            }
        }
        out.extend_from_slice(&self.port().to_be_bytes());
    }

    /// A domain address, refusing names that are empty or longer than 255 bytes.
    pub fn domain(name: &str, port: u16) -> Result<Address, AddressError> {
        if name.is_empty() || name.len() > 255 {
            return Err(AddressError::InvalidDomain);
        }
        Ok(Address::Domain(name.to_owned(), port))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Address::Ip(addr) => addr.port(),
            Address::Domain(_, port) => *port,
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Ip(addr)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(addr) => addr.fmt(f),
            Address::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

fn take<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N], AddressError> {
    buf.get(at..at + N).and_then(|bytes| bytes.try_into().ok()).ok_or(AddressError::Incomplete)
}

fn port_at(buf: &[u8], at: usize) -> Result<u16, AddressError> {
    let bytes: [u8; 2] = take(buf, at)?;
    Ok(u16::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(address: &Address) -> Vec<u8> {
        let mut out = Vec::new();
        address.write_to(&mut out);
        out
    }

    #[test]
    fn known_encodings() {
        let v4 = Address::Ip("127.0.0.1:24480".parse().unwrap());
        assert_eq!(hex::encode(encode(&v4)), "017f0000015fa0");
        let name = Address::domain("localhost", 24480).unwrap();
        assert_eq!(hex::encode(encode(&name)), "03096c6f63616c686f73745fa0");
        let v6 = Address::Ip("[::1]:24480".parse().unwrap());
        assert_eq!(hex::encode(encode(&v6)), "0400000000000000000000000000000001".to_owned() + "5fa0");
    }

    #[test]
    fn mapped_ipv6_is_sent_as_ipv4() {
        let mapped = Address::Ip("[::ffff:127.0.0.1]:80".parse().unwrap());
        assert_eq!(hex::encode(encode(&mapped)), "017f0000010050");
        assert_eq!(mapped.encoded_len(), 1 + 16 + 2, "encoded_len stays an upper bound");
    }

    #[test]
    fn parse_reports_what_is_wrong() {
        assert_eq!(Address::parse(&[]), Err(AddressError::Incomplete));
        assert_eq!(Address::parse(&[1, 127, 0, 0, 1, 0]), Err(AddressError::Incomplete));
        assert_eq!(Address::parse(&[3, 5, b'a']), Err(AddressError::Incomplete));
        assert_eq!(Address::parse(&[3, 0, 0, 80]), Err(AddressError::InvalidDomain));
        assert_eq!(Address::parse(&[3, 1, 0xff, 0, 80]), Err(AddressError::InvalidDomain));
        assert_eq!(Address::parse(&[2, 0, 0]), Err(AddressError::UnknownType(2)));
        assert_eq!(Address::parse(&[0x16, 3, 1]), Err(AddressError::UnknownType(0x16)));
    }

    #[test]
    fn parse_stops_at_the_end_of_the_address() {
        let (address, used) = Address::parse(&[1, 10, 0, 0, 1, 0, 53, 0xAA, 0xBB]).unwrap();
        assert_eq!(address, Address::Ip("10.0.0.1:53".parse().unwrap()));
        assert_eq!(used, 7);
    }

    #[test]
    fn long_domains_are_refused() {
        assert!(Address::domain(&"a".repeat(256), 1).is_err());
        assert!(Address::domain("", 1).is_err());
        let longest = Address::domain(&"a".repeat(255), 1).unwrap();
        assert_eq!(encode(&longest).len(), MAX_ADDRESS_LEN);
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
        fn encode_then_parse_round_trips(address in any_address(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut bytes = encode(&address);
            prop_assert_eq!(bytes.len(), address.encoded_len());
            bytes.extend_from_slice(&tail);
            let (parsed, used) = Address::parse(&bytes).unwrap();
            prop_assert_eq!(parsed, address);
            prop_assert_eq!(used, bytes.len() - tail.len());
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok((_, used)) = Address::parse(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }
    }
}
