//! Arbitrary text as a users file (`users_file`, re-read on SIGHUP): `parse_users_json`, then
//! `check_users` for a classic and a 2022 method. Nothing may panic, and every error is one line.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ss_config::users::{check_users, parse_users_json};
use ss_crypto::Method;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let users = match parse_users_json(text, Path::new("users.json")) {
        Ok(users) => users,
        Err(error) => {
            assert!(!error.to_string().contains('\n'), "a multi-line error: {error}");
            return;
        }
    };
    for method in [Method::Aes256Gcm, Method::Blake3Aes128Gcm] {
        match check_users(method, "", &users, None) {
            Ok(list) => assert_eq!(list.users.len(), users.len()),
            Err(error) => assert!(!error.to_string().contains('\n'), "a multi-line error: {error}"),
        }
    }
});
