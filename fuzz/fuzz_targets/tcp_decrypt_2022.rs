//! Arbitrary bytes into the request and response decryptors of every AEAD-2022 method (fixed PSK,
//! fixed clock).
//!
//! The first byte says where the rest is cut into two reads. Nothing may panic, and every promise
//! [`ss_fuzz::decrypt_stream`] checks must hold. Random bytes rarely authenticate: the seeds are
//! valid streams under the fixed key, so mutations of them do.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ss_crypto::Generation;
use ss_fuzz::{decrypt_stream, methods, split_point, Direction, NOW};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, wire)) = data.split_first() else { return };
    for method in methods(Generation::Aead2022) {
        for direction in Direction::BOTH {
            decrypt_stream(method, direction, wire, split_point(cut, wire.len()), NOW);
        }
    }
});
