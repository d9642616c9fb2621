//! ss-local's SOCKS5 parsers on arbitrary bytes: the same input as a greeting, a request and a UDP
//! relay datagram header.
//!
//! Nothing may panic. A message that parses must report a length inside the input, must not parse from
//! one byte less (the stream parsers are incremental: `Ok(None)` means "read more"), and must re-encode
//! into the bytes it came from (RSV bytes aside; an IPv4-mapped IPv6 address goes out as IPv4).

#![no_main]

use libfuzzer_sys::fuzz_target;
use ss_fuzz::as_sent;
use ss_local::socks5::{self, parse_greeting, parse_request, parse_udp_header};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((greeting, used))) = parse_greeting(data) {
        assert_eq!(used, 2 + greeting.methods.len());
        assert_eq!(
            data[..used],
            [&[socks5::VERSION, greeting.methods.len() as u8][..], &greeting.methods].concat()
        );
        assert!(matches!(parse_greeting(&data[..used - 1]), Ok(None)), "a truncated greeting parsed");
    }

    if let Ok(Some((request, used))) = parse_request(data) {
        assert!(used <= data.len());
        assert_eq!(used, 3 + request.target.encoded_len());
        assert!(matches!(parse_request(&data[..used - 1]), Ok(None)), "a truncated request parsed");
        let mut encoded = vec![socks5::VERSION, request.command.into(), data[2]];
        request.target.write_to(&mut encoded);
        if as_sent(&request.target) == request.target {
            assert_eq!(encoded, data[..used], "re-encoding the request changed its bytes");
        }
        let reparsed = parse_request(&encoded).ok().flatten().map(|(request, _)| request.target);
        assert_eq!(reparsed, Some(as_sent(&request.target)));
    }

    if let Ok((header, used)) = parse_udp_header(data) {
        assert!(used <= data.len());
        assert_eq!(used, 3 + header.target.encoded_len());
        assert_eq!(header.frag, data[2]);
        let mut encoded = Vec::new();
        socks5::write_udp_header(&header.target, &mut encoded);
        if as_sent(&header.target) == header.target {
            assert_eq!(encoded[3..], data[3..used], "re-encoding the UDP header changed its address");
        }
        let (reparsed, reused) = parse_udp_header(&encoded).expect("a written UDP header parses");
        assert_eq!((reparsed.frag, reparsed.target, reused), (0, as_sent(&header.target), encoded.len()));
    }
});
