//! Read buffers lent to connections only while they have bytes in flight.
//!
//! An idle connection should cost a few hundred bytes, not the 16-64 KiB a record needs, so readers take
//! a buffer when data arrives and give it back when they would wait. Buffers are zero-filled once, when
//! first made, and then reused from a small per-thread pool, so reuse costs neither a system call nor a
//! memset. Each thread keeps at most [`KEEP`] buffers of each size; the rest go back to the allocator.
//!
//! A [`Buffer`] goes back to its thread's pool when it is dropped, so no path (an early `?`, a reader
//! dropped mid-record) can forget to return it.
//!
//! Readers that move much data ask for [`LARGE`] buffers (fewer system calls per byte), but at most
//! [`LARGE_LENT_MAX`] of them are lent out at once in the process: beyond that, [`Buffer::take_preferring`]
//! gives a [`SMALL`] one. One bulk transfer still moves 64 KiB per system call. A relay seals in its read
//! buffer ([`crate::sealing`]), so sealed bytes waiting for a full socket count in the same budget.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Size of a connection's first buffer: enough for interactive traffic (a request, a TLS handshake
/// message), small enough that a burst of new connections does not leave megabytes of freed 16 KiB buffers
/// behind in the allocator. A read that fills it moves the connection to larger buffers.
pub const START: usize = 4 * 1024;
/// Size of a small buffer: one classic record (salt + 0x3FFF payload + tag) with room to spare.
pub const SMALL: usize = 16 * 1024 + 128;
/// Size of a large buffer: one AEAD-2022 record (salt + 0xFFFF payload + tag) with room to spare.
pub const LARGE: usize = 64 * 1024 + 128;
/// Buffers of each size a thread keeps for reuse.
pub const KEEP: usize = 8;
/// Most [`LARGE`] buffers lent out at once in the process (8 MiB) before readers that would only like
/// one get a [`SMALL`] one.
pub const LARGE_LENT_MAX: usize = 128;

/// [`LARGE`] buffers lent out now, process-wide (buffers may be dropped on another thread than the one
/// that took them, so a per-thread count could drift).
static LARGE_LENT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STARTS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static SMALLS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static LARGES: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A zero-initialised byte buffer that returns to the pool of the thread that drops it.
///
/// `Buffer::default()` is empty and holds no allocation: the state of a reader with nothing in flight.
#[derive(Default)]
pub struct Buffer(Box<[u8]>);

impl Buffer {
    /// A buffer of at least `min_len` bytes (exactly [`START`], [`SMALL`] or [`LARGE`] when one of them
    /// is enough), from this thread's pool when it has one.
    pub fn take(min_len: usize) -> Buffer {
        let (pool, size) = match min_len {
            len if len <= START => (&STARTS, START),
            len if len <= SMALL => (&SMALLS, SMALL),
            len if len <= LARGE => (&LARGES, LARGE),
            len => return Buffer(vec![0; len].into_boxed_slice()),
        };
        let reused = pool.with(|pool| pool.borrow_mut().pop());
        if size == LARGE {
            LARGE_LENT.fetch_add(1, Ordering::Relaxed);
        }
        Buffer(reused.unwrap_or_else(|| vec![0; size].into_boxed_slice()))
    }

    /// A buffer of at least `min_len` bytes, and of `preferred` bytes if that is more and the process
    /// has large buffers to spare ([`LARGE_LENT_MAX`]); otherwise the smaller of `preferred` and
    /// [`SMALL`] (still at least `min_len`).
    pub fn take_preferring(min_len: usize, preferred: usize) -> Buffer {
        if preferred > SMALL && !large_to_spare() {
            return Buffer::take(min_len.max(SMALL));
        }
        Buffer::take(min_len.max(preferred))
    }

    /// Gives the bytes back now and leaves this buffer empty.
    pub fn release(&mut self) {
        *self = Buffer::default();
    }
}

fn large_to_spare() -> bool {
    LARGE_LENT.load(Ordering::Relaxed) < LARGE_LENT_MAX
}

/// How many buffers of `size` this thread's pool holds (tests).
#[cfg(test)]
pub(crate) fn pooled(size: usize) -> usize {
    let pool = match size {
        START => &STARTS,
        SMALL => &SMALLS,
        _ => &LARGES,
    };
    pool.with(|pool| pool.borrow().len())
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.0.len() == LARGE {
            LARGE_LENT.fetch_sub(1, Ordering::Relaxed);
        }
        let pool = match self.0.len() {
            START => &STARTS,
            SMALL => &SMALLS,
            LARGE => &LARGES,
            // Empty and odd-sized buffers are not worth keeping.
            _ => return,
        };
        let buf = std::mem::take(&mut self.0);
        // `try_with`: a buffer dropped while its thread exits just goes back to the allocator.
        let _ = pool.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < KEEP {
                pool.push(buf);
            }
        });
    }
}

/// Shows the size only: the bytes are a connection's traffic.
impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} bytes)", self.0.len())
    }
}

impl Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_one_record_of_each_generation() {
        const { assert!(SMALL >= 32 + 0x3FFF + 16) };
        const { assert!(LARGE >= 32 + 0xFFFF + 16) };
        assert_eq!(Buffer::take(1).len(), START);
        assert_eq!(Buffer::take(START + 1).len(), SMALL);
        assert_eq!(Buffer::take(SMALL + 1).len(), LARGE);
        assert_eq!(Buffer::take(LARGE + 1).len(), LARGE + 1);
        assert!(Buffer::default().is_empty());
    }

    #[test]
    fn dropped_buffers_are_reused_up_to_the_limit() {
        let first = Buffer::take(100);
        let address = first.as_ptr();
        drop(first);
        let mut again = Buffer::take(100);
        assert_eq!(again.as_ptr(), address, "reused");
        again.release();
        assert!(again.is_empty());
        assert_eq!(Buffer::take(100).as_ptr(), address, "released buffers are reused too");
        let many: Vec<_> = (0..KEEP + 3).map(|_| Buffer::take(LARGE)).collect();
        drop(many);
        assert_eq!(pooled(LARGE), KEEP);
    }

    /// Large buffers lent out now (tests).
    pub(crate) fn large_lent() -> usize {
        LARGE_LENT.load(Ordering::Relaxed)
    }

    #[test]
    fn past_the_large_budget_a_reader_that_would_like_one_gets_a_small_buffer() {
        // Other tests of this process take large buffers too; hold enough to be past the budget whatever
        // they do, and check the count only with our own buffers in it.
        let before = large_lent();
        let held: Vec<_> = (0..LARGE_LENT_MAX).map(|_| Buffer::take(LARGE)).collect();
        assert!(large_lent() >= before + LARGE_LENT_MAX);
        assert_eq!(Buffer::take_preferring(START, LARGE).len(), SMALL, "over budget: small");
        assert_eq!(Buffer::take_preferring(SMALL + 1, LARGE).len(), LARGE, "a record that needs it: large");
        assert_eq!(Buffer::take_preferring(START, START).len(), START, "nobody asked for more");
        drop(held);
        assert!(large_lent() < LARGE_LENT_MAX);
        let again = Buffer::take_preferring(START, LARGE);
        assert_eq!(again.len(), LARGE, "room again once they came back");
    }

    #[test]
    fn an_early_return_still_gives_the_buffer_back() {
        fn fails() -> Result<(), ()> {
            let _buf = Buffer::take(SMALL);
            Err(())?;
            Ok(())
        }
        let before = pooled(SMALL);
        assert!(fails().is_err());
        assert_eq!(pooled(SMALL), before + 1);
    }
}
