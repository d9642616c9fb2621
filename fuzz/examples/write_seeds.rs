//! Writes the committed seed corpus, `corpus/<target>/seed-*`: a few small valid inputs per target
//! under the targets' fixed keys, so the fuzzer starts past authentication.
//!
//! Run from `fuzz/`: `cargo run --example write_seeds`. Output is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use ss_crypto::udp::{self, Header2022, Sender, Udp2022};
use ss_crypto::{Address, Encryptor, Generation, Method, Salt};
use ss_fuzz::{key, methods, request_salt, NOW};

fn main() {
    let v4 = Address::Ip("192.0.2.7:443".parse().unwrap());
    let v6 = Address::Ip("[2001:db8::1]:8080".parse().unwrap());
    let domain = Address::domain("example.com", 80).unwrap();
    write("address_parse", "ipv4", &encoded(&v4));
    write("address_parse", "ipv6", &encoded(&v6));
    write("address_parse", "domain", &encoded(&domain));
    // write_to sends this one as IPv4; the fuzzer needs the 16-byte form.
    write("address_parse", "mapped-ipv6", &[&[4][..], &[0; 10], &[0xff, 0xff, 10, 1, 2, 3, 0, 53]].concat());

    for method in Method::ALL {
        let target = match method.generation() {
            Generation::Classic => "tcp_decrypt_classic",
            Generation::Aead2022 => "tcp_decrypt_2022",
        };
        let salt = Salt::from_slice(method, &[0x11; 32][..method.salt_len()]).unwrap();
        let mut request = vec![128];
        let mut encryptor = Encryptor::request(method, &key(method), salt, &domain, &[0; 7]);
        encryptor.encrypt(b"GET / HTTP/1.1\r\n\r\n", NOW, &mut request).unwrap();
        encryptor.encrypt(b"more", NOW, &mut request).unwrap();
        write(target, &format!("{method}-request"), &request);
        let mut response = vec![40];
        let mut encryptor = Encryptor::response(method, &key(method), salt, request_salt(method));
        encryptor.encrypt(b"HTTP/1.1 200 OK\r\n\r\n", NOW, &mut response).unwrap();
        write(target, &format!("{method}-response"), &response);
    }

    for method in methods(Generation::Classic) {
        let salt = Salt::from_slice(method, &[0x22; 32][..method.salt_len()]).unwrap();
        let mut packet = Vec::new();
        udp::seal_classic(method, &key(method), salt, &v4, b"ping", &mut packet);
        write("udp_open", &format!("{method}"), &packet);
    }
    for method in methods(Generation::Aead2022) {
        let sealer = Udp2022::new(method, &key(method)).unwrap();
        let client = Header2022 { session_id: 1, packet_id: 0, sender: Sender::Client, timestamp: NOW };
        let server = Header2022 { sender: Sender::Server { client_session_id: 1 }, session_id: 2, ..client };
        for (name, header) in [("client", client), ("server", server)] {
            let mut packet = Vec::new();
            sealer.seal(&header, &[0; 3], &v6, b"ping", &[0x33; 24], &mut packet);
            write("udp_open", &format!("{method}-{name}"), &packet);
        }
    }

    // Unstructured input: every byte string is a case; these start at each method.
    for (index, method) in Method::ALL.iter().enumerate() {
        let bytes: Vec<u8> = (0..160u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        write("tcp_decrypt_structured", &format!("{method}"), &[&[index as u8][..], &bytes].concat());
    }

    forged_seeds(&v4, &domain);
}

/// Plaintexts laid out as `fuzz_targets/forged_plaintext.rs` reads them.
fn forged_seeds(v4: &Address, domain: &Address) {
    let now = NOW.to_be_bytes();
    // Classic aes-256-gcm request: salt, length record, address and payload.
    let first = [encoded(domain), b"hello".to_vec()].concat();
    let len = (first.len() as u16).to_be_bytes();
    write("forged_plaintext", "classic-request", &[&[1, 0, 128][..], &[0x11; 32], &len, &first].concat());
    // 2022 aes-256 request: fixed header, variable header (address, 4 bytes padding, payload), a chunk.
    let variable = [encoded(domain), vec![0, 4, 0, 0, 0, 0], b"hi".to_vec()].concat();
    let fixed = [&[0][..], &now, &(variable.len() as u16).to_be_bytes()].concat();
    let chunk = [&[0, 3][..], b"abc"].concat();
    write(
        "forged_plaintext",
        "2022-request",
        &[&[4, 0, 200][..], &[0x11; 32], &fixed, &variable, &chunk].concat(),
    );
    // 2022 aes-128 response: fixed header echoing the request salt, then the first payload.
    let fixed = [&[1][..], &now, request_salt(Method::Blake3Aes128Gcm).as_bytes(), &[0, 5]].concat();
    write("forged_plaintext", "2022-response", &[&[3, 1, 60][..], &[0x11; 16], &fixed, b"hello"].concat());
    // Datagrams: classic aes-128-gcm, 2022 aes-256 from a client, 2022 chacha from a server.
    let body = [encoded(v4), b"ping".to_vec()].concat();
    write("forged_plaintext", "udp-classic", &[&[0, 2, 0][..], &[0x22; 16], &body].concat());
    let client = [&[0][..], &now, &[0, 0], &body].concat();
    write("forged_plaintext", "udp-2022-client", &[&[4, 2, 0][..], &[0x44; 16], &client].concat());
    let server = [&[1][..], &now, &[0, 0, 0, 0, 0, 0, 0, 1], &[0, 2, 0, 0], &body].concat();
    write(
        "forged_plaintext",
        "udp-2022-server",
        &[&[5, 3, 0][..], &[0x44; 16], &[0x33; 24], &server].concat(),
    );
}

fn encoded(address: &Address) -> Vec<u8> {
    let mut bytes = Vec::new();
    address.write_to(&mut bytes);
    bytes
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}
