//! UDP datagrams: seal and open one packet at a time.
//!
//! Classic AEAD (SIP004), both directions; the address is the target (client to server) or the source
//! of the reply (server to client):
//!
//! ```text
//! +------+-------------------------------------+
//! | salt | seal(address | payload) | tag       |   nonce all zero, subkey from the salt
//! +------+-------------------------------------+
//! ```
//!
//! (`xchacha20-ietf-poly1305` too: its all-zero nonce is 24 bytes long.)
//!
//! AEAD-2022 (SIP022) with AES:
//!
//! ```text
//! +-----------------------------------------+----------------------------------------------+
//! | AES-ECB(psk, session_id u64 | packet_id) | seal(body) | tag                            |
//! +-----------------------------------------+----------------------------------------------+
//!   body = type | timestamp u64 | [client session id, replies] | padding_len u16 | padding
//!          | address | payload
//!   subkey = BLAKE3(psk || session_id), nonce = separate header bytes 4..16
//! ```
//!
//! AEAD-2022 with ChaCha20: `nonce (24) | XChaCha20-Poly1305(psk, nonce, session_id | packet_id | body)`.
//!
//! Replay windows, sessions and NAT tables are the server's policy; this module only does the bytes.

use std::ops::Range;

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};

use crate::cipher::xchacha::XChaChaKey;
use crate::cipher::{open_with_nonce, seal_with_nonce, SealError, NONCE_LEN};
use crate::key::{Key, Salt};
use crate::method::{Generation, Method, TAG_LEN};
use crate::tcp::{MAX_PADDING_LEN, MAX_TIME_SKEW};
use crate::Address;

/// Length of a 2022 AES separate header.
const SEPARATE_HEADER_LEN: usize = 16;
pub use crate::cipher::XNONCE_LEN;
const TYPE_CLIENT: u8 = 0;
const TYPE_SERVER: u8 = 1;

/// Why a datagram did not open. Datagrams that fail are dropped silently by both binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpError {
    /// Too short to hold the headers and a tag.
    #[error("datagram too short")]
    Truncated,
    /// The tag did not verify.
    #[error("authentication failed")]
    AuthFailure,
    /// A 2022 packet of the wrong type (a client packet where a server packet was expected or back).
    #[error("wrong packet type")]
    BadType,
    /// A 2022 timestamp more than 30 s from the receiver's clock.
    #[error("timestamp outside the allowed window")]
    BadTimestamp,
    /// Padding longer than 900 bytes or running past the end.
    #[error("bad padding")]
    BadPadding,
    /// The address is malformed or cut short.
    #[error("bad address")]
    BadAddress,
}

/// Who sent a 2022 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A client (type 0).
    Client,
    /// A server (type 1); its packets name the client session they answer.
    Server {
        /// The client session id this reply belongs to.
        client_session_id: u64,
    },
}

/// Which side a datagram is expected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Packets a client sent (type 0).
    Client,
    /// Packets a server sent (type 1).
    Server,
}

/// The per-packet fields of a 2022 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header2022 {
    /// The sender's session id.
    pub session_id: u64,
    /// The sender's packet counter within the session.
    pub packet_id: u64,
    /// Client or server, with the client session id for server packets.
    pub sender: Sender,
    /// Unix seconds when sealed.
    pub timestamp: u64,
}

/// An opened 2022 datagram: its header, address, and where the payload lies in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened2022 {
    /// Session, packet, sender and timestamp.
    pub header: Header2022,
    /// Target (from a client) or source (from a server).
    pub address: Address,
    /// The payload's range within the opened buffer.
    pub payload: Range<usize>,
}

/// Seals and opens classic (SIP004) datagrams under one key. It cannot be made for a 2022 method, so a
/// datagram of the wrong generation cannot be sealed or opened with it.
#[derive(Clone)]
pub struct UdpClassic {
    method: Method,
    key: Key,
}

impl UdpClassic {
    /// The datagram cipher of a classic method; `None` for a 2022 method.
    pub fn new(method: Method, key: &Key) -> Option<UdpClassic> {
        (method.generation() == Generation::Classic).then(|| UdpClassic { method, key: key.clone() })
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Seals `salt | seal(address | payload)` and appends it to `out`. On an error `out` is left as it
    /// was: the datagram must be dropped.
    pub fn seal(
        &self,
        salt: Salt,
        address: &Address,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let datagram_start = out.len();
        out.extend_from_slice(salt.as_bytes());
        let start = out.len();
        address.write_to(out);
        out.extend_from_slice(payload);
        out.extend_from_slice(&[0; TAG_LEN]);
        let subkey = self.key.session_subkey(self.method, salt.as_bytes());
        let sealed =
            seal_with_nonce(self.method.algorithm(), subkey.as_bytes(), &[0; NONCE_LEN], &mut out[start..]);
        if sealed.is_err() {
            out.truncate(datagram_start);
        }
        sealed
    }

    /// Opens a datagram in place; returns the address and the payload's range in `packet`.
    pub fn open(&self, packet: &mut [u8]) -> Result<(Address, Range<usize>), UdpError> {
        let salt_len = self.method.salt_len();
        if packet.len() < salt_len + TAG_LEN {
            return Err(UdpError::Truncated);
        }
        let (salt, sealed) = packet.split_at_mut(salt_len);
        let subkey = self.key.session_subkey(self.method, salt);
        if !open_with_nonce(self.method.algorithm(), subkey.as_bytes(), &[0; NONCE_LEN], sealed) {
            return Err(UdpError::AuthFailure);
        }
        let body_end = packet.len() - TAG_LEN;
        let (address, used) =
            Address::parse(&packet[salt_len..body_end]).map_err(|_| UdpError::BadAddress)?;
        Ok((address, salt_len + used..body_end))
    }
}

impl std::fmt::Debug for UdpClassic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpClassic").field("method", &self.method).finish_non_exhaustive()
    }
}

/// Seals and opens AEAD-2022 datagrams under one PSK.
pub struct Udp2022 {
    method: Method,
    key: Key,
    block: Block,
    /// A client of a multi-user server (SIP023): the iPSK chain its packets name the key with.
    identity: Option<Box<ClientIdentity>>,
}

/// What a multi-user client adds to each packet: the separate header encrypted with the first iPSK,
/// then one identity header per iPSK.
struct ClientIdentity {
    first: Block,
    keys: Vec<Key>,
}

/// The PSK in the form each variant needs per packet.
enum Block {
    Aes128(Box<aes::Aes128>),
    Aes256(Box<aes::Aes256>),
    XChaCha(Box<XChaChaKey>),
}

impl Udp2022 {
    /// The datagram cipher of a 2022 method; `None` for a classic method.
    pub fn new(method: Method, key: &Key) -> Option<Udp2022> {
        let psk = key.as_bytes();
        let block = match method {
            Method::Blake3Aes128Gcm => Block::Aes128(Box::new(aes::Aes128::new_from_slice(psk).ok()?)),
            Method::Blake3Aes256Gcm => Block::Aes256(Box::new(aes::Aes256::new_from_slice(psk).ok()?)),
            Method::Blake3ChaCha20Poly1305 => Block::XChaCha(Box::new(XChaChaKey::new(psk)?)),
            Method::Aes128Gcm
            | Method::Aes192Gcm
            | Method::Aes256Gcm
            | Method::ChaCha20IetfPoly1305
            | Method::XChaCha20IetfPoly1305 => return None,
        };
        Some(Udp2022 { method, key: key.clone(), block, identity: None })
    }

    /// A client's cipher for a multi-user server (SIP023, AES methods): packets carry the separate
    /// header encrypted with the first of `identity_keys`, one identity header per key naming the next
    /// (the last names `user_key`), and a body under `user_key`, which also opens the server's replies.
    /// With no identity keys this is [`Udp2022::new`]; `None` for a method without identity headers.
    pub fn with_identity(method: Method, identity_keys: &[Key], user_key: &Key) -> Option<Udp2022> {
        let mut cipher = Udp2022::new(method, user_key)?;
        let Some(first) = identity_keys.first() else { return Some(cipher) };
        if !crate::identity::supports_identity_headers(method) {
            return None;
        }
        let first = Udp2022::new(method, first)?.block;
        cipher.identity = Some(Box::new(ClientIdentity { first, keys: identity_keys.to_vec() }));
        Some(cipher)
    }

    /// Server side of SIP023: the plain separate header of a client packet, decrypted with this
    /// cipher's key (the server's iPSK). `None` for the ChaCha20 method and for a short packet.
    pub fn separate_header(&self, packet: &[u8]) -> Option<[u8; SEPARATE_HEADER_LEN]> {
        if matches!(self.block, Block::XChaCha(_)) {
            return None;
        }
        let mut separate: [u8; SEPARATE_HEADER_LEN] = packet.get(..SEPARATE_HEADER_LEN)?.try_into().ok()?;
        self.decrypt_block(&mut separate);
        Some(separate)
    }

    /// Opens a client packet that carries one identity header (SIP023) in place; this cipher's key is
    /// the user's uPSK, `separate` the plain separate header ([`Udp2022::separate_header`] under the
    /// iPSK). AES methods only.
    pub fn open_identified(
        &self,
        packet: &mut [u8],
        separate: &[u8; SEPARATE_HEADER_LEN],
        now: u64,
    ) -> Result<Opened2022, UdpError> {
        let body_start = SEPARATE_HEADER_LEN + crate::identity::IDENTITY_HEADER_LEN;
        if matches!(self.block, Block::XChaCha(_)) || packet.len() < body_start + TAG_LEN {
            return Err(UdpError::Truncated);
        }
        self.open_aes_body(packet, separate, body_start, now, Origin::Client)
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Bytes a sealed packet adds around the address and payload (headers, tag, no padding).
    pub fn overhead(&self) -> usize {
        let body_header = 1 + 8 + 8 + 2 + TAG_LEN;
        match self.block {
            Block::XChaCha(_) => XNONCE_LEN + 16 + body_header,
            _ => {
                let identity = self.identity.as_ref().map_or(0, |identity| identity.keys.len());
                SEPARATE_HEADER_LEN + identity * crate::identity::IDENTITY_HEADER_LEN + body_header
            }
        }
    }

    /// Seals one datagram and appends it to `out`. `nonce` is used by the ChaCha variant only (24 random
    /// bytes per packet); padding is clamped to 900 bytes. On an error `out` is left as it was: the
    /// datagram must be dropped.
    pub fn seal(
        &self,
        header: &Header2022,
        padding: &[u8],
        address: &Address,
        payload: &[u8],
        nonce: &[u8; XNONCE_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let datagram_start = out.len();
        let mut separate = [0u8; SEPARATE_HEADER_LEN];
        separate[..8].copy_from_slice(&header.session_id.to_be_bytes());
        separate[8..].copy_from_slice(&header.packet_id.to_be_bytes());
        let body_start = match &self.block {
            Block::Aes128(_) | Block::Aes256(_) => {
                let mut encrypted = separate;
                match &self.identity {
                    Some(identity) => encrypt_block(&identity.first, &mut encrypted),
                    None => self.encrypt_block(&mut encrypted),
                }
                out.extend_from_slice(&encrypted);
                if let Some(identity) = &self.identity {
                    let nexts = identity.keys.iter().skip(1).chain(std::iter::once(&self.key));
                    for (ipsk, next) in identity.keys.iter().zip(nexts) {
                        if let Some(header) =
                            crate::identity::seal_udp_identity(self.method, ipsk, &separate, next)
                        {
                            out.extend_from_slice(&header);
                        }
                    }
                }
                out.len()
            }
            Block::XChaCha(_) => {
                out.extend_from_slice(nonce);
                let start = out.len();
                out.extend_from_slice(&separate);
                start
            }
        };
        let (packet_type, client_session) = match header.sender {
            Sender::Client => (TYPE_CLIENT, None),
            Sender::Server { client_session_id } => (TYPE_SERVER, Some(client_session_id)),
        };
        out.push(packet_type);
        out.extend_from_slice(&header.timestamp.to_be_bytes());
        if let Some(id) = client_session {
            out.extend_from_slice(&id.to_be_bytes());
        }
        let padding = &padding[..padding.len().min(MAX_PADDING_LEN)];
        out.extend_from_slice(&(padding.len() as u16).to_be_bytes());
        out.extend_from_slice(padding);
        address.write_to(out);
        out.extend_from_slice(payload);
        out.extend_from_slice(&[0; TAG_LEN]);
        let body = &mut out[body_start..];
        let sealed = match &self.block {
            Block::XChaCha(cipher) => {
                let (plaintext, tag_out) = body.split_at_mut(body.len() - TAG_LEN);
                seal_xchacha(cipher, nonce, plaintext, tag_out)
            }
            Block::Aes128(_) | Block::Aes256(_) => {
                let subkey = self.key.blake3_subkey(&separate[..8]);
                let nonce: [u8; NONCE_LEN] = nonce_of(&separate);
                seal_with_nonce(self.method.algorithm(), subkey.as_bytes(), &nonce, body)
            }
        };
        if sealed.is_err() {
            out.truncate(datagram_start);
        }
        sealed
    }

    /// Opens one datagram in place. A server opens packets from [`Origin::Client`], a client those from
    /// [`Origin::Server`] (their client session id is returned, not checked). `now` is Unix seconds.
    pub fn open(&self, packet: &mut [u8], now: u64, origin: Origin) -> Result<Opened2022, UdpError> {
        let (session_id, packet_id, body_start) = match &self.block {
            Block::XChaCha(cipher) => {
                if packet.len() < XNONCE_LEN + 16 + TAG_LEN {
                    return Err(UdpError::Truncated);
                }
                let (nonce, sealed) = packet.split_at_mut(XNONCE_LEN);
                let (body, tag) = sealed.split_at_mut(sealed.len() - TAG_LEN);
                let nonce: &[u8; XNONCE_LEN] = (&*nonce).try_into().map_err(|_| UdpError::Truncated)?;
                if !cipher.open(nonce, body, tag) {
                    return Err(UdpError::AuthFailure);
                }
                let ids = &packet[XNONCE_LEN..XNONCE_LEN + 16];
                (u64_at(ids, 0), u64_at(ids, 8), XNONCE_LEN + 16)
            }
            Block::Aes128(_) | Block::Aes256(_) => {
                if packet.len() < SEPARATE_HEADER_LEN + TAG_LEN {
                    return Err(UdpError::Truncated);
                }
                let mut separate = [0u8; SEPARATE_HEADER_LEN];
                separate.copy_from_slice(&packet[..SEPARATE_HEADER_LEN]);
                self.decrypt_block(&mut separate);
                return self.open_aes_body(packet, &separate, SEPARATE_HEADER_LEN, now, origin);
            }
        };
        self.parse_opened(packet, session_id, packet_id, body_start, now, origin)
    }

    /// The header, address and payload of an opened packet whose body starts at `body_start`.
    fn parse_opened(
        &self,
        packet: &[u8],
        session_id: u64,
        packet_id: u64,
        body_start: usize,
        now: u64,
        origin: Origin,
    ) -> Result<Opened2022, UdpError> {
        let body = &packet[body_start..packet.len() - TAG_LEN];
        let (header, at) = parse_body_header(body, session_id, packet_id, now, origin)?;
        let (address, used) = Address::parse(&body[at..]).map_err(|_| UdpError::BadAddress)?;
        let payload_start = body_start + at + used;
        Ok(Opened2022 { header, address, payload: payload_start..packet.len() - TAG_LEN })
    }

    /// Opens the body of an AES packet that starts at `body_start`, given its plain separate header.
    fn open_aes_body(
        &self,
        packet: &mut [u8],
        separate: &[u8; SEPARATE_HEADER_LEN],
        body_start: usize,
        now: u64,
        origin: Origin,
    ) -> Result<Opened2022, UdpError> {
        let subkey = self.key.blake3_subkey(&separate[..8]);
        let nonce = nonce_of(separate);
        if !open_with_nonce(self.method.algorithm(), subkey.as_bytes(), &nonce, &mut packet[body_start..]) {
            return Err(UdpError::AuthFailure);
        }
        let (session_id, packet_id) = (u64_at(separate, 0), u64_at(separate, 8));
        self.parse_opened(packet, session_id, packet_id, body_start, now, origin)
    }

    fn encrypt_block(&self, block: &mut [u8; 16]) {
        encrypt_block(&self.block, block);
    }

    fn decrypt_block(&self, block: &mut [u8; 16]) {
        match &self.block {
            Block::Aes128(aes) => aes.decrypt_block(block.into()),
            Block::Aes256(aes) => aes.decrypt_block(block.into()),
            Block::XChaCha(_) => {}
        }
    }
}

fn encrypt_block(block_cipher: &Block, block: &mut [u8; 16]) {
    match block_cipher {
        Block::Aes128(aes) => aes.encrypt_block(block.into()),
        Block::Aes256(aes) => aes.encrypt_block(block.into()),
        Block::XChaCha(_) => {}
    }
}

impl std::fmt::Debug for Udp2022 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Udp2022").field("method", &self.method).finish_non_exhaustive()
    }
}

/// `type | timestamp | [client session id] | padding_len | padding`; returns the header and the offset
/// of the address.
fn parse_body_header(
    body: &[u8],
    session_id: u64,
    packet_id: u64,
    now: u64,
    origin: Origin,
) -> Result<(Header2022, usize), UdpError> {
    let from_server = origin == Origin::Server;
    let fixed = if from_server { 1 + 8 + 8 + 2 } else { 1 + 8 + 2 };
    if body.len() < fixed {
        return Err(UdpError::Truncated);
    }
    let expected_type = if from_server { TYPE_SERVER } else { TYPE_CLIENT };
    if body[0] != expected_type {
        return Err(UdpError::BadType);
    }
    let timestamp = u64_at(body, 1);
    if timestamp.abs_diff(now) > MAX_TIME_SKEW {
        return Err(UdpError::BadTimestamp);
    }
    let sender =
        if from_server { Sender::Server { client_session_id: u64_at(body, 9) } } else { Sender::Client };
    let padding_len = usize::from(u16::from_be_bytes([body[fixed - 2], body[fixed - 1]]));
    if padding_len > MAX_PADDING_LEN || fixed + padding_len > body.len() {
        return Err(UdpError::BadPadding);
    }
    Ok((Header2022 { session_id, packet_id, sender, timestamp }, fixed + padding_len))
}

fn nonce_of(separate: &[u8; SEPARATE_HEADER_LEN]) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&separate[4..]);
    nonce
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut value = [0u8; 8];
    value.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(value)
}

/// The XChaCha20-Poly1305 seal of 2022 ChaCha datagrams, failing closed like the other seals (the
/// backends refuse only bodies beyond 2^36 bytes; datagrams are at most 64 KiB).
fn seal_xchacha(
    cipher: &XChaChaKey,
    nonce: &[u8; XNONCE_LEN],
    plaintext: &mut [u8],
    tag_out: &mut [u8],
) -> Result<(), SealError> {
    #[cfg(test)]
    if crate::cipher::failing_seals::active() {
        return Err(SealError::Backend);
    }
    if cipher.seal(nonce, plaintext, tag_out) {
        Ok(())
    } else {
        Err(SealError::Backend)
    }
}

#[cfg(test)]
mod tests;
