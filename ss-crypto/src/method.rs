//! The encryption methods we speak, their sizes, and parsing of method names.
//!
//! | method                        | key | salt | tag | generation |
//! |-------------------------------|-----|------|-----|------------|
//! | aes-128-gcm                   | 16  | 16   | 16  | classic    |
//! | aes-192-gcm                   | 24  | 24   | 16  | classic    |
//! | aes-256-gcm                   | 32  | 32   | 16  | classic    |
//! | chacha20-ietf-poly1305        | 32  | 32   | 16  | classic    |
//! | xchacha20-ietf-poly1305       | 32  | 32   | 16  | classic    |
//! | 2022-blake3-aes-128-gcm       | 16  | 16   | 16  | AEAD-2022  |
//! | 2022-blake3-aes-256-gcm       | 32  | 32   | 16  | AEAD-2022  |
//! | 2022-blake3-chacha20-poly1305 | 32  | 32   | 16  | AEAD-2022  |
//!
//! `aes-192-gcm` and `xchacha20-ietf-poly1305` are the two SIP004 methods shadowsocks-libev offers beyond
//! the common three (shadowsocks-rust builds them only with its `aead-cipher-extra` feature). Their
//! framing is the classic one; only the primitive differs. XChaCha20-Poly1305 takes a 24-byte nonce: see
//! the cipher module for how the nonce counter fills it.

use std::fmt;
use std::str::FromStr;

/// Length of every AEAD tag used by Shadowsocks.
pub const TAG_LEN: usize = 16;

/// Largest key of any method, in bytes.
pub const MAX_KEY_LEN: usize = 32;

/// Largest salt of any method, in bytes.
pub const MAX_SALT_LEN: usize = 32;

/// A supported Shadowsocks encryption method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `aes-128-gcm` (SIP004).
    Aes128Gcm,
    /// `aes-192-gcm` (SIP004).
    Aes192Gcm,
    /// `aes-256-gcm` (SIP004).
    Aes256Gcm,
    /// `chacha20-ietf-poly1305` (SIP004).
    ChaCha20IetfPoly1305,
    /// `xchacha20-ietf-poly1305` (SIP004).
    XChaCha20IetfPoly1305,
    /// `2022-blake3-aes-128-gcm` (SIP022).
    Blake3Aes128Gcm,
    /// `2022-blake3-aes-256-gcm` (SIP022).
    Blake3Aes256Gcm,
    /// `2022-blake3-chacha20-poly1305` (SIP022).
    Blake3ChaCha20Poly1305,
}

/// The two protocol generations, which differ in key derivation and framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// SIP004 AEAD: password-derived key, HKDF-SHA1 subkeys, 0x3FFF-byte chunks.
    Classic,
    /// SIP022 AEAD-2022: base64 PSK, BLAKE3 subkeys, timestamped headers, 0xFFFF-byte chunks.
    Aead2022,
}

/// The AEAD primitive underneath a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// AES-128 in Galois/Counter Mode.
    Aes128Gcm,
    /// AES-192 in Galois/Counter Mode.
    Aes192Gcm,
    /// AES-256 in Galois/Counter Mode.
    Aes256Gcm,
    /// ChaCha20-Poly1305 with a 96-bit nonce (RFC 8439).
    ChaCha20Poly1305,
    /// XChaCha20-Poly1305 with a 192-bit nonce (libsodium's `xchacha20poly1305_ietf`).
    XChaCha20Poly1305,
}

impl Method {
    /// Every supported method, classic first.
    pub const ALL: [Method; 8] = [
        Method::Aes128Gcm,
        Method::Aes192Gcm,
        Method::Aes256Gcm,
        Method::ChaCha20IetfPoly1305,
        Method::XChaCha20IetfPoly1305,
        Method::Blake3Aes128Gcm,
        Method::Blake3Aes256Gcm,
        Method::Blake3ChaCha20Poly1305,
    ];

    /// The method's name as written in configs and URIs.
    pub fn name(self) -> &'static str {
        match self {
            Method::Aes128Gcm => "aes-128-gcm",
            Method::Aes192Gcm => "aes-192-gcm",
            Method::Aes256Gcm => "aes-256-gcm",
            Method::ChaCha20IetfPoly1305 => "chacha20-ietf-poly1305",
            Method::XChaCha20IetfPoly1305 => "xchacha20-ietf-poly1305",
            Method::Blake3Aes128Gcm => "2022-blake3-aes-128-gcm",
            Method::Blake3Aes256Gcm => "2022-blake3-aes-256-gcm",
            Method::Blake3ChaCha20Poly1305 => "2022-blake3-chacha20-poly1305",
        }
    }

    /// Which protocol generation the method belongs to.
    pub fn generation(self) -> Generation {
        match self {
            Method::Aes128Gcm
            | Method::Aes192Gcm
            | Method::Aes256Gcm
            | Method::ChaCha20IetfPoly1305
            | Method::XChaCha20IetfPoly1305 => Generation::Classic,
            Method::Blake3Aes128Gcm | Method::Blake3Aes256Gcm | Method::Blake3ChaCha20Poly1305 => {
                Generation::Aead2022
            }
        }
    }

    /// Whether this is an AEAD-2022 method.
    pub fn is_2022(self) -> bool {
        self.generation() == Generation::Aead2022
    }

    /// The AEAD primitive used for TCP chunks (and classic / AES-2022 UDP bodies).
    pub fn algorithm(self) -> Algorithm {
        match self {
            Method::Aes128Gcm | Method::Blake3Aes128Gcm => Algorithm::Aes128Gcm,
            Method::Aes192Gcm => Algorithm::Aes192Gcm,
            Method::Aes256Gcm | Method::Blake3Aes256Gcm => Algorithm::Aes256Gcm,
            Method::ChaCha20IetfPoly1305 | Method::Blake3ChaCha20Poly1305 => Algorithm::ChaCha20Poly1305,
            Method::XChaCha20IetfPoly1305 => Algorithm::XChaCha20Poly1305,
        }
    }

    /// Key length in bytes (also the length of the session subkey).
    pub fn key_len(self) -> usize {
        self.algorithm().key_len()
    }

    /// Salt length in bytes; equal to the key length for every method.
    pub fn salt_len(self) -> usize {
        self.key_len()
    }

    /// AEAD tag length in bytes.
    pub fn tag_len(self) -> usize {
        TAG_LEN
    }

    /// Largest payload one TCP chunk may carry.
    pub fn max_chunk_payload(self) -> usize {
        match self.generation() {
            Generation::Classic => 0x3FFF,
            Generation::Aead2022 => 0xFFFF,
        }
    }
}

impl Algorithm {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Algorithm::Aes128Gcm => 16,
            Algorithm::Aes192Gcm => 24,
            Algorithm::Aes256Gcm | Algorithm::ChaCha20Poly1305 | Algorithm::XChaCha20Poly1305 => 32,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a method name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// The name is not a method we know.
    #[error("unknown method \"{name}\"; supported methods: {}", supported_list())]
    Unknown {
        /// The name as given.
        name: String,
    },
    /// The name is an unauthenticated stream cipher (or no cipher at all).
    #[error(
        "method \"{name}\" is refused: it is an unauthenticated stream cipher, so anyone on the path can \
         modify traffic and replay it, and censors detect it; use 2022-blake3-aes-256-gcm (or \
         chacha20-ietf-poly1305 for older peers)"
    )]
    Insecure {
        /// The name as given.
        name: String,
    },
    /// An AEAD method some peers offer that this implementation does not support.
    #[error(
        "method \"{name}\" is not supported by this implementation; use {suggestion}, which every \
         Shadowsocks implementation speaks"
    )]
    Unsupported {
        /// The name as given.
        name: String,
        /// The closest supported method.
        suggestion: &'static str,
    },
}

fn supported_list() -> String {
    Method::ALL.map(Method::name).join(", ")
}

/// Stream ciphers and pseudo-ciphers from the original protocol, refused on sight.
const INSECURE: &[&str] = &[
    "none",
    "plain",
    "table",
    "rc4",
    "rc4-md5",
    "rc4-md5-6",
    "aes-128-cfb",
    "aes-192-cfb",
    "aes-256-cfb",
    "aes-128-cfb1",
    "aes-192-cfb1",
    "aes-256-cfb1",
    "aes-128-cfb8",
    "aes-192-cfb8",
    "aes-256-cfb8",
    "aes-128-ctr",
    "aes-192-ctr",
    "aes-256-ctr",
    "aes-128-ofb",
    "aes-192-ofb",
    "aes-256-ofb",
    "bf-cfb",
    "camellia-128-cfb",
    "camellia-192-cfb",
    "camellia-256-cfb",
    "cast5-cfb",
    "des-cfb",
    "idea-cfb",
    "rc2-cfb",
    "seed-cfb",
    "salsa20",
    "chacha20",
    "chacha20-ietf",
    "xchacha20",
];

impl FromStr for Method {
    type Err = MethodError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.trim().to_ascii_lowercase();
        if let Some(method) = Method::ALL.into_iter().find(|m| m.name() == lower) {
            return Ok(method);
        }
        let name = name.to_owned();
        if INSECURE.contains(&lower.as_str()) {
            return Err(MethodError::Insecure { name });
        }
        let suggestion = match lower.as_str() {
            "2022-blake3-chacha8-poly1305" => "2022-blake3-chacha20-poly1305",
            _ => return Err(MethodError::Unknown { name }),
        };
        Err(MethodError::Unsupported { name, suggestion })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for method in Method::ALL {
            assert_eq!(method.name().parse::<Method>(), Ok(method));
            assert_eq!(method.to_string(), method.name());
        }
        assert_eq!(" AES-256-GCM ".parse::<Method>(), Ok(Method::Aes256Gcm));
    }

    #[test]
    fn sizes_match_the_specs() {
        let sizes: Vec<_> = Method::ALL.iter().map(|m| (m.key_len(), m.salt_len(), m.tag_len())).collect();
        assert_eq!(
            sizes,
            [
                (16, 16, 16),
                (24, 24, 16),
                (32, 32, 16),
                (32, 32, 16),
                (32, 32, 16),
                (16, 16, 16),
                (32, 32, 16),
                (32, 32, 16)
            ]
        );
        assert_eq!(Method::XChaCha20IetfPoly1305.generation(), Generation::Classic);
        assert_eq!(Method::Aes192Gcm.max_chunk_payload(), 0x3FFF);
        assert_eq!(Method::Aes128Gcm.max_chunk_payload(), 0x3FFF);
        assert_eq!(Method::Blake3Aes128Gcm.max_chunk_payload(), 0xFFFF);
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let err = "aes-999-gcm".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("unknown method \"aes-999-gcm\""), "{err}");
        for method in Method::ALL {
            assert!(err.contains(method.name()), "{err}");
        }
    }

    #[test]
    fn stream_ciphers_are_refused_with_a_reason() {
        for name in ["rc4-md5", "aes-256-cfb", "chacha20", "table", "none", "aes-128-ctr"] {
            let err = name.parse::<Method>().unwrap_err();
            assert!(matches!(err, MethodError::Insecure { .. }), "{name}");
            let text = err.to_string();
            assert!(text.contains("unauthenticated"), "{text}");
            assert!(text.contains("2022-blake3-aes-256-gcm"), "{text}");
        }
    }

    #[test]
    fn peer_only_aead_methods_point_to_an_alternative() {
        let err = "2022-blake3-chacha8-poly1305".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("use 2022-blake3-chacha20-poly1305"), "{err}");
    }

    #[test]
    fn libevs_full_aead_set_is_accepted() {
        assert_eq!("aes-192-gcm".parse::<Method>(), Ok(Method::Aes192Gcm));
        assert_eq!("XChaCha20-IETF-Poly1305".parse::<Method>(), Ok(Method::XChaCha20IetfPoly1305));
    }
}
