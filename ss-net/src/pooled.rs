//! A buffered reader that holds its buffer only while it has unread bytes.
//!
//! `tokio::io::BufReader` keeps its buffer for the life of the connection; with thousands of idle
//! connections that is most of a proxy's memory. [`PooledReader`] borrows a buffer from the per-thread
//! pool when bytes arrive and returns it when it would wait with nothing buffered. It starts with a
//! small buffer and moves to a large one after a read filled the small one: bulk transfers then take
//! 64 KiB per system call (and per AEAD-2022 record) while interactive traffic stays small.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

use crate::buffer::{self, Buffer};

/// Most bytes one read takes: four classic chunks (4 x 0x3FFF) and just under one AEAD-2022 record, so a
/// full read seals into whole records of either generation.
const MAX_READ: usize = 4 * 0x3FFF;

/// `AsyncBufRead` over `R` with a pooled buffer of [`buffer::START`] bytes, [`buffer::LARGE`] once reads
/// fill it.
#[derive(Debug)]
pub struct PooledReader<R> {
    inner: R,
    buf: Buffer,
    filled: Range<usize>,
    /// Size of the buffer to take next: grows to [`buffer::LARGE`] when reads fill the small one.
    next_size: usize,
}

impl<R> PooledReader<R> {
    /// Wraps `inner`; no buffer is taken until the first read.
    pub fn new(inner: R) -> PooledReader<R> {
        PooledReader { inner, buf: Buffer::default(), filled: 0..0, next_size: buffer::START }
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for PooledReader<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.filled.is_empty() {
            // Nothing buffered: read straight into the caller's buffer.
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let take = this.filled.len().min(out.remaining());
        out.put_slice(&this.buf[this.filled.start..this.filled.start + take]);
        this.filled.start += take;
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for PooledReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.filled.is_empty() {
            if this.buf.is_empty() {
                this.buf = Buffer::take_preferring(buffer::START, this.next_size);
            }
            let limit = this.buf.len().min(MAX_READ);
            let mut read_buf = ReadBuf::new(&mut this.buf[..limit]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read_buf) {
                Poll::Pending => {
                    this.buf.release();
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {
                    this.filled = 0..read_buf.filled().len();
                    if this.filled.end == limit {
                        this.next_size = buffer::LARGE;
                    }
                    if this.filled.is_empty() {
                        // End of stream: a half-closed connection holds nothing.
                        this.buf.release();
                    }
                }
            }
        }
        Poll::Ready(Ok(&this.buf[this.filled.clone()]))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.filled.start = (this.filled.start + amount).min(this.filled.end);
        if this.filled.is_empty() {
            // Everything went on: a connection whose writer is now waiting holds no read buffer.
            this.buf.release();
            this.filled = 0..0;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_everything_and_lets_go_of_the_buffer_while_waiting() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut reader = PooledReader::new(far);
        near.write_all(b"first").await.unwrap();
        assert_eq!(reader.fill_buf().await.unwrap(), b"first");
        reader.consume(5);
        let pending = futures_poll_once(&mut reader).await;
        assert!(pending, "nothing to read yet");
        assert!(reader.buf.is_empty(), "no buffer held while waiting");
        near.write_all(b"second").await.unwrap();
        drop(near);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert_eq!(line, "second");
    }

    #[tokio::test]
    async fn bytes_handed_on_in_full_release_the_buffer_at_once() {
        let mut reader = PooledReader::new(&b"twelve bytes"[..]);
        assert_eq!(reader.fill_buf().await.unwrap(), b"twelve bytes");
        reader.consume(7);
        assert!(!reader.buf.is_empty(), "five bytes still to go");
        reader.consume(5);
        assert!(reader.buf.is_empty(), "all handed on: no buffer held while the writer waits");
        assert_eq!(reader.fill_buf().await.unwrap(), b"");
    }

    /// Polls `fill_buf` once; true if it was pending.
    async fn futures_poll_once<R: AsyncRead + Unpin>(reader: &mut PooledReader<R>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *reader).poll_fill_buf(cx).is_pending())).await
    }
}
