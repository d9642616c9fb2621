//! TCP stream framing: one [`Encryptor`] and one [`Decryptor`] per direction.
//!
//! Classic AEAD (SIP004), either direction:
//!
//! ```text
//! +------+--------------------------+---------------------------+-----
//! | salt | seal(len u16 BE) | tag   | seal(payload) | tag       | ...  len in 1..=0x3FFF
//! +------+--------------------------+---------------------------+-----
//! ```
//!
//! The first payload of a request starts with the target [`Address`](crate::Address).
//!
//! AEAD-2022 (SIP022) request and response:
//!
//! ```text
//! request:  salt | seal(type 0 | timestamp u64 | len u16)
//!                | seal(address | padding_len u16 | padding | initial payload)   (len bytes)
//!                | seal(len) | seal(payload) | ...                              len in 1..=0xFFFF
//! response: salt | seal(type 1 | timestamp u64 | request salt | len u16)
//!                | seal(first payload)                                          (len bytes)
//!                | seal(len) | seal(payload) | ...
//! ```
//!
//! Both types are state machines over byte buffers: no I/O, no clock and no randomness of their own.
//! The caller hands in the salt, the padding and the current Unix time, so every byte is reproducible.

mod decrypt;
mod encrypt;

pub use decrypt::{Decoded, DecryptError, Decryptor};
pub use encrypt::Encryptor;

/// Type byte of a 2022 request header.
const TYPE_REQUEST: u8 = 0;
/// Type byte of a 2022 response header.
const TYPE_RESPONSE: u8 = 1;
/// SIP022's maximum padding length.
pub const MAX_PADDING_LEN: usize = 900;
/// Largest allowed difference between a 2022 header's timestamp and the receiver's clock, in seconds.
pub const MAX_TIME_SKEW: u64 = 30;
/// Plaintext length of a 2022 request's fixed header: type, timestamp, length.
pub(crate) const REQUEST_FIXED_LEN: usize = 1 + 8 + 2;
/// Length of a sealed length record.
const LENGTH_RECORD_LEN: usize = 2 + crate::TAG_LEN;
/// Room a chunk sealed in place needs before its payload: the sealed length record
/// ([`Encryptor::seal_chunk_in_place`]).
pub const CHUNK_HEAD: usize = LENGTH_RECORD_LEN;
/// Room a chunk sealed in place needs after its payload: the payload record's tag.
pub const CHUNK_TAIL: usize = crate::TAG_LEN;

/// Plaintext length of a 2022 response's fixed header: type, timestamp, request salt, length.
fn response_fixed_len(salt_len: usize) -> usize {
    1 + 8 + salt_len + 2
}

/// The most ciphertext one record of this method can need at once: the largest sealed payload or
/// 2022 header. A reader whose buffer holds this much plus a salt never stalls.
pub fn max_record_len(method: crate::Method) -> usize {
    method.max_chunk_payload() + crate::TAG_LEN
}

#[cfg(test)]
mod tests;
