//! Time-to-key of a multi-user server: how long ss-server's user search takes on a new stream's first
//! bytes, for 1, 100 and 1,000 users.
//!
//! Criterion ids are `time-to-key/<case>/<method>/<users>`:
//!
//! - `repeat-hit`: the stream is the last user's in config order (the worst place for a cold search),
//!   from an address that user connected from before: what a returning client costs.
//! - `miss`: a key no user has (a probe, or a removed user): every key is tried once (trial
//!   decryption), or one identity header is read and not found.
//!
//! Methods: `aes-256-gcm` (classic, trial decryption of the sealed length), `2022-blake3-chacha20-poly1305`
//! (trial decryption of the fixed header) and `2022-blake3-aes-256-gcm` (SIP023 identity header: one AES
//! block and a hash lookup, whatever the number of users). The inputs are built and checked once before
//! measuring; the search itself is the server's own (`ss_server::users::search::find_user`).

#![allow(clippy::expect_used, reason = "benchmark set-up and checks")]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ss_config::users::UserEntry;
use ss_crypto::{Address, Encryptor, Key, Method, Salt};
use ss_server::users::search::{find_user, head_len};
use ss_server::users::Users;

const COUNTS: [usize; 3] = [1, 100, 1000];
const METHODS: [Method; 3] = [Method::Aes256Gcm, Method::Blake3ChaCha20Poly1305, Method::Blake3Aes256Gcm];
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

fn key(method: Method, n: usize) -> Key {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
    Key::from_bytes(method, &bytes[..method.key_len()]).expect("key length")
}

/// The first bytes of a stream sealed with `user_key` (with an identity header under `ipsk` where the
/// method has them).
fn head(method: Method, ipsk: &Key, user_key: &Key) -> Vec<u8> {
    let salt = Salt::from_slice(method, &[0x42; 32][..method.salt_len()]).expect("salt");
    let target = Address::domain("example.com", 443).expect("address");
    let mut wire = Vec::new();
    Encryptor::request_with_identity(method, std::slice::from_ref(ipsk), user_key, salt, &target, &[])
        .encrypt(b"GET / HTTP/1.1\r\n", 1_700_000_000, &mut wire)
        .expect("seal");
    wire.truncate(head_len(method));
    wire
}

fn time_to_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("time-to-key");
    for method in METHODS {
        let ipsk = key(method, 1_000_000);
        for count in COUNTS {
            let entries: Vec<UserEntry> =
                (0..count).map(|n| UserEntry::new(format!("user{n}"), key(method, n))).collect();
            let users = Users::new(method, &entries);
            let table = users.current();
            let last = head(method, &ipsk, &key(method, count - 1));
            let stranger = head(method, &ipsk, &key(method, 999_999));
            // Warms the client's address up, and checks both inputs.
            let found = find_user(&table, method, &ipsk, CLIENT, &last).expect("the last user is found");
            assert_eq!(found.name(), format!("user{}", count - 1));
            assert!(find_user(&table, method, &ipsk, CLIENT, &stranger).is_none());
            let id = format!("{method}/{count}");
            group.bench_function(BenchmarkId::new("repeat-hit", &id), |b| {
                b.iter(|| find_user(&table, method, &ipsk, CLIENT, black_box(&last)))
            });
            group.bench_function(BenchmarkId::new("miss", &id), |b| {
                b.iter(|| find_user(&table, method, &ipsk, CLIENT, black_box(&stranger)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, time_to_key);
criterion_main!(benches);
