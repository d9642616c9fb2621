//! Known-answer tests over every file in `shared/vectors/` (checked against shadowsocks-rust 1.25.0 and
//! shadowsocks-libev 3.3.5): keys, TCP streams with their negative cases, UDP packets, and traffic
//! captured from real clients.
//!
//! The vectors live beside the repository (`../shared/vectors`); `SS_VECTORS_DIR` overrides the path.
//! A missing directory fails the tests rather than skipping them.
//!
//! The `extra_*` tests read `tests/vectors-extra/` inside the repository: the same formats for the two
//! methods the shared set lacks, `aes-192-gcm` and `xchacha20-ietf-poly1305`, made by the independent
//! generator beside them (`generate.py`: `cryptography` and libsodium through PyNaCl).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use serde_json::Value;
use ss_crypto::udp::{self, Header2022, Origin, Sender, Udp2022};
use ss_crypto::{Address, DecryptError, Decryptor, Encryptor, Key, Method, NonceCounter, Salt};

fn load(name: &str) -> Value {
    let dir = std::env::var_os("SS_VECTORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"));
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {} (set SS_VECTORS_DIR): {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A file of `tests/vectors-extra/`, which is part of the repository.
fn load_extra(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors-extra").join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn hex(value: &Value) -> Vec<u8> {
    ::hex::decode(value.as_str().unwrap()).unwrap()
}

fn number(value: &Value) -> u64 {
    value.as_u64().or_else(|| value.as_str().and_then(|s| s.parse().ok())).unwrap()
}

fn method(vector: &Value) -> Method {
    vector["method"].as_str().unwrap().parse().unwrap()
}

fn key(vector: &Value) -> Key {
    Key::from_bytes(method(vector), &hex(&vector["key"])).unwrap()
}

fn salt(method: Method, value: &Value) -> Salt {
    Salt::from_slice(method, &hex(value)).unwrap()
}

fn address(target: &Value) -> Address {
    let host = target["host"].as_str().unwrap();
    let port = target["port"].as_u64().unwrap() as u16;
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Address::Ip((ip, port).into()),
        Err(_) => Address::domain(host, port).unwrap(),
    }
}

fn timestamp(vector: &Value) -> u64 {
    vector.get("timestamp").map(number).unwrap_or(0)
}

/// Everything a decoder delivered before it stopped.
#[derive(Debug, Default)]
struct Received {
    target: Option<Address>,
    payload: Vec<u8>,
    error: Option<DecryptError>,
}

/// Feeds `stream` to `decryptor` in reads of `split` bytes, the way a socket would, then checks EOF.
fn decode(mut decryptor: Decryptor, stream: &[u8], now: u64, split: usize) -> Received {
    let mut received = Received::default();
    let mut buffer = Vec::new();
    let mut fed = 0;
    loop {
        let more = (stream.len() - fed).min(split);
        buffer.extend_from_slice(&stream[fed..fed + more]);
        fed += more;
        loop {
            match decryptor.decrypt(&mut buffer, now) {
                Ok(decoded) => {
                    received.payload.extend_from_slice(&buffer[decoded.payload.clone()]);
                    if decoded.target.is_some() {
                        assert!(received.target.is_none(), "target delivered twice");
                        received.target = decoded.target;
                    }
                    buffer.drain(..decoded.consumed);
                    if decoded.payload.is_empty() && decoded.consumed == 0 {
                        break;
                    }
                }
                Err(error) => {
                    received.error = Some(error);
                    return received;
                }
            }
        }
        if more == 0 {
            received.error = decryptor.finish(buffer.len()).err();
            return received;
        }
    }
}

fn error_kind(error: DecryptError) -> &'static str {
    match error {
        DecryptError::AuthFailure => "auth_failure",
        DecryptError::Truncated => "truncated",
        DecryptError::LengthTooLarge => "length_too_large",
        DecryptError::ZeroLengthChunk => "zero_length_chunk",
        DecryptError::BadType => "bad_type",
        DecryptError::BadTimestamp => "bad_timestamp",
        DecryptError::SaltMismatch => "salt_mismatch",
        DecryptError::NoPayloadNoPadding => "no_payload_no_padding",
        DecryptError::PaddingTooLong => "padding_too_long",
        DecryptError::HeaderBeyondChunk => "header_beyond_chunk",
        DecryptError::BadAddress => "bad_address",
        DecryptError::NonceExhausted => "nonce_exhausted",
    }
}

#[test]
fn keys_evp_bytes_to_key() {
    let keys = load("keys.json");
    for case in keys["evp_bytes_to_key"].as_array().unwrap() {
        for name in case["methods"].as_array().unwrap() {
            let method: Method = name.as_str().unwrap().parse().unwrap();
            let key = Key::from_password(method, case["password"].as_str().unwrap()).unwrap();
            assert_eq!(key.as_bytes(), hex(&case["key"]), "{case}");
        }
    }
}

#[test]
fn keys_hkdf_and_blake3_subkeys() {
    let keys = load("keys.json");
    for case in keys["hkdf_sha1_subkey"].as_array().unwrap() {
        let method: Method = case["methods"][0].as_str().unwrap().parse().unwrap();
        let key = Key::from_bytes(method, &hex(&case["key"])).unwrap();
        assert_eq!(case["info"], "ss-subkey");
        let subkey = key.session_subkey(method, &hex(&case["salt"]));
        assert_eq!(subkey.as_bytes(), hex(&case["subkey"]), "{case}");
    }
    let blake3 = keys["blake3_session_subkey"].as_array().unwrap();
    assert!(blake3.iter().any(|c| c["use"].as_str().unwrap().starts_with("udp")));
    for case in blake3 {
        let method: Method = case["methods"][0].as_str().unwrap().parse().unwrap();
        let psk = Key::from_base64(method, case["psk_base64"].as_str().unwrap()).unwrap();
        assert_eq!(psk.as_bytes(), hex(&case["psk"]));
        let material = hex(&case["key_material"]);
        assert_eq!(&material[..psk.len()], psk.as_bytes());
        let subkey = psk.blake3_subkey(&material[psk.len()..]);
        assert_eq!(subkey.as_bytes(), hex(&case["subkey"]), "{case}");
    }
}

#[test]
fn keys_psk_base64_validity() {
    let keys = load("keys.json");
    for case in keys["psk_base64"].as_array().unwrap() {
        let result = Key::from_base64(method(case), case["psk_base64"].as_str().unwrap());
        if case["valid"].as_bool().unwrap() {
            assert_eq!(result.unwrap().as_bytes(), hex(&case["psk"]));
        } else {
            let message = result.unwrap_err().to_string();
            assert!(message.contains(&method(case).key_len().to_string()), "{message}");
        }
    }
}

#[test]
fn keys_nonce_counter() {
    let keys = load("keys.json");
    for case in keys["nonce_counter"].as_array().unwrap() {
        let counter: u128 = case["counter"].to_string().parse().unwrap();
        assert_eq!(NonceCounter::at(counter).advance().unwrap().to_vec(), hex(&case["nonce"]));
    }
}

/// Encodes a vector's writes with our encoder; the result must be the vector's stream, byte for byte.
fn encode_stream(vector: &Value) -> Vec<u8> {
    let method = method(vector);
    let key = key(vector);
    let salt = salt(method, &vector["salt"]);
    let now = timestamp(vector);
    let mut encryptor = if vector["direction"] == "client_to_server" {
        let padding = vector.get("padding").map(hex).unwrap_or_default();
        Encryptor::request(method, &key, salt, &address(&vector["target"]), &padding)
    } else {
        let request_salt = vector.get("request_salt").map_or(salt, |s| self::salt(method, s));
        Encryptor::response(method, &key, salt, request_salt)
    };
    let mut stream = Vec::new();
    for write in vector["writes"].as_array().unwrap() {
        encryptor.encrypt(&hex(write), now, &mut stream).unwrap();
    }
    stream
}

fn decryptor_for(vector: &Value, request_salt: Option<Vec<u8>>) -> Decryptor {
    let method = method(vector);
    if vector["direction"] == "client_to_server" {
        return Decryptor::request(method, &key(vector));
    }
    let request_salt = request_salt
        .or_else(|| vector.get("request_salt").map(hex))
        .unwrap_or_else(|| vec![0; method.salt_len()]);
    Decryptor::response(method, &key(vector), Salt::from_slice(method, &request_salt).unwrap())
}

#[test]
fn tcp_streams_encode_and_decode_exactly() {
    let vectors = load("tcp_stream.json");
    let vectors = vectors["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 24);
    check_tcp_streams(vectors);
}

#[test]
fn extra_tcp_streams_encode_and_decode_exactly() {
    let vectors = load_extra("tcp_stream.json");
    let vectors = vectors["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 10);
    check_tcp_streams(vectors);
}

fn check_tcp_streams(vectors: &[Value]) {
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        let stream = hex(&vector["stream"]);
        assert!(encode_stream(vector) == stream, "{name}: encoder output differs");
        let expected: Vec<u8> = vector["writes"].as_array().unwrap().iter().flat_map(hex).collect();
        for split in [1, 7, 100, 4096, usize::MAX] {
            let received = decode(decryptor_for(vector, None), &stream, timestamp(vector), split);
            assert_eq!(received.error, None, "{name} split {split}");
            assert!(received.payload == expected, "{name} split {split}: payload differs");
            if vector["direction"] == "client_to_server" {
                assert_eq!(received.target, Some(address(&vector["target"])), "{name}");
            }
        }
    }
}

#[test]
fn tcp_negative_cases_fail_as_expected() {
    check_tcp_negatives(&load("tcp_stream.json"));
}

#[test]
fn extra_tcp_negative_cases_fail_as_expected() {
    let file = load_extra("tcp_stream.json");
    assert_eq!(file["negative"].as_array().unwrap().len(), 4);
    check_tcp_negatives(&file);
}

fn check_tcp_negatives(file: &Value) {
    let positives = file["vectors"].as_array().unwrap();
    let find = |name: &str| positives.iter().find(|v| v["name"] == name).unwrap().clone();
    for case in file["negative"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if let Some(checks) = case.get("checks") {
            let vector = find(case["vector"].as_str().unwrap());
            for check in checks.as_array().unwrap() {
                let received =
                    decode(decryptor_for(&vector, None), &hex(&vector["stream"]), number(&check["now"]), 512);
                let got = received.error.map_or("ok", error_kind);
                assert_eq!(got, check["expect"].as_str().unwrap(), "{name} now {}", check["now"]);
            }
            continue;
        }
        let (vector, stream, request_salt) = match case.get("vector") {
            Some(reference) => {
                let vector = find(reference.as_str().unwrap());
                let stream = hex(&vector["stream"]);
                (vector, stream, case.get("request_salt_expected_by_client").map(hex))
            }
            None => {
                let stream = match case.get("stream") {
                    Some(stream) => hex(stream),
                    None => hex(&find(case["derived_from"].as_str().unwrap())["stream"]),
                };
                (case.clone(), stream, None)
            }
        };
        let now = case.get("timestamp").map(number).unwrap_or_else(|| timestamp(&vector));
        let expect = &case["expect"];
        for split in [1, 13, usize::MAX] {
            let received = decode(decryptor_for(&vector, request_salt.clone()), &stream, now, split);
            let got = received.error.map_or("ok", error_kind);
            assert_eq!(got, expect["error"].as_str().unwrap(), "{name} split {split}");
            let allowed = hex(&expect["payload_before_error"]);
            assert!(allowed.starts_with(&received.payload), "{name}: delivered bytes of a bad chunk");
        }
    }
}

#[test]
fn udp_packets_seal_and_open_exactly() {
    let file = load("udp_packet.json");
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 24);
    check_udp_packets(vectors);
}

#[test]
fn extra_udp_packets_seal_and_open_exactly() {
    let file = load_extra("udp_packet.json");
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 8);
    check_udp_packets(vectors);
}

/// The extra vectors' keys and subkeys follow from the password and salts (EVP_BytesToKey, HKDF-SHA1).
#[test]
fn extra_keys_derive_from_the_password() {
    let tcp = load_extra("tcp_stream.json");
    let udp = load_extra("udp_packet.json");
    let vectors = tcp["vectors"].as_array().unwrap().iter().chain(udp["vectors"].as_array().unwrap());
    for vector in vectors {
        let method = method(vector);
        let key = Key::from_password(method, vector["password"].as_str().unwrap()).unwrap();
        assert_eq!(key.as_bytes(), hex(&vector["key"]), "{}", vector["name"]);
        let subkey = key.session_subkey(method, &hex(&vector["salt"]));
        assert_eq!(subkey.as_bytes(), hex(&vector["subkey"]), "{}", vector["name"]);
    }
}

fn check_udp_packets(vectors: &[Value]) {
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        let method = method(vector);
        let key = key(vector);
        let from_client = vector["direction"] == "client_to_server";
        let addr = address(if from_client { &vector["target"] } else { &vector["source"] });
        let payload = hex(&vector["payload"]);
        let packet = hex(&vector["packet"]);
        let mut sealed = Vec::new();
        let mut opened = packet.clone();
        if method.is_2022() {
            let udp = Udp2022::new(method, &key).unwrap();
            let sender = match vector.get("client_session_id") {
                Some(id) => Sender::Server {
                    client_session_id: u64::from_str_radix(id.as_str().unwrap(), 16).unwrap(),
                },
                None => Sender::Client,
            };
            let header = Header2022 {
                session_id: u64::from_str_radix(vector["session_id"].as_str().unwrap(), 16).unwrap(),
                packet_id: number(&vector["packet_id"]),
                sender,
                timestamp: timestamp(vector),
            };
            let nonce: [u8; 24] = vector
                .get("nonce")
                .map(hex)
                .filter(|n| n.len() == 24)
                .map_or([0; 24], |n| n.try_into().unwrap());
            udp.seal(&header, &hex(&vector["padding"]), &addr, &payload, &nonce, &mut sealed).unwrap();
            let origin = if from_client { Origin::Client } else { Origin::Server };
            let result = udp.open(&mut opened, timestamp(vector), origin).unwrap();
            assert_eq!(result.header, header, "{name}");
            assert_eq!(result.address, addr, "{name}");
            assert_eq!(&opened[result.payload], payload, "{name}");
        } else {
            udp::UdpClassic::new(method, &key)
                .unwrap()
                .seal(salt(method, &vector["salt"]), &addr, &payload, &mut sealed)
                .unwrap();
            let (address, range) = udp::UdpClassic::new(method, &key).unwrap().open(&mut opened).unwrap();
            assert_eq!(address, addr, "{name}");
            assert_eq!(&opened[range], payload, "{name}");
        }
        assert!(sealed == packet, "{name}: sealed packet differs");
    }
}

#[test]
fn udp_negative_cases_fail_as_expected() {
    let file = load("udp_packet.json");
    let positives = file["vectors"].as_array().unwrap();
    for case in file["negative"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let reference = case.get("vector").or(case.get("derived_from")).and_then(Value::as_str);
        let vector =
            reference.map_or(case.clone(), |r| positives.iter().find(|v| v["name"] == r).unwrap().clone());
        let method = method(&vector);
        let key = key(&vector);
        let packet = case.get("packet").map_or_else(|| hex(&vector["packet"]), hex);
        let open = |now: u64, origin: Origin| -> &'static str {
            let mut packet = packet.clone();
            let result = match Udp2022::new(method, &key) {
                Some(udp) => udp.open(&mut packet, now, origin).map(|_| ()),
                None => udp::UdpClassic::new(method, &key).unwrap().open(&mut packet).map(|_| ()),
            };
            match result {
                Ok(()) => "ok",
                Err(udp::UdpError::AuthFailure) => "auth_failure",
                Err(udp::UdpError::Truncated) => "truncated",
                Err(udp::UdpError::BadType) => "bad_type",
                Err(udp::UdpError::BadTimestamp) => "bad_timestamp",
                Err(other) => panic!("{name}: unexpected {other:?}"),
            }
        };
        let native = if vector["direction"] == "client_to_server" { Origin::Client } else { Origin::Server };
        if let Some(checks) = case.get("checks") {
            for check in checks.as_array().unwrap() {
                assert_eq!(open(number(&check["now"]), native), check["expect"].as_str().unwrap(), "{name}");
            }
            continue;
        }
        let origin = if name.ends_with("as-server-packet") { Origin::Server } else { native };
        assert_eq!(open(timestamp(&vector), origin), case["expect"]["error"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn captured_traffic_from_real_clients_decodes() {
    let file = load("captured.json");
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 18);
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        let method = method(vector);
        let key = key(vector);
        let expected_target = address(&vector["expect_target"]);
        let expected_payload = hex(&vector["expect_payload"]);
        let now = timestamp(vector);
        if let Some(stream) = vector.get("stream") {
            let received = decode(Decryptor::request(method, &key), &hex(stream), now, 1500);
            assert_eq!(received.error, None, "{name}");
            assert_eq!(received.target, Some(expected_target), "{name}");
            assert!(received.payload == expected_payload, "{name}: payload differs");
            continue;
        }
        let mut packet = hex(&vector["packet"]);
        let (address, payload) = match Udp2022::new(method, &key) {
            Some(udp) => {
                let opened = udp.open(&mut packet, now, Origin::Client).unwrap();
                assert_eq!(opened.header.packet_id, number(&vector["packet_id"]), "{name}");
                (opened.address, opened.payload)
            }
            None => udp::UdpClassic::new(method, &key).unwrap().open(&mut packet).unwrap(),
        };
        assert_eq!(address, expected_target, "{name}");
        assert_eq!(packet[payload], expected_payload[..], "{name}");
    }
}
