//! XChaCha20-Poly1305 (libsodium's `xchacha20poly1305_ietf`, draft-irtf-cfrg-xchacha) built from what it
//! is made of: HChaCha20 turns the key and the nonce's first 16 bytes into a subkey, and ChaCha20-Poly1305
//! (RFC 8439) seals under that subkey with the 12-byte nonce `0000 || nonce[16..24]`.
//!
//! Built this way, the ChaCha20-Poly1305 underneath is ring's assembly in the default build instead of
//! the portable code of RustCrypto's `XChaCha20Poly1305`, which spent a third of ss-server's CPU on
//! 128-byte records (issue 18). HChaCha20 (one ChaCha block, no keystream) is the `chacha20` crate's.
//! Without the `ring` feature this is RustCrypto's `XChaCha20Poly1305` itself. Both are checked against
//! each other here and against the known-answer vectors in `tests/vectors.rs`.
//!
//! A classic stream's nonce changes in its first 16 bytes with every record (the counter sits in the low
//! bytes), so the subkey is derived per record: one HChaCha20 block, the price XChaCha20 always has.

/// Length of an XChaCha20 nonce.
pub const XNONCE_LEN: usize = 24;

/// The XChaCha20 nonce of a classic stream's 96-bit counter value: the same little-endian number, its
/// upper 12 bytes zero. libev increments all 24 bytes, which agrees as long as the counter stays below
/// 2^96, and ours refuses to go further.
pub(crate) fn widen(nonce: &[u8; super::NONCE_LEN]) -> [u8; XNONCE_LEN] {
    let mut wide = [0u8; XNONCE_LEN];
    wide[..super::NONCE_LEN].copy_from_slice(nonce);
    wide
}

/// A 256-bit XChaCha20-Poly1305 key, zeroized on drop like [`crate::Key`] (the per-record subkeys live
/// in ring's keys, which ring does not zeroize, as with every ring key).
pub(crate) struct XChaChaKey {
    #[cfg(feature = "ring")]
    key: zeroize::Zeroizing<[u8; 32]>,
    #[cfg(not(feature = "ring"))]
    cipher: Box<chacha20poly1305::XChaCha20Poly1305>,
}

impl XChaChaKey {
    /// `None` unless `key` is 32 bytes long.
    pub(crate) fn new(key: &[u8]) -> Option<XChaChaKey> {
        if key.len() != 32 {
            return None;
        }
        #[cfg(feature = "ring")]
        return Some(XChaChaKey { key: zeroize::Zeroizing::new(key.try_into().ok()?) });
        #[cfg(not(feature = "ring"))]
        {
            use chacha20poly1305::KeyInit;
            let cipher = chacha20poly1305::XChaCha20Poly1305::new_from_slice(key).ok()?;
            Some(XChaChaKey { cipher: Box::new(cipher) })
        }
    }

    /// Seals `in_out` in place and writes the 16-byte tag to `tag_out`; false (nothing written to
    /// `tag_out`) if the backend refuses, which it does only for inputs beyond 2^36 bytes.
    pub(crate) fn seal(&self, nonce: &[u8; XNONCE_LEN], in_out: &mut [u8], tag_out: &mut [u8]) -> bool {
        #[cfg(feature = "ring")]
        {
            let (key, nonce) = self.ring_key(nonce);
            match key.seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), in_out) {
                Ok(tag) => {
                    tag_out.copy_from_slice(tag.as_ref());
                    true
                }
                Err(_) => false,
            }
        }
        #[cfg(not(feature = "ring"))]
        {
            use chacha20poly1305::AeadInPlace;
            let nonce = chacha20poly1305::XNonce::from_slice(nonce);
            match self.cipher.encrypt_in_place_detached(nonce, b"", in_out) {
                Ok(tag) => {
                    tag_out.copy_from_slice(&tag);
                    true
                }
                Err(_) => false,
            }
        }
    }

    /// Opens `in_out` in place against `tag`; false if the tag does not verify (then `in_out` must not
    /// be used).
    pub(crate) fn open(&self, nonce: &[u8; XNONCE_LEN], in_out: &mut [u8], tag: &[u8]) -> bool {
        #[cfg(feature = "ring")]
        {
            let Ok(tag) = ring::aead::Tag::try_from(tag) else { return false };
            let (key, nonce) = self.ring_key(nonce);
            key.open_in_place_separate_tag(nonce, ring::aead::Aad::empty(), tag, in_out, 0..).is_ok()
        }
        #[cfg(not(feature = "ring"))]
        {
            use chacha20poly1305::AeadInPlace;
            if tag.len() != 16 {
                return false;
            }
            let nonce = chacha20poly1305::XNonce::from_slice(nonce);
            let tag = chacha20poly1305::Tag::from_slice(tag);
            self.cipher.decrypt_in_place_detached(nonce, b"", in_out, tag).is_ok()
        }
    }

    /// ring's ChaCha20-Poly1305 under the HChaCha20 subkey of `nonce`, and the nonce to use with it.
    #[cfg(feature = "ring")]
    fn ring_key(&self, nonce: &[u8; XNONCE_LEN]) -> (ring::aead::LessSafeKey, ring::aead::Nonce) {
        use chacha20::cipher::consts::U10;
        use chacha20::cipher::generic_array::GenericArray;

        // Ten double rounds: HChaCha20.
        let key = GenericArray::from_slice(&self.key[..]);
        let subkey = chacha20::hchacha::<U10>(key, GenericArray::from_slice(&nonce[..16]));
        // A ChaCha20-Poly1305 key is any 32 bytes; the subkey is 32 bytes by its type.
        #[allow(clippy::expect_used)]
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &subkey)
            .expect("a 32-byte ChaCha20-Poly1305 key");
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(&nonce[16..]);
        (ring::aead::LessSafeKey::new(key), ring::aead::Nonce::assume_unique_for_key(short))
    }
}

#[cfg(test)]
mod tests {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the build's construction, it seals exactly as RustCrypto's `XChaCha20Poly1305`
        /// (which passes the draft's vectors in its own crate) and opens what that seals.
        #[test]
        fn agrees_with_rustcrypto(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; XNONCE_LEN]>(),
            plaintext in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let ours = XChaChaKey::new(&key).unwrap();
            let theirs = XChaCha20Poly1305::new_from_slice(&key).unwrap();

            let mut sealed = plaintext.clone();
            let mut tag = [0u8; 16];
            prop_assert!(ours.seal(&nonce, &mut sealed, &mut tag));
            let mut expected = plaintext.clone();
            let expected_tag =
                theirs.encrypt_in_place_detached(XNonce::from_slice(&nonce), b"", &mut expected).unwrap();
            prop_assert_eq!(&sealed, &expected);
            prop_assert_eq!(&tag[..], &expected_tag[..]);

            prop_assert!(ours.open(&nonce, &mut sealed, &tag));
            prop_assert_eq!(&sealed, &plaintext);
        }
    }

    #[test]
    fn refuses_a_flipped_bit_a_wrong_nonce_and_a_short_tag() {
        let key = XChaChaKey::new(&[3; 32]).unwrap();
        let nonce = [5u8; XNONCE_LEN];
        let mut sealed = b"a record of some length".to_vec();
        let mut tag = [0u8; 16];
        assert!(key.seal(&nonce, &mut sealed, &mut tag));
        for position in [0, 16, 23] {
            let mut other = nonce;
            other[position] ^= 1;
            assert!(!key.open(&other, &mut sealed.clone(), &tag), "nonce byte {position} changed");
        }
        let mut flipped = sealed.clone();
        flipped[7] ^= 0x80;
        assert!(!key.open(&nonce, &mut flipped, &tag));
        assert!(!key.open(&nonce, &mut sealed.clone(), &tag[..15]));
        assert!(key.open(&nonce, &mut sealed, &tag));
        assert_eq!(sealed, b"a record of some length");
    }

    #[test]
    fn takes_only_32_byte_keys() {
        assert!(XChaChaKey::new(&[0; 31]).is_none());
        assert!(XChaChaKey::new(&[0; 33]).is_none());
    }
}
