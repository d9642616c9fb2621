//! Arbitrary text as an `ss://` URL. Nothing may panic and errors are one line; a URL that parses must
//! format into a URL that parses back to the same server, and formatting that one again must change nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ss_config::{format_ss_url, parse_ss_url};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let server = match parse_ss_url(text) {
        Ok(server) => server,
        Err(error) => {
            let message = error.to_string();
            assert!(!message.contains('\n'), "a multi-line error: {message:?}");
            return;
        }
    };
    let url = format_ss_url(&server);
    let reparsed = parse_ss_url(&url).unwrap_or_else(|error| panic!("{url:?} does not parse: {error}"));
    assert_eq!(reparsed, server, "{url:?} parsed differently");
    assert_eq!(format_ss_url(&reparsed), url);
    let entry = server.to_entry();
    assert_eq!((entry.host, entry.port, entry.method), (server.host.clone(), server.port, server.method()));
});
