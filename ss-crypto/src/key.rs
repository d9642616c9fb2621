//! Master keys and per-session subkeys.
//!
//! - Classic methods: the master key comes from a password through OpenSSL's `EVP_BytesToKey` with MD5
//!   (`D1 = MD5(password)`, `Di = MD5(D(i-1) || password)`, concatenated and truncated), and each session
//!   key is `HKDF-SHA1(ikm = key, salt = salt, info = "ss-subkey")`.
//! - AEAD-2022 methods: the master key is a pre-shared key given in base64, exactly the key length, and
//!   each session key is `BLAKE3::derive_key("shadowsocks 2022 session subkey", key || salt)`.
//!
//! Every buffer holding key material is wiped when dropped.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hkdf::Hkdf;
use md5::{Digest as _, Md5};
use rand_core::{CryptoRng, RngCore};
use sha1::Sha1;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::method::{Generation, Method, MAX_KEY_LEN, MAX_SALT_LEN};

const HKDF_INFO: &[u8] = b"ss-subkey";
const BLAKE3_CONTEXT: &str = "shadowsocks 2022 session subkey";

/// Key material of one method's length (16 or 32 bytes), wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Key {
    bytes: [u8; MAX_KEY_LEN],
    len: usize,
}

/// Why a key could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not valid base64.
    #[error("the key for {method} is not valid base64; it must be {expected} bytes in base64 (generate one with `ss-server --generate-key -m {method}`)")]
    NotBase64 {
        /// The method the key is for.
        method: Method,
        /// The key length the method needs.
        expected: usize,
    },
    /// The decoded key has the wrong length.
    #[error("the key for {method} must be {expected} bytes, but the base64 text decodes to {actual} bytes")]
    WrongLength {
        /// The method the key is for.
        method: Method,
        /// The key length the method needs.
        expected: usize,
        /// The decoded length.
        actual: usize,
    },
    /// A 2022 method was given a password instead of a base64 PSK.
    #[error("{method} takes a base64 pre-shared key, not a password")]
    PasswordFor2022 {
        /// The method the key is for.
        method: Method,
    },
}

impl Key {
    /// The master key of a classic method, derived from a password with `EVP_BytesToKey` (MD5).
    ///
    /// Returns an error for AEAD-2022 methods, whose key is a base64 PSK ([`Key::from_base64`]).
    pub fn from_password(method: Method, password: &str) -> Result<Key, KeyError> {
        if method.generation() == Generation::Aead2022 {
            return Err(KeyError::PasswordFor2022 { method });
        }
        Ok(evp_bytes_to_key(password.as_bytes(), method.key_len()))
    }

    /// A key given in base64 (standard alphabet; URL-safe and unpadded forms are accepted too): the PSK of
    /// a 2022 method, or libev's `key` option for a classic one.
    pub fn from_base64(method: Method, text: &str) -> Result<Key, KeyError> {
        let expected = method.key_len();
        let mut decoded = decode_base64(text.trim()).ok_or(KeyError::NotBase64 { method, expected })?;
        let key = Key::from_bytes(method, &decoded);
        decoded.zeroize();
        key
    }

    /// The master key for a method from its config value: a base64 PSK for 2022 methods, a password for
    /// classic ones (as shadowsocks-libev and shadowsocks-rust read the `password` field).
    pub fn from_config_password(method: Method, password: &str) -> Result<Key, KeyError> {
        match method.generation() {
            Generation::Classic => Key::from_password(method, password),
            Generation::Aead2022 => Key::from_base64(method, password),
        }
    }

    /// A key from raw bytes, which must be exactly the method's key length.
    pub fn from_bytes(method: Method, bytes: &[u8]) -> Result<Key, KeyError> {
        let expected = method.key_len();
        if bytes.len() != expected {
            return Err(KeyError::WrongLength { method, expected, actual: bytes.len() });
        }
        Ok(Key::copy_of(bytes))
    }

    /// A fresh random key of the method's length.
    pub fn generate(method: Method, rng: &mut (impl RngCore + CryptoRng)) -> Key {
        let mut key = Key { bytes: [0; MAX_KEY_LEN], len: method.key_len() };
        rng.fill_bytes(&mut key.bytes[..key.len]);
        key
    }

    /// The key in standard base64, the form configs and `ss://` URIs use for 2022 methods.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.as_bytes())
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a key has at least 16 bytes. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The session subkey for one salt (TCP stream or classic UDP datagram).
    ///
    /// Classic: HKDF-SHA1 with info `ss-subkey`. 2022: BLAKE3 `derive_key` over `key || salt`.
    pub fn session_subkey(&self, method: Method, salt: &[u8]) -> Key {
        match method.generation() {
            Generation::Classic => self.hkdf_sha1_subkey(salt),
            Generation::Aead2022 => self.blake3_subkey(salt),
        }
    }

    /// `HKDF-SHA1(ikm = self, salt, info = "ss-subkey")`, as long as this key.
    pub fn hkdf_sha1_subkey(&self, salt: &[u8]) -> Key {
        let mut subkey = Key { bytes: [0; MAX_KEY_LEN], len: self.len };
        let hkdf = Hkdf::<Sha1>::new(Some(salt), self.as_bytes());
        // The output is at most 32 bytes, far below HKDF-SHA1's limit of 255 * 20 bytes.
        let _ = hkdf.expand(HKDF_INFO, &mut subkey.bytes[..self.len]);
        subkey
    }

    /// `BLAKE3::derive_key("shadowsocks 2022 session subkey", self || material)`, truncated to this
    /// key's length. `material` is a TCP salt or, for 2022 AES UDP, the 8-byte session id.
    pub fn blake3_subkey(&self, material: &[u8]) -> Key {
        let mut hasher = blake3::Hasher::new_derive_key(BLAKE3_CONTEXT);
        hasher.update(self.as_bytes());
        hasher.update(material);
        let mut subkey = Key { bytes: [0; MAX_KEY_LEN], len: self.len };
        hasher.finalize_xof().fill(&mut subkey.bytes[..self.len]);
        subkey
    }

    /// A key of whatever length `bytes` has (at most 32): derived keys inside the crate.
    pub(crate) fn from_raw(bytes: &[u8]) -> Key {
        Key::copy_of(&bytes[..bytes.len().min(MAX_KEY_LEN)])
    }

    fn copy_of(bytes: &[u8]) -> Key {
        let mut key = Key { bytes: [0; MAX_KEY_LEN], len: bytes.len() };
        key.bytes[..bytes.len()].copy_from_slice(bytes);
        key
    }
}

/// A per-stream (or per-datagram) random salt of a method's salt length.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Salt {
    bytes: [u8; MAX_SALT_LEN],
    len: u8,
}

impl Salt {
    /// A salt from bytes, which must be exactly the method's salt length.
    pub fn from_slice(method: Method, bytes: &[u8]) -> Option<Salt> {
        if bytes.len() != method.salt_len() {
            return None;
        }
        let mut salt = Salt { bytes: [0; MAX_SALT_LEN], len: bytes.len() as u8 };
        salt.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(salt)
    }

    /// A fresh random salt of the method's length.
    pub fn random(method: Method, rng: &mut (impl RngCore + CryptoRng)) -> Salt {
        let mut salt = Salt { bytes: [0; MAX_SALT_LEN], len: method.salt_len() as u8 };
        rng.fill_bytes(&mut salt.bytes[..method.salt_len()]);
        salt
    }

    /// The salt bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Salt(")?;
        self.as_bytes().iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, ")")
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes, redacted)", self.len)
    }
}

/// Whether a classic password is too weak to stand up to offline guessing (the salt and first chunk
/// on the wire let anyone test guesses). Used by the binaries to warn.
pub fn is_weak_password(password: &str) -> bool {
    let distinct = {
        let mut chars: Vec<char> = password.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        chars.len()
    };
    password.chars().count() < 16 || distinct < 8
}

fn evp_bytes_to_key(password: &[u8], key_len: usize) -> Key {
    let mut key = Key { bytes: [0; MAX_KEY_LEN], len: key_len };
    let mut filled = 0;
    let mut previous = [0u8; 16];
    while filled < key_len {
        let mut md5 = Md5::new();
        if filled > 0 {
            md5.update(previous);
        }
        md5.update(password);
        previous = md5.finalize().into();
        let take = (key_len - filled).min(previous.len());
        key.bytes[filled..filled + take].copy_from_slice(&previous[..take]);
        filled += take;
    }
    previous.zeroize();
    key
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|engine| engine.decode(text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evp_bytes_to_key_of_empty_password_is_md5_of_nothing() {
        let key = Key::from_password(Method::Aes128Gcm, "").unwrap();
        assert_eq!(hex::encode(key.as_bytes()), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn passwords_are_refused_for_2022_methods() {
        assert_eq!(
            Key::from_password(Method::Blake3Aes256Gcm, "hunter2"),
            Err(KeyError::PasswordFor2022 { method: Method::Blake3Aes256Gcm })
        );
    }

    #[test]
    fn base64_keys_must_have_the_method_length() {
        let err = Key::from_base64(Method::Blake3Aes256Gcm, "AAAAAAAAAAAAAAAAAAAAAA==").unwrap_err();
        assert_eq!(err, KeyError::WrongLength { method: Method::Blake3Aes256Gcm, expected: 32, actual: 16 });
        assert!(err.to_string().contains("must be 32 bytes"));
        let err = Key::from_base64(Method::Blake3Aes128Gcm, "not base64!").unwrap_err();
        assert!(err.to_string().contains("16 bytes in base64"), "{err}");
    }

    #[test]
    fn generated_keys_round_trip_through_base64() {
        let mut rng = rand_core::OsRng;
        for method in Method::ALL {
            let key = Key::generate(method, &mut rng);
            assert_eq!(key.len(), method.key_len());
            assert_eq!(Key::from_base64(method, &key.to_base64()).unwrap(), key);
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let key = Key::from_password(Method::Aes256Gcm, "secret").unwrap();
        assert_eq!(format!("{key:?}"), "Key(32 bytes, redacted)");
    }

    #[test]
    fn weak_passwords_are_flagged() {
        assert!(is_weak_password("foobar"));
        assert!(is_weak_password("aaaaaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(!is_weak_password("correct horse battery staple"));
    }
}
