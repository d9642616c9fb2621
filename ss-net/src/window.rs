//! Sliding-window replay protection for AEAD-2022 UDP packet ids (the scheme of RFC 6479 / WireGuard),
//! used by both binaries.
//!
//! The window remembers the highest packet id accepted and which of the 1,024 ids below it have been
//! seen. An id is accepted once; ids older than the window are refused. Peers start counting at any
//! value (shadowsocks-rust starts at 1), so the first id accepted may be anything.

const BITS: u64 = 1024;
const WORDS: usize = (BITS / 64) as usize;

/// Which packet ids of one session have been accepted.
#[derive(Debug, Clone)]
pub struct PacketWindow {
    /// Highest id accepted so far, or `None` before the first packet.
    highest: Option<u64>,
    /// Bit `id % BITS` is set when `id` (within the window) was accepted.
    seen: [u64; WORDS],
}

impl Default for PacketWindow {
    fn default() -> Self {
        PacketWindow { highest: None, seen: [0; WORDS] }
    }
}

impl PacketWindow {
    /// Whether `id` would be accepted, without recording it.
    pub fn is_fresh(&self, id: u64) -> bool {
        match self.highest {
            None => true,
            Some(highest) if id > highest => true,
            Some(highest) if highest - id >= BITS => false,
            Some(_) => !self.bit(id),
        }
    }

    /// Records `id`; returns false (and records nothing) if it is a duplicate or too old.
    /// Call it only once the packet has otherwise fully validated.
    pub fn accept(&mut self, id: u64) -> bool {
        if !self.is_fresh(id) {
            return false;
        }
        match self.highest {
            Some(highest) if id <= highest => {}
            Some(highest) => {
                // Clear the bits of the ids the window slides past.
                let advance = id - highest;
                if advance >= BITS {
                    self.seen = [0; WORDS];
                } else {
                    for skipped in highest + 1..=id {
                        self.clear(skipped);
                    }
                }
                self.highest = Some(id);
            }
            None => self.highest = Some(id),
        }
        self.set(id);
        true
    }

    fn bit(&self, id: u64) -> bool {
        let index = id % BITS;
        self.seen[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    fn set(&mut self, id: u64) {
        let index = id % BITS;
        self.seen[(index / 64) as usize] |= 1 << (index % 64);
    }

    fn clear(&mut self, id: u64) {
        let index = id % BITS;
        self.seen[(index / 64) as usize] &= !(1 << (index % 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_id_once_in_any_order() {
        let mut window = PacketWindow::default();
        for id in [5, 3, 4, 10, 6, 1000] {
            assert!(window.accept(id), "{id}");
        }
        for id in [5, 3, 4, 10, 6, 1000] {
            assert!(!window.accept(id), "duplicate {id}");
        }
        assert!(window.accept(7));
    }

    #[test]
    fn refuses_ids_older_than_the_window() {
        let mut window = PacketWindow::default();
        assert!(window.accept(5000));
        assert!(!window.is_fresh(5000 - 1024));
        assert!(window.accept(5000 - 1023));
        assert!(window.accept(1 << 40), "a big jump resets the window");
        assert!(!window.accept(5001));
    }

    #[test]
    fn sliding_clears_reused_bits() {
        let mut window = PacketWindow::default();
        assert!(window.accept(1));
        assert!(window.accept(1 + 1024), "same bit as 1, one window later");
        assert!(window.accept(2 + 1024));
        assert!(!window.accept(1 + 1024));
    }

    #[test]
    fn the_first_id_may_be_anything() {
        for first in [0, 1, u64::MAX] {
            let mut window = PacketWindow::default();
            assert!(window.accept(first));
            assert!(!window.accept(first));
        }
    }
}
