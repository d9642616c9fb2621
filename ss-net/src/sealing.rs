//! Sealing in place: [`SealingReader`] reads plaintext from a socket straight into the gaps of its
//! sealed records and lends the sealed bytes, so the relay writes them to the other socket untouched.
//!
//! ```text
//!   one read (readv), classic AEAD, large buffer:
//!   | len+tag | payload <= 0x3FFF | tag | len+tag | payload <= 0x3FFF | tag | ... (up to four chunks)
//!     ^ room                      ^ room   (the kernel fills the payload gaps in order)
//!   AEAD-2022: one chunk of up to 0xFFFF payload.
//! ```
//!
//! After the read each filled slot is sealed where it lies ([`Encryptor::seal_chunk_in_place`]); the
//! slots are laid end to end and only the last can be short, so the sealed chunks are one contiguous
//! run. Against [`crate::PooledReader`] followed by [`crate::EncryptWriter`] this saves a copy of every
//! byte (the writer's sealed output buffer) and keeps the sealed bytes that wait for a full socket in
//! the reader's pooled, budgeted buffer ([`crate::buffer`]) rather than in an allocation of their own.
//!
//! The first flight (salt, header and first payload) is still sealed by copying, into an allocation
//! held until it is written: its layout depends on the method and the header, and it happens once.

use std::io::{self, IoSliceMut};
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ss_crypto::tcp::{Encryptor, CHUNK_HEAD, CHUNK_TAIL};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use crate::buffer::{self, Buffer};
use crate::clock::unix_now;

/// Most chunks one read fills: four classic chunks make a 64 KiB read.
const MAX_SLOTS: usize = 4;

/// Least payload a slot is given: the tail of a buffer too short for more is left unused rather than
/// sent as a tiny chunk with 34 bytes of overhead.
const MIN_SLOT_PAYLOAD: usize = 1024;

/// A reader that can fill several buffers in one system call (`readv`).
pub trait ReadVectored {
    /// Reads into `bufs` in order, like `readv`: `Ok(0)` at the end of the stream.
    fn poll_read_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>>;
}

impl ReadVectored for OwnedReadHalf {
    fn poll_read_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_readv(self, cx, bufs)
    }
}

/// One buffer goes through tokio's `poll_read`, several through `readv`.
///
/// tokio's read forgets the socket's readiness when a read returns less than asked (the socket is
/// drained), so the next poll waits without a system call; readiness polled by hand is only forgotten
/// when a read fails with `WouldBlock`, one more system call per wait. That would be one more per
/// message on the small-message path, which reads into one buffer; for the several slots of a bulk
/// read it is one per 64 KiB at most.
fn poll_readv<S>(stream: &mut S, cx: &mut Context<'_>, bufs: &mut [IoSliceMut<'_>]) -> Poll<io::Result<usize>>
where
    S: AsyncRead + AsRef<TcpStream> + Unpin,
{
    if let [only] = bufs {
        let mut read_buf = ReadBuf::new(only);
        ready!(Pin::new(stream).poll_read(cx, &mut read_buf))?;
        return Poll::Ready(Ok(read_buf.filled().len()));
    }
    let socket: &TcpStream = (*stream).as_ref();
    loop {
        ready!(socket.poll_read_ready(cx))?;
        match socket.try_read_vectored(bufs) {
            // The readiness was stale; `try_read_vectored` cleared it, so the next poll registers the waker.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            read => return Poll::Ready(read),
        }
    }
}

/// `AsyncBufRead` of sealed records: reads plaintext from `R`, lends it sealed with the encryptor.
///
/// Its buffer is pooled as [`crate::PooledReader`]'s: [`buffer::START`] bytes at first, [`buffer::LARGE`]
/// once reads fill it (within the process's budget), given back whenever every sealed byte has been
/// consumed or the reader waits with nothing held.
pub struct SealingReader<R> {
    inner: R,
    encryptor: Encryptor,
    /// Sealed chunks, in `buf[sealed]`; empty (no allocation) while nothing is in flight.
    buf: Buffer,
    /// The first flight, sealed by copying; lent before anything in `buf`.
    first: Vec<u8>,
    /// The sealed bytes not yet consumed, in `first` if it is not empty, else in `buf`.
    sealed: Range<usize>,
    /// Size of the buffer to take next: grows to [`buffer::LARGE`] when a read fills the small one.
    next_size: usize,
    /// Payload read so far, and how much of it is in the sealed bytes not yet consumed.
    payload_read: u64,
    payload_held: usize,
    clock: fn() -> u64,
}

impl<R: ReadVectored + Unpin> SealingReader<R> {
    /// Seals what `inner` yields with `encryptor` (whose header may or may not have been sent).
    pub fn new(inner: R, encryptor: Encryptor) -> SealingReader<R> {
        SealingReader {
            inner,
            encryptor,
            buf: Buffer::default(),
            first: Vec::new(),
            sealed: 0..0,
            next_size: buffer::START,
            payload_read: 0,
            payload_held: 0,
            clock: unix_now,
        }
    }

    /// Replaces the clock used for 2022 header timestamps (tests).
    pub fn with_clock(mut self, clock: fn() -> u64) -> SealingReader<R> {
        self.clock = clock;
        self
    }

    /// Payload whose sealed bytes have all been consumed: what went on, in plaintext bytes. Sealed bytes
    /// consumed only in part (the relay ended in the middle of a write) are not counted.
    pub fn payload_sent(&self) -> u64 {
        self.payload_read - self.payload_held as u64
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads and seals the first flight: the header goes out with the first payload, sealed by
    /// [`Encryptor::encrypt`] into `self.first`.
    fn poll_first_flight(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut plain = Buffer::take(buffer::START);
        let read = ready!(self.inner.poll_read_vectored(cx, &mut [IoSliceMut::new(&mut plain)]))?;
        if read == plain.len() {
            self.next_size = buffer::LARGE;
        }
        let mut first = Vec::with_capacity(self.encryptor.max_output_len(read));
        self.encryptor.encrypt(&plain[..read], (self.clock)(), &mut first).map_err(io::Error::other)?;
        self.payload_read += read as u64;
        self.payload_held = read;
        self.sealed = 0..first.len();
        self.first = first;
        Poll::Ready(Ok(()))
    }

    /// Reads payload into the slots of a pooled buffer and seals each filled slot in place.
    fn poll_seal_in_place(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            self.buf = Buffer::take_preferring(buffer::START, self.next_size);
        }
        let slots = slot_layout(self.buf.len(), self.encryptor.max_chunk_payload());
        let capacity: usize = slots.iter().map(|slot| slot.payload).sum();
        let read = match self.read_into_slots(cx, &slots) {
            Poll::Pending => {
                // Nothing in flight: wait without holding a buffer.
                self.buf.release();
                return Poll::Pending;
            }
            Poll::Ready(read) => read?,
        };
        if read == capacity {
            self.next_size = buffer::LARGE;
        }
        // The kernel filled the gaps in order: full slots, then at most one partly filled.
        let mut left = read;
        let mut end = 0;
        for slot in slots.iter().take_while(|slot| slot.payload > 0) {
            if left == 0 {
                break;
            }
            let payload = left.min(slot.payload);
            let chunk = slot.start..slot.start + CHUNK_HEAD + payload + CHUNK_TAIL;
            self.encryptor.seal_chunk_in_place(&mut self.buf[chunk.clone()]).map_err(io::Error::other)?;
            end = chunk.end;
            left -= payload;
        }
        if read == 0 {
            // End of stream: a half-closed connection holds nothing.
            self.buf.release();
        }
        self.payload_read += read as u64;
        self.payload_held = read;
        self.sealed = 0..end;
        Poll::Ready(Ok(()))
    }

    /// One vectored read into the payload gaps of `slots`.
    fn read_into_slots(
        &mut self,
        cx: &mut Context<'_>,
        slots: &[Slot; MAX_SLOTS],
    ) -> Poll<io::Result<usize>> {
        let mut gaps: [IoSliceMut<'_>; MAX_SLOTS] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
        let mut rest: &mut [u8] = &mut self.buf;
        let mut used = 0;
        for (gap, slot) in gaps.iter_mut().zip(slots.iter().take_while(|slot| slot.payload > 0)) {
            let (this_slot, after) =
                std::mem::take(&mut rest).split_at_mut(CHUNK_HEAD + slot.payload + CHUNK_TAIL);
            *gap = IoSliceMut::new(&mut this_slot[CHUNK_HEAD..CHUNK_HEAD + slot.payload]);
            rest = after;
            used += 1;
        }
        self.inner.poll_read_vectored(cx, &mut gaps[..used])
    }
}

/// Where one chunk goes in the buffer: its length record at `start`, then `payload` bytes of room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    start: usize,
    /// Payload room; 0 for an unused slot (they come last).
    payload: usize,
}

/// Chunk slots laid end to end in a buffer of `len` bytes, each with room for up to `max_payload`.
fn slot_layout(len: usize, max_payload: usize) -> [Slot; MAX_SLOTS] {
    let mut slots = [Slot::default(); MAX_SLOTS];
    let mut start = 0;
    for slot in &mut slots {
        let room = len.saturating_sub(start + CHUNK_HEAD + CHUNK_TAIL).min(max_payload);
        if room < MIN_SLOT_PAYLOAD {
            break;
        }
        *slot = Slot { start, payload: room };
        start += CHUNK_HEAD + room + CHUNK_TAIL;
    }
    slots
}

/// Copies the sealed bytes out (the relay uses [`AsyncBufRead`], which does not).
impl<R: ReadVectored + Unpin> AsyncRead for SealingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let sealed = ready!(self.as_mut().poll_fill_buf(cx))?;
        let take = sealed.len().min(out.remaining());
        out.put_slice(&sealed[..take]);
        self.consume(take);
        Poll::Ready(Ok(()))
    }
}

impl<R: ReadVectored + Unpin> AsyncBufRead for SealingReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.sealed.is_empty() {
            if this.encryptor.header_sent() {
                ready!(this.poll_seal_in_place(cx))?;
            } else {
                ready!(this.poll_first_flight(cx))?;
            }
        }
        let sealed = if this.first.is_empty() { &this.buf[..] } else { &this.first[..] };
        Poll::Ready(Ok(&sealed[this.sealed.clone()]))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.sealed.start = (this.sealed.start + amount).min(this.sealed.end);
        if this.sealed.is_empty() {
            // Everything went on: a connection whose writer now waits holds no buffer.
            this.first = Vec::new();
            this.buf.release();
            this.sealed = 0..0;
            this.payload_held = 0;
        }
    }
}

impl<R> std::fmt::Debug for SealingReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingReader").field("encryptor", &self.encryptor).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
