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
//! there is no gap between checking and connecting (DNS rebinding). [`TargetPolicy::allowed_targets`] and
//! [`TargetPolicy::first_allowed`] are that resolve-then-check step as pure functions over the resolved
//! addresses, shared by the TCP and UDP relays and testable without a resolver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

    /// The addresses among `candidates` (what a target resolved to, in the resolver's order) that the
    /// server may use, in the same order. Lazy: each address is judged when it is taken, right before the
    /// caller dials it.
    pub fn allowed_targets<I>(self, candidates: I) -> impl Iterator<Item = SocketAddr>
    where
        I: IntoIterator<Item = SocketAddr>,
    {
        candidates.into_iter().filter(move |addr| self.allows(addr.ip()))
    }

    /// The first of `candidates` the server may use; `None` when every one is refused (or there is none).
    pub fn first_allowed(self, candidates: impl IntoIterator<Item = SocketAddr>) -> Option<SocketAddr> {
        self.allowed_targets(candidates).next()
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

    /// One or more addresses of every refused class, IPv4 first.
    const INTERNAL: &[&str] = &[
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
    ];

    const PUBLIC: &[&str] = &[
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
    ];

    fn refused(text: &str) -> bool {
        !TargetPolicy::PublicOnly.allows(text.parse().unwrap())
    }

    /// Every internal address as a resolver could return it: the literal, and each IPv4 address also in
    /// IPv4-mapped, IPv4-compatible and NAT64 form. Ports vary so that no test depends on one.
    fn internal_socket_addrs() -> Vec<SocketAddr> {
        let mut all = Vec::new();
        for (port, text) in (1u16..).zip(INTERNAL) {
            let ip: IpAddr = text.parse().unwrap();
            all.push(SocketAddr::new(ip, port));
            if let IpAddr::V4(v4) = ip {
                let [a, b, c, d] = v4.octets();
                let embedded = u16::from_be_bytes([a, b]);
                let low = u16::from_be_bytes([c, d]);
                all.push(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), port));
                all.push(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, embedded, low)),
                    port,
                ));
                if !v4.is_unspecified() {
                    all.push(SocketAddr::new(
                        IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, embedded, low)),
                        port,
                    ));
                }
            }
        }
        all
    }

    fn public_socket_addrs() -> Vec<SocketAddr> {
        PUBLIC.iter().map(|text| SocketAddr::new(text.parse().unwrap(), 443)).collect()
    }

    #[test]
    fn every_internal_class_is_refused() {
        for text in INTERNAL {
            assert!(refused(text), "{text} must be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for text in PUBLIC {
            assert!(!refused(text), "{text} must be allowed");
        }
    }

    #[test]
    fn allow_all_allows_loopback() {
        assert!(TargetPolicy::AllowAll.allows("127.0.0.1".parse().unwrap()));
        assert!(TargetPolicy::AllowAll.allows("::1".parse().unwrap()));
    }

    #[test]
    fn a_name_resolving_only_to_internal_addresses_is_refused() {
        let internal = internal_socket_addrs();
        for addr in &internal {
            assert_eq!(TargetPolicy::PublicOnly.first_allowed([*addr]), None, "{addr}");
        }
        assert_eq!(TargetPolicy::PublicOnly.first_allowed(internal.clone()), None);
        assert_eq!(TargetPolicy::PublicOnly.allowed_targets(internal).count(), 0);
        assert_eq!(TargetPolicy::PublicOnly.first_allowed(Vec::new()), None, "resolved to nothing");
    }

    #[test]
    fn internal_addresses_among_public_ones_are_skipped() {
        let public = public_socket_addrs();
        for internal in internal_socket_addrs() {
            for allowed in &public {
                for order in [[internal, *allowed], [*allowed, internal]] {
                    assert_eq!(TargetPolicy::PublicOnly.first_allowed(order), Some(*allowed), "{order:?}");
                }
            }
        }
        // Several of each, interleaved as a rebinding resolver might answer: only the public ones
        // survive, in their order.
        let internal = internal_socket_addrs();
        let mixed: Vec<SocketAddr> =
            internal.iter().zip(public.iter().cycle()).flat_map(|(bad, good)| [*bad, *good]).collect();
        let survivors: Vec<SocketAddr> = TargetPolicy::PublicOnly.allowed_targets(mixed).collect();
        let expected: Vec<SocketAddr> = public.iter().cycle().take(internal.len()).copied().collect();
        assert_eq!(survivors, expected);
    }

    #[test]
    fn allow_all_takes_the_first_candidate() {
        let internal = internal_socket_addrs();
        let public = public_socket_addrs();
        assert_eq!(TargetPolicy::AllowAll.first_allowed([internal[0], public[0]]), Some(internal[0]));
        assert_eq!(TargetPolicy::AllowAll.allowed_targets(internal.clone()).collect::<Vec<_>>(), internal);
    }

    /// The resolver's answer for "localhost" (from the hosts file; no query leaves the machine) goes
    /// through the same function as the relays use.
    #[tokio::test]
    async fn localhost_resolves_to_nothing_allowed() {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", 80)).await.unwrap().collect();
        assert!(!resolved.is_empty(), "localhost resolved to nothing");
        assert!(resolved.iter().all(|addr| addr.ip().is_loopback()), "localhost is {resolved:?}");
        assert_eq!(TargetPolicy::PublicOnly.first_allowed(resolved.clone()), None, "{resolved:?}");
        assert_eq!(TargetPolicy::AllowAll.first_allowed(resolved.clone()), resolved.first().copied());
        // Literals go through the same call without a resolver, the mapped form included.
        for literal in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.0.2"] {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((literal, 80)).await.unwrap().collect();
            assert_eq!(TargetPolicy::PublicOnly.first_allowed(resolved), None, "{literal}");
        }
    }
}
