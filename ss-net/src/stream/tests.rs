//! The adapters over in-memory pipes: both directions for every method, early salt, stale headers,
//! truncation, and the buffers an idle reader and writer hold.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use ss_crypto::{Key, Method};

const NOW: u64 = 1_704_164_645;

fn fixed_clock() -> u64 {
    NOW
}

fn pair(method: Method) -> (Key, Salt, Salt) {
    let key = Key::from_bytes(method, &[3; 32][..method.key_len()]).unwrap();
    let client_salt = Salt::from_slice(method, &[1; 32][..method.salt_len()]).unwrap();
    let server_salt = Salt::from_slice(method, &[2; 32][..method.salt_len()]).unwrap();
    (key, client_salt, server_salt)
}

/// The sealed bytes of a client stream of `method` to 127.0.0.1:80 (keys from [`pair`]) carrying
/// `payloads`, each written on its own, and the key that opens them.
async fn sealed_request(method: Method, payloads: &[&[u8]]) -> (Key, Vec<u8>) {
    let (key, salt, _) = pair(method);
    let target = Address::Ip("127.0.0.1:80".parse().unwrap());
    let mut request = Vec::new();
    let mut up = EncryptWriter::new(&mut request, Encryptor::request(method, &key, salt, &target, &[]));
    for payload in payloads {
        up.write_all(payload).await.unwrap();
    }
    (key, request)
}

#[tokio::test]
async fn request_and_response_flow_through_a_socket_pair() {
    for method in Method::ALL {
        let (key, client_salt, server_salt) = pair(method);
        let (client, server) = tokio::io::duplex(1000);
        let (client_read, client_write) = tokio::io::split(client);
        let (server_read, server_write) = tokio::io::split(server);
        let target = Address::domain("localhost", 8080).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();

        let mut up =
            EncryptWriter::new(client_write, Encryptor::request(method, &key, client_salt, &target, &[]))
                .with_clock(fixed_clock);
        let sender = {
            let big = big.clone();
            tokio::spawn(async move {
                up.write_all(&big).await.unwrap();
                up.shutdown().await.unwrap();
            })
        };
        let mut server_reader =
            DecryptReader::new(server_read, Decryptor::request(method, &key)).with_clock(fixed_clock);
        assert_eq!(server_reader.read_target().await.unwrap(), target);
        let request_salt = server_reader.authenticated_salt().unwrap();
        assert_eq!(request_salt, client_salt);
        let mut received = Vec::new();
        server_reader.read_to_end(&mut received).await.unwrap();
        assert!(received == big, "{method}");
        sender.await.unwrap();

        let mut down =
            EncryptWriter::new(server_write, Encryptor::response(method, &key, server_salt, request_salt))
                .with_clock(fixed_clock);
        down.write_all(b"reply").await.unwrap();
        down.shutdown().await.unwrap();
        let mut client_reader =
            DecryptReader::new(client_read, Decryptor::response(method, &key, client_salt))
                .with_clock(fixed_clock);
        let mut reply = Vec::new();
        client_reader.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
    }
}

#[tokio::test]
async fn the_salt_is_known_before_the_rest_of_the_header_arrives() {
    for method in Method::ALL {
        let (key, client_salt, _) = pair(method);
        let target = Address::domain("localhost", 8080).unwrap();
        let mut request = Vec::new();
        let mut up =
            EncryptWriter::new(&mut request, Encryptor::request(method, &key, client_salt, &target, &[]))
                .with_clock(fixed_clock);
        up.write_all(b"hello").await.unwrap();
        // Salt and the first record: the fixed header (2022) or the first length (classic).
        let first_record = if method.is_2022() { 1 + 8 + 2 } else { 2 } + ss_crypto::TAG_LEN;
        let split = method.salt_len() + first_record;

        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(&request[..split]).await.unwrap();
        let mut reader = DecryptReader::new(server, Decryptor::request(method, &key)).with_clock(fixed_clock);
        let salt = tokio::time::timeout(std::time::Duration::from_secs(5), reader.read_salt()).await;
        assert_eq!(salt.expect("read_salt waited for more than the first record").unwrap(), client_salt);
        client.write_all(&request[split..]).await.unwrap();
        assert_eq!(reader.read_target().await.unwrap(), target, "{method}");
        let mut hello = [0u8; 5];
        reader.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello", "{method}");
    }
}

#[tokio::test]
async fn a_stale_2022_header_yields_no_salt() {
    for method in Method::ALL.into_iter().filter(|m| m.is_2022()) {
        let (key, client_salt, _) = pair(method);
        let target = Address::Ip("127.0.0.1:80".parse().unwrap());
        let mut request = Vec::new();
        let mut up =
            EncryptWriter::new(&mut request, Encryptor::request(method, &key, client_salt, &target, &[]))
                .with_clock(|| NOW - 31);
        up.flush().await.unwrap();
        let mut reader =
            DecryptReader::new(&request[..], Decryptor::request(method, &key)).with_clock(fixed_clock);
        let error = reader.read_salt().await.unwrap_err();
        let inner = error.get_ref().and_then(|e| e.downcast_ref::<DecryptError>());
        assert_eq!(inner, Some(&DecryptError::BadTimestamp), "{method}");
        assert_eq!(reader.authenticated_salt(), None, "{method}");
    }
}

#[tokio::test]
async fn flush_sends_an_address_only_request() {
    for method in Method::ALL {
        let (key, client_salt, _) = pair(method);
        let (client, server) = tokio::io::duplex(4096);
        let target = Address::Ip("127.0.0.1:80".parse().unwrap());
        let mut up = EncryptWriter::new(client, Encryptor::request(method, &key, client_salt, &target, &[]))
            .with_clock(fixed_clock);
        up.flush().await.unwrap();
        let mut reader = DecryptReader::new(server, Decryptor::request(method, &key)).with_clock(fixed_clock);
        assert_eq!(reader.read_target().await.unwrap(), target, "{method}");
    }
}

#[tokio::test]
async fn garbage_is_invalid_data_and_truncation_is_an_error() {
    for method in Method::ALL {
        let (key, ..) = pair(method);
        let garbage = [0x5a; 200];
        let mut reader = DecryptReader::new(&garbage[..], Decryptor::request(method, &key));
        let error = reader.read_target().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let inner = error.get_ref().and_then(|e| e.downcast_ref::<DecryptError>());
        assert_eq!(inner, Some(&DecryptError::AuthFailure));

        let short = vec![0x5a; method.salt_len() - 1];
        let mut reader = DecryptReader::new(&short[..], Decryptor::request(method, &key));
        let error = reader.read_target().await.unwrap_err();
        let inner = error.get_ref().and_then(|e| e.downcast_ref::<DecryptError>());
        assert_eq!(inner, Some(&DecryptError::Truncated), "{method}");

        let mut reader = DecryptReader::new(&[][..], Decryptor::request(method, &key));
        assert_eq!(reader.read_target().await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}

mod buffer_use {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let method = Method::Aes256Gcm;
        let key = Key::from_bytes(method, &[3; 32]).unwrap();
        let salt = Salt::from_slice(method, &[1; 32]).unwrap();
        let (client, server) = tokio::io::duplex(4096);
        let target = Address::Ip("127.0.0.1:80".parse().unwrap());
        let mut up = EncryptWriter::new(client, Encryptor::request(method, &key, salt, &target, &[]));
        up.write_all(b"ping").await.unwrap();
        let mut reader = DecryptReader::new(server, Decryptor::request(method, &key));
        reader.read_target().await.unwrap();
        assert_eq!(reader.fill_buf().await.unwrap(), b"ping");
        reader.consume(4);
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut reader).poll_fill_buf(cx).is_pending()))
                .await;
        assert!(pending);
        assert!(reader.buf.is_empty(), "buffer held while idle");
        assert!(up.out.capacity() == 0, "writer buffer held while idle");
    }

    #[tokio::test]
    async fn plaintext_handed_on_in_full_releases_the_buffer_at_once() {
        let method = Method::ChaCha20IetfPoly1305;
        let (key, request) = sealed_request(method, &[b"first", b"second"]).await;
        let mut reader = DecryptReader::new(&request[..], Decryptor::request(method, &key));
        reader.read_target().await.unwrap();
        assert_eq!(reader.fill_buf().await.unwrap(), b"first");
        reader.consume(2);
        assert!(!reader.buf.is_empty(), "part of the plaintext is still to go");
        reader.consume(3);
        // The second record was read with the first: still in the buffer, so it is kept.
        assert!(!reader.buf.is_empty(), "a record read but not opened is kept");
        assert_eq!(reader.fill_buf().await.unwrap(), b"second");
        reader.consume(6);
        assert!(
            reader.buf.is_empty(),
            "nothing left to hand on: no buffer held, with the writer waiting or not"
        );
        assert_eq!(reader.fill_buf().await.unwrap(), b"", "then the end of the stream");
    }
}

#[tokio::test]
async fn a_reader_dropped_mid_record_gives_its_buffer_back() {
    let method = Method::Aes256Gcm;
    let (key, request) = sealed_request(method, &[b"hello"]).await;
    let (mut client, server) = tokio::io::duplex(4096);
    // Half the request: the reader must wait inside a record, holding its buffer.
    client.write_all(&request[..request.len() / 2]).await.unwrap();
    let mut reader = DecryptReader::new(server, Decryptor::request(method, &key));
    let waiting = std::future::poll_fn(|cx| Poll::Ready(reader.poll_target(cx).is_pending())).await;
    assert!(waiting && !reader.buf.is_empty(), "holds a buffer mid-record");
    let before = buffer::pooled(buffer::START);
    drop(reader);
    assert_eq!(buffer::pooled(buffer::START), before + 1, "buffer back in the pool");
}

#[tokio::test]
async fn a_peeked_head_is_opened_by_the_decryptor_chosen_after_it() {
    for method in Method::ALL {
        let (key, client_salt, _) = pair(method);
        let other = Key::from_bytes(method, &[4; 32][..method.key_len()]).unwrap();
        let target = Address::domain("localhost", 8080).unwrap();
        let mut wire = Vec::new();
        Encryptor::request(method, &key, client_salt, &target, &[])
            .encrypt(b"after the head", NOW, &mut wire)
            .unwrap();
        // Delivered a few bytes at a time, so the peek has to wait for more than one read.
        let (mut client, server) = tokio::io::duplex(7);
        let sender = tokio::spawn(async move { client.write_all(&wire).await.unwrap() });
        let mut reader =
            DecryptReader::new(server, Decryptor::request(method, &other)).with_clock(fixed_clock);
        let head_len = method.salt_len() + 18;
        let head = reader.peek_ciphertext(head_len).await.unwrap().to_vec();
        assert_eq!(&head[..method.salt_len()], client_salt.as_bytes(), "{method}");
        reader.set_decryptor(Decryptor::request(method, &key));
        assert_eq!(reader.read_target().await.unwrap(), target, "{method}");
        let mut payload = [0u8; 14];
        reader.read_exact(&mut payload).await.unwrap();
        assert_eq!(&payload, b"after the head");
        sender.await.unwrap();
    }
}
