//! Writes the committed seed corpus, `corpus/<target>/seed-*`: a few small valid inputs per target
//! under the targets' fixed keys, so the fuzzer starts past authentication (and valid SOCKS5 messages,
//! config files and `ss://` URLs for the parser targets).
//!
//! Run from `fuzz/`: `cargo run --example write_seeds`. Output is deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use ss_config::{format_ss_url, Plugin, ServerUrl};
use ss_crypto::udp::{self, Header2022, Sender, Udp2022};
use ss_crypto::{Address, Encryptor, Generation, Method, Salt};
use ss_fuzz::{key, methods, request_salt, NOW};

fn main() {
    let v4 = Address::Ip("192.0.2.7:443".parse().unwrap());
    let v6 = Address::Ip("[2001:db8::1]:8080".parse().unwrap());
    let domain = Address::domain("example.com", 80).unwrap();
    acl_seeds();
    write("address_parse", "ipv4", &encoded(&v4));
    write("address_parse", "ipv6", &encoded(&v6));
    write("address_parse", "domain", &encoded(&domain));
    // write_to sends this one as IPv4; the fuzzer needs the 16-byte form.
    write("address_parse", "mapped-ipv6", &[&[4][..], &[0; 10], &[0xff, 0xff, 10, 1, 2, 3, 0, 53]].concat());

    for method in Method::ALL {
        let target = match method.generation() {
            Generation::Classic => "tcp_decrypt_classic",
            Generation::Aead2022 => "tcp_decrypt_2022",
        };
        let salt = Salt::from_slice(method, &[0x11; 32][..method.salt_len()]).unwrap();
        let mut request = vec![128];
        let mut encryptor = Encryptor::request(method, &key(method), salt, &domain, &[0; 7]);
        encryptor.encrypt(b"GET / HTTP/1.1\r\n\r\n", NOW, &mut request).unwrap();
        encryptor.encrypt(b"more", NOW, &mut request).unwrap();
        write(target, &format!("{method}-request"), &request);
        let mut response = vec![40];
        let mut encryptor = Encryptor::response(method, &key(method), salt, request_salt(method));
        encryptor.encrypt(b"HTTP/1.1 200 OK\r\n\r\n", NOW, &mut response).unwrap();
        write(target, &format!("{method}-response"), &response);
    }

    for method in methods(Generation::Classic) {
        let salt = Salt::from_slice(method, &[0x22; 32][..method.salt_len()]).unwrap();
        let mut packet = Vec::new();
        udp::UdpClassic::new(method, &key(method)).unwrap().seal(salt, &v4, b"ping", &mut packet).unwrap();
        write("udp_open", &format!("{method}"), &packet);
    }
    for method in methods(Generation::Aead2022) {
        let sealer = Udp2022::new(method, &key(method)).unwrap();
        let client = Header2022 { session_id: 1, packet_id: 0, sender: Sender::Client, timestamp: NOW };
        let server = Header2022 { sender: Sender::Server { client_session_id: 1 }, session_id: 2, ..client };
        for (name, header) in [("client", client), ("server", server)] {
            let mut packet = Vec::new();
            sealer.seal(&header, &[0; 3], &v6, b"ping", &[0x33; 24], &mut packet).unwrap();
            write("udp_open", &format!("{method}-{name}"), &packet);
        }
    }

    // Unstructured input: every byte string is a case; these start at each method.
    for (index, method) in Method::ALL.iter().enumerate() {
        let bytes: Vec<u8> = (0..160u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        write("tcp_decrypt_structured", &format!("{method}"), &[&[index as u8][..], &bytes].concat());
    }

    forged_seeds(&v4, &domain);
    parser_seeds(&v4, &v6, &domain);
}

/// SOCKS5 messages, config files and `ss://` URLs for the parser targets.
fn parser_seeds(v4: &Address, v6: &Address, domain: &Address) {
    write("manager_command", "add-number", br#"add: {"server_port": 8001, "password": "secret", "method": "aes-256-gcm"}"#);
    write("manager_command", "add-string", b"add: {\"server_port\": \"8001\", \"password\": \"secret\"}\0");
    write("manager_command", "remove", br#"remove: {"server_port": "8001"}"#);
    write("manager_command", "ping", b"ping");
    write("manager_command", "list", b"list");
    write("socks5_parse", "greeting", &[5, 2, 0, 2]);
    write("socks5_parse", "connect-ipv4", &[&[5, 1, 0][..], &encoded(v4)].concat());
    write("socks5_parse", "connect-domain", &[&[5, 1, 0][..], &encoded(domain), b"GET /"].concat());
    write("socks5_parse", "udp-associate-ipv6", &[&[5, 3, 0][..], &encoded(v6)].concat());
    write("socks5_parse", "udp-datagram", &[&[0, 0, 0][..], &encoded(domain), b"ping"].concat());
    write("socks5_parse", "udp-fragment", &[&[0, 0, 1][..], &encoded(v4), b"ping"].concat());
    write("front_parse", "socks4", b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00");
    write("front_parse", "socks4a", b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.com\x00data");
    write("front_parse", "login", b"\x01\x05alice\x02pw");
    write("front_parse", "connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    write("front_parse", "get", b"GET http://example.com/ HTTP/1.1\r\nProxy-Authorization: Basic dXNlcjpwYXNzd29yZA==\r\n\r\n");
    write("front_parse", "basic", b"Basic dXNlcjpwYXNzd29yZA==");

    write("config_json", "example", include_bytes!("../../config.example.json"));
    write("config_json", "users", include_bytes!("../../config.users.example.json"));
    write(
        "users_json",
        "two-users",
        br#"[{"name":"alice","password":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
{"name":"bob","password":"a classic password"}]"#,
    );
    write(
        "config_json",
        "libev",
        br#"{"server":["::","0.0.0.0"],"server_port":"8388","local_port":1080,"password":"barfoo!",
"method":"chacha20-ietf-poly1305","timeout":60,"mode":"tcp_and_udp","plugin":"obfs-server",
"plugin_opts":"obfs=http","fast_open":true,"nofile":51200,"log_level":"warn"}"#,
    );
    write(
        "config_json",
        "shadowsocks-rust",
        br#"{"servers":[{"address":"a.example","port":8388,"method":"2022-blake3-aes-128-gcm",
"password":"AAECAwQFBgcICQoLDA0ODw=="},{"server":"[::1]:8389","method":"aes-256-gcm","password":"x",
"timeout":30}],"locals":[{"local_address":"127.0.0.1","local_port":1080,"protocol":"socks"}],
"handshake_timeout":5,"max_connections":"100","udp_timeout":300}"#,
    );

    // A method name with control characters: its error must still be one line (found by the fuzzer).
    write(
        "config_json",
        "control-characters",
        br#"{"server":"s","server_port":1,"password":"p","method":"chacha20\no\u001b[2J"}"#,
    );

    let psk = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let urls = [
        ("classic", ServerUrl::new("192.0.2.1".into(), 8388, Method::Aes128Gcm, "test".into()), None, None),
        (
            "2022-plugin-tag",
            ServerUrl::new("2001:db8::1".into(), 443, Method::Blake3Aes256Gcm, psk.into()),
            Some(Plugin::new("obfs-local", Some("obfs=http;obfs-host=a.example".into()))),
            Some("My server #1"),
        ),
    ];
    for (name, server, plugin, tag) in urls {
        let mut server = server.unwrap();
        server.plugin = plugin;
        server.tag = tag.map(Into::into);
        write("ss_url", name, format_ss_url(&server).as_bytes());
    }
    // The legacy all-base64 form, and a hand-written 2022 URL with an unescaped key.
    write("ss_url", "legacy", b"ss://YWVzLTI1Ni1nY206cGFzc0B3b3JkQGV4YW1wbGUuY29tOjgzODg=#Legacy");
    write(
        "ss_url",
        "2022-raw",
        format!("ss://2022-blake3-chacha20-poly1305:{psk}@h.example:1/?plugin=p").as_bytes(),
    );
}

/// ACL files: every section and alias and each kind of rule, and the lines that must only warn.
fn acl_seeds() {
    write(
        "acl_parse",
        "every-section",
        b"# comment\n||before.example\n[proxy_all]\n[bypass_list]\n10.0.0.0/8\n::1\n||cn\n\
          [black_list]\n|exact.example\n[proxy_list]\n(^|\\.)google\\.com$\n^www\\.x\\.org$\n\
          [white_list]\n^ad[0-9]+\\.\n[bypass_all]\n[reject_all]\n[accept_all]\n\
          [outbound_block_list]\n192.0.2.0/24\n||blocked.example\n[outbound_allow_list]\n192.0.2.7\n\
          [outbound_block_all]\n[outbound_allow_all]\n",
    );
    write("acl_parse", "bad-lines", b"[bypass_list]\r\n||crlf.example\r\n\xff\xfe\n||b\xc3\xbccher.de\n([unclosed\n[nope]\nx\n");
}

/// Plaintexts laid out as `fuzz_targets/forged_plaintext.rs` reads them.
fn forged_seeds(v4: &Address, domain: &Address) {
    let now = NOW.to_be_bytes();
    // Classic aes-256-gcm request: salt, length record, address and payload.
    let first = [encoded(domain), b"hello".to_vec()].concat();
    let len = (first.len() as u16).to_be_bytes();
    let aes256 = index(Method::Aes256Gcm);
    write(
        "forged_plaintext",
        "classic-request",
        &[&[aes256, 0, 128][..], &[0x11; 32], &len, &first].concat(),
    );
    // 2022 aes-256 request: fixed header, variable header (address, 4 bytes padding, payload), a chunk.
    let variable = [encoded(domain), vec![0, 4, 0, 0, 0, 0], b"hi".to_vec()].concat();
    let fixed = [&[0][..], &now, &(variable.len() as u16).to_be_bytes()].concat();
    let chunk = [&[0, 3][..], b"abc"].concat();
    write(
        "forged_plaintext",
        "2022-request",
        &[&[index(Method::Blake3Aes256Gcm), 0, 200][..], &[0x11; 32], &fixed, &variable, &chunk].concat(),
    );
    // 2022 aes-128 response: fixed header echoing the request salt, then the first payload.
    let fixed = [&[1][..], &now, request_salt(Method::Blake3Aes128Gcm).as_bytes(), &[0, 5]].concat();
    let blake3_aes128 = index(Method::Blake3Aes128Gcm);
    write(
        "forged_plaintext",
        "2022-response",
        &[&[blake3_aes128, 1, 60][..], &[0x11; 16], &fixed, b"hello"].concat(),
    );
    // Datagrams: classic aes-128-gcm, 2022 aes-256 from a client, 2022 chacha from a server.
    let body = [encoded(v4), b"ping".to_vec()].concat();
    let aes128 = index(Method::Aes128Gcm);
    write("forged_plaintext", "udp-classic", &[&[aes128, 2, 0][..], &[0x22; 16], &body].concat());
    let client = [&[0][..], &now, &[0, 0], &body].concat();
    let blake3_aes256 = index(Method::Blake3Aes256Gcm);
    write(
        "forged_plaintext",
        "udp-2022-client",
        &[&[blake3_aes256, 2, 0][..], &[0x44; 16], &client].concat(),
    );
    let server = [&[1][..], &now, &[0, 0, 0, 0, 0, 0, 0, 1], &[0, 2, 0, 0], &body].concat();
    write(
        "forged_plaintext",
        "udp-2022-server",
        &[&[index(Method::Blake3ChaCha20Poly1305), 3, 0][..], &[0x44; 16], &[0x33; 24], &server].concat(),
    );
}

/// The method byte that makes `forged_plaintext` pick `method` (its position in `Method::ALL`).
fn index(method: Method) -> u8 {
    Method::ALL.iter().position(|m| *m == method).unwrap() as u8
}

fn encoded(address: &Address) -> Vec<u8> {
    let mut bytes = Vec::new();
    address.write_to(&mut bytes);
    bytes
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}
