//! Structure-aware TCP: the input chooses a method, a target, padding, payload pieces, the sender's
//! clock and one tampering. An honest [`Encryptor`] seals a request and a response, the tampering is
//! applied, and the decryptor must give back exactly what was sent or fail. This gets past
//! authentication, where arbitrary bytes never go.
//!
//! - untouched: the same target and payload and a clean finish; for 2022, `BadTimestamp` and nothing
//!   delivered if the clocks are more than 30 s apart;
//! - one byte flipped: `AuthFailure` (or that `BadTimestamp`), after at most a prefix of the payload;
//! - cut short: `Truncated`, or a clean end at a record boundary, after at most a prefix of the payload.

#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use ss_crypto::tcp::MAX_TIME_SKEW;
use ss_crypto::{Address, DecryptError, Encryptor, Method, Salt};
use ss_fuzz::{as_sent, decrypt_stream, key, request_salt, Direction, NOW};

fuzz_target!(|data: &[u8]| {
    let Ok(case) = Case::new(&mut Unstructured::new(data)) else { return };
    for direction in Direction::BOTH {
        case.check(direction);
    }
});

/// A stream in either direction, and what happens to it on the way.
#[derive(Debug)]
struct Case {
    method: Method,
    salt: Salt,
    target: Address,
    /// The sender's clock minus the receiver's, in seconds.
    skew: i64,
    tampering: Tampering,
    /// Where the receiver's first read ends (modulo the stream's length + 1).
    split: usize,
    padding: Vec<u8>,
    pieces: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tampering {
    None,
    Flip { at: usize, mask: u8 },
    Cut { at: usize },
}

impl Case {
    fn new(u: &mut Unstructured) -> Result<Case> {
        let method = *u.choose(&Method::ALL)?;
        let mut salt = [0; 32];
        u.fill_buffer(&mut salt)?;
        let salt =
            Salt::from_slice(method, &salt[..method.salt_len()]).expect("a salt of the method's length");
        let target = target(u)?;
        let skew = u.int_in_range(-40..=40)?;
        let tampering = match u.int_in_range(0..=2)? {
            0 => Tampering::None,
            1 => Tampering::Flip { at: u.arbitrary::<u32>()? as usize, mask: u.arbitrary()? },
            _ => Tampering::Cut { at: u.arbitrary::<u32>()? as usize },
        };
        let split = u.arbitrary::<u32>()? as usize;
        let padding = u.arbitrary()?;
        let mut pieces = Vec::new();
        for _ in 0..u.int_in_range(1..=4)? {
            pieces.push(piece(u)?);
        }
        Ok(Case { method, salt, target, skew, tampering, split, padding, pieces })
    }

    fn check(&self, direction: Direction) {
        let mut wire = self.encrypt(direction);
        let tampering = self.tampering.apply(&mut wire);
        let outcome = decrypt_stream(self.method, direction, &wire, self.split % (wire.len() + 1), NOW);

        let sent = self.pieces.concat();
        let target = (direction == Direction::Request).then(|| as_sent(&self.target));
        let stale = self.method.is_2022() && self.skew.unsigned_abs() > MAX_TIME_SKEW;
        assert!(sent.starts_with(&outcome.payload), "delivered bytes that were not sent");
        if outcome.target.is_some() {
            assert_eq!(outcome.target, target, "delivered another target");
        }
        if stale {
            assert!(outcome.target.is_none() && outcome.payload.is_empty(), "delivered a stale stream");
        }
        let result = outcome.result;
        match tampering {
            // A response with nothing to say sends nothing, not even a header with a timestamp.
            Tampering::None if stale && !wire.is_empty() => {
                assert_eq!(result, Err(DecryptError::BadTimestamp))
            }
            Tampering::None => {
                assert_eq!(result, Ok(()));
                assert_eq!(outcome.target, target);
                assert!(outcome.payload == sent, "payload differs from what was sent");
            }
            Tampering::Flip { .. } => assert!(
                result == Err(DecryptError::AuthFailure)
                    || stale && result == Err(DecryptError::BadTimestamp),
                "a flipped byte gave {result:?}"
            ),
            Tampering::Cut { .. } => assert!(
                matches!(result, Ok(()) | Err(DecryptError::Truncated))
                    || stale && result == Err(DecryptError::BadTimestamp),
                "a cut stream gave {result:?}"
            ),
        }
    }

    fn encrypt(&self, direction: Direction) -> Vec<u8> {
        let key = key(self.method);
        let mut encryptor = match direction {
            Direction::Request => {
                Encryptor::request(self.method, &key, self.salt, &self.target, &self.padding)
            }
            Direction::Response => {
                Encryptor::response(self.method, &key, self.salt, request_salt(self.method))
            }
        };
        let sent_at = NOW.saturating_add_signed(self.skew);
        let mut wire = Vec::new();
        for piece in &self.pieces {
            let before = wire.len();
            encryptor.encrypt(piece, sent_at, &mut wire).expect("a fresh stream has nonces to spare");
            assert!(
                wire.len() - before <= encryptor.max_output_len(piece.len()),
                "max_output_len is too small"
            );
        }
        wire
    }
}

impl Tampering {
    /// Tampers with `wire`; returns what was really done (a zero mask or an empty stream changes nothing).
    fn apply(self, wire: &mut Vec<u8>) -> Tampering {
        match self {
            Tampering::Flip { at, mask } if mask != 0 && !wire.is_empty() => {
                let at = at % wire.len();
                wire[at] ^= mask;
                Tampering::Flip { at, mask }
            }
            Tampering::Cut { at } if !wire.is_empty() => {
                let at = at % wire.len();
                wire.truncate(at);
                Tampering::Cut { at }
            }
            _ => Tampering::None,
        }
    }
}

/// An IPv4, IPv6, IPv4-mapped IPv6 or domain target.
fn target(u: &mut Unstructured) -> Result<Address> {
    let port = u.arbitrary()?;
    let ip = match u.int_in_range(0..=3)? {
        0 => Ipv4Addr::from(u.arbitrary::<u32>()?).into(),
        1 => Ipv6Addr::from(u.arbitrary::<u128>()?).into(),
        2 => Ipv4Addr::from(u.arbitrary::<u32>()?).to_ipv6_mapped().into(),
        _ => {
            let name: &str = u.arbitrary()?;
            let fallback = || Address::Domain("example.com".to_owned(), port);
            return Ok(Address::domain(name, port).unwrap_or_else(|_| fallback()));
        }
    };
    Ok(Address::Ip(SocketAddr::new(ip, port)))
}

/// Payload bytes from the input, or generated ones up to a little past a 2022 chunk (64 KiB), so that
/// pieces cross chunk boundaries without needing a huge input.
fn piece(u: &mut Unstructured) -> Result<Vec<u8>> {
    if u.arbitrary()? {
        return u.arbitrary();
    }
    let len = u.int_in_range(0..=0x1_0010)?;
    let seed: u8 = u.arbitrary()?;
    Ok((0..len).map(|i: usize| (i as u8).wrapping_mul(seed) ^ (i >> 8) as u8).collect())
}
