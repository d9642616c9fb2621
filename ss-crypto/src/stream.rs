//! The async adapter: [`DecryptReader`] and [`EncryptWriter`] put the state machines of [`crate::tcp`]
//! between tokio's `AsyncRead` / `AsyncWrite` and a socket half. Their poll functions only move bytes;
//! every protocol decision is made by [`Decryptor`] and [`Encryptor`].
//!
//! Ciphertext is read into one buffer per reader and opened there in place; sealed records are built in
//! one buffer per writer. Both are held only while bytes are in flight: a reader gives its buffer back to
//! the per-thread pool ([`crate::buffer`]) when it would wait with nothing buffered, and a writer frees its
//! output once the socket took all of it, so an idle connection holds no buffer at all. A connection that
//! stalls inside a record holds exactly one record's buffer.
//!
//! A decryption failure surfaces as an `io::Error` of kind `InvalidData` whose inner error is the
//! [`DecryptError`] (`err.get_ref()` and `downcast_ref`).

use std::future::poll_fn;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use crate::buffer;
use crate::tcp::{DecryptError, Decryptor, Encryptor};
use crate::{Address, Salt};

/// The system clock in Unix seconds, the default clock of both adapters.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// Most plaintext one `poll_write` seals before it hands the records to the socket: enough for a whole
/// 64 KiB read, so one read from the other side becomes one write here.
const MAX_WRITE: usize = 256 * 1024;

/// Reads ciphertext from `R` and yields the plaintext.
pub struct DecryptReader<R> {
    inner: R,
    decryptor: Decryptor,
    /// The read buffer, empty (no allocation) while nothing is in flight.
    buf: Box<[u8]>,
    /// Size of buffer to take: small at first, large once a read filled the small one (bulk traffic).
    next_size: usize,
    /// Unconsumed ciphertext.
    pending: Range<usize>,
    /// Opened plaintext not yet handed to the caller.
    plain: Range<usize>,
    target: Option<Address>,
    eof: bool,
    clock: fn() -> u64,
}

impl<R: AsyncRead + Unpin> DecryptReader<R> {
    /// A reader that opens records with `decryptor`.
    pub fn new(inner: R, decryptor: Decryptor) -> DecryptReader<R> {
        DecryptReader {
            inner,
            decryptor,
            buf: Box::default(),
            next_size: buffer::START,
            pending: 0..0,
            plain: 0..0,
            target: None,
            eof: false,
            clock: unix_now,
        }
    }

    /// Replaces the clock used to check 2022 timestamps (tests).
    pub fn with_clock(mut self, clock: fn() -> u64) -> DecryptReader<R> {
        self.clock = clock;
        self
    }

    /// Reads until the request's target address has arrived (server side). Payload that came with it
    /// stays buffered for the next reads. Errors with `UnexpectedEof` if the stream ends first.
    pub async fn read_target(&mut self) -> io::Result<Address> {
        poll_fn(|cx| self.poll_target(cx)).await
    }

    /// Reads until the first record after the salt has authenticated and returns the salt (server side).
    ///
    /// For AEAD-2022 that record is the fixed header, its type and timestamp checked; for classic AEAD the
    /// first length record. The variable header and payload are not waited for: the caller can check the
    /// salt against its replay filter the moment it is authentic, before a slow client sends the rest.
    /// Bytes already received after the record stay buffered for [`DecryptReader::read_target`].
    pub async fn read_salt(&mut self) -> io::Result<Salt> {
        poll_fn(|cx| self.poll_salt(cx)).await
    }

    /// The peer's salt once authenticated; see [`Decryptor::authenticated_salt`].
    pub fn authenticated_salt(&self) -> Option<Salt> {
        self.decryptor.authenticated_salt()
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Unwraps the reader; buffered bytes are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn poll_target(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Address>> {
        loop {
            if let Some(target) = self.target.take() {
                return Poll::Ready(Ok(target));
            }
            if !self.plain.is_empty() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "payload before target")));
            }
            if !ready!(self.poll_fill_plain(cx))? {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    fn poll_salt(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Salt>> {
        loop {
            if let Some(salt) = self.decryptor.authenticated_salt() {
                return Poll::Ready(Ok(salt));
            }
            // One record at a time: handing the decryptor only what it wants stops it right after the
            // authenticating record instead of running on through the rest of the header.
            let wanted = self.decryptor.wanted();
            if self.pending.len() >= wanted {
                let record = self.pending.start..self.pending.start + wanted;
                let decoded =
                    self.decryptor.decrypt(&mut self.buf[record], (self.clock)()).map_err(invalid_data)?;
                self.pending.start += decoded.consumed;
                continue;
            }
            if self.eof {
                self.decryptor.finish(self.pending.len()).map_err(invalid_data)?;
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            ready!(self.poll_read_ciphertext(cx))?;
        }
    }

    /// Makes plaintext available in `self.plain` (or a target in `self.target`); `false` at a clean EOF.
    fn poll_fill_plain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            let input = &mut self.buf[self.pending.clone()];
            let decoded = self.decryptor.decrypt(input, (self.clock)()).map_err(invalid_data)?;
            let base = self.pending.start;
            self.pending.start += decoded.consumed;
            self.plain = base + decoded.payload.start..base + decoded.payload.end;
            if decoded.target.is_some() {
                self.target = decoded.target;
                return Poll::Ready(Ok(true));
            }
            if !self.plain.is_empty() {
                return Poll::Ready(Ok(true));
            }
            if self.eof {
                self.decryptor.finish(self.pending.len()).map_err(invalid_data)?;
                return Poll::Ready(Ok(false));
            }
            ready!(self.poll_read_ciphertext(cx))?;
        }
    }

    /// Moves unconsumed ciphertext to the front of a buffer big enough for the record under way and
    /// reads more after it. Only called with no plaintext waiting to be handed out.
    fn poll_read_ciphertext(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let wanted = self.decryptor.wanted().max(self.next_size);
        if self.buf.len() < wanted {
            let mut bigger = buffer::take(wanted);
            bigger[..self.pending.len()].copy_from_slice(&self.buf[self.pending.clone()]);
            buffer::give(std::mem::replace(&mut self.buf, bigger));
            self.pending = 0..self.pending.len();
        } else if self.pending.start > 0 {
            self.buf.copy_within(self.pending.clone(), 0);
            self.pending = 0..self.pending.len();
        }
        let mut read_buf = ReadBuf::new(&mut self.buf[self.pending.end..]);
        if Pin::new(&mut self.inner).poll_read(cx, &mut read_buf)?.is_pending() {
            if self.pending.is_empty() {
                // Nothing in flight: wait without holding a buffer.
                buffer::give(std::mem::take(&mut self.buf));
                self.pending = 0..0;
            }
            return Poll::Pending;
        }
        let read = read_buf.filled().len();
        if self.pending.end + read == self.buf.len() {
            self.next_size = buffer::LARGE;
        }
        if read == 0 {
            self.eof = true;
            if self.pending.is_empty() {
                // A half-closed connection may stay open a long time: hold nothing for it.
                buffer::give(std::mem::take(&mut self.buf));
                self.pending = 0..0;
            }
        }
        self.pending.end += read;
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for DecryptReader<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A target nobody asked for (a client reading a response never gets one) is simply dropped.
        this.target = None;
        if this.plain.is_empty() && !ready!(this.poll_fill_plain(cx))? {
            return Poll::Ready(Ok(()));
        }
        let take = this.plain.len().min(out.remaining());
        out.put_slice(&this.buf[this.plain.start..this.plain.start + take]);
        this.plain.start += take;
        Poll::Ready(Ok(()))
    }
}

/// Lends the opened plaintext straight out of the read buffer: relaying with `fill_buf` / `consume`
/// copies each byte once, from this buffer to the next socket.
impl<R: AsyncRead + Unpin> AsyncBufRead for DecryptReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        this.target = None;
        if this.plain.is_empty() && !ready!(this.poll_fill_plain(cx))? {
            return Poll::Ready(Ok(&[]));
        }
        Poll::Ready(Ok(&this.buf[this.plain.clone()]))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.plain.start = (this.plain.start + amount).min(this.plain.end);
    }
}

impl<R> std::fmt::Debug for DecryptReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptReader").field("decryptor", &self.decryptor).finish_non_exhaustive()
    }
}

/// Seals what is written to it and writes the records to `W`.
pub struct EncryptWriter<W> {
    inner: W,
    encryptor: Encryptor,
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    written: usize,
    clock: fn() -> u64,
}

impl<W: AsyncWrite + Unpin> EncryptWriter<W> {
    /// A writer that seals with `encryptor`.
    pub fn new(inner: W, encryptor: Encryptor) -> EncryptWriter<W> {
        EncryptWriter { inner, encryptor, out: Vec::new(), written: 0, clock: unix_now }
    }

    /// Replaces the clock used for 2022 header timestamps (tests).
    pub fn with_clock(mut self, clock: fn() -> u64) -> EncryptWriter<W> {
        self.clock = clock;
        self
    }

    /// This stream's salt.
    pub fn salt(&self) -> Salt {
        self.encryptor.salt()
    }

    /// The wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Unwraps the writer; sealed bytes not yet written are lost.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Writes out every sealed byte still buffered, then frees the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Seals `payload` into the (drained) output buffer.
    fn seal(&mut self, payload: &[u8]) -> io::Result<()> {
        self.out.reserve_exact(self.encryptor.max_output_len(payload.len()));
        self.encryptor.encrypt(payload, (self.clock)(), &mut self.out).map_err(io::Error::other)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for EncryptWriter<W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, payload: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let take = payload.len().min(MAX_WRITE);
        this.seal(&payload[..take])?;
        // The bytes are accepted once sealed; if the socket is full they go out on the next call.
        if let Poll::Ready(Err(error)) = this.poll_drain(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(take))
    }

    /// Also sends a request's header if no payload has been written yet (an address-only first chunk).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.encryptor.header_sent() {
            this.seal(&[])?;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<W> std::fmt::Debug for EncryptWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptWriter").field("encryptor", &self.encryptor).finish_non_exhaustive()
    }
}

fn invalid_data(error: DecryptError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{Key, Method};

    const NOW: u64 = 1_704_164_645;

    fn fixed_clock() -> u64 {
        NOW
    }

    fn pair(method: Method) -> (Key, Salt, Salt) {
        let key = Key::from_bytes(method, &[3; 32][..method.key_len()]).unwrap();
        let client_salt = Salt::from_slice(method, &[1; 32][..method.salt_len()]).unwrap();
        let server_salt = Salt::from_slice(method, &[2; 32][..method.salt_len()]).unwrap();
        (key, client_salt, server_salt)
    }

    #[tokio::test]
    async fn request_and_response_flow_through_a_socket_pair() {
        for method in Method::ALL {
            let (key, client_salt, server_salt) = pair(method);
            let (client, server) = tokio::io::duplex(1000);
            let (client_read, client_write) = tokio::io::split(client);
            let (server_read, server_write) = tokio::io::split(server);
            let target = Address::domain("localhost", 8080).unwrap();
            let big: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();

            let mut up =
                EncryptWriter::new(client_write, Encryptor::request(method, &key, client_salt, &target, &[]))
                    .with_clock(fixed_clock);
            let sender = {
                let big = big.clone();
                tokio::spawn(async move {
                    up.write_all(&big).await.unwrap();
                    up.shutdown().await.unwrap();
                })
            };
            let mut server_reader =
                DecryptReader::new(server_read, Decryptor::request(method, &key)).with_clock(fixed_clock);
            assert_eq!(server_reader.read_target().await.unwrap(), target);
            let request_salt = server_reader.authenticated_salt().unwrap();
            assert_eq!(request_salt, client_salt);
            let mut received = Vec::new();
            server_reader.read_to_end(&mut received).await.unwrap();
            assert!(received == big, "{method}");
            sender.await.unwrap();

            let mut down = EncryptWriter::new(
                server_write,
                Encryptor::response(method, &key, server_salt, request_salt),
            )
            .with_clock(fixed_clock);
            down.write_all(b"reply").await.unwrap();
            down.shutdown().await.unwrap();
            let mut client_reader =
                DecryptReader::new(client_read, Decryptor::response(method, &key, client_salt))
                    .with_clock(fixed_clock);
            let mut reply = Vec::new();
            client_reader.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply, b"reply");
        }
    }

    #[tokio::test]
    async fn the_salt_is_known_before_the_rest_of_the_header_arrives() {
        for method in Method::ALL {
            let (key, client_salt, _) = pair(method);
            let target = Address::domain("localhost", 8080).unwrap();
            let mut request = Vec::new();
            let mut up =
                EncryptWriter::new(&mut request, Encryptor::request(method, &key, client_salt, &target, &[]))
                    .with_clock(fixed_clock);
            up.write_all(b"hello").await.unwrap();
            // Salt and the first record: the fixed header (2022) or the first length (classic).
            let first_record = if method.is_2022() { 1 + 8 + 2 } else { 2 } + crate::TAG_LEN;
            let split = method.salt_len() + first_record;

            let (mut client, server) = tokio::io::duplex(4096);
            client.write_all(&request[..split]).await.unwrap();
            let mut reader =
                DecryptReader::new(server, Decryptor::request(method, &key)).with_clock(fixed_clock);
            let salt = tokio::time::timeout(std::time::Duration::from_secs(5), reader.read_salt()).await;
            assert_eq!(salt.expect("read_salt waited for more than the first record").unwrap(), client_salt);
            client.write_all(&request[split..]).await.unwrap();
            assert_eq!(reader.read_target().await.unwrap(), target, "{method}");
            let mut hello = [0u8; 5];
            reader.read_exact(&mut hello).await.unwrap();
            assert_eq!(&hello, b"hello", "{method}");
        }
    }

    #[tokio::test]
    async fn a_stale_2022_header_yields_no_salt() {
        for method in Method::ALL.into_iter().filter(|m| m.is_2022()) {
            let (key, client_salt, _) = pair(method);
            let target = Address::Ip("127.0.0.1:80".parse().unwrap());
            let mut request = Vec::new();
            let mut up =
                EncryptWriter::new(&mut request, Encryptor::request(method, &key, client_salt, &target, &[]))
                    .with_clock(|| NOW - 31);
            up.flush().await.unwrap();
            let mut reader =
                DecryptReader::new(&request[..], Decryptor::request(method, &key)).with_clock(fixed_clock);
            let error = reader.read_salt().await.unwrap_err();
            let inner = error.get_ref().and_then(|e| e.downcast_ref::<DecryptError>());
            assert_eq!(inner, Some(&DecryptError::BadTimestamp), "{method}");
            assert_eq!(reader.authenticated_salt(), None, "{method}");
        }
    }

    #[tokio::test]
    async fn flush_sends_an_address_only_request() {
        for method in Method::ALL {
            let (key, client_salt, _) = pair(method);
            let (client, server) = tokio::io::duplex(4096);
            let target = Address::Ip("127.0.0.1:80".parse().unwrap());
            let mut up =
                EncryptWriter::new(client, Encryptor::request(method, &key, client_salt, &target, &[]))
                    .with_clock(fixed_clock);
            up.flush().await.unwrap();
            let mut reader =
                DecryptReader::new(server, Decryptor::request(method, &key)).with_clock(fixed_clock);
            assert_eq!(reader.read_target().await.unwrap(), target, "{method}");
        }
    }

    #[tokio::test]
    async fn garbage_is_invalid_data_and_truncation_is_an_error() {
        for method in Method::ALL {
            let (key, ..) = pair(method);
            let garbage = [0x5a; 200];
            let mut reader = DecryptReader::new(&garbage[..], Decryptor::request(method, &key));
            let error = reader.read_target().await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            let inner = error.get_ref().and_then(|e| e.downcast_ref::<DecryptError>());
            assert_eq!(inner, Some(&DecryptError::AuthFailure));

            let short = vec![0x5a; method.salt_len() - 1];
            let mut reader = DecryptReader::new(&short[..], Decryptor::request(method, &key));
            let error = reader.read_target().await.unwrap_err();
            let inner = error.get_ref().and_then(|e| e.downcast_ref::<DecryptError>());
            assert_eq!(inner, Some(&DecryptError::Truncated), "{method}");

            let mut reader = DecryptReader::new(&[][..], Decryptor::request(method, &key));
            assert_eq!(reader.read_target().await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        }
    }
}

#[cfg(test)]
mod buffer_tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    use super::*;
    use crate::{Key, Method};

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let method = Method::Aes256Gcm;
        let key = Key::from_bytes(method, &[3; 32]).unwrap();
        let salt = Salt::from_slice(method, &[1; 32]).unwrap();
        let (client, server) = tokio::io::duplex(4096);
        let target = Address::Ip("127.0.0.1:80".parse().unwrap());
        let mut up = EncryptWriter::new(client, Encryptor::request(method, &key, salt, &target, &[]));
        up.write_all(b"ping").await.unwrap();
        let mut reader = DecryptReader::new(server, Decryptor::request(method, &key));
        reader.read_target().await.unwrap();
        assert_eq!(reader.fill_buf().await.unwrap(), b"ping");
        reader.consume(4);
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut reader).poll_fill_buf(cx).is_pending()))
                .await;
        assert!(pending);
        assert!(reader.buf.is_empty(), "buffer held while idle");
        assert!(up.out.capacity() == 0, "writer buffer held while idle");
    }
}
