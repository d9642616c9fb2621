//! The receiving half of a stream: opens sealed records in place and checks the headers.

use std::ops::Range;

use super::{
    response_fixed_len, LENGTH_RECORD_LEN, MAX_PADDING_LEN, MAX_TIME_SKEW, REQUEST_FIXED_LEN, TYPE_REQUEST,
    TYPE_RESPONSE,
};
use crate::cipher::{OpenError, SessionCipher};
use crate::key::{Key, Salt};
use crate::method::{Generation, Method, TAG_LEN};
use crate::{Address, AddressError};

/// Why a stream was rejected. The variants exist for logs and tests; none says more than its name
/// (an authentication failure carries no hint of where it failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// A record's tag did not verify.
    #[error("authentication failed")]
    AuthFailure,
    /// The stream ended inside the salt, a header or a chunk.
    #[error("stream ended inside a record")]
    Truncated,
    /// A classic length field above 0x3FFF.
    #[error("chunk length above the limit")]
    LengthTooLarge,
    /// A length field of 0 (peers never send one; libev aborts on it).
    #[error("zero-length chunk")]
    ZeroLengthChunk,
    /// A 2022 header of the wrong type (a response sent as a request or the other way round).
    #[error("wrong header type")]
    BadType,
    /// A 2022 header timestamp more than 30 s away from the receiver's clock.
    #[error("timestamp outside the allowed window")]
    BadTimestamp,
    /// A 2022 response that does not echo our request's salt.
    #[error("response is for another request")]
    SaltMismatch,
    /// A 2022 request header with neither initial payload nor padding.
    #[error("request header has neither payload nor padding")]
    NoPayloadNoPadding,
    /// A 2022 request header with more than 900 bytes of padding.
    #[error("padding too long")]
    PaddingTooLong,
    /// The 2022 address or padding does not fit inside the header chunk.
    #[error("header extends beyond its chunk")]
    HeaderBeyondChunk,
    /// The target address is malformed (unknown type, empty or non-UTF-8 name, cut short).
    #[error("bad target address")]
    BadAddress,
    /// The nonce counter would wrap (after 2^96 records).
    #[error("nonce counter exhausted")]
    NonceExhausted,
}

/// What one call to [`Decryptor::decrypt`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input that were used up; drop them before the next call.
    pub consumed: usize,
    /// The target address, once, from a request's first record.
    pub target: Option<Address>,
    /// Where the plaintext payload lies within the input (empty when more input is needed).
    pub payload: Range<usize>,
}

/// Opens one direction of a TCP stream.
///
/// Feed it the bytes received so far; it opens whole records in place and says how many bytes it used.
/// Nothing is delivered from a record whose tag has not verified. After an error every later call
/// returns the same error.
pub struct Decryptor {
    method: Method,
    key: Key,
    role: Role,
    state: State,
    /// Bytes of SIP023 identity header between the salt and the first record (0 or 16); the server
    /// has already read it to choose `key`.
    identity_len: u8,
    /// AEAD-2022: the peer's header timestamp minus our clock, in seconds (saturated), once its fixed
    /// header authenticated, whether or not it was within the window ([`Decryptor::peer_clock_skew`]).
    peer_skew: Option<i32>,
}

/// Which direction this decryptor reads, and what that direction must carry.
#[derive(Clone, Copy)]
enum Role {
    /// Client to server: a target address (and for 2022 a type-0 header) comes first.
    Request { target_pending: bool },
    /// Server to client; 2022 responses must echo this salt.
    Response { request_salt: Salt },
}

/// Where the stream is. The salt is kept from the moment it arrives, but only the states after the first
/// record authenticated offer it ([`Decryptor::authenticated_salt`]).
enum State {
    /// Waiting for the peer's salt.
    Salt,
    /// The salt arrived; the record after it (2022: the fixed header, classic: the first length) has not
    /// authenticated yet, so the salt proves nothing.
    FirstRecord { cipher: SessionCipher, salt: Salt },
    /// Between records of an authenticated stream: a length record comes next.
    Length { cipher: SessionCipher, salt: Salt },
    /// A payload record (or a request's first chunk) of `len` bytes comes next.
    Payload { cipher: SessionCipher, salt: Salt, len: usize, kind: PayloadKind },
    /// Every later call repeats this error; a failed stream offers no salt.
    Failed(DecryptError),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PayloadKind {
    /// Plain payload.
    Data,
    /// Classic request's first chunk: address, then payload.
    ClassicFirst,
    /// 2022 request's variable header: address, padding length, padding, payload.
    VariableHeader,
}

impl Decryptor {
    /// Reads a client's stream (server side).
    pub fn request(method: Method, key: &Key) -> Decryptor {
        Decryptor::new(method, key, Role::Request { target_pending: true })
    }

    /// Reads a client's stream that carries a SIP023 identity header after its salt (server side, AES
    /// 2022 methods): the header is skipped (the caller read it to find the user) and `user_key`, the
    /// user's uPSK, opens everything else.
    pub fn request_identified(method: Method, user_key: &Key) -> Decryptor {
        let mut decryptor = Decryptor::request(method, user_key);
        decryptor.identity_len = crate::identity::IDENTITY_HEADER_LEN as u8;
        decryptor
    }

    /// Reads the server's answer to our request whose salt was `request_salt` (client side).
    pub fn response(method: Method, key: &Key, request_salt: Salt) -> Decryptor {
        Decryptor::new(method, key, Role::Response { request_salt })
    }

    fn new(method: Method, key: &Key, role: Role) -> Decryptor {
        Decryptor { method, key: key.clone(), role, state: State::Salt, identity_len: 0, peer_skew: None }
    }

    /// The peer's salt, once the first record after it has authenticated (the moment it may go into a
    /// replay filter: an unauthenticated salt proves nothing).
    pub fn authenticated_salt(&self) -> Option<Salt> {
        match self.state {
            State::Length { salt, .. } | State::Payload { salt, .. } => Some(salt),
            State::Salt | State::FirstRecord { .. } | State::Failed(_) => None,
        }
    }

    /// AEAD-2022: how far the peer's clock is from ours (its header timestamp minus the `now` given, in
    /// seconds), known once the first header authenticated; also after it was refused as
    /// [`DecryptError::BadTimestamp`], which is when it matters (clock-skew diagnostics). `None` for
    /// classic methods and before the header.
    pub fn peer_clock_skew(&self) -> Option<i64> {
        self.peer_skew.map(i64::from)
    }

    /// The least number of bytes the next call needs to make progress, counted from the first
    /// unconsumed byte. A buffer of [`super::max_record_len`] plus the salt length always suffices.
    pub fn wanted(&self) -> usize {
        match &self.state {
            State::Salt => self.method.salt_len() + usize::from(self.identity_len),
            State::FirstRecord { .. } => match self.method.generation() {
                Generation::Classic => LENGTH_RECORD_LEN,
                Generation::Aead2022 => self.fixed_header_len() + TAG_LEN,
            },
            State::Length { .. } => LENGTH_RECORD_LEN,
            State::Payload { len, .. } => len + TAG_LEN,
            State::Failed(_) => 0,
        }
    }

    /// Opens as many records of `input` as it takes to deliver the next payload, in place.
    ///
    /// Returns the bytes consumed and the payload's range in `input` (empty when more input is needed).
    /// `now` is the receiver's clock in Unix seconds, read only for 2022 headers.
    pub fn decrypt(&mut self, input: &mut [u8], now: u64) -> Result<Decoded, DecryptError> {
        let mut consumed = 0;
        loop {
            let rest = &mut input[consumed..];
            // A failed decryptor wants 0 bytes, so it always reaches `step`, which repeats the error.
            if rest.len() < self.wanted() {
                return Ok(Decoded { consumed, target: None, payload: consumed..consumed });
            }
            let step = self.step(rest, now);
            let step = match step {
                Ok(step) => step,
                Err(error) => {
                    self.state = State::Failed(error);
                    return Err(error);
                }
            };
            let start = consumed;
            consumed += step.used;
            if let Some(payload) = step.payload {
                let payload = start + payload.start..start + payload.end;
                return Ok(Decoded { consumed, target: step.target, payload });
            }
        }
    }

    /// Checks the end of the stream: an error if it stopped inside a record (`leftover` unconsumed bytes)
    /// or before a request's target arrived.
    pub fn finish(&self, leftover: usize) -> Result<(), DecryptError> {
        let target_pending = matches!(self.role, Role::Request { target_pending: true });
        let classic = self.method.generation() == Generation::Classic;
        match &self.state {
            State::Failed(error) => Err(*error),
            _ if leftover > 0 => Err(DecryptError::Truncated),
            State::Salt => Ok(()),
            // Between records. A classic stream is between records right after its salt too (a 2022
            // one owes its fixed header); a request must have delivered its target first.
            State::Length { .. } if !target_pending => Ok(()),
            State::FirstRecord { .. } if classic && !target_pending => Ok(()),
            _ => Err(DecryptError::Truncated),
        }
    }

    fn fixed_header_len(&self) -> usize {
        match self.role {
            Role::Request { .. } => REQUEST_FIXED_LEN,
            Role::Response { .. } => response_fixed_len(self.method.salt_len()),
        }
    }

    /// Handles exactly one record (or the salt); `input` holds at least `wanted()` bytes.
    fn step(&mut self, input: &mut [u8], now: u64) -> Result<Step, DecryptError> {
        let wanted = self.wanted();
        let record = &mut input[..wanted];
        match std::mem::replace(&mut self.state, State::Failed(DecryptError::Truncated)) {
            State::Failed(error) => Err(error),
            State::Salt => {
                // `record` is one salt (and the identity header, already read) long: this cannot fail.
                let record = &record[..self.method.salt_len()];
                let salt = Salt::from_slice(self.method, record).ok_or(DecryptError::Truncated)?;
                let subkey = self.key.session_subkey(self.method, record);
                let cipher = SessionCipher::new(self.method.algorithm(), subkey.as_bytes());
                self.state = State::FirstRecord { cipher, salt };
                Ok(Step::used(wanted))
            }
            State::FirstRecord { mut cipher, salt } => {
                open(&mut cipher, record)?;
                let (len, kind) = match self.method.generation() {
                    // Authentic means fresh too: a stale header must not reach a replay filter.
                    Generation::Aead2022 => {
                        let header = &record[..wanted - TAG_LEN];
                        self.peer_skew = Some(timestamp_skew(header, now));
                        self.check_fixed_header(header, now)?
                    }
                    Generation::Classic => self.check_length(record)?,
                };
                self.state = State::Payload { cipher, salt, len, kind };
                Ok(Step::used(wanted))
            }
            State::Length { mut cipher, salt } => {
                open(&mut cipher, record)?;
                let (len, kind) = self.check_length(record)?;
                self.state = State::Payload { cipher, salt, len, kind };
                Ok(Step::used(wanted))
            }
            State::Payload { mut cipher, salt, len, kind } => {
                open(&mut cipher, record)?;
                let plaintext = &record[..len];
                let step = match kind {
                    PayloadKind::Data => Step { used: wanted, target: None, payload: Some(0..len) },
                    PayloadKind::ClassicFirst => {
                        let (target, at) = Address::parse(plaintext).map_err(|_| DecryptError::BadAddress)?;
                        Step { used: wanted, target: Some(target), payload: Some(at..len) }
                    }
                    PayloadKind::VariableHeader => {
                        let (target, at) = parse_variable_header(plaintext)?;
                        Step { used: wanted, target: Some(target), payload: Some(at..len) }
                    }
                };
                if step.target.is_some() {
                    self.role = Role::Request { target_pending: false };
                }
                self.state = State::Length { cipher, salt };
                Ok(step)
            }
        }
    }

    /// Validates an opened classic length record; returns the length and kind of the record that follows.
    fn check_length(&self, record: &[u8]) -> Result<(usize, PayloadKind), DecryptError> {
        let len = usize::from(u16::from_be_bytes([record[0], record[1]]));
        if len > self.method.max_chunk_payload() {
            return Err(DecryptError::LengthTooLarge);
        }
        if len == 0 {
            return Err(DecryptError::ZeroLengthChunk);
        }
        let kind = match self.role {
            Role::Request { target_pending: true } => PayloadKind::ClassicFirst,
            _ => PayloadKind::Data,
        };
        Ok((len, kind))
    }

    /// Validates a 2022 fixed header (authenticated); returns the length and kind of the record that
    /// follows.
    fn check_fixed_header(&self, header: &[u8], now: u64) -> Result<(usize, PayloadKind), DecryptError> {
        let (expected_type, kind) = match self.role {
            Role::Request { .. } => (TYPE_REQUEST, PayloadKind::VariableHeader),
            Role::Response { .. } => (TYPE_RESPONSE, PayloadKind::Data),
        };
        if header[0] != expected_type {
            return Err(DecryptError::BadType);
        }
        if header_timestamp(header).abs_diff(now) > MAX_TIME_SKEW {
            return Err(DecryptError::BadTimestamp);
        }
        if let Role::Response { request_salt } = self.role {
            if &header[9..header.len() - 2] != request_salt.as_bytes() {
                return Err(DecryptError::SaltMismatch);
            }
        }
        let len = u16::from_be_bytes([header[header.len() - 2], header[header.len() - 1]]);
        if len == 0 {
            return Err(DecryptError::ZeroLengthChunk);
        }
        Ok((usize::from(len), kind))
    }
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("method", &self.method)
            .field("authenticated", &self.authenticated_salt().is_some())
            .finish_non_exhaustive()
    }
}

/// The outcome of one record.
struct Step {
    used: usize,
    target: Option<Address>,
    payload: Option<Range<usize>>,
}

impl Step {
    fn used(used: usize) -> Step {
        Step { used, target: None, payload: None }
    }
}

fn open(cipher: &mut SessionCipher, record: &mut [u8]) -> Result<(), DecryptError> {
    cipher.open(record).map_err(|error| match error {
        OpenError::Auth => DecryptError::AuthFailure,
        OpenError::Exhausted => DecryptError::NonceExhausted,
    })
}

/// The Unix timestamp of a 2022 fixed header (`type u8 | timestamp u64 | ...`).
fn header_timestamp(header: &[u8]) -> u64 {
    let mut timestamp = [0u8; 8];
    timestamp.copy_from_slice(&header[1..9]);
    u64::from_be_bytes(timestamp)
}

/// A fixed header's timestamp minus `now`, saturated to what an `i32` holds (68 years either way).
fn timestamp_skew(header: &[u8], now: u64) -> i32 {
    let skew = i128::from(header_timestamp(header)) - i128::from(now);
    skew.clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as i32
}

/// `address | padding_len u16 | padding | payload`, all inside one chunk; returns the target and where
/// the payload starts.
fn parse_variable_header(header: &[u8]) -> Result<(Address, usize), DecryptError> {
    let (target, at) = Address::parse(header).map_err(|error| match error {
        AddressError::Incomplete => DecryptError::HeaderBeyondChunk,
        AddressError::UnknownType(_) | AddressError::InvalidDomain => DecryptError::BadAddress,
    })?;
    let padding_len = header.get(at..at + 2).ok_or(DecryptError::HeaderBeyondChunk)?;
    let padding_len = usize::from(u16::from_be_bytes([padding_len[0], padding_len[1]]));
    if padding_len > MAX_PADDING_LEN {
        return Err(DecryptError::PaddingTooLong);
    }
    let payload_start = at + 2 + padding_len;
    if payload_start > header.len() {
        return Err(DecryptError::HeaderBeyondChunk);
    }
    if padding_len == 0 && payload_start == header.len() {
        return Err(DecryptError::NoPayloadNoPadding);
    }
    Ok((target, payload_start))
}
