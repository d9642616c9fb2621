//! `Address::parse` on arbitrary bytes. An address that parses must re-encode with `write_to` into
//! the bytes it was parsed from (except IPv4-mapped IPv6, which is sent as IPv4) and parse back equal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ss_crypto::Address;
use ss_fuzz::as_sent;

fuzz_target!(|data: &[u8]| {
    let Ok((address, used)) = Address::parse(data) else { return };
    assert!(used <= data.len(), "used {used} of {} bytes", data.len());
    assert_eq!(used, address.encoded_len());

    let mut encoded = Vec::new();
    address.write_to(&mut encoded);
    let sent = as_sent(&address);
    if sent == address {
        assert_eq!(encoded, data[..used], "re-encoding changed the bytes");
    }
    assert_eq!(Address::parse(&encoded), Ok((sent, encoded.len())), "the re-encoding parsed differently");
});
