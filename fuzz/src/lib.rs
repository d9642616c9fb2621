//! What the fuzz targets share: fixed keys and salts, and [`decrypt_stream`], which feeds a whole
//! stream to a [`Decryptor`] the way a server's read loop does and checks the decoder's promises on
//! every call. [`forge`] seals arbitrary plaintext so that inputs get past authentication.
//!
//! Everything here panics on a broken promise: a panic is what the fuzzer reports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod forge;

use std::net::SocketAddr;

use ss_crypto::{Address, Decoded, DecryptError, Decryptor, Generation, Key, Method, Salt};

/// The receiver's clock for 2022 headers, in Unix seconds.
pub const NOW: u64 = 1_700_000_000;

/// The methods of one protocol generation.
pub fn methods(generation: Generation) -> impl Iterator<Item = Method> {
    Method::ALL.into_iter().filter(move |method| method.generation() == generation)
}

/// The fixed key every target uses for `method`.
pub fn key(method: Method) -> Key {
    let key = match method.generation() {
        Generation::Classic => Key::from_password(method, "fuzz"),
        Generation::Aead2022 => Key::from_bytes(method, &[0x42; 32][..method.key_len()]),
    };
    key.expect("a fixed key of the method's length")
}

/// The salt of the request that every response decryptor answers.
pub fn request_salt(method: Method) -> Salt {
    Salt::from_slice(method, &[0x5a; 32][..method.salt_len()]).expect("a salt of the method's length")
}

/// `address` as [`Address::write_to`] puts it on the wire: an IPv4-mapped IPv6 address goes as IPv4.
pub fn as_sent(address: &Address) -> Address {
    match address {
        Address::Ip(SocketAddr::V6(v6)) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => Address::Ip(SocketAddr::new(v4.into(), v6.port())),
            None => address.clone(),
        },
        _ => address.clone(),
    }
}

/// Which direction of a stream is decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: the server's decryptor, which expects a target address first.
    Request,
    /// Server to client: the client's decryptor, answering [`request_salt`].
    Response,
}

impl Direction {
    /// Both directions.
    pub const BOTH: [Direction; 2] = [Direction::Request, Direction::Response];

    /// A fresh decryptor for this direction with the fixed key.
    pub fn decryptor(self, method: Method) -> Decryptor {
        match self {
            Direction::Request => Decryptor::request(method, &key(method)),
            Direction::Response => Decryptor::response(method, &key(method), request_salt(method)),
        }
    }
}

/// Where to cut an input in two, from one byte of it: 0 keeps it whole in the second piece, 255 in the first.
pub fn split_point(byte: u8, len: usize) -> usize {
    usize::from(byte) * len / 255
}

/// Everything a decryptor delivered from one stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The target, if a request's first record opened.
    pub target: Option<Address>,
    /// All payload delivered, in order.
    pub payload: Vec<u8>,
    /// The first error of `decrypt`, or else the verdict of `finish`.
    pub result: Result<(), DecryptError>,
}

/// Decrypts `wire` arriving in two reads cut at `split`: after each read, `decrypt` until it needs more;
/// at the end, `finish`. Asserts on every call that the payload lies within the bytes consumed, that
/// a stalled decryptor really lacks input, that the target comes once and first, and that an error
/// sticks.
pub fn decrypt_stream(method: Method, direction: Direction, wire: &[u8], split: usize, now: u64) -> Outcome {
    let mut decryptor = direction.decryptor(method);
    let mut outcome = Outcome { target: None, payload: Vec::new(), result: Ok(()) };
    let mut buffer = Vec::new();
    let split = split.min(wire.len());
    for read in [&wire[..split], &wire[split..]] {
        buffer.extend_from_slice(read);
        if let Err(error) = drain(&mut decryptor, direction, &mut buffer, now, &mut outcome) {
            assert_eq!(decryptor.decrypt(&mut buffer, now), Err(error), "an error must stick");
            assert_eq!(decryptor.finish(buffer.len()), Err(error), "finish must repeat the error");
            outcome.result = Err(error);
            return outcome;
        }
    }
    outcome.result = decryptor.finish(buffer.len());
    if outcome.result.is_ok() && direction == Direction::Request && !wire.is_empty() {
        assert!(outcome.target.is_some(), "a request stream ended cleanly without a target");
    }
    if outcome.target.is_some() || !outcome.payload.is_empty() {
        let salt = &wire[..method.salt_len()];
        assert_eq!(decryptor.authenticated_salt().map(|s| s.as_bytes().to_vec()), Some(salt.to_vec()));
    }
    outcome
}

/// Calls `decrypt` until it makes no progress, dropping consumed bytes from `buffer`.
fn drain(
    decryptor: &mut Decryptor,
    direction: Direction,
    buffer: &mut Vec<u8>,
    now: u64,
    outcome: &mut Outcome,
) -> Result<(), DecryptError> {
    loop {
        let len = buffer.len();
        let Decoded { consumed, target, payload } = decryptor.decrypt(buffer, now)?;
        assert!(consumed <= len, "consumed {consumed} of {len} bytes");
        assert!(
            payload.start <= payload.end && payload.end <= consumed,
            "payload {payload:?} beyond {consumed}"
        );
        if let Some(target) = target {
            assert_eq!(direction, Direction::Request, "a response carried a target");
            assert!(outcome.target.is_none(), "a second target");
            assert!(outcome.payload.is_empty(), "the target came after payload");
            outcome.target = Some(target);
        }
        outcome.payload.extend_from_slice(&buffer[payload]);
        buffer.drain(..consumed);
        if consumed == 0 {
            assert!(
                buffer.len() < decryptor.wanted(),
                "stalled with {} bytes, wants {}",
                buffer.len(),
                decryptor.wanted()
            );
            return Ok(());
        }
    }
}
