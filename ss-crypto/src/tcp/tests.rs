//! Round trips, splits, tampering and truncation for both generations and both directions.
//! Byte-exact compatibility is pinned by the known-answer vectors in `tests/vectors.rs`.

use proptest::prelude::*;

use super::*;
use crate::{Address, Key, Method, Salt, SealError};

const NOW: u64 = 1_704_164_645;

fn key(method: Method) -> Key {
    Key::from_bytes(method, &[0x42; 32][..method.key_len()]).unwrap()
}

fn salt(method: Method, byte: u8) -> Salt {
    Salt::from_slice(method, &[byte; 32][..method.salt_len()]).unwrap()
}

fn target() -> Address {
    Address::domain("example.com", 443).unwrap()
}

/// A request stream of `writes` and the response stream of `writes`, as a client and server send them.
fn streams(method: Method, writes: &[Vec<u8>], padding: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = key(method);
    let mut request = Encryptor::request(method, &key, salt(method, 1), &target(), padding);
    let mut response = Encryptor::response(method, &key, salt(method, 2), salt(method, 1));
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for write in writes {
        request.encrypt(write, NOW, &mut up).unwrap();
        response.encrypt(write, NOW, &mut down).unwrap();
    }
    (up, down)
}

struct Outcome {
    target: Option<Address>,
    payload: Vec<u8>,
    result: Result<(), DecryptError>,
}

/// Decodes `stream` fed in the given read sizes (cycled), then checks the end of stream.
fn decode(mut decryptor: Decryptor, stream: &[u8], reads: &[usize]) -> Outcome {
    let mut outcome = Outcome { target: None, payload: Vec::new(), result: Ok(()) };
    let mut buffer = Vec::new();
    let mut fed = 0;
    for &read in reads.iter().cycle() {
        let take = read.max(1).min(stream.len() - fed);
        buffer.extend_from_slice(&stream[fed..fed + take]);
        fed += take;
        loop {
            match decryptor.decrypt(&mut buffer, NOW) {
                Ok(decoded) => {
                    outcome.payload.extend_from_slice(&buffer[decoded.payload.clone()]);
                    outcome.target = outcome.target.or(decoded.target);
                    buffer.drain(..decoded.consumed);
                    if decoded.consumed == 0 {
                        break;
                    }
                }
                Err(error) => {
                    outcome.result = Err(error);
                    return outcome;
                }
            }
        }
        if fed == stream.len() {
            break;
        }
    }
    outcome.result = decryptor.finish(buffer.len());
    outcome
}

fn request_decryptor(method: Method) -> Decryptor {
    Decryptor::request(method, &key(method))
}

fn response_decryptor(method: Method) -> Decryptor {
    Decryptor::response(method, &key(method), salt(method, 1))
}

#[test]
fn every_method_round_trips_both_directions_one_byte_at_a_time() {
    let writes = vec![b"GET / HTTP/1.1\r\n\r\n".to_vec(), vec![7; 0x4001], vec![9; 0x10001], b"x".to_vec()];
    let all: Vec<u8> = writes.concat();
    for method in Method::ALL {
        let (up, down) = streams(method, &writes, &[]);
        for reads in [&[1][..], &[3, 1000, 17], &[usize::MAX]] {
            let request = decode(request_decryptor(method), &up, reads);
            assert_eq!(request.result, Ok(()), "{method}");
            assert_eq!(request.target, Some(target()), "{method}");
            assert!(request.payload == all, "{method}");
            let response = decode(response_decryptor(method), &down, reads);
            assert_eq!(response.result, Ok(()), "{method}");
            assert!(response.payload == all, "{method}");
        }
    }
}

#[test]
fn an_empty_first_write_sends_the_header_alone() {
    for method in Method::ALL {
        let (up, down) = streams(method, &[vec![], b"hello".to_vec()], &[]);
        let request = decode(request_decryptor(method), &up, &[usize::MAX]);
        assert_eq!(request.result, Ok(()), "{method}: 2022 must add padding by itself");
        assert_eq!(request.payload, b"hello");
        // A response with nothing to say yet sends nothing at all, not even its salt.
        let (_, empty) = streams(method, &[vec![]], &[]);
        assert!(empty.is_empty(), "{method}");
        assert_eq!(decode(response_decryptor(method), &down, &[5]).payload, b"hello");
    }
}

#[test]
fn salt_header_and_first_payload_leave_in_one_write() {
    for method in Method::ALL {
        let key = key(method);
        let mut encryptor = Encryptor::request(method, &key, salt(method, 1), &target(), &[0; 16]);
        let mut out = Vec::new();
        encryptor.encrypt(b"hi", NOW, &mut out).unwrap();
        assert!(encryptor.header_sent());
        let mut decryptor = request_decryptor(method);
        let decoded = decryptor.decrypt(&mut out, NOW).unwrap();
        assert_eq!(decoded.consumed, out.len(), "{method}: everything arrived in one write");
        assert_eq!(&out[decoded.payload], b"hi");
    }
}

#[test]
fn salt_is_exposed_only_after_authentication() {
    for method in Method::ALL {
        let (up, _) = streams(method, &[b"data".to_vec()], &[]);
        let mut decryptor = request_decryptor(method);
        let mut salt_only = up[..method.salt_len()].to_vec();
        decryptor.decrypt(&mut salt_only, NOW).unwrap();
        assert_eq!(decryptor.authenticated_salt(), None, "{method}");
        let mut tampered = up.clone();
        tampered[method.salt_len() + 1] ^= 1;
        let mut bad = request_decryptor(method);
        assert_eq!(bad.decrypt(&mut tampered, NOW), Err(DecryptError::AuthFailure));
        assert_eq!(bad.authenticated_salt(), None, "{method}");
        let mut good = request_decryptor(method);
        let mut whole = up.clone();
        good.decrypt(&mut whole, NOW).unwrap();
        assert_eq!(good.authenticated_salt(), Some(salt(method, 1)), "{method}");
    }
}

#[test]
fn errors_are_sticky() {
    let method = Method::Aes128Gcm;
    let (mut up, _) = streams(method, &[b"data".to_vec()], &[]);
    let last = up.len() - 1;
    up[last] ^= 0x80;
    let mut decryptor = request_decryptor(method);
    assert_eq!(decryptor.decrypt(&mut up.clone(), NOW), Err(DecryptError::AuthFailure));
    assert_eq!(decryptor.decrypt(&mut [], NOW), Err(DecryptError::AuthFailure));
    assert_eq!(decryptor.finish(0), Err(DecryptError::AuthFailure));
}

#[test]
fn end_of_stream_rules() {
    for method in Method::ALL {
        assert_eq!(request_decryptor(method).finish(0), Ok(()), "nothing at all is a clean end");
        assert_eq!(request_decryptor(method).finish(3), Err(DecryptError::Truncated));
        // A request that ends after its salt never named a target.
        let mut decryptor = request_decryptor(method);
        let (up, _) = streams(method, &[b"x".to_vec()], &[]);
        let mut salt_only = up[..method.salt_len()].to_vec();
        let decoded = decryptor.decrypt(&mut salt_only, NOW).unwrap();
        assert_eq!(decoded.consumed, method.salt_len());
        assert_eq!(decryptor.finish(0), Err(DecryptError::Truncated), "{method}");
        // A response that ends after its salt: classic is between records; 2022 owes its fixed header.
        let (_, down) = streams(method, &[b"x".to_vec()], &[]);
        let mut response = response_decryptor(method);
        response.decrypt(&mut down[..method.salt_len()].to_vec(), NOW).unwrap();
        let expected = if method.is_2022() { Err(DecryptError::Truncated) } else { Ok(()) };
        assert_eq!(response.finish(0), expected, "{method}");
    }
}

#[test]
fn a_2022_response_to_another_request_is_refused() {
    for method in Method::ALL.into_iter().filter(|m| m.is_2022()) {
        let (_, down) = streams(method, &[b"x".to_vec()], &[]);
        let other = Decryptor::response(method, &key(method), salt(method, 9));
        assert_eq!(decode(other, &down, &[usize::MAX]).result, Err(DecryptError::SaltMismatch));
    }
}

#[test]
fn a_stream_replayed_in_the_other_direction_is_refused() {
    for method in Method::ALL.into_iter().filter(|m| m.is_2022()) {
        let (up, down) = streams(method, &[b"x".to_vec()], &[]);
        // The two fixed headers differ in length, so the tag check already fails.
        let refused = |result| matches!(result, Err(DecryptError::AuthFailure | DecryptError::BadType));
        assert!(refused(decode(response_decryptor(method), &up, &[99]).result), "{method}");
        assert!(refused(decode(request_decryptor(method), &down, &[99]).result), "{method}");
    }
}

#[test]
fn stale_2022_headers_are_refused() {
    for method in Method::ALL.into_iter().filter(|m| m.is_2022()) {
        let (mut up, _) = streams(method, &[b"x".to_vec()], &[]);
        let mut decryptor = request_decryptor(method);
        assert_eq!(decryptor.decrypt(&mut up, NOW + 31), Err(DecryptError::BadTimestamp));
        assert_eq!(decryptor.peer_clock_skew(), Some(-31), "{method}: the refused header's skew");
    }
}

#[test]
fn the_peer_clock_skew_is_known_once_the_2022_header_authenticated() {
    for method in Method::ALL {
        let (mut up, _) = streams(method, &[b"x".to_vec()], &[]);
        let mut decryptor = request_decryptor(method);
        assert_eq!(decryptor.peer_clock_skew(), None, "{method}: before the header");
        assert!(decryptor.decrypt(&mut up, NOW - 12).is_ok(), "{method}");
        let expected = method.is_2022().then_some(12);
        assert_eq!(decryptor.peer_clock_skew(), expected, "{method}: the header was written at NOW");
    }
}

#[test]
fn padding_is_capped_at_900_bytes() {
    let method = Method::Blake3Aes256Gcm;
    let (up, _) = streams(method, &[vec![]], &[0xAA; 2000]);
    let fixed_header = method.salt_len() + REQUEST_FIXED_LEN + crate::TAG_LEN;
    let header_len =
        crate::MAX_ADDRESS_LEN.min(target().encoded_len()) + 2 + MAX_PADDING_LEN + crate::TAG_LEN;
    assert_eq!(up.len(), fixed_header + header_len);
    assert_eq!(decode(request_decryptor(method), &up, &[usize::MAX]).result, Ok(()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_payload_any_split_round_trips(
        method in proptest::sample::select(Method::ALL.to_vec()),
        writes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..5),
        reads in proptest::collection::vec(1usize..5000, 1..8),
    ) {
        let (up, down) = streams(method, &writes, &[]);
        let all = writes.concat();
        let request = decode(request_decryptor(method), &up, &reads);
        prop_assert_eq!(request.result, Ok(()));
        prop_assert_eq!(request.payload, all.clone());
        let response = decode(response_decryptor(method), &down, &reads);
        prop_assert_eq!(response.result, Ok(()));
        prop_assert_eq!(response.payload, all);
    }

    #[test]
    fn any_flipped_bit_is_an_error_and_never_changed_plaintext(
        method in proptest::sample::select(Method::ALL.to_vec()),
        payload in proptest::collection::vec(any::<u8>(), 1..2000),
        position in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (mut up, _) = streams(method, &[payload.clone(), payload.clone()], &[]);
        let at = position.index(up.len());
        up[at] ^= 1 << bit;
        let outcome = decode(request_decryptor(method), &up, &[usize::MAX]);
        prop_assert!(outcome.result.is_err());
        let both = [payload.clone(), payload].concat();
        prop_assert!(both.starts_with(&outcome.payload), "delivered altered plaintext");
    }

    #[test]
    fn a_stream_cut_anywhere_inside_a_record_is_truncated(
        method in proptest::sample::select(Method::ALL.to_vec()),
        payload in proptest::collection::vec(any::<u8>(), 1..2000),
        cut in any::<proptest::sample::Index>(),
    ) {
        let (up, _) = streams(method, std::slice::from_ref(&payload), &[]);
        let cut = 1 + cut.index(up.len() - 1);
        let outcome = decode(request_decryptor(method), &up[..cut], &[usize::MAX]);
        prop_assert_eq!(outcome.result, Err(DecryptError::Truncated));
        prop_assert!(outcome.payload.is_empty());
    }

    #[test]
    fn random_bytes_never_panic_and_deliver_nothing(
        method in proptest::sample::select(Method::ALL.to_vec()),
        garbage in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let outcome = decode(request_decryptor(method), &garbage, &[usize::MAX]);
        prop_assert!(outcome.payload.is_empty());
        prop_assert!(outcome.target.is_none());
        let outcome = decode(response_decryptor(method), &garbage, &[7]);
        prop_assert!(outcome.payload.is_empty());
    }
}

#[test]
fn a_failed_seal_leaves_nothing_to_send_and_ends_the_stream() {
    for method in Method::ALL {
        let key = key(method);
        let mut request = Encryptor::request(method, &key, salt(method, 1), &target(), &[]);
        let mut out = b"earlier bytes".to_vec();
        {
            let _failing = crate::cipher::failing_seals::start();
            assert_eq!(request.encrypt(b"hello", NOW, &mut out), Err(crate::SealError::Backend), "{method}");
        }
        assert_eq!(out, b"earlier bytes", "{method}: no record (sealed or with a zero tag) was left");
        assert_eq!(
            request.encrypt(b"hello", NOW, &mut out),
            Err(crate::SealError::Backend),
            "{method}: the stream stays failed"
        );
        assert_eq!(out, b"earlier bytes");

        // A failure after the header went out (a data chunk) is treated the same.
        let mut response = Encryptor::response(method, &key, salt(method, 2), salt(method, 1));
        let mut down = Vec::new();
        response.encrypt(b"first", NOW, &mut down).unwrap();
        let sent = down.len();
        let failing = crate::cipher::failing_seals::start();
        assert!(response.encrypt(b"second", NOW, &mut down).is_err(), "{method}");
        drop(failing);
        assert_eq!(down.len(), sent, "{method}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A chunk sealed where it lies is byte for byte the chunk `encrypt` appends, on requests and
    /// responses of every method, and the stream decodes.
    #[test]
    fn a_chunk_sealed_in_place_is_the_chunk_encrypt_makes(
        method in proptest::sample::select(Method::ALL.to_vec()),
        lens in proptest::collection::vec(1usize..=0xFFFF, 1..4),
        byte in any::<u8>(),
    ) {
        let key = key(method);
        let in_place_request = Encryptor::request(method, &key, salt(method, 1), &target(), &[]);
        let in_place_response = Encryptor::response(method, &key, salt(method, 2), salt(method, 1));
        let (copying_request, copying_response) = (
            Encryptor::request(method, &key, salt(method, 1), &target(), &[]),
            Encryptor::response(method, &key, salt(method, 2), salt(method, 1)),
        );
        for (mut in_place, mut copying, decryptor) in [
            (in_place_request, copying_request, request_decryptor(method)),
            (in_place_response, copying_response, response_decryptor(method)),
        ] {
            let (mut copied, mut sent) = (Vec::new(), Vec::new());
            copying.encrypt(b"first", NOW, &mut copied).unwrap();
            in_place.encrypt(b"first", NOW, &mut sent).unwrap();
            let mut expected_payload = b"first".to_vec();
            for &len in &lens {
                let len = len.min(in_place.max_chunk_payload());
                let payload = vec![byte; len];
                copying.encrypt(&payload, NOW, &mut copied).unwrap();
                let mut slot = vec![0xEE; CHUNK_HEAD + len + CHUNK_TAIL];
                slot[CHUNK_HEAD..CHUNK_HEAD + len].copy_from_slice(&payload);
                in_place.seal_chunk_in_place(&mut slot).unwrap();
                sent.extend_from_slice(&slot);
                expected_payload.extend_from_slice(&payload);
            }
            prop_assert_eq!(&sent, &copied);
            let outcome = decode(decryptor, &sent, &[4096]);
            prop_assert!(outcome.result.is_ok());
            prop_assert_eq!(outcome.payload, expected_payload);
        }
    }
}

#[test]
fn sealing_in_place_refuses_what_encrypt_would_not_send_and_ends_the_stream() {
    for method in Method::ALL {
        let key = key(method);
        let max = method.max_chunk_payload();
        let mut response = Encryptor::response(method, &key, salt(method, 2), salt(method, 1));
        let mut slot = vec![0; CHUNK_HEAD + 10 + CHUNK_TAIL];
        assert_eq!(response.seal_chunk_in_place(&mut slot), Err(SealError::HeaderPending), "{method}");
        assert_eq!(response.encrypt(b"x", NOW, &mut Vec::new()), Err(SealError::HeaderPending), "sticky");

        for bad_len in [0, max + 1] {
            let mut response = Encryptor::response(method, &key, salt(method, 2), salt(method, 1));
            response.encrypt(b"first", NOW, &mut Vec::new()).unwrap();
            let mut slot = vec![0; CHUNK_HEAD + bad_len + CHUNK_TAIL];
            assert_eq!(
                response.seal_chunk_in_place(&mut slot),
                Err(SealError::BadChunk),
                "{method} {bad_len}"
            );
            let mut slot = vec![0; CHUNK_HEAD + 1 + CHUNK_TAIL];
            assert_eq!(response.seal_chunk_in_place(&mut slot), Err(SealError::BadChunk), "{method}: sticky");
        }

        let mut response = Encryptor::response(method, &key, salt(method, 2), salt(method, 1));
        response.encrypt(b"first", NOW, &mut Vec::new()).unwrap();
        let failing = crate::cipher::failing_seals::start();
        let mut slot = vec![0; CHUNK_HEAD + 10 + CHUNK_TAIL];
        assert_eq!(response.seal_chunk_in_place(&mut slot), Err(SealError::Backend), "{method}");
        drop(failing);
        assert_eq!(response.seal_chunk_in_place(&mut slot), Err(SealError::Backend), "{method}: sticky");
    }
}
