//! AEAD backend on `ring`: hand-tuned assembly AES-GCM (AES-NI + CLMUL / VAES) and ChaCha20-Poly1305.
//!
//! ring has no AES-192-GCM (its keys are RustCrypto's, see `rustcrypto.rs`) and no XChaCha20-Poly1305,
//! which `xchacha.rs` builds from HChaCha20 and ring's ChaCha20-Poly1305.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};

use super::xchacha::{self, XChaChaKey};
use super::{rustcrypto, NONCE_LEN};
use crate::method::Algorithm;

pub(super) const NAME: &str = "ring";

/// An expanded AEAD key.
#[allow(
    clippy::large_enum_variant,
    reason = "ring's key stays inline as before: boxing it would add a pointer chase to every record"
)]
pub(super) enum AeadKey {
    /// One of the algorithms ring implements.
    Ring(LessSafeKey),
    /// AES-192-GCM, from the RustCrypto crates.
    Portable(rustcrypto::AeadKey),
    /// XChaCha20-Poly1305: HChaCha20 and ring's ChaCha20-Poly1305.
    XChaCha(XChaChaKey),
}

impl AeadKey {
    pub(super) fn new(algorithm: Algorithm, key: &[u8]) -> AeadKey {
        // Key lengths come from `Method::key_len`, which matches the algorithm by construction.
        #![allow(clippy::expect_used)]
        let algorithm = match algorithm {
            Algorithm::Aes128Gcm => &AES_128_GCM,
            Algorithm::Aes256Gcm => &AES_256_GCM,
            Algorithm::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Algorithm::Aes192Gcm => return AeadKey::Portable(rustcrypto::AeadKey::new(algorithm, key)),
            Algorithm::XChaCha20Poly1305 => {
                return AeadKey::XChaCha(XChaChaKey::new(key).expect("32-byte key"));
            }
        };
        let key = UnboundKey::new(algorithm, key).expect("key length matches the algorithm");
        AeadKey::Ring(LessSafeKey::new(key))
    }

    /// Seals in place; false (and no tag written) if the backend refuses, which it does only for inputs
    /// longer than 2^36 bytes.
    pub(super) fn seal(&self, nonce: &[u8; NONCE_LEN], in_out: &mut [u8], tag_out: &mut [u8]) -> bool {
        let key = match self {
            AeadKey::Ring(key) => key,
            AeadKey::Portable(key) => return key.seal(nonce, in_out, tag_out),
            AeadKey::XChaCha(key) => return key.seal(&xchacha::widen(nonce), in_out, tag_out),
        };
        let nonce = Nonce::assume_unique_for_key(*nonce);
        match key.seal_in_place_separate_tag(nonce, Aad::empty(), in_out) {
            Ok(tag) => {
                tag_out.copy_from_slice(tag.as_ref());
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn open(&self, nonce: &[u8; NONCE_LEN], in_out: &mut [u8], tag: &[u8]) -> bool {
        let key = match self {
            AeadKey::Ring(key) => key,
            AeadKey::Portable(key) => return key.open(nonce, in_out, tag),
            AeadKey::XChaCha(key) => return key.open(&xchacha::widen(nonce), in_out, tag),
        };
        let nonce = Nonce::assume_unique_for_key(*nonce);
        let Ok(tag) = Tag::try_from(tag) else { return false };
        key.open_in_place_separate_tag(nonce, Aad::empty(), tag, in_out, 0..).is_ok()
    }
}
