//! Which target addresses the server refuses to connect to.
//!
//! A Shadowsocks server connects wherever its clients ask. Without a policy any client (or anyone who
//! replays a client's traffic) reaches the server's own loopback services, its private network and the
//! cloud metadata service (CVE-2017-15924 in shadowsocks-libev's manager). So by default every address
//! that is not globally routable unicast is refused:
//!
//! | class                      | IPv4                          | IPv6                     |
//! |----------------------------|-------------------------------|--------------------------|
//! | unspecified / "this host"  | 0.0.0.0/8                     | ::/128                   |
//! | loopback                   | 127.0.0.0/8                   | ::1/128                  |
//! | private                    | 10/8, 172.16/12, 192.168/16   | fc00::/7 (unique local)  |
//! | link-local (incl. metadata)| 169.254.0.0/16                | fe80::/10                |
//! | shared address space (CGNAT)| 100.64.0.0/10                | -                        |
//! | IETF protocol assignments  | 192.0.0.0/24                  | -                        |
//! | multicast                  | 224.0.0.0/4                   | ff00::/8                 |
//! | reserved and broadcast     | 240.0.0.0/4, 255.255.255.255  | -                        |
//!
//! IPv6 forms that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`,
//! NAT64 `64:ff9b::a.b.c.d`) are judged by the embedded address. The check is applied to each resolved
//! address right before connecting to it, so a name that resolves to a private address is refused too and
//! there is no gap between checking and connecting (DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The server's rule for targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetPolicy {
    /// Refuse every address that is not globally routable unicast (the default).
    PublicOnly,
    /// Allow every address (LAN setups and tests on loopback).
    AllowAll,
}

impl TargetPolicy {
    /// Whether the server may connect to `ip`.
    pub fn allows(self, ip: IpAddr) -> bool {
        match self {
            TargetPolicy::AllowAll => true,
            TargetPolicy::PublicOnly => !is_internal(ip),
        }
    }
}

/// Whether `ip` is in one of the refused classes (see the module documentation).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                   // "this network", unspecified
        || a == 127                          // loopback
        || a == 10                           // private
        || (a == 172 && (16..=31).contains(&b))
        || (a == 192 && b == 168)
        || (a == 169 && b == 254)            // link-local, cloud metadata 169.254.169.254
        || (a == 100 && (64..=127).contains(&b)) // CGNAT shared address space
        || (a == 192 && b == 0 && c == 0)    // IETF protocol assignments
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
        || (first & 0xff00) == 0xff00 // multicast
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible or NAT64 (64:ff9b::/96) IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let segments = ip.segments();
    let tail = Ipv4Addr::new(
        (segments[6] >> 8) as u8,
        segments[6] as u8,
        (segments[7] >> 8) as u8,
        segments[7] as u8,
    );
    let compatible = segments[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback();
    let nat64 = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (compatible || nat64).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        !TargetPolicy::PublicOnly.allows(text.parse().unwrap())
    }

    #[test]
    fn every_internal_class_is_refused() {
        for text in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.0.0.2",
            "127.255.255.254",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:192.168.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(refused(text), "{text} must be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "223.255.255.255",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(text), "{text} must be allowed");
        }
    }

    #[test]
    fn allow_all_allows_loopback() {
        assert!(TargetPolicy::AllowAll.allows("127.0.0.1".parse().unwrap()));
        assert!(TargetPolicy::AllowAll.allows("::1".parse().unwrap()));
    }
}
