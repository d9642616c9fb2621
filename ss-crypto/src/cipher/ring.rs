//! AEAD backend on `ring`: hand-tuned assembly AES-GCM (AES-NI + CLMUL / VAES) and ChaCha20-Poly1305.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};

use super::NONCE_LEN;
use crate::method::Algorithm;

pub(super) const NAME: &str = "ring";

/// An expanded AEAD key.
pub(super) struct AeadKey(LessSafeKey);

impl AeadKey {
    pub(super) fn new(algorithm: Algorithm, key: &[u8]) -> AeadKey {
        let algorithm = match algorithm {
            Algorithm::Aes128Gcm => &AES_128_GCM,
            Algorithm::Aes256Gcm => &AES_256_GCM,
            Algorithm::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        };
        // Key lengths come from `Method::key_len`, which matches the algorithm by construction.
        #[allow(clippy::expect_used)]
        let key = UnboundKey::new(algorithm, key).expect("key length matches the algorithm");
        AeadKey(LessSafeKey::new(key))
    }

    /// Seals in place; false (and no tag written) if ring refuses, which it does only for inputs longer
    /// than 2^36 bytes.
    pub(super) fn seal(&self, nonce: &[u8; NONCE_LEN], in_out: &mut [u8], tag_out: &mut [u8]) -> bool {
        let nonce = Nonce::assume_unique_for_key(*nonce);
        match self.0.seal_in_place_separate_tag(nonce, Aad::empty(), in_out) {
            Ok(tag) => {
                tag_out.copy_from_slice(tag.as_ref());
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn open(&self, nonce: &[u8; NONCE_LEN], in_out: &mut [u8], tag: &[u8]) -> bool {
        let nonce = Nonce::assume_unique_for_key(*nonce);
        let Ok(tag) = Tag::try_from(tag) else { return false };
        self.0.open_in_place_separate_tag(nonce, Aad::empty(), tag, in_out, 0..).is_ok()
    }
}
