//! SIP023 extensible identity headers (AEAD-2022 AES methods only) and the user-key search helpers of a
//! multi-user server.
//!
//! A server with several users on one port keeps one identity PSK (iPSK, its `password`) and a user PSK
//! (uPSK) per user. The client names its user in a 16-byte block that only the server can read:
//!
//! ```text
//! TCP request:  salt | EIH | seal(fixed header) | ...          (everything after EIH under the uPSK)
//!   identity_subkey = BLAKE3::derive_key("shadowsocks 2022 identity subkey", iPSK || salt)[..key_len]
//!   EIH             = AES-ECB(identity_subkey, BLAKE3(uPSK)[..16])
//!
//! UDP request:  AES-ECB(iPSK, session_id | packet_id) | EIH | seal(body)   (body under the uPSK)
//!   EIH             = AES-ECB(iPSK, BLAKE3(uPSK)[..16] XOR (session_id | packet_id))
//! ```
//!
//! Responses carry no identity header and use the user's key throughout. A client with a chain
//! `iPSK_1:...:iPSK_n:uPSK` sends one header per iPSK, each naming the next key; a server reads only the
//! first (its own iPSK), so [`UserHash`] of the next key is what it looks up.
//!
//! The ChaCha20 2022 method and classic AEAD have no identity header: a server tries the users' keys on
//! the first record instead ([`first_record_opens`]).

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};

use crate::cipher::SessionCipher;
use crate::key::Key;
use crate::method::{Generation, Method, TAG_LEN};

/// Length of one identity header.
pub const IDENTITY_HEADER_LEN: usize = 16;

const IDENTITY_CONTEXT: &str = "shadowsocks 2022 identity subkey";

/// The first 16 bytes of BLAKE3(uPSK): what an identity header carries, and what a server looks users
/// up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserHash(pub [u8; 16]);

impl UserHash {
    /// The hash of `key` (a uPSK, or the next iPSK of a chain).
    pub fn of(key: &Key) -> UserHash {
        let hash = blake3::hash(key.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&hash.as_bytes()[..16]);
        UserHash(first)
    }
}

impl std::fmt::Debug for UserHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserHash(")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, ")")
    }
}

/// Whether `method` can carry identity headers (the AES 2022 methods).
pub fn supports_identity_headers(method: Method) -> bool {
    matches!(method, Method::Blake3Aes128Gcm | Method::Blake3Aes256Gcm)
}

/// The TCP identity header naming `next` for a stream with `salt`, under `ipsk`. `None` if the method
/// has no identity headers.
pub fn seal_tcp_identity(method: Method, ipsk: &Key, salt: &[u8], next: &Key) -> Option<[u8; 16]> {
    let cipher = Ecb::new(method, identity_subkey(ipsk, salt).as_bytes())?;
    let mut block = UserHash::of(next).0;
    cipher.encrypt(&mut block);
    Some(block)
}

/// Reads a TCP identity header: the hash of the key it names. `None` if the method has none.
pub fn open_tcp_identity(method: Method, ipsk: &Key, salt: &[u8], header: &[u8; 16]) -> Option<UserHash> {
    let cipher = Ecb::new(method, identity_subkey(ipsk, salt).as_bytes())?;
    let mut block = *header;
    cipher.decrypt(&mut block);
    Some(UserHash(block))
}

/// The UDP identity header naming `next`, for the packet whose plain separate header is `separate`.
pub fn seal_udp_identity(method: Method, ipsk: &Key, separate: &[u8; 16], next: &Key) -> Option<[u8; 16]> {
    let cipher = Ecb::new(method, ipsk.as_bytes())?;
    let mut block = UserHash::of(next).0;
    block.iter_mut().zip(separate).for_each(|(byte, mask)| *byte ^= mask);
    cipher.encrypt(&mut block);
    Some(block)
}

/// Reads a UDP identity header given the packet's plain separate header.
pub fn open_udp_identity(
    method: Method,
    ipsk: &Key,
    separate: &[u8; 16],
    header: &[u8; 16],
) -> Option<UserHash> {
    let cipher = Ecb::new(method, ipsk.as_bytes())?;
    let mut block = *header;
    cipher.decrypt(&mut block);
    block.iter_mut().zip(separate).for_each(|(byte, mask)| *byte ^= mask);
    Some(UserHash(block))
}

/// How many bytes of a client stream a trial needs: the salt and the first sealed record (classic: the
/// length; 2022: the fixed request header).
pub fn first_record_len(method: Method) -> usize {
    let record = match method.generation() {
        Generation::Classic => 2,
        Generation::Aead2022 => super::tcp::REQUEST_FIXED_LEN,
    };
    method.salt_len() + record + TAG_LEN
}

/// Whether `head` (at least [`first_record_len`] bytes: salt and first record) authenticates under
/// `key`. `head` is not changed: the record is opened in a copy. This only proves the key; the
/// decryptor made with it checks the record's content (length limit, type, timestamp) again.
pub fn first_record_opens(method: Method, key: &Key, head: &[u8]) -> bool {
    let salt_len = method.salt_len();
    let Some(record) = head.get(salt_len..first_record_len(method)) else { return false };
    let mut copy = [0u8; 64];
    let Some(copy) = copy.get_mut(..record.len()) else { return false };
    copy.copy_from_slice(record);
    let subkey = key.session_subkey(method, &head[..salt_len]);
    let mut cipher = SessionCipher::new(method.algorithm(), subkey.as_bytes());
    cipher.open(copy).is_ok()
}

/// `BLAKE3::derive_key("shadowsocks 2022 identity subkey", iPSK || salt)`, as long as the iPSK.
fn identity_subkey(ipsk: &Key, salt: &[u8]) -> Key {
    let mut hasher = blake3::Hasher::new_derive_key(IDENTITY_CONTEXT);
    hasher.update(ipsk.as_bytes());
    hasher.update(salt);
    let mut bytes = [0u8; 32];
    hasher.finalize_xof().fill(&mut bytes[..ipsk.len()]);
    let key = Key::from_raw(&bytes[..ipsk.len()]);
    zeroize::Zeroize::zeroize(&mut bytes);
    key
}

/// One AES block cipher of the method's key size. It lives on the stack for one block, so the size
/// difference of the variants costs nothing a box would save.
#[allow(clippy::large_enum_variant)]
enum Ecb {
    Aes128(aes::Aes128),
    Aes256(aes::Aes256),
}

impl Ecb {
    fn new(method: Method, key: &[u8]) -> Option<Ecb> {
        match method {
            Method::Blake3Aes128Gcm => aes::Aes128::new_from_slice(key).ok().map(Ecb::Aes128),
            Method::Blake3Aes256Gcm => aes::Aes256::new_from_slice(key).ok().map(Ecb::Aes256),
            _ => None,
        }
    }

    fn encrypt(&self, block: &mut [u8; 16]) {
        match self {
            Ecb::Aes128(aes) => aes.encrypt_block(block.into()),
            Ecb::Aes256(aes) => aes.encrypt_block(block.into()),
        }
    }

    fn decrypt(&self, block: &mut [u8; 16]) {
        match self {
            Ecb::Aes128(aes) => aes.decrypt_block(block.into()),
            Ecb::Aes256(aes) => aes.decrypt_block(block.into()),
        }
    }
}

#[cfg(test)]
mod tests;
