//! Socket addresses in the one form the binaries compare and log them in.
//!
//! A dual-stack socket reports an IPv4 peer as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`). Every
//! comparison (is this datagram from the SOCKS5 client? is this source one of ours?) and every address
//! written into a Shadowsocks header uses the plain IPv4 form. The rule is std's
//! [`IpAddr::to_canonical`](std::net::IpAddr::to_canonical), which ss-crypto's address encoder also uses.

use std::net::SocketAddr;

/// `addr` with an IPv4-mapped IPv6 address replaced by its IPv4 form; other addresses unchanged.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_become_ipv4_and_others_stay() {
        let canonical = |text: &str| canonical_addr(text.parse().unwrap()).to_string();
        assert_eq!(canonical("[::ffff:127.0.0.1]:53"), "127.0.0.1:53");
        assert_eq!(canonical("[::1]:53"), "[::1]:53");
        // IPv4-compatible (::a.b.c.d, deprecated) is not IPv4-mapped: it stays IPv6.
        assert_eq!(canonical("[::127.0.0.1]:53"), "[::7f00:1]:53");
        assert_eq!(canonical("10.0.0.1:1"), "10.0.0.1:1");
    }
}
