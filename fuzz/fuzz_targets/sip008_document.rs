//! Arbitrary bytes as a fetched SIP008 document (`OnlineConfig::parse_document`): nothing may panic,
//! every error is one line, and no server with a plugin outside `allowed_plugins` is ever kept.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ss_config::OnlineConfig;

fuzz_target!(|data: &[u8]| {
    let online = OnlineConfig {
        url: "https://example.com/sip008.json".into(),
        update_interval: Duration::from_secs(3600),
        ca_file: None,
        allowed_plugins: vec!["obfs-local".into()],
    };
    match online.parse_document(data) {
        Ok(list) => {
            assert!(!list.servers.is_empty(), "an empty list was accepted");
            for server in &list.servers {
                if let Some(plugin) = &server.plugin {
                    assert_eq!(plugin.command, "obfs-local", "a plugin not allowed was kept");
                    assert!(plugin.args.is_empty(), "plugin_args taken from a document");
                }
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains('\n'), "a multi-line error: {message:?}");
        }
    }
});
