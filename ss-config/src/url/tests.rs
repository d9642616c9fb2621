//! Unit tests of `ss://` URL parsing and formatting.

use super::*;

const PSK_128: &str = "AAECAwQFBgcICQoLDA0ODw==";
const PSK_256: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// 32 bytes whose base64 is full of characters a URL must escape.
const PSK_PLUS: &str = "++++++++++++++++++++++++++++++++++++++++++8=";
const STRONG: &str = "a long and varied password 1234";

fn parse(text: &str) -> ServerUrl {
    parse_ss_url(text).unwrap_or_else(|error| panic!("{text}: {error}"))
}

fn server(host: &str, port: u16, method: Method, password: &str) -> ServerUrl {
    ServerUrl::new(host.into(), port, method, password.into()).unwrap()
}

#[test]
fn every_method_round_trips_with_ipv6_plugin_and_tag() {
    for (index, method) in Method::ALL.into_iter().enumerate() {
        let password = match method {
            Method::Blake3Aes128Gcm => PSK_128,
            Method::Blake3Aes256Gcm => PSK_256,
            Method::Blake3ChaCha20Poly1305 => PSK_PLUS,
            _ => STRONG,
        };
        let host = ["example.com", "2001:db8::1", "192.0.2.1"][index % 3];
        let mut original = server(host, 8388 + index as u16, method, password);
        assert_eq!(original.key(), &Key::from_config_password(method, password).unwrap());
        for (plugin, tag) in [
            (None, None),
            (Some(("v2ray-plugin", Some("server;host=a b.example"))), Some("Tokyo #1 / 東京")),
            (Some(("obfs-local", None)), Some("+%&=?")),
        ] {
            original.plugin = plugin.map(|(command, options)| Plugin::new(command, options.map(Into::into)));
            original.tag = tag.map(Into::into);
            let url = format_ss_url(&original);
            assert!(!url.contains(' '), "{url}");
            assert_eq!(parse(&url), original, "{url}");
            assert_eq!(original.to_string(), url);
            let userinfo = url["ss://".len()..].split_once('@').unwrap().0;
            if method.is_2022() {
                assert!(userinfo.starts_with(&format!("{method}:")), "{url}");
                assert!(!userinfo.contains(['+', '=', '/']), "{url}");
            } else {
                assert!(!userinfo.contains([':', '=', '+', '/']), "base64url without padding: {url}");
            }
            assert_eq!(url.contains("@[2001:db8::1]:"), host.contains(':'), "{url}");
        }
    }
}

#[test]
fn sip002_examples() {
    let first = parse("ss://YWVzLTEyOC1nY206dGVzdA@192.168.100.1:8888#Example1");
    assert_eq!((first.host.as_str(), first.port, first.method()), ("192.168.100.1", 8888, Method::Aes128Gcm));
    assert_eq!(first.password(), "test");
    assert_eq!(first.tag.as_deref(), Some("Example1"));
    assert_eq!(first.plugin, None);
    let psk = PSK_256.replace('=', "%3D");
    let third = parse(&format!("ss://2022-blake3-aes-256-gcm:{psk}@192.168.100.1:8888/#Example3"));
    assert_eq!(third.key(), &Key::from_base64(Method::Blake3Aes256Gcm, PSK_256).unwrap());
    // The second example's rc4-md5 is refused as insecure, whatever the URL says.
    let rc4 = "ss://cmM0LW1kNTpwYXNzd2Q@192.168.100.1:8888/?plugin=obfs-local%3Bobfs%3Dhttp#Example2";
    assert!(matches!(parse_ss_url(rc4), Err(UrlError::Method(MethodError::Insecure { .. }))));
}

#[test]
fn base64_padding_is_optional_and_both_alphabets_work() {
    for userinfo in [
        "YWVzLTEyOC1nY206dGVzdA",
        "YWVzLTEyOC1nY206dGVzdA==",
        "YWVzLTEyOC1nY206dGVzdA%3D%3D",
        "aes-128-gcm:test",
        "aes-128-gcm%3Atest",
    ] {
        let url = parse(&format!("ss://{userinfo}@h:1"));
        assert_eq!((url.method(), url.password()), (Method::Aes128Gcm, "test"), "{userinfo}");
    }
    for userinfo in ["Y2hhY2hhMjAtaWV0Zi1wb2x5MTMwNTphPmI/Y35k", "Y2hhY2hhMjAtaWV0Zi1wb2x5MTMwNTphPmI_Y35k"] {
        assert_eq!(parse(&format!("ss://{userinfo}@h:1")).password(), "a>b?c~d", "{userinfo}");
    }
    // An unescaped PSK: '+' in the user info is a plus, not a space.
    let url = parse(&format!("SS://2022-blake3-chacha20-poly1305:{PSK_PLUS}@h:1"));
    assert_eq!(url.password(), PSK_PLUS);
}

#[test]
fn ipv6_hosts_are_bracketed() {
    let url = parse("ss://YWVzLTEyOC1nY206dGVzdA@[::1]:8388/");
    assert_eq!((url.host.as_str(), url.port), ("::1", 8388));
    assert_eq!(format_ss_url(&url), "ss://YWVzLTEyOC1nY206dGVzdA@[::1]:8388");
    for (address, error) in [
        ("::1:8388", "bad host: an IPv6 address must be in brackets, e.g. [::1]:8388"),
        ("[::1", "bad host: unclosed '['"),
        ("[::1]", "missing port (the address must be host:port)"),
        ("[::1]8388", "bad host: \"8388\" after ']'"),
        ("[1.2.3.4]:1", "bad host: \"1.2.3.4\" in brackets is not an IPv6 address"),
    ] {
        let text = format!("ss://YWVzLTEyOC1nY206dGVzdA@{address}");
        assert_eq!(parse_ss_url(&text).unwrap_err().to_string(), error, "{address}");
    }
}

#[test]
fn plugin_query() {
    let base = "ss://YWVzLTEyOC1nY206dGVzdA@h:1/?";
    let url = parse(&format!("{base}plugin=obfs-local%3Bobfs%3Dhttp%3Bobfs-host%3Dexample.com"));
    let expected = Plugin::new("obfs-local", Some("obfs=http;obfs-host=example.com".into()));
    assert_eq!(url.plugin, Some(expected));
    let url = parse(&format!("{base}group=x&plugin=v2ray-plugin;path=/a+b&plugin=ignored"));
    let expected = Plugin::new("v2ray-plugin", Some("path=/a b".into()));
    assert_eq!(url.plugin, Some(expected), "form encoding: '+' is a space; the first plugin counts");
    let url = parse(&format!("{base}plugin=simple-obfs%3B"));
    assert_eq!(url.plugin, Some(Plugin::new("simple-obfs", None)));
    for query in ["plugin=", "plugin", "other=1", ""] {
        assert_eq!(parse(&format!("{base}{query}")).plugin, None, "{query}");
    }
    assert_eq!(parse_ss_url(&format!("{base}plugin=%G1")), Err(UrlError::Percent("plugin parameter")));
    // No '/' before the query is fine too.
    assert!(parse("ss://YWVzLTEyOC1nY206dGVzdA@h:1?plugin=p").plugin.is_some());
}

#[test]
fn tags_are_percent_decoded() {
    let url = parse("ss://YWVzLTEyOC1nY206dGVzdA@h:1#My%20Server%20%E6%9D%B1+1");
    assert_eq!(url.tag.as_deref(), Some("My Server 東+1"));
    assert!(format_ss_url(&url).ends_with("#My%20Server%20%E6%9D%B1%2B1"));
    assert_eq!(parse("ss://YWVzLTEyOC1nY206dGVzdA@h:1#").tag, None);
    assert_eq!(parse_ss_url("ss://YWVzLTEyOC1nY206dGVzdA@h:1#100%"), Err(UrlError::Percent("tag")));
    assert_eq!(parse_ss_url("ss://YWVzLTEyOC1nY206dGVzdA@h:1#%FF"), Err(UrlError::Percent("tag")));
}

#[test]
fn bad_user_info_is_refused_without_echoing_the_password() {
    for userinfo in ["not*base64", "YWVzLTEyOC1nY20", "", "Zm9v"] {
        let error = parse_ss_url(&format!("ss://{userinfo}@h:1"));
        assert_eq!(error, Err(UrlError::Userinfo), "{userinfo}");
    }
    assert_eq!(parse_ss_url("ss://aes-128-gcm:te%st@h:1"), Err(UrlError::Percent("user info")));
    assert_eq!(parse_ss_url("ss://aes-128-gcm:@h:1"), Err(UrlError::EmptyPassword));
    let unknown = parse_ss_url("ss://Zm9vLWNpcGhlcjpzZWNyZXQtcGFzc3dvcmQ@h:1").unwrap_err();
    assert!(matches!(unknown, UrlError::Method(MethodError::Unknown { .. })), "{unknown}");
    assert!(unknown.to_string().starts_with("unknown method \"foo-cipher\""), "{unknown}");
    assert!(!unknown.to_string().contains("secret-password"));
    let control = parse_ss_url("ss://aes-128-gcm%0A:test@h:1").unwrap_err().to_string();
    assert!(control.starts_with(r#"unknown method "aes-128-gcm\n""#), "{control}");
    let short_key = parse_ss_url(&format!("ss://2022-blake3-aes-256-gcm:{PSK_128}@h:1")).unwrap_err();
    assert!(matches!(short_key, UrlError::Key(KeyError::WrongLength { .. })), "{short_key}");
    assert!(!short_key.to_string().contains(PSK_128));
    let not_base64 = parse_ss_url("ss://2022-blake3-aes-128-gcm:hunter2!@h:1").unwrap_err();
    assert!(matches!(not_base64, UrlError::Key(KeyError::NotBase64 { .. })), "{not_base64}");
}

#[test]
fn ports_scheme_and_path() {
    for (address, error) in [
        ("h", UrlError::MissingPort),
        ("h:", UrlError::MissingPort),
        ("h:0", UrlError::Port("0".into())),
        ("h:70000", UrlError::Port("70000".into())),
        ("h:+80", UrlError::Port("+80".into())),
        ("h:x", UrlError::Port("x".into())),
        (":1", UrlError::Host("empty".into())),
        ("h:1/path", UrlError::Path("/path".into())),
        ("a b:1", UrlError::Host("\"a b\" contains ' '".into())),
    ] {
        assert_eq!(parse_ss_url(&format!("ss://YWVzLTEyOC1nY206dGVzdA@{address}")), Err(error), "{address}");
    }
    for text in ["", "ss:/", "http://YWVzLTEyOC1nY206dGVzdA@h:1", "ss:YWVzLTEyOC1nY206dGVzdA@h:1"] {
        assert_eq!(parse_ss_url(text), Err(UrlError::Scheme), "{text}");
    }
    assert_eq!(parse(" ss://YWVzLTEyOC1nY206dGVzdA@h:08388\n").port, 8388);
}

#[test]
fn legacy_all_base64_form() {
    // base64("aes-256-gcm:pass@word@example.com:8388"): the last '@' ends the password.
    let url = parse("ss://YWVzLTI1Ni1nY206cGFzc0B3b3JkQGV4YW1wbGUuY29tOjgzODg=#Legacy");
    assert_eq!((url.method(), url.password()), (Method::Aes256Gcm, "pass@word"));
    assert_eq!((url.host.as_str(), url.port, url.tag.as_deref()), ("example.com", 8388, Some("Legacy")));
}

#[test]
fn constructor_checks_and_entries() {
    let bad = |host: &str, port: u16, method: Method, password: &str| {
        ServerUrl::new(host.into(), port, method, password.into()).unwrap_err()
    };
    assert_eq!(bad("h", 1, Method::Aes128Gcm, ""), UrlError::EmptyPassword);
    assert_eq!(bad("h", 0, Method::Aes128Gcm, STRONG), UrlError::Port("0".into()));
    assert!(matches!(bad("a/b", 1, Method::Aes128Gcm, STRONG), UrlError::Host(_)));
    assert!(matches!(bad("fe80::1%eth0", 1, Method::Aes128Gcm, STRONG), UrlError::Host(_)));
    assert!(matches!(bad("h", 1, Method::Blake3Aes128Gcm, STRONG), UrlError::Key(_)));

    let weak = server("h", 1, Method::ChaCha20IetfPoly1305, "barfoo!").to_entry();
    assert!(weak.password_is_weak);
    assert_eq!(weak.key, Key::from_password(Method::ChaCha20IetfPoly1305, "barfoo!").unwrap());
    let psk = server("::1", 2, Method::Blake3Aes128Gcm, PSK_128).to_entry();
    assert_eq!((psk.host.as_str(), psk.port, psk.password_is_weak), ("::1", 2, false));
}

#[test]
fn debug_output_hides_the_password() {
    let url = server("h", 1, Method::Aes256Gcm, STRONG);
    let debug = format!("{url:?}");
    assert!(!debug.contains(STRONG) && debug.contains("redacted"), "{debug}");
}

#[test]
fn percent_coding() {
    assert_eq!(percent_encode("a-Z_0.~ /:%é"), "a-Z_0.~%20%2F%3A%25%C3%A9");
    assert_eq!(percent_decode("a%20b+c%2b", true).as_deref(), Some("a b c+"));
    assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
    for bad in ["%", "%2", "%zz", "%+1", "%C3"] {
        assert_eq!(percent_decode(bad, false), None, "{bad}");
    }
}

mod entries {
    //! Any server a config can hold and a link can carry goes to a link and back unchanged.

    use proptest::prelude::*;
    use ss_crypto::is_weak_password;

    use super::*;
    use crate::ServerEntry;

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z]{2,6}){0,2}",
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
        ]
    }

    fn plugin() -> impl Strategy<Value = Option<Plugin>> {
        // A command has no ';' (the link splits command and options at the first one) and is not blank.
        let command = "[a-zA-Z0-9._/-]{1,20}";
        let options = proptest::option::of("[^\\x00-\\x1f]{1,40}");
        proptest::option::of((command, options).prop_map(|(command, options)| Plugin::new(command, options)))
    }

    fn entry() -> impl Strategy<Value = ServerEntry> {
        let method = proptest::sample::select(Method::ALL.to_vec());
        let secret = (method, any::<[u8; 32]>(), "[^\\x00-\\x1f]{1,40}").prop_map(|(method, bytes, text)| {
            if method.is_2022() {
                let key = Key::from_bytes(method, &bytes[..method.key_len()]).unwrap();
                (method, key.to_base64())
            } else {
                (method, text)
            }
        });
        let tag = proptest::option::of("[^\\x00-\\x1f]{1,30}");
        (host(), 1..=u16::MAX, secret, plugin(), tag).prop_map(
            |(host, port, (method, password), plugin, tag)| ServerEntry {
                host,
                port,
                method,
                key: Key::from_config_password(method, &password).unwrap(),
                password_is_weak: !method.is_2022() && is_weak_password(&password),
                plugin,
                password: Some(password),
                tag,
                users: None,
                identity_keys: Vec::new(),
                weights: crate::Weights::default(),
            },
        )
    }

    proptest! {
        #[test]
        fn entry_to_link_and_back(entry in entry()) {
            let link = entry.to_url().unwrap().to_string();
            let parsed = parse_ss_url(&link).map_err(|error| TestCaseError::fail(format!("{link}: {error}")))?;
            prop_assert_eq!(parsed.to_entry(), entry, "{}", link);
        }
    }

    #[test]
    fn a_classic_method_given_by_its_key_has_no_link() {
        let key = Key::from_password(Method::Aes128Gcm, STRONG).unwrap();
        let entry = ServerEntry { password: None, ..server("h", 1, Method::Aes128Gcm, STRONG).to_entry() };
        assert_eq!(entry.key, key);
        assert!(entry.to_url().is_err());
        // Nor does a SIP023 chain: SIP002 has no form for the identity keys.
        let psk = Key::from_base64(Method::Blake3Aes128Gcm, PSK_128).unwrap();
        let chain = ServerEntry {
            identity_keys: vec![psk],
            ..server("h", 1, Method::Blake3Aes128Gcm, PSK_128).to_entry()
        };
        assert!(chain.to_url().unwrap_err().contains("iPSK"));
    }
}
