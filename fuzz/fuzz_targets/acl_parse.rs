//! Arbitrary bytes as an ACL file: `Acl::parse`, then every decision on names and addresses taken from
//! the same bytes. Nothing may panic; bad lines are warnings of one line each, never an error (only the
//! regex size limit may refuse a whole file).

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use ss_config::acl::{Acl, AclError};

fuzz_target!(|data: &[u8]| {
    let parsed = match Acl::parse(data) {
        Ok(parsed) => parsed,
        Err(AclError::TooLarge { .. }) => return,
        Err(error) => panic!("only the size limit may refuse a file: {error}"),
    };
    for warning in &parsed.warnings {
        assert!(!warning.contains('\n'), "a multi-line warning: {warning:?}");
    }
    let acl = parsed.acl;
    for line in data.split(|&b| b == b'\n').take(64) {
        let host = String::from_utf8_lossy(line);
        let _ = acl.route_host(&host);
        let _ = acl.blocks_host(&host);
    }
    let mut octets = [0u8; 16];
    for (slot, byte) in octets.iter_mut().zip(data.iter().rev()) {
        *slot = *byte;
    }
    let v4 = IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]));
    let mapped = IpAddr::V6(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]).to_ipv6_mapped());
    for ip in [v4, IpAddr::V6(Ipv6Addr::from(octets)), mapped] {
        let _ = (acl.route_ip(ip), acl.admits_client(ip), acl.blocks_ip(ip), acl.explicitly_allows_ip(ip));
    }
});
