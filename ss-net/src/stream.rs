//! The async adapter: [`DecryptReader`] and [`EncryptWriter`] put the state machines of `ss_crypto::tcp`
//! between tokio's `AsyncRead` / `AsyncWrite` and a socket half. Their poll functions only move bytes;
//! every protocol decision is made by [`Decryptor`] and [`Encryptor`].
//!
//! Ciphertext is read into one buffer per reader and opened there in place; sealed records are built in
//! one buffer per writer (a relay seals in the read buffer instead: [`crate::SealingReader`]). Both are held only while bytes are in flight: a reader gives its buffer back to
//! the per-thread pool ([`crate::buffer`], returned on drop too) when it would wait with nothing buffered, and a writer frees its
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

use ss_crypto::tcp::{DecryptError, Decryptor, Encryptor};
use ss_crypto::{Address, Salt};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use crate::buffer::{self, Buffer};
use crate::clock::unix_now;

/// Most plaintext one `poll_write` seals before it hands the records to the socket: enough for a whole
/// 64 KiB read, so one read from the other side becomes one write here.
const MAX_WRITE: usize = 256 * 1024;

/// Reads ciphertext from `R` and yields the plaintext.
pub struct DecryptReader<R> {
    inner: R,
    decryptor: Decryptor,
    /// The read buffer, empty (no allocation) while nothing is in flight.
    buf: Buffer,
    /// Size of buffer to take: small at first, large once a read filled the small one (bulk traffic).
    next_size: usize,
    /// Unconsumed ciphertext.
    pending: Range<usize>,
    /// Opened plaintext not yet handed to the caller.
    plain: Range<usize>,
    target: Option<Address>,
    eof: bool,
    clock: fn() -> u64,
    /// Ciphertext bytes read from `inner` so far (a probe's size, for the metrics).
    received: u64,
}

impl<R: AsyncRead + Unpin> DecryptReader<R> {
    /// A reader that opens records with `decryptor`.
    pub fn new(inner: R, decryptor: Decryptor) -> DecryptReader<R> {
        DecryptReader {
            inner,
            decryptor,
            buf: Buffer::default(),
            next_size: buffer::START,
            pending: 0..0,
            plain: 0..0,
            target: None,
            eof: false,
            clock: unix_now,
            received: 0,
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

    /// Reads until at least `len` bytes of ciphertext are buffered and lends them, opening nothing
    /// (server side: a multi-user server looks at the salt and the first record, or the identity
    /// header, to choose the key before the decryptor is made; see [`DecryptReader::set_decryptor`]).
    /// Errors with `UnexpectedEof` if the stream ends first.
    pub async fn peek_ciphertext(&mut self, len: usize) -> io::Result<&[u8]> {
        poll_fn(|cx| self.poll_peek(cx, len)).await?;
        Ok(&self.buf[self.pending.start..self.pending.start + len])
    }

    /// Replaces the decryptor; meant for right after [`DecryptReader::peek_ciphertext`], before
    /// anything was opened (bytes already opened stay opened with the old one).
    pub fn set_decryptor(&mut self, decryptor: Decryptor) {
        self.decryptor = decryptor;
    }

    /// The peer's salt once authenticated; see [`Decryptor::authenticated_salt`].
    pub fn authenticated_salt(&self) -> Option<Salt> {
        self.decryptor.authenticated_salt()
    }

    /// Bytes read from the wrapped reader so far, opened or not.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// AEAD-2022: the peer's clock minus ours, in seconds; see [`Decryptor::peer_clock_skew`].
    pub fn peer_clock_skew(&self) -> Option<i64> {
        self.decryptor.peer_clock_skew()
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

    fn poll_peek(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        while self.pending.len() < len {
            if self.eof {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            ready!(self.poll_read_ciphertext_for(cx, len))?;
        }
        Poll::Ready(Ok(()))
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
        self.poll_read_ciphertext_for(cx, self.decryptor.wanted())
    }

    /// [`Self::poll_read_ciphertext`] with a buffer large enough for `wanted` bytes of ciphertext.
    fn poll_read_ciphertext_for(&mut self, cx: &mut Context<'_>, wanted: usize) -> Poll<io::Result<()>> {
        // A buffer is changed when the record under way does not fit, when none is held, or when the
        // first small one turned out too small for the traffic: then it is as large as reads have
        // needed, if the process has large buffers to spare.
        let outgrown = self.buf.len() == buffer::START && self.next_size > buffer::START;
        if self.buf.len() < wanted || self.buf.is_empty() || outgrown {
            let mut bigger = Buffer::take_preferring(wanted, self.next_size);
            bigger[..self.pending.len()].copy_from_slice(&self.buf[self.pending.clone()]);
            self.buf = bigger;
            self.pending = 0..self.pending.len();
        } else if self.pending.start > 0 {
            self.buf.copy_within(self.pending.clone(), 0);
            self.pending = 0..self.pending.len();
        }
        let mut read_buf = ReadBuf::new(&mut self.buf[self.pending.end..]);
        if Pin::new(&mut self.inner).poll_read(cx, &mut read_buf)?.is_pending() {
            if self.pending.is_empty() {
                // Nothing in flight: wait without holding a buffer.
                self.buf.release();
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
                self.buf.release();
                self.pending = 0..0;
            }
        }
        self.pending.end += read;
        self.received += read as u64;
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
        if this.plain.is_empty() && this.pending.is_empty() {
            // Everything went on and no record is under way: hold no buffer while the writer waits.
            this.buf.release();
            this.pending = 0..0;
            this.plain = 0..0;
        }
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

    /// The writer and the encryptor, to go on sealing elsewhere (a [`crate::SealingReader`] once the
    /// header is out). Call after a flush: sealed bytes not yet written are lost.
    pub fn into_parts(self) -> (W, Encryptor) {
        debug_assert_eq!(self.written, self.out.len(), "into_parts before the sealed bytes were written");
        (self.inner, self.encryptor)
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
mod tests;
