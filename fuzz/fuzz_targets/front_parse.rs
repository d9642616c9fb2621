//! ss-local's other front-end parsers on arbitrary bytes: a SOCKS4/4a request, an RFC 1929
//! username/password message, an HTTP request head, and an HTTP `Proxy-Authorization` value.
//!
//! Nothing may panic. A message that parses must report a length inside the input and must not parse
//! from one byte less (the parsers are incremental: `Ok(None)` means "read more").

#![no_main]

use libfuzzer_sys::fuzz_target;
use ss_local::inbound::{http, socks4, Users};
use ss_local::socks5::parse_password;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, used))) = socks4::parse_request(data) {
        assert!((9..=data.len()).contains(&used));
        assert!(matches!(socks4::parse_request(&data[..used - 1]), Ok(None)), "a truncated request parsed");
    }

    if let Ok(Some(((user, password), used))) = parse_password(data) {
        assert_eq!(used, 3 + user.len() + password.len());
        assert!(matches!(parse_password(&data[..used - 1]), Ok(None)), "a truncated login parsed");
    }

    if let Ok(Some(head)) = http::parse_head(data) {
        // httparse takes bare LF line ends too, so the blank line may be "\n" alone.
        assert!(head.len <= data.len() && head.len >= 2);
        assert_eq!(data[head.len - 1], b'\n', "a head ends with its blank line");
    }

    let users = Users::new([("user", "password")]);
    let _ = users.check_basic(Some(data));
});
