//! Throughput of ss-crypto's wire protocol next to the bare AEAD primitives underneath it.
//!
//! Criterion ids are `group/function/method`, for every method in [`Method::ALL`]:
//!
//! - `tcp-16KiB/framing/<method>`: one 16 KiB payload through a stream in its steady state. The
//!   `Encryptor` and `Decryptor` are created and the salt and header delivered before measuring; each
//!   iteration then clears one reused `Vec`, has `Encryptor::encrypt` append the records to it, and
//!   calls `Decryptor::decrypt` over it until the payload is out. Classic methods cut 16 KiB into two
//!   chunks (0x3FFF + 1 bytes, so four AEAD records with the length records), 2022 methods into one.
//!   Included: the encryptor's copy of the payload into its output (its API appends, then seals in
//!   place), length records, tags, nonce counters and the decryptor's state machine. Not included: a
//!   receive-side copy of the ciphertext into a socket buffer. The decryptor opens the encryptor's output
//!   where it lies (it is overwritten by the next iteration anyway); socket copies are I/O, not framing.
//!   The framing uses ss-crypto's default backend, ring (see `ss_crypto::BACKEND`), except for
//!   `aes-192-gcm`, which ring lacks and RustCrypto serves in every build.
//! - `tcp-16KiB/framing-in-place/<method>`: the same 16 KiB as a relay sends it: the payload lies in the
//!   gaps of chunk slots (as `ss_net::SealingReader` reads it from a socket), each iteration seals every
//!   slot where it lies (`Encryptor::seal_chunk_in_place`) and `Decryptor::decrypt` opens them again in
//!   place. No copy of the payload at all: the difference to `framing` is the encryptor's copy.
//! - `tcp-16KiB/raw-ring/<method>` and `tcp-16KiB/raw-rustcrypto/<method>`: seal 16 KiB in place with a
//!   12-byte nonce (24 for XChaCha20) and open it again, straight through `ring::aead::LessSafeKey` or the
//!   `aes-gcm` / `chacha20poly1305` crates: the floor that the framing adds to. It depends only on the
//!   method's algorithm, so the classic and 2022 method of one algorithm measure the same thing twice.
//!   There is no raw-ring line for AES-192-GCM, which ring lacks; XChaCha20's is HChaCha20 over ring's
//!   ChaCha20-Poly1305, as ss-crypto builds it.
//! - `record-size/<backend>-<algorithm>/<bytes>`: the raw round trip of the two backends for ChaCha20-Poly1305,
//!   AES-256-GCM and XChaCha20-Poly1305 at 128 B, 1 KiB and 16 KiB records (a small message, a typical
//!   record of web traffic, a full record), to choose a backend per algorithm and record size (issue 18).
//!   ring's XChaCha20 line is the construction ss-crypto uses: HChaCha20 (the `chacha20` crate) for a
//!   subkey per record, then ring's ChaCha20-Poly1305; RustCrypto's is its `XChaCha20Poly1305`.
//! - `udp-1200B/seal+open/<method>`: one datagram with 1200 bytes of payload sealed and opened,
//!   including the per-packet subkey derivation the protocol requires.
//!
//! All throughputs count payload bytes. Every round trip is checked for the right plaintext once before
//! it is measured.

// A failure here is a bug in the code under test, found before any measurement; panicking is the report.
#![allow(clippy::expect_used, reason = "benchmark set-up and checks")]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ss_crypto::tcp::{CHUNK_HEAD, CHUNK_TAIL};
use ss_crypto::udp::{Header2022, Origin, Sender, Udp2022, UdpClassic, XNONCE_LEN};
use ss_crypto::{Address, Algorithm, Decryptor, Encryptor, Generation, Key, Method, Salt, NONCE_LEN};

/// Payload per TCP iteration: one typical socket read.
const TCP_PAYLOAD: usize = 16 * 1024;
/// Payload per datagram: a QUIC-sized packet.
const UDP_PAYLOAD: usize = 1200;
/// The clock both ends read (Unix seconds); only 2022 headers look at it.
const NOW: u64 = 1_700_000_000;
/// Fixed inputs: nothing random is needed to measure speed.
const KEY: [u8; 32] = [0x42; 32];
const SALT: [u8; 32] = [0x5a; 32];
const NONCE: [u8; NONCE_LEN] = [7; NONCE_LEN];
const XNONCE: [u8; XNONCE_LEN] = [9; XNONCE_LEN];

fn tcp(c: &mut Criterion) {
    let payload = test_payload(TCP_PAYLOAD);
    let mut group = c.benchmark_group("tcp-16KiB");
    group.throughput(Throughput::Bytes(TCP_PAYLOAD as u64));
    for method in Method::ALL {
        let mut stream = Stream::new(method);
        let mut received = Vec::with_capacity(TCP_PAYLOAD);
        stream.send(&payload, |piece| received.extend_from_slice(piece));
        assert!(received == payload, "{method}: framing round trip changed the payload");
        group.bench_function(BenchmarkId::new("framing", method), |b| {
            b.iter(|| {
                stream.send(black_box(&payload), |piece| {
                    black_box(piece);
                })
            })
        });

        let mut in_place = Stream::new(method);
        let mut slots = Slots::new(&payload, in_place.encryptor.max_chunk_payload());
        let mut received = Vec::with_capacity(TCP_PAYLOAD);
        in_place.send_in_place(&mut slots, |piece| received.extend_from_slice(piece));
        assert!(received == payload, "{method}: in-place round trip changed the payload");
        group.bench_function(BenchmarkId::new("framing-in-place", method), |b| {
            b.iter(|| {
                in_place.send_in_place(black_box(&mut slots), |piece| {
                    black_box(piece);
                })
            })
        });

        // ring has no AES-192-GCM: that method gets the RustCrypto line only. ring's XChaCha20-Poly1305
        // is HChaCha20 over its ChaCha20-Poly1305, as in ss-crypto.
        let raw = [
            raw_ring(method.algorithm()).map(|round_trip| ("raw-ring", round_trip)),
            Some(("raw-rustcrypto", raw_rustcrypto(method.algorithm()))),
        ];
        for (name, round_trip) in raw.into_iter().flatten() {
            let mut buf = payload.clone();
            assert!(round_trip(&mut buf) && buf == payload, "{method}: {name} round trip failed");
            group.bench_function(BenchmarkId::new(name, method), |b| {
                b.iter(|| round_trip(black_box(&mut buf)))
            });
        }
    }
    group.finish();
}

fn udp(c: &mut Criterion) {
    let payload = test_payload(UDP_PAYLOAD);
    let mut group = c.benchmark_group("udp-1200B");
    group.throughput(Throughput::Bytes(UDP_PAYLOAD as u64));
    for method in Method::ALL {
        let mut datagram = Datagram::new(method);
        assert!(
            datagram.round_trip(&payload) == payload,
            "{method}: datagram round trip changed the payload"
        );
        group.bench_function(BenchmarkId::new("seal+open", method), |b| {
            b.iter(|| datagram.round_trip(black_box(&payload)).len())
        });
    }
    group.finish();
}

fn record_sizes(c: &mut Criterion) {
    let mut group = c.benchmark_group("record-size");
    for algorithm in [Algorithm::ChaCha20Poly1305, Algorithm::Aes256Gcm, Algorithm::XChaCha20Poly1305] {
        for size in [128, 1024, 16 * 1024] {
            let payload = test_payload(size);
            group.throughput(Throughput::Bytes(size as u64));
            let raw = [
                raw_ring(algorithm).map(|round_trip| ("ring", round_trip)),
                Some(("rustcrypto", raw_rustcrypto(algorithm))),
            ];
            for (name, round_trip) in raw.into_iter().flatten() {
                let mut buf = payload.clone();
                assert!(round_trip(&mut buf) && buf == payload, "{algorithm:?}: {name} round trip failed");
                let id = BenchmarkId::new(format!("{name}-{algorithm:?}"), size);
                group.bench_function(id, |b| b.iter(|| round_trip(black_box(&mut buf))));
            }
        }
    }
    group.finish();
}

criterion_group!(benches, tcp, record_sizes, udp);
criterion_main!(benches);

/// One direction of a TCP stream whose salt and header have already gone through.
struct Stream {
    encryptor: Encryptor,
    decryptor: Decryptor,
    /// The records of one `send`, reused so the steady state allocates nothing.
    wire: Vec<u8>,
}

impl Stream {
    fn new(method: Method) -> Stream {
        let key = test_key(method);
        let salt = Salt::from_slice(method, &SALT[..method.salt_len()]).expect("salt of the method's length");
        let encryptor = Encryptor::request(method, &key, salt, &test_address(), &[]);
        let wire = Vec::with_capacity(encryptor.max_output_len(TCP_PAYLOAD));
        let mut stream = Stream { encryptor, decryptor: Decryptor::request(method, &key), wire };
        // An empty first payload sends the salt and header alone.
        let delivered = stream.send(&[], |_| {});
        assert!(delivered == 0 && stream.encryptor.header_sent(), "{method}: header did not go through");
        stream
    }

    /// Seals `payload`, opens the records in place and hands each plaintext piece to `sink`; returns
    /// the number of payload bytes delivered.
    fn send(&mut self, payload: &[u8], mut sink: impl FnMut(&[u8])) -> usize {
        self.wire.clear();
        self.encryptor.encrypt(payload, NOW, &mut self.wire).expect("nonces left");
        open_in_place(&mut self.decryptor, &mut self.wire, &mut sink)
    }
}

/// A payload laid out in chunk slots, each `CHUNK_HEAD` bytes of room, payload, `CHUNK_TAIL` bytes of room,
/// end to end: what a sealing reader reads from a socket.
struct Slots {
    buf: Vec<u8>,
    /// Each slot's range in `buf`.
    ranges: Vec<std::ops::Range<usize>>,
}

impl Slots {
    fn new(payload: &[u8], max_chunk: usize) -> Slots {
        let (mut buf, mut ranges) = (Vec::new(), Vec::new());
        for piece in payload.chunks(max_chunk) {
            let start = buf.len();
            buf.extend_from_slice(&[0; CHUNK_HEAD]);
            buf.extend_from_slice(piece);
            buf.extend_from_slice(&[0; CHUNK_TAIL]);
            ranges.push(start..buf.len());
        }
        Slots { buf, ranges }
    }
}

impl Stream {
    /// Seals every slot where it lies, opens the records in place again (the slots hold the payload
    /// once more) and hands each plaintext piece to `sink`; returns the payload bytes delivered.
    fn send_in_place(&mut self, slots: &mut Slots, mut sink: impl FnMut(&[u8])) -> usize {
        for range in &slots.ranges {
            self.encryptor.seal_chunk_in_place(&mut slots.buf[range.clone()]).expect("nonces left");
        }
        open_in_place(&mut self.decryptor, &mut slots.buf, &mut sink)
    }
}

/// Opens the whole records in `wire` where they lie and hands each plaintext piece to `sink`; returns the
/// payload bytes delivered.
fn open_in_place(decryptor: &mut Decryptor, wire: &mut [u8], sink: &mut impl FnMut(&[u8])) -> usize {
    let mut at = 0;
    let mut delivered = 0;
    while at < wire.len() {
        let input = &mut wire[at..];
        let decoded = decryptor.decrypt(input, NOW).expect("records just sealed open");
        assert!(decoded.consumed > 0, "decryptor stalled on whole records");
        sink(&input[decoded.payload.clone()]);
        delivered += decoded.payload.len();
        at += decoded.consumed;
    }
    delivered
}

/// Seals a buffer in place and opens it again; false if the tag did not verify.
type RoundTrip = Box<dyn Fn(&mut [u8]) -> bool>;

/// ring's own seal and open, for the algorithms ring has.
fn raw_ring(algorithm: Algorithm) -> Option<RoundTrip> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};

    let algorithm = match algorithm {
        Algorithm::Aes128Gcm => &AES_128_GCM,
        Algorithm::Aes256Gcm => &AES_256_GCM,
        Algorithm::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        Algorithm::XChaCha20Poly1305 => return Some(raw_ring_xchacha()),
        Algorithm::Aes192Gcm => return None,
    };
    let key = UnboundKey::new(algorithm, &KEY[..algorithm.key_len()]).expect("key of the algorithm's length");
    let key = LessSafeKey::new(key);
    Some(Box::new(move |buf| {
        let nonce = || Nonce::assume_unique_for_key(NONCE);
        let Ok(tag) = key.seal_in_place_separate_tag(nonce(), Aad::empty(), buf) else {
            return false;
        };
        key.open_in_place_separate_tag(nonce(), Aad::empty(), tag, buf, 0..).is_ok()
    }))
}

/// XChaCha20-Poly1305 as HChaCha20 and ring's ChaCha20-Poly1305, the subkey derived for each seal and each
/// open as a stream whose nonce changes every record must.
fn raw_ring_xchacha() -> RoundTrip {
    use chacha20::cipher::consts::U10;
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

    // The 12-byte nonce of the other lines, zero-extended to 24: HChaCha20 takes the first 16 bytes and
    // ChaCha20-Poly1305 the last 8 behind four zero bytes.
    let mut xnonce = [0u8; XNONCE_LEN];
    xnonce[..NONCE_LEN].copy_from_slice(&NONCE);
    let subkey_of = move || {
        let subkey = chacha20::hchacha::<U10>(&KEY.into(), xnonce[..16].into());
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &subkey).expect("32-byte subkey"))
    };
    let nonce = move || {
        let mut short = [0u8; NONCE_LEN];
        short[4..].copy_from_slice(&xnonce[16..]);
        Nonce::assume_unique_for_key(short)
    };
    Box::new(move |buf| {
        let Ok(tag) = subkey_of().seal_in_place_separate_tag(nonce(), Aad::empty(), buf) else {
            return false;
        };
        subkey_of().open_in_place_separate_tag(nonce(), Aad::empty(), tag, buf, 0..).is_ok()
    })
}

fn raw_rustcrypto(algorithm: Algorithm) -> RoundTrip {
    match algorithm {
        Algorithm::Aes128Gcm => rustcrypto::<aes_gcm::Aes128Gcm>(),
        Algorithm::Aes192Gcm => {
            rustcrypto::<aes_gcm::AesGcm<aes_gcm::aes::Aes192, aes_gcm::aead::consts::U12>>()
        }
        Algorithm::Aes256Gcm => rustcrypto::<aes_gcm::Aes256Gcm>(),
        Algorithm::ChaCha20Poly1305 => rustcrypto::<chacha20poly1305::ChaCha20Poly1305>(),
        Algorithm::XChaCha20Poly1305 => rustcrypto::<chacha20poly1305::XChaCha20Poly1305>(),
    }
}

fn rustcrypto<A>() -> RoundTrip
where
    A: aes_gcm::aead::AeadInPlace + aes_gcm::aead::KeyInit + 'static,
{
    let key = A::new_from_slice(&KEY[..A::key_size()]).expect("key of the algorithm's length");
    Box::new(move |buf| {
        // The 12-byte nonce of the other lines, zero-extended for XChaCha20's 24 bytes.
        let mut nonce = aes_gcm::aead::Nonce::<A>::default();
        nonce[..NONCE_LEN].copy_from_slice(&NONCE);
        let nonce = &nonce;
        let Ok(tag) = key.encrypt_in_place_detached(nonce, b"", buf) else {
            return false;
        };
        key.decrypt_in_place_detached(nonce, b"", buf, &tag).is_ok()
    })
}

/// Seals and opens client datagrams of one method, reusing one packet buffer.
struct Datagram {
    codec: DatagramCodec,
    packet: Vec<u8>,
}

enum DatagramCodec {
    /// Classic: a fresh subkey from each datagram's salt (fixed here: the cost is the same).
    Classic { codec: UdpClassic, salt: Salt },
    /// 2022: AES encrypts a separate header and derives the body key from the session id each packet;
    /// ChaCha seals the whole packet with XChaCha20-Poly1305 under the PSK.
    Aead2022(Udp2022),
}

impl Datagram {
    fn new(method: Method) -> Datagram {
        let key = test_key(method);
        let codec = match method.generation() {
            Generation::Classic => {
                let salt = Salt::from_slice(method, &SALT[..method.salt_len()])
                    .expect("salt of the method's length");
                DatagramCodec::Classic {
                    codec: UdpClassic::new(method, &key).expect("a classic method"),
                    salt,
                }
            }
            Generation::Aead2022 => {
                DatagramCodec::Aead2022(Udp2022::new(method, &key).expect("a 2022 method"))
            }
        };
        Datagram { codec, packet: Vec::with_capacity(UDP_PAYLOAD + 128) }
    }

    /// Seals `payload` into one datagram, opens it and returns the payload as opened.
    fn round_trip(&mut self, payload: &[u8]) -> &[u8] {
        self.packet.clear();
        let address = test_address();
        let opened = match &self.codec {
            DatagramCodec::Classic { codec, salt } => {
                codec.seal(*salt, &address, payload, &mut self.packet).expect("seals");
                codec.open(&mut self.packet).expect("datagram just sealed opens").1
            }
            DatagramCodec::Aead2022(codec) => {
                let header =
                    Header2022 { session_id: 1, packet_id: 1, sender: Sender::Client, timestamp: NOW };
                codec.seal(&header, &[], &address, payload, &XNONCE, &mut self.packet).expect("seals");
                codec.open(&mut self.packet, NOW, Origin::Client).expect("datagram just sealed opens").payload
            }
        };
        &self.packet[opened]
    }
}

fn test_key(method: Method) -> Key {
    Key::from_bytes(method, &KEY[..method.key_len()]).expect("key of the method's length")
}

fn test_address() -> Address {
    Address::Ip(SocketAddr::from(([192, 0, 2, 1], 443)))
}

/// Payload bytes that are not all alike, so a misplaced byte shows in the checks.
fn test_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}
