//! Property tests of the `nameserver` / `-d` parser: any text parses or fails with a one-line error
//! naming the field, and every list of valid addresses survives being written out and read back.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::nameservers;

/// One entry as a user might write it: `IP`, `IP:port`, `[v6]:port`, with spaces around.
fn entry() -> impl Strategy<Value = (String, SocketAddr)> {
    (any::<IpAddr>(), proptest::option::of(1u16..), " {0,2}", " {0,2}").prop_map(
        |(ip, port, before, after)| {
            let (text, addr) = match port {
                None => (ip.to_string(), SocketAddr::new(ip, 53)),
                Some(port) => (SocketAddr::new(ip, port).to_string(), SocketAddr::new(ip, port)),
            };
            (format!("{before}{text}{after}"), addr)
        },
    )
}

proptest! {
    #[test]
    fn any_text_parses_or_fails_in_one_line(text in any::<String>()) {
        if let Err(error) = nameservers(Some(&text)) {
            let message = error.to_string();
            prop_assert!(message.contains("nameserver"), "{message}");
            prop_assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn address_like_text_parses_or_fails_cleanly(text in "[0-9a-f:.\\[\\], ]{0,60}") {
        let _ = nameservers(Some(&text));
    }

    #[test]
    fn valid_lists_round_trip(entries in proptest::collection::vec(entry(), 0..6), empties in 0usize..3) {
        let mut texts: Vec<String> = entries.iter().map(|(text, _)| text.clone()).collect();
        // libev tolerates stray commas; empty entries are skipped.
        texts.extend(std::iter::repeat_n(String::new(), empties));
        let parsed = nameservers(Some(&texts.join(","))).unwrap();
        let expected: Vec<SocketAddr> = entries.iter().map(|(_, addr)| *addr).collect();
        prop_assert_eq!(&parsed, &expected);
        let written: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        prop_assert_eq!(nameservers(Some(&written.join(","))).unwrap(), expected);
    }
}

#[test]
fn names_and_port_zero_are_refused() {
    for text in ["dns.example", "127.0.0.1:0", "[::1]:0", "1.2.3.4:99999", "::1:53x"] {
        let error = nameservers(Some(text)).unwrap_err().to_string();
        assert!(error.contains("nameserver"), "{text}: {error}");
    }
}
