//! One direction's AEAD state: a session key and its nonce counter.
//!
//! The primitive comes from one small backend module: `ring` by default (assembly AES-GCM and
//! ChaCha20-Poly1305), or the RustCrypto crates `aes-gcm` / `chacha20poly1305` when the crate is built
//! without the `ring` feature. Both pass the same known-answer vectors. AES-192-GCM, which ring lacks,
//! is RustCrypto's in both builds; XChaCha20-Poly1305 is HChaCha20 over the backend's ChaCha20-Poly1305
//! (`xchacha.rs`).
//!
//! Nonces are 12-byte little-endian counters starting at 0, incremented after every seal or open.
//! A counter that would pass 2^96 - 1 is an error, never a silent wrap. XChaCha20-Poly1305's nonce is
//! 24 bytes: the same counter, zero-extended (the upper 12 bytes stay zero, exactly as libev's 24-byte
//! little-endian increment leaves them below 2^96), so one counter type serves every algorithm and the
//! backend widens it at the last moment.

#[cfg(feature = "ring")]
mod ring;
#[cfg(feature = "ring")]
use self::ring as backend;

mod rustcrypto;
#[cfg(not(feature = "ring"))]
use self::rustcrypto as backend;

pub(crate) mod xchacha;
pub use self::xchacha::XNONCE_LEN;

use crate::method::{Algorithm, TAG_LEN};

/// The name of the AEAD backend this build uses, for logs and benchmark labels.
pub const BACKEND: &str = backend::NAME;

/// Length of an AEAD nonce.
pub const NONCE_LEN: usize = 12;

/// A sealing or opening operation found the nonce space used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nonce counter exhausted")]
pub struct NonceExhausted;

/// Why sealing failed. Whatever the reason, nothing sealed may be sent: the caller ends the stream (TCP) or drops
/// the datagram (UDP), and the output buffer holds nothing of the failed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The nonce counter is used up.
    #[error("nonce counter exhausted")]
    NonceExhausted,
    /// The AEAD backend refused to seal (it cannot for records of our sizes; fail closed if it does).
    #[error("the AEAD backend failed to seal")]
    Backend,
    /// A chunk was to be sealed in place before the stream's header went out (a caller's mistake).
    #[error("a chunk sealed in place before the stream's header")]
    HeaderPending,
    /// A chunk sealed in place had no payload or more than one chunk's worth (a caller's mistake).
    #[error("a chunk sealed in place with an empty or oversized payload")]
    BadChunk,
}

impl From<NonceExhausted> for SealError {
    fn from(_: NonceExhausted) -> SealError {
        SealError::NonceExhausted
    }
}

/// Why opening a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// The tag did not verify (or the record is shorter than a tag).
    Auth,
    /// The nonce counter is used up.
    Exhausted,
}

/// A session key with its nonce counter: everything one direction of a stream needs.
pub(crate) struct SessionCipher {
    key: backend::AeadKey,
    nonce: NonceCounter,
}

impl SessionCipher {
    /// A cipher for `algorithm` with a key of the algorithm's length; the counter starts at 0.
    pub(crate) fn new(algorithm: Algorithm, key: &[u8]) -> SessionCipher {
        SessionCipher { key: backend::AeadKey::new(algorithm, key), nonce: NonceCounter::default() }
    }

    /// Seals `buf[..buf.len() - TAG_LEN]` in place and writes the tag into the last `TAG_LEN` bytes.
    pub(crate) fn seal(&mut self, buf: &mut [u8]) -> Result<(), SealError> {
        let nonce = self.nonce.advance()?;
        let (plaintext, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
        backend_seal(&self.key, &nonce, plaintext, tag)
    }

    /// Opens `ciphertext || tag` in place; on success the first `buf.len() - TAG_LEN` bytes hold the
    /// plaintext. On failure the buffer's content is unspecified and must not be used.
    pub(crate) fn open(&mut self, buf: &mut [u8]) -> Result<(), OpenError> {
        if buf.len() < TAG_LEN {
            return Err(OpenError::Auth);
        }
        let nonce = self.nonce.advance().map_err(|_| OpenError::Exhausted)?;
        let (ciphertext, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
        if self.key.open(&nonce, ciphertext, tag) {
            Ok(())
        } else {
            Err(OpenError::Auth)
        }
    }
}

/// One-shot seal with an explicit nonce (UDP datagrams).
pub(crate) fn seal_with_nonce(
    algorithm: Algorithm,
    key: &[u8],
    nonce: &[u8; NONCE_LEN],
    buf: &mut [u8],
) -> Result<(), SealError> {
    let (plaintext, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
    backend_seal(&backend::AeadKey::new(algorithm, key), nonce, plaintext, tag)
}

/// The backend's seal as a `Result`: a record whose tag was not written must never leave.
fn backend_seal(
    key: &backend::AeadKey,
    nonce: &[u8; NONCE_LEN],
    plaintext: &mut [u8],
    tag: &mut [u8],
) -> Result<(), SealError> {
    #[cfg(test)]
    if failing_seals::active() {
        return Err(SealError::Backend);
    }
    if key.seal(nonce, plaintext, tag) {
        Ok(())
    } else {
        Err(SealError::Backend)
    }
}

/// A switch for tests: makes every seal on this thread fail as a broken backend would, to show that
/// the callers fail closed. Compiled into test builds only.
#[cfg(test)]
pub(crate) mod failing_seals {
    use std::cell::Cell;

    thread_local! {
        static FAILING: Cell<bool> = const { Cell::new(false) };
    }

    /// Whether seals on this thread fail.
    pub(crate) fn active() -> bool {
        FAILING.with(Cell::get)
    }

    /// Seals on this thread fail until the guard is dropped.
    pub(crate) fn start() -> Guard {
        FAILING.with(|failing| failing.set(true));
        Guard
    }

    pub(crate) struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            FAILING.with(|failing| failing.set(false));
        }
    }
}

/// One-shot open with an explicit nonce (UDP datagrams). `buf` is `ciphertext || tag`.
pub(crate) fn open_with_nonce(
    algorithm: Algorithm,
    key: &[u8],
    nonce: &[u8; NONCE_LEN],
    buf: &mut [u8],
) -> bool {
    if buf.len() < TAG_LEN {
        return false;
    }
    let (ciphertext, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
    backend::AeadKey::new(algorithm, key).open(nonce, ciphertext, tag)
}

/// A 96-bit little-endian nonce counter that refuses to wrap.
#[derive(Debug, Default, Clone)]
pub struct NonceCounter {
    value: u128,
}

impl NonceCounter {
    const LIMIT: u128 = 1 << 96;

    /// A counter positioned at `value` (used by tests to reach the end of the space).
    pub fn at(value: u128) -> NonceCounter {
        NonceCounter { value }
    }

    /// The current nonce, then advances; errors once all 2^96 nonces have been used.
    pub fn advance(&mut self) -> Result<[u8; NONCE_LEN], NonceExhausted> {
        if self.value >= Self::LIMIT {
            return Err(NonceExhausted);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&self.value.to_le_bytes()[..NONCE_LEN]);
        self.value += 1;
        Ok(nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_is_little_endian_and_carries() {
        let mut counter = NonceCounter::default();
        assert_eq!(counter.advance().unwrap(), [0; 12]);
        assert_eq!(counter.advance().unwrap()[0], 1);
        let mut counter = NonceCounter::at(u64::MAX as u128);
        assert_eq!(counter.advance().unwrap(), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(counter.advance().unwrap(), [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn counter_refuses_to_wrap() {
        let mut counter = NonceCounter::at((1 << 96) - 1);
        assert_eq!(counter.advance().unwrap(), [0xff; 12]);
        assert_eq!(counter.advance(), Err(NonceExhausted));
        assert_eq!(counter.advance(), Err(NonceExhausted));
    }

    #[test]
    fn seal_then_open_round_trips_and_detects_flips() {
        for algorithm in [
            Algorithm::Aes128Gcm,
            Algorithm::Aes192Gcm,
            Algorithm::Aes256Gcm,
            Algorithm::ChaCha20Poly1305,
            Algorithm::XChaCha20Poly1305,
        ] {
            let key = [7u8; 32];
            let key = &key[..algorithm.key_len()];
            let mut sealer = SessionCipher::new(algorithm, key);
            let mut buf = b"attack at dawn\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
            sealer.seal(&mut buf).unwrap();
            let mut flipped = buf.clone();
            flipped[3] ^= 1;
            assert_eq!(SessionCipher::new(algorithm, key).open(&mut flipped), Err(OpenError::Auth));
            SessionCipher::new(algorithm, key).open(&mut buf).unwrap();
            assert_eq!(&buf[..14], b"attack at dawn");
        }
    }
}
