//! Arbitrary text as a config file: `RawConfig::from_json`, then `Config::from_raw` with an empty
//! command line. Nothing may panic, and every error is one line, as ss-config promises.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ss_config::{CliArgs, Config, RawConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let checked = RawConfig::from_json(text, Path::new("fuzz.json"))
        .and_then(|raw| Config::from_raw(raw, &CliArgs::default()));
    match checked {
        // Only an online config (SIP008) may bring every server.
        Ok(config) => assert!(
            !config.servers.is_empty() || config.online_config.is_some(),
            "a config without servers was accepted"
        ),
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains('\n'), "a multi-line error: {message:?}");
        }
    }
});
