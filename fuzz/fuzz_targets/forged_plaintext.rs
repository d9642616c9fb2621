//! Arbitrary plaintext behind valid tags: [`ss_fuzz::forge`] seals whatever the input says, so the
//! header, length, padding and address checks that follow authentication see hostile values.
//!
//! ```text
//! input = method (byte % 8) | mode (byte % 4) | cut | rest
//! mode 0, 1: TCP request, response.  rest = salt | plaintext of each record, in order
//! mode 2, 3: UDP from a client, from a server.  rest = salt (classic) or session and packet ids
//!            (2022) [| XChaCha nonce] | body
//! ```
//!
//! TCP records are cut to the length the decryptor asks for next (zero-filled when the input runs
//! out). Every forged record and datagram must authenticate; a TCP stream must decrypt the same
//! whether it arrives whole or in two reads; an opened datagram's payload must be the end of its body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ss_crypto::udp::{Origin, Udp2022, UdpClassic, UdpError};
use ss_crypto::{Address, DecryptError, Method, TAG_LEN};
use ss_fuzz::forge::{self, RecordSealer};
use ss_fuzz::{decrypt_stream, key, split_point, Direction, NOW};

fuzz_target!(|data: &[u8]| {
    let [method, mode, cut, rest @ ..] = data else { return };
    let method = Method::ALL[usize::from(*method) % Method::ALL.len()];
    match mode % 4 {
        0 => tcp(method, Direction::Request, *cut, rest),
        1 => tcp(method, Direction::Response, *cut, rest),
        2 => datagram(method, Origin::Client, rest),
        _ => datagram(method, Origin::Server, rest),
    }
});

fn tcp(method: Method, direction: Direction, cut: u8, mut input: &[u8]) {
    let salt = take(&mut input, method.salt_len());
    let mut sealer = RecordSealer::new(method, &key(method), &salt);
    // A shadow decryptor, fed one record at a time, says how long the next record must be.
    let mut shadow = direction.decryptor(method);
    let mut wire = salt.clone();
    let mut record = salt;
    loop {
        if let Err(error) = shadow.decrypt(&mut record, NOW) {
            assert_ne!(error, DecryptError::AuthFailure, "a forged record did not authenticate");
            break;
        }
        if input.is_empty() {
            break;
        }
        record.clear();
        sealer.seal(&take(&mut input, shadow.wanted() - TAG_LEN), &mut record);
        wire.extend_from_slice(&record);
    }
    let in_two_reads = decrypt_stream(method, direction, &wire, split_point(cut, wire.len()), NOW);
    let whole = decrypt_stream(method, direction, &wire, wire.len(), NOW);
    assert_eq!(in_two_reads, whole, "the outcome depends on how the stream was read");
}

fn datagram(method: Method, origin: Origin, mut input: &[u8]) {
    let key = key(method);
    let Some(opener) = Udp2022::new(method, &key) else {
        let salt = take(&mut input, method.salt_len());
        let mut packet = forge::udp_classic(method, &key, &salt, input);
        let classic = UdpClassic::new(method, &key).expect("every method is classic or 2022");
        let opened = classic.open(&mut packet);
        let expected =
            Address::parse(input).map(|(address, used)| (address, salt.len() + used..packet.len() - TAG_LEN));
        assert_eq!(opened, expected.map_err(|_| UdpError::BadAddress));
        return;
    };
    let ids: [u8; 16] = take(&mut input, 16).try_into().expect("16 bytes");
    let mut xnonce = [0; 24];
    if method == Method::Blake3ChaCha20Poly1305 {
        xnonce.copy_from_slice(&take(&mut input, 24));
    }
    let mut packet = forge::udp_2022(method, &key, ids, xnonce, input);
    match opener.open(&mut packet, NOW, origin) {
        Ok(opened) => {
            assert_eq!(opened.header.session_id.to_be_bytes(), ids[..8]);
            assert_eq!(opened.header.packet_id.to_be_bytes(), ids[8..]);
            assert!(input.ends_with(&packet[opened.payload]), "the payload is not the end of the body");
        }
        Err(error) => {
            assert!(!matches!(error, UdpError::AuthFailure), "{error:?}")
        }
    }
}

/// The next `len` bytes of the input, zero-filled past its end.
fn take(input: &mut &[u8], len: usize) -> Vec<u8> {
    let (taken, rest) = input.split_at(len.min(input.len()));
    *input = rest;
    let mut bytes = taken.to_vec();
    bytes.resize(len, 0);
    bytes
}
