//! The sending half of a stream: turns payload into sealed records.

use super::{CHUNK_HEAD, CHUNK_TAIL, MAX_PADDING_LEN, TYPE_REQUEST, TYPE_RESPONSE};
use crate::cipher::{SealError, SessionCipher};
use crate::key::{Key, Salt};
use crate::method::{Generation, Method, TAG_LEN};
use crate::Address;

/// Seals one direction of a TCP stream.
///
/// The first call to [`Encryptor::encrypt`] that has something to send also emits the salt and the
/// header, so salt, header and first payload leave in one write (shadowsocks-rust's 2022 server needs
/// them in its first read). A zero-length chunk is never produced: libev aborts on one.
pub struct Encryptor {
    method: Method,
    salt: Salt,
    cipher: SessionCipher,
    pending: Option<FirstFlight>,
    /// Set by the first failed seal: the stream cannot go on (a record is missing), so every later call
    /// fails too.
    failed: Option<SealError>,
}

/// What the first record(s) carry besides payload.
enum FirstFlight {
    /// A client stream: the plaintext that precedes the first payload (classic: the address;
    /// 2022: address, padding length and padding). 2022 adds the fixed header in front.
    /// `padded` says whether a 2022 prefix ends in non-empty padding.
    Request { prefix: Vec<u8>, padded: bool, identity: Vec<u8> },
    /// A server stream: classic has no header at all; 2022 echoes the request salt.
    Response { request_salt: Salt },
}

impl Encryptor {
    /// The client-to-server direction: `target` goes in front of the first payload.
    ///
    /// `padding` is used by 2022 methods only (at most 900 bytes are taken). SIP022 requires padding
    /// when the first write carries no payload; if the caller gave none, one byte is used.
    pub fn request(method: Method, key: &Key, salt: Salt, target: &Address, padding: &[u8]) -> Encryptor {
        let mut prefix = Vec::with_capacity(target.encoded_len() + 2 + padding.len());
        target.write_to(&mut prefix);
        let padding = &padding[..padding.len().min(MAX_PADDING_LEN)];
        if method.generation() == Generation::Aead2022 {
            prefix.extend_from_slice(&(padding.len() as u16).to_be_bytes());
            prefix.extend_from_slice(padding);
        }
        let padded = !padding.is_empty();
        Encryptor::new(method, key, salt, FirstFlight::Request { prefix, padded, identity: Vec::new() })
    }

    /// A client stream to a multi-user server (SIP023, AES 2022 methods): after the salt, one identity
    /// header per key of `identity_keys` (the iPSK chain), each naming the next key, the last naming
    /// `user_key`, which seals the stream. With no identity keys this is [`Encryptor::request`]; a
    /// method without identity headers ignores them.
    pub fn request_with_identity(
        method: Method,
        identity_keys: &[Key],
        user_key: &Key,
        salt: Salt,
        target: &Address,
        padding: &[u8],
    ) -> Encryptor {
        let mut encryptor = Encryptor::request(method, user_key, salt, target, padding);
        if let Some(FirstFlight::Request { identity, .. }) = &mut encryptor.pending {
            let nexts = identity_keys.iter().skip(1).chain(std::iter::once(user_key));
            for (ipsk, next) in identity_keys.iter().zip(nexts) {
                if let Some(header) = crate::identity::seal_tcp_identity(method, ipsk, salt.as_bytes(), next)
                {
                    identity.extend_from_slice(&header);
                }
            }
        }
        encryptor
    }

    /// The server-to-client direction. `request_salt` is the salt of the client's stream, which 2022
    /// responses echo (classic ignores it).
    pub fn response(method: Method, key: &Key, salt: Salt, request_salt: Salt) -> Encryptor {
        Encryptor::new(method, key, salt, FirstFlight::Response { request_salt })
    }

    fn new(method: Method, key: &Key, salt: Salt, pending: FirstFlight) -> Encryptor {
        let subkey = key.session_subkey(method, salt.as_bytes());
        let cipher = SessionCipher::new(method.algorithm(), subkey.as_bytes());
        Encryptor { method, salt, cipher, pending: Some(pending), failed: None }
    }

    /// This stream's salt (the server remembers its own salts to refuse them if replayed back).
    pub fn salt(&self) -> Salt {
        self.salt
    }

    /// Whether the salt and header have been emitted.
    pub fn header_sent(&self) -> bool {
        self.pending.is_none()
    }

    /// The most payload one chunk carries (0x3FFF classic, 0xFFFF 2022).
    pub fn max_chunk_payload(&self) -> usize {
        self.method.max_chunk_payload()
    }

    /// The most bytes [`Encryptor::encrypt`] appends for `payload_len` bytes of payload.
    pub fn max_output_len(&self, payload_len: usize) -> usize {
        let chunks = payload_len / self.method.max_chunk_payload() + 2;
        let identity = match &self.pending {
            Some(FirstFlight::Request { identity, .. }) => identity.len(),
            _ => 0,
        };
        let header = self.method.salt_len() + identity + 512 + MAX_PADDING_LEN + 2 * TAG_LEN;
        payload_len + chunks * (2 + 2 * TAG_LEN) + header
    }

    /// Seals `payload` and appends the records to `out`. `now` (Unix seconds) is only read for the
    /// timestamp of a 2022 header.
    ///
    /// An empty `payload` emits nothing, except on a request that has not sent its header yet: then the
    /// header goes out alone (an address-only first chunk, as shadowsocks-libev's client sends).
    ///
    /// On an error `out` is left as it was (no record of this call in it, sealed or not) and the
    /// encryptor refuses every later call: the stream must end.
    pub fn encrypt(&mut self, payload: &[u8], now: u64, out: &mut Vec<u8>) -> Result<(), SealError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let start = out.len();
        let sealed = self.encrypt_records(payload, now, out);
        if let Err(error) = sealed {
            out.truncate(start);
            self.failed = Some(error);
        }
        sealed
    }

    /// Seals one chunk where it lies, for a stream whose header is out: `slot` is [`CHUNK_HEAD`] bytes
    /// of room, then 1 to [`Encryptor::max_chunk_payload`] bytes of payload, then [`CHUNK_TAIL`] bytes
    /// of room. Afterwards `slot` holds the sealed length record and payload record, exactly the bytes
    /// [`Encryptor::encrypt`] would have appended for that payload, so a reader can read payload into
    /// slots laid end to end and send the sealed chunks without copying them.
    ///
    /// Errors (the stream must end, as for [`Encryptor::encrypt`]): the header has not been sent
    /// ([`SealError::HeaderPending`]), the payload is empty or too long ([`SealError::BadChunk`]), or the
    /// seal failed; every later call fails too. On an error `slot` must not be sent.
    pub fn seal_chunk_in_place(&mut self, slot: &mut [u8]) -> Result<(), SealError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let payload_len = slot.len().saturating_sub(CHUNK_HEAD + CHUNK_TAIL);
        let sealed = if self.pending.is_some() {
            Err(SealError::HeaderPending)
        } else if payload_len == 0 || payload_len > self.method.max_chunk_payload() {
            Err(SealError::BadChunk)
        } else {
            let (length, payload) = slot.split_at_mut(CHUNK_HEAD);
            length[..2].copy_from_slice(&(payload_len as u16).to_be_bytes());
            self.cipher.seal(length).and_then(|()| self.cipher.seal(payload))
        };
        if let Err(error) = sealed {
            self.failed = Some(error);
        }
        sealed
    }

    fn encrypt_records(&mut self, payload: &[u8], now: u64, out: &mut Vec<u8>) -> Result<(), SealError> {
        let rest = match self.pending.take() {
            Some(first) => match self.encrypt_first(first, payload, now, out)? {
                Some(consumed) => &payload[consumed..],
                None => return Ok(()),
            },
            None => payload,
        };
        for piece in rest.chunks(self.method.max_chunk_payload()) {
            self.seal_chunk(&[piece], out)?;
        }
        Ok(())
    }

    /// Emits salt, header and as much payload as fits the first record; returns how much payload it
    /// took, or `None` (header kept pending) for a response with nothing to send yet.
    fn encrypt_first(
        &mut self,
        first: FirstFlight,
        payload: &[u8],
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, SealError> {
        let max = self.method.max_chunk_payload();
        match (first, self.method.generation()) {
            (FirstFlight::Response { request_salt }, _) if payload.is_empty() => {
                self.pending = Some(FirstFlight::Response { request_salt });
                Ok(None)
            }
            (FirstFlight::Response { .. }, Generation::Classic) => {
                out.extend_from_slice(self.salt.as_bytes());
                Ok(Some(0))
            }
            (FirstFlight::Request { prefix, .. }, Generation::Classic) => {
                out.extend_from_slice(self.salt.as_bytes());
                let taken = payload.len().min(max - prefix.len());
                self.seal_chunk(&[&prefix, &payload[..taken]], out)?;
                Ok(Some(taken))
            }
            (FirstFlight::Request { mut prefix, padded, identity }, Generation::Aead2022) => {
                if payload.is_empty() && !padded {
                    // The unpadded prefix ends in padding_len 0: make it 1 and add one byte.
                    let at = prefix.len() - 2;
                    prefix[at..].copy_from_slice(&1u16.to_be_bytes());
                    prefix.push(0);
                }
                let taken = payload.len().min(max - prefix.len());
                let header_len = (prefix.len() + taken) as u16;
                out.extend_from_slice(self.salt.as_bytes());
                out.extend_from_slice(&identity);
                let timestamp = now.to_be_bytes();
                self.seal_record(&[&[TYPE_REQUEST], &timestamp, &header_len.to_be_bytes()], out)?;
                self.seal_record(&[&prefix, &payload[..taken]], out)?;
                Ok(Some(taken))
            }
            (FirstFlight::Response { request_salt }, Generation::Aead2022) => {
                let taken = payload.len().min(max);
                let len = (taken as u16).to_be_bytes();
                out.extend_from_slice(self.salt.as_bytes());
                let timestamp = now.to_be_bytes();
                self.seal_record(&[&[TYPE_RESPONSE], &timestamp, request_salt.as_bytes(), &len], out)?;
                self.seal_record(&[&payload[..taken]], out)?;
                Ok(Some(taken))
            }
        }
    }

    /// A length record followed by a payload record.
    fn seal_chunk(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), SealError> {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        self.seal_record(&[&(len as u16).to_be_bytes()], out)?;
        self.seal_record(parts, out)
    }

    /// Appends `parts` and a tag to `out`, then seals them in place.
    fn seal_record(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), SealError> {
        let start = out.len();
        for part in parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&[0; TAG_LEN]);
        self.cipher.seal(&mut out[start..])
    }
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("method", &self.method)
            .field("salt", &self.salt)
            .field("header_sent", &self.header_sent())
            .finish_non_exhaustive()
    }
}
