//! Arbitrary bytes as a UDP datagram for every method (fixed keys): `UdpClassic::open` for classic methods,
//! `Udp2022::open` from both origins for 2022 methods, with a fixed clock.
//!
//! Nothing may panic; a datagram that opens must have its payload inside the packet, ending at the
//! tag, and a 2022 one must come from the expected side within the time window. No classic opener
//! exists for a 2022 method. The seeds are valid datagrams under the fixed keys.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ss_crypto::tcp::MAX_TIME_SKEW;
use ss_crypto::udp::{Origin, Sender, Udp2022, UdpClassic};
use ss_crypto::{Method, TAG_LEN};
use ss_fuzz::{key, NOW};

fuzz_target!(|data: &[u8]| {
    for method in Method::ALL {
        let key = key(method);
        let Some(opener) = Udp2022::new(method, &key) else {
            let mut packet = data.to_vec();
            let classic = UdpClassic::new(method, &key).expect("every method is classic or 2022");
            if let Ok((_, payload)) = classic.open(&mut packet) {
                assert!(payload.start <= payload.end && payload.end == packet.len() - TAG_LEN);
                assert!(payload.start >= method.salt_len());
            }
            continue;
        };
        assert!(UdpClassic::new(method, &key).is_none());
        for origin in [Origin::Client, Origin::Server] {
            let mut packet = data.to_vec();
            let Ok(opened) = opener.open(&mut packet, NOW, origin) else { continue };
            let payload = opened.payload;
            assert!(payload.start <= payload.end && payload.end == packet.len() - TAG_LEN);
            assert!(opened.header.timestamp.abs_diff(NOW) <= MAX_TIME_SKEW);
            let from_server = matches!(opened.header.sender, Sender::Server { .. });
            assert_eq!(from_server, origin == Origin::Server, "a packet from the wrong side opened");
        }
    }
});
