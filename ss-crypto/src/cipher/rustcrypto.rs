//! AEAD backend on the RustCrypto crates `aes-gcm` and `chacha20poly1305` (portable, constant time,
//! AES-NI when the CPU has it).
//!
//! It is the whole backend without the `ring` feature, and the one for AES-192-GCM in every build: ring
//! has none. XChaCha20-Poly1305 is `xchacha.rs`'s in both builds.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Tag};
use chacha20poly1305::ChaCha20Poly1305;

use super::xchacha::{self, XChaChaKey};
use super::NONCE_LEN;
use crate::method::Algorithm;

#[cfg(not(feature = "ring"))]
pub(super) const NAME: &str = "rustcrypto";

/// AES-192-GCM with the standard 96-bit nonce; `aes-gcm` names only the 128- and 256-bit variants.
type Aes192Gcm = AesGcm<Aes192, U12>;

/// An expanded AEAD key.
pub(super) enum AeadKey {
    Aes128(Box<Aes128Gcm>),
    Aes192(Box<Aes192Gcm>),
    Aes256(Box<Aes256Gcm>),
    ChaCha(Box<ChaCha20Poly1305>),
    XChaCha(XChaChaKey),
}

impl AeadKey {
    pub(super) fn new(algorithm: Algorithm, key: &[u8]) -> AeadKey {
        // Key lengths come from `Method::key_len`, which matches the algorithm by construction.
        #[allow(clippy::expect_used)]
        match algorithm {
            Algorithm::Aes128Gcm => {
                AeadKey::Aes128(Box::new(Aes128Gcm::new_from_slice(key).expect("16-byte key")))
            }
            Algorithm::Aes192Gcm => {
                AeadKey::Aes192(Box::new(Aes192Gcm::new_from_slice(key).expect("24-byte key")))
            }
            Algorithm::Aes256Gcm => {
                AeadKey::Aes256(Box::new(Aes256Gcm::new_from_slice(key).expect("32-byte key")))
            }
            Algorithm::ChaCha20Poly1305 => {
                AeadKey::ChaCha(Box::new(ChaCha20Poly1305::new_from_slice(key).expect("32-byte key")))
            }
            Algorithm::XChaCha20Poly1305 => AeadKey::XChaCha(XChaChaKey::new(key).expect("32-byte key")),
        }
    }

    /// Seals in place; false (and no tag written) if the crate refuses, which it does only for inputs
    /// beyond 2^36 bytes.
    pub(super) fn seal(&self, nonce: &[u8; NONCE_LEN], in_out: &mut [u8], tag_out: &mut [u8]) -> bool {
        let tag = match self {
            AeadKey::Aes128(key) => key.encrypt_in_place_detached(nonce.into(), b"", in_out),
            AeadKey::Aes192(key) => key.encrypt_in_place_detached(nonce.into(), b"", in_out),
            AeadKey::Aes256(key) => key.encrypt_in_place_detached(nonce.into(), b"", in_out),
            AeadKey::ChaCha(key) => key.encrypt_in_place_detached(nonce.into(), b"", in_out),
            AeadKey::XChaCha(key) => return key.seal(&xchacha::widen(nonce), in_out, tag_out),
        };
        match tag {
            Ok(tag) => {
                tag_out.copy_from_slice(&tag);
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn open(&self, nonce: &[u8; NONCE_LEN], in_out: &mut [u8], tag: &[u8]) -> bool {
        let tag = Tag::from_slice(tag);
        match self {
            AeadKey::Aes128(key) => key.decrypt_in_place_detached(nonce.into(), b"", in_out, tag).is_ok(),
            AeadKey::Aes192(key) => key.decrypt_in_place_detached(nonce.into(), b"", in_out, tag).is_ok(),
            AeadKey::Aes256(key) => key.decrypt_in_place_detached(nonce.into(), b"", in_out, tag).is_ok(),
            AeadKey::ChaCha(key) => key.decrypt_in_place_detached(nonce.into(), b"", in_out, tag).is_ok(),
            AeadKey::XChaCha(key) => key.open(&xchacha::widen(nonce), in_out, tag),
        }
    }
}
