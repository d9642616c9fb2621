//! ss-server's ss-manager command parser on arbitrary datagrams (a panel's `add: {...}`, `ping`, ...).
//!
//! Nothing may panic. A parsed `add` has a port in 1-65535 and a non-empty password, and its replies
//! (`list`, `ping`) have their shape.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ss_server::manage::command::{list_reply, parse, stat_reply, Command};

fuzz_target!(|data: &[u8]| {
    let Ok(command) = parse(data) else { return };
    if let Command::Add(spec) = command {
        assert!(spec.port != 0 && !spec.password.is_empty());
        let list = list_reply([(&spec, "aes-256-gcm".to_string())]);
        assert!(list.starts_with('[') && list.ends_with(']'), "{list}");
        let stat = stat_reply([(spec.port, u64::MAX)]);
        assert!(stat.starts_with("stat: {"), "{stat}");
    }
});

