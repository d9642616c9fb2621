//! The wall clock, in the form the protocol wants it.
//!
//! `ss-crypto` reads no clock: AEAD-2022 headers carry a Unix timestamp that the caller passes in. This
//! is the one place the binaries (and tests that talk to them) read it from.

use std::time::{SystemTime, UNIX_EPOCH};

/// The system clock in Unix seconds (0 if the clock is set before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_current_time() {
        // 2023-11-14: any sane clock is past it; the bound catches a clock read in milliseconds.
        let now = unix_now();
        assert!((1_700_000_000..1 << 40).contains(&now), "{now}");
    }
}
