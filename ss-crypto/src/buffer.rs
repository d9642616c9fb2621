//! Read buffers lent to connections only while they have bytes in flight.
//!
//! An idle connection should cost a few hundred bytes, not the 16-64 KiB a record needs, so readers take
//! a buffer when data arrives and give it back when they would wait. Buffers are zero-filled once, when
//! first made, and then reused from a small per-thread pool, so reuse costs neither a system call nor a
//! memset. Each thread keeps at most [`KEEP`] buffers of each size; the rest go back to the allocator.

use std::cell::RefCell;
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

/// Buffers taken and not given back, process-wide (diagnostics and tests).
static LENT: AtomicUsize = AtomicUsize::new(0);

/// How many pooled-size buffers are out on loan right now.
pub fn lent() -> usize {
    LENT.load(Ordering::Relaxed)
}

thread_local! {
    static STARTS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static SMALLS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static LARGES: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A zero-initialised buffer of at least `min_len` bytes (exactly [`SMALL`] or [`LARGE`] when that
/// is enough).
pub fn take(min_len: usize) -> Box<[u8]> {
    let (pool, size) = match min_len {
        len if len <= START => (&STARTS, START),
        len if len <= SMALL => (&SMALLS, SMALL),
        len if len <= LARGE => (&LARGES, LARGE),
        len => return vec![0; len].into_boxed_slice(),
    };
    LENT.fetch_add(1, Ordering::Relaxed);
    pool.with(|pool| pool.borrow_mut().pop()).unwrap_or_else(|| vec![0; size].into_boxed_slice())
}

/// Gives a buffer back for reuse (empty and odd-sized buffers are simply dropped).
pub fn give(buf: Box<[u8]>) {
    let pool = match buf.len() {
        START => &STARTS,
        SMALL => &SMALLS,
        LARGE => &LARGES,
        _ => return,
    };
    LENT.fetch_sub(1, Ordering::Relaxed);
    pool.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < KEEP {
            pool.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_one_record_of_each_generation() {
        const { assert!(SMALL >= 32 + 0x3FFF + 16) };
        const { assert!(LARGE >= 32 + 0xFFFF + 16) };
        assert_eq!(take(1).len(), START);
        assert_eq!(take(START + 1).len(), SMALL);
        assert_eq!(take(SMALL + 1).len(), LARGE);
        assert_eq!(take(LARGE + 1).len(), LARGE + 1);
    }

    #[test]
    fn buffers_are_reused_up_to_the_limit() {
        let first = take(100);
        let address = first.as_ptr();
        give(first);
        let again = take(100);
        assert_eq!(again.as_ptr(), address, "reused");
        give(again);
        let many: Vec<_> = (0..KEEP + 3).map(|_| take(LARGE)).collect();
        many.into_iter().for_each(give);
        LARGES.with(|pool| assert_eq!(pool.borrow().len(), KEEP));
    }
}
