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
//! | benchmarking               | 198.18.0.0/15                 | -                        |
//! | local-use NAT64            | -                             | 64:ff9b:1::/48           |
//! | multicast                  | 224.0.0.0/4                   | ff00::/8                 |
//! | reserved and broadcast     | 240.0.0.0/4, 255.255.255.255  | -                        |
//!
//! IPv6 forms that embed an IPv4 address are judged by the embedded address: IPv4-mapped
//! `::ffff:a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
//! `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::/48`, and Teredo `2001:0::/32` (both the server address it
//! names and the client address it carries, inverted, in its last 32 bits).
//!
//! On top of the ranges, [`AddressGuard`] refuses the server host's own addresses ([`OwnAddresses`]):
//! the public IPv4 and global IPv6 addresses on a VPS's interfaces reach the host's services past
//! firewall rules written for the external interface, and its own port makes it connect to itself.
//! The documentation ranges 192.0.2.0/24 and 2001:db8::/32 stay allowed by the range rule, so tests can
//! put them on a namespace's loopback and exercise the own-address rule alone.
//!
//! An ACL (`--acl`, [`AddressGuard::with_acl`]) adds its `[outbound_block_list]` (and
//! `[outbound_block_all]`) on top: names are checked before they are resolved, addresses right before
//! connecting. It loosens the range rule only for addresses its `[outbound_allow_list]` names
//! explicitly; an address the ACL does not mention is judged by the ranges alone.
//!
//! The check is applied to each resolved address right before connecting to it, so a name that resolves
//! to a private address is refused too and there is no gap between checking and connecting (DNS
//! rebinding). [`AddressGuard::allowed_targets`] and [`AddressGuard::first_allowed`] are that
//! resolve-then-check step as pure functions over the resolved addresses, shared by the TCP and UDP
//! relays and testable without a resolver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ss_net::SharedAcl;

pub use crate::own_addresses::OwnAddresses;

/// The server's configured rule for targets.
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

/// The rule applied right before each connect: the configured [`TargetPolicy`] and, under
/// [`TargetPolicy::PublicOnly`], the host's own addresses; then the ACL's outbound lists, if any.
#[derive(Debug, Clone)]
pub struct AddressGuard {
    policy: TargetPolicy,
    own: Option<OwnAddresses>,
    acl: Option<Arc<SharedAcl>>,
}

impl AddressGuard {
    /// A guard for `policy`; `own` is consulted only when the policy is [`TargetPolicy::PublicOnly`].
    pub fn new(policy: TargetPolicy, own: OwnAddresses) -> AddressGuard {
        let own = (policy == TargetPolicy::PublicOnly).then_some(own);
        AddressGuard { policy, own, acl: None }
    }

    /// The same guard with the ACL's outbound lists on top (the rules in force at each check: a reload
    /// applies to the next address judged).
    pub fn with_acl(self, acl: Option<Arc<SharedAcl>>) -> AddressGuard {
        AddressGuard { acl, ..self }
    }

    /// Whether a target name may be resolved at all: `false` when the ACL blocks it by its host rules.
    pub fn allows_name(&self, host: &str) -> bool {
        !self.acl.as_ref().is_some_and(|acl| acl.current().blocks_host(host))
    }

    /// The range rule alone (no own addresses): for tests and tools that have no host to protect.
    pub fn ranges_only(policy: TargetPolicy) -> AddressGuard {
        AddressGuard { policy, own: None, acl: None }
    }

    /// Whether the server may connect to `ip`: the ACL's block lists refuse; its allow list alone may
    /// admit an address the ranges or the own-address rule refuse.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if let Some(acl) = &self.acl {
            let acl = acl.current();
            if acl.blocks_ip(ip) {
                return false;
            }
            if acl.explicitly_allows_ip(ip) {
                return true;
            }
        }
        self.policy.allows(ip) && !self.own.as_ref().is_some_and(|own| own.contains(ip))
    }

    /// The addresses among `candidates` (what a target resolved to, in the resolver's order) that the
    /// server may use, in the same order. Lazy: each address is judged when it is taken, right before the
    /// caller dials it.
    pub fn allowed_targets<'a, I>(&'a self, candidates: I) -> impl Iterator<Item = SocketAddr> + 'a
    where
        I: IntoIterator<Item = SocketAddr>,
        I::IntoIter: 'a,
    {
        candidates.into_iter().filter(move |addr| self.allows(addr.ip()))
    }

    /// The first of `candidates` the server may use; `None` when every one is refused (or there is none).
    pub fn first_allowed(&self, candidates: impl IntoIterator<Item = SocketAddr>) -> Option<SocketAddr> {
        candidates.into_iter().find(|addr| self.allows(addr.ip()))
    }
}

/// Whether `ip` is in one of the refused classes (see the module documentation).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Embedded::None => is_internal_v6(v6),
            Embedded::One(v4) => is_internal_v4(v4),
            Embedded::Two(first, second) => is_internal_v4(first) || is_internal_v4(second),
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
        || (a == 198 && (b & 0xfe) == 18)    // benchmarking 198.18.0.0/15
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let first = segments[0];
    ip.is_unspecified()
        || segments[..3] == [0x64, 0xff9b, 1] // local-use NAT64 64:ff9b:1::/48
        || ip.is_loopback()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
        || (first & 0xff00) == 0xff00 // multicast
}

/// The IPv4 addresses an IPv6 address stands for, if it is one of the embedding forms.
enum Embedded {
    None,
    One(Ipv4Addr),
    /// Teredo: the Teredo server's address and the client's (de-obfuscated) public address.
    Two(Ipv4Addr, Ipv4Addr),
}

/// The IPv4 address(es) inside an IPv4-mapped, IPv4-translated, IPv4-compatible, NAT64 (64:ff9b::/96),
/// 6to4 (2002::/16) or Teredo (2001::/32) IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Embedded {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Embedded::One(v4);
    }
    let s = ip.segments();
    let v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    let compatible = s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback();
    let translated = s[..6] == [0, 0, 0, 0, 0xffff, 0];
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || translated || nat64 {
        return Embedded::One(v4(s[6], s[7]));
    }
    match s[0..2] {
        [0x2002, _] => Embedded::One(v4(s[1], s[2])),
        [0x2001, 0x0000] => Embedded::Two(v4(s[2], s[3]), v4(!s[6], !s[7])),
        _ => Embedded::None,
    }
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
        "198.18.0.1",
        "198.19.255.255",
        "64:ff9b:1::1",
        "64:ff9b:1:ffff::808:808",
        "::ffff:0:7f00:1",
        "::ffff:0:a00:1",
        "2002:7f00:1::1",
        "2002:c0a8:101:1::1",
        "2002:a9fe:a9fe::",
        // Teredo: a private server address, then a public server with a private client (10.0.0.1 inverted).
        "2001:0:7f00:1::1",
        "2001:0:808:808:0:0:f5ff:fffe",
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
        "198.17.255.255",
        "198.20.0.1",
        "::ffff:0:808:808",
        "2002:808:808::1",
        // Teredo with a public server (8.8.8.8) and a public client (1.1.1.1 inverted).
        "2001:0:808:808::fefe:fefe",
        // The documentation ranges stay allowed by the range rule (the own-address tests use them).
        "192.0.2.1",
        "2001:db8::1",
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
                all.push(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::new(0x2002, embedded, low, 0, 0, 0, 0, 1)),
                    port,
                ));
                all.push(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, embedded, low)),
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
            assert_eq!(
                AddressGuard::ranges_only(TargetPolicy::PublicOnly).first_allowed([*addr]),
                None,
                "{addr}"
            );
        }
        assert_eq!(AddressGuard::ranges_only(TargetPolicy::PublicOnly).first_allowed(internal.clone()), None);
        assert_eq!(AddressGuard::ranges_only(TargetPolicy::PublicOnly).allowed_targets(internal).count(), 0);
        assert_eq!(
            AddressGuard::ranges_only(TargetPolicy::PublicOnly).first_allowed(Vec::new()),
            None,
            "resolved to nothing"
        );
    }

    #[test]
    fn internal_addresses_among_public_ones_are_skipped() {
        let public = public_socket_addrs();
        for internal in internal_socket_addrs() {
            for allowed in &public {
                for order in [[internal, *allowed], [*allowed, internal]] {
                    assert_eq!(
                        AddressGuard::ranges_only(TargetPolicy::PublicOnly).first_allowed(order),
                        Some(*allowed),
                        "{order:?}"
                    );
                }
            }
        }
        // Several of each, interleaved as a rebinding resolver might answer: only the public ones
        // survive, in their order.
        let internal = internal_socket_addrs();
        let mixed: Vec<SocketAddr> =
            internal.iter().zip(public.iter().cycle()).flat_map(|(bad, good)| [*bad, *good]).collect();
        let survivors: Vec<SocketAddr> =
            AddressGuard::ranges_only(TargetPolicy::PublicOnly).allowed_targets(mixed).collect();
        let expected: Vec<SocketAddr> = public.iter().cycle().take(internal.len()).copied().collect();
        assert_eq!(survivors, expected);
    }

    #[test]
    fn allow_all_takes_the_first_candidate() {
        let internal = internal_socket_addrs();
        let public = public_socket_addrs();
        assert_eq!(
            AddressGuard::ranges_only(TargetPolicy::AllowAll).first_allowed([internal[0], public[0]]),
            Some(internal[0])
        );
        assert_eq!(
            AddressGuard::ranges_only(TargetPolicy::AllowAll)
                .allowed_targets(internal.clone())
                .collect::<Vec<_>>(),
            internal
        );
    }

    #[test]
    fn own_addresses_are_refused_only_under_the_default_policy() {
        let own =
            OwnAddresses::from_addresses(["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()]);
        let guard = AddressGuard::new(TargetPolicy::PublicOnly, own.clone());
        for text in ["192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1"] {
            assert!(!guard.allows(text.parse().unwrap()), "{text} is the host's own");
        }
        assert!(guard.allows("192.0.2.2".parse().unwrap()), "a neighbour is not");
        assert!(!guard.allows("10.0.0.1".parse().unwrap()), "the ranges still apply");
        let own_first = [SocketAddr::new("192.0.2.1".parse().unwrap(), 80), public_socket_addrs()[0]];
        assert_eq!(guard.first_allowed(own_first), Some(own_first[1]));

        let allow_all = AddressGuard::new(TargetPolicy::AllowAll, own);
        assert!(allow_all.allows("192.0.2.1".parse().unwrap()));
        assert!(allow_all.allows("2001:db8::1".parse().unwrap()));
    }

    /// The resolver's answer for "localhost" (from the hosts file; no query leaves the machine) goes
    /// through the same function as the relays use.
    #[tokio::test]
    async fn localhost_resolves_to_nothing_allowed() {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", 80)).await.unwrap().collect();
        assert!(!resolved.is_empty(), "localhost resolved to nothing");
        assert!(resolved.iter().all(|addr| addr.ip().is_loopback()), "localhost is {resolved:?}");
        assert_eq!(
            AddressGuard::ranges_only(TargetPolicy::PublicOnly).first_allowed(resolved.clone()),
            None,
            "{resolved:?}"
        );
        assert_eq!(
            AddressGuard::ranges_only(TargetPolicy::AllowAll).first_allowed(resolved.clone()),
            resolved.first().copied()
        );
        // Literals go through the same call without a resolver, the mapped form included.
        for literal in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.0.2"] {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((literal, 80)).await.unwrap().collect();
            assert_eq!(
                AddressGuard::ranges_only(TargetPolicy::PublicOnly).first_allowed(resolved),
                None,
                "{literal}"
            );
        }
    }
}
