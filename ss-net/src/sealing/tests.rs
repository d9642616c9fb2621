//! The sealing reader over real loopback sockets and over a reader that splits its reads exactly:
//! what it lends decodes to what was read, for every method, however the reads fall on the slots;
//! and it holds a buffer only while sealed bytes wait.

use std::future::poll_fn;

use ss_crypto::tcp::Decryptor;
use ss_crypto::{Address, Key, Method, Salt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::DecryptReader;

const NOW: u64 = 1_704_164_645;

fn fixed_clock() -> u64 {
    NOW
}

fn key(method: Method) -> Key {
    Key::from_bytes(method, &[3; 32][..method.key_len()]).unwrap()
}

fn salt(method: Method, byte: u8) -> Salt {
    Salt::from_slice(method, &[byte; 32][..method.salt_len()]).unwrap()
}

fn target() -> Address {
    Address::domain("localhost", 8080).unwrap()
}

/// A server's response encryptor and the client's decryptor for it.
fn response_pair(method: Method) -> (Encryptor, Decryptor) {
    let key = key(method);
    let encryptor = Encryptor::response(method, &key, salt(method, 2), salt(method, 1));
    (encryptor, Decryptor::response(method, &key, salt(method, 1)))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Everything the reader lends until the end of the stream, consumed in pieces of at most `step`.
async fn drain<R: ReadVectored + Unpin>(reader: &mut SealingReader<R>, step: usize) -> Vec<u8> {
    let mut sealed = Vec::new();
    loop {
        let lent = reader.fill_buf().await.unwrap();
        if lent.is_empty() {
            return sealed;
        }
        let take = lent.len().min(step);
        sealed.extend_from_slice(&lent[..take]);
        reader.consume(take);
    }
}

/// Opens a response stream.
async fn open_response(decryptor: Decryptor, sealed: &[u8]) -> Vec<u8> {
    let mut reader = DecryptReader::new(sealed, decryptor).with_clock(fixed_clock);
    let mut plain = Vec::new();
    reader.read_to_end(&mut plain).await.unwrap();
    plain
}

async fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (near, far) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
    (near.unwrap(), far.unwrap().0)
}

#[tokio::test]
async fn what_it_lends_over_a_socket_opens_to_what_was_sent_for_every_method() {
    for method in Method::ALL {
        let (near, far) = loopback_pair().await;
        let (far_read, _far_write) = far.into_split();
        let (encryptor, decryptor) = response_pair(method);
        let mut reader = SealingReader::new(far_read, encryptor).with_clock(fixed_clock);
        let sent = pattern(700_000);
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut near = near;
                // Writes of odd sizes, so reads end anywhere in a slot.
                for piece in sent.chunks(77_777) {
                    near.write_all(piece).await.unwrap();
                }
                near.shutdown().await.unwrap();
            })
        };
        let sealed = drain(&mut reader, usize::MAX).await;
        writer.await.unwrap();
        assert_eq!(reader.payload_sent(), sent.len() as u64, "{method}");
        assert!(
            open_response(decryptor, &sealed).await == sent,
            "{method}: the stream opens to what was sent"
        );
    }
}

#[tokio::test]
async fn a_request_goes_out_with_its_header_first() {
    for method in Method::ALL {
        let key = key(method);
        let (near, far) = loopback_pair().await;
        let (far_read, _far_write) = far.into_split();
        let encryptor = Encryptor::request(method, &key, salt(method, 1), &target(), &[]);
        let mut reader = SealingReader::new(far_read, encryptor).with_clock(fixed_clock);
        let sent = pattern(100_000);
        let mut near = near;
        near.write_all(&sent).await.unwrap();
        near.shutdown().await.unwrap();
        let sealed = drain(&mut reader, 1000).await;

        let mut server =
            DecryptReader::new(&sealed[..], Decryptor::request(method, &key)).with_clock(fixed_clock);
        assert_eq!(server.read_target().await.unwrap(), target(), "{method}");
        let mut plain = Vec::new();
        server.read_to_end(&mut plain).await.unwrap();
        assert!(plain == sent, "{method}");
    }
}

/// Hands out a fixed script of read sizes (0 = end of stream), filling the gaps in order as readv
/// does, and records how many gaps each read was offered.
struct ScriptedReads {
    data: Vec<u8>,
    reads: Vec<usize>,
    gaps_offered: Vec<usize>,
}

impl ReadVectored for ScriptedReads {
    fn poll_read_vectored(
        &mut self,
        _: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        self.gaps_offered.push(bufs.len());
        let mut want = if self.reads.is_empty() { 0 } else { self.reads.remove(0) };
        let mut read = 0;
        for buf in bufs.iter_mut() {
            let take = want.min(buf.len()).min(self.data.len());
            buf[..take].copy_from_slice(&self.data[..take]);
            self.data.drain(..take);
            read += take;
            want -= take;
        }
        Poll::Ready(Ok(read))
    }
}

#[tokio::test]
async fn reads_that_end_inside_any_slot_seal_into_whole_chunks() {
    for method in Method::ALL {
        let (encryptor, decryptor) = response_pair(method);
        let max = method.max_chunk_payload();
        let large = slot_layout(buffer::LARGE, max);
        let large_room: usize = large.iter().map(|slot| slot.payload).sum();
        let large_slots = large.iter().filter(|slot| slot.payload > 0).count();
        // First flight, a read that fills the small buffer (the next is large), one that fills every
        // slot of the large buffer, one that ends inside the second slot (classic), one byte, the end.
        let reads = [5, buffer::START - CHUNK_HEAD - CHUNK_TAIL, large_room, (max + 3).min(large_room), 1, 0];
        let total: usize = reads.iter().sum();
        let data = pattern(total);
        let scripted = ScriptedReads { data: data.clone(), reads: reads.to_vec(), gaps_offered: Vec::new() };
        let mut reader = SealingReader::new(scripted, encryptor).with_clock(fixed_clock);
        let mut sealed = Vec::new();
        let mut lent_sizes = Vec::new();
        loop {
            let lent = reader.fill_buf().await.unwrap();
            if lent.is_empty() {
                break;
            }
            lent_sizes.push(lent.len());
            sealed.extend_from_slice(lent);
            let len = lent.len();
            reader.consume(len);
        }
        assert!(open_response(decryptor, &sealed).await == data, "{method}");

        // After the first flight each read's sealed bytes are its payload plus 34 bytes per chunk.
        let overhead = CHUNK_HEAD + CHUNK_TAIL;
        assert_eq!(lent_sizes[1], reads[1] + overhead, "{method}: the small buffer's one chunk");
        assert_eq!(lent_sizes[2], large_room + large_slots * overhead, "{method}: every slot full");
        let chunks = reads[3].div_ceil(max);
        assert_eq!(lent_sizes[3], reads[3] + chunks * overhead, "{method}: a short last chunk");
        let offered = &reader.get_ref().gaps_offered;
        assert_eq!(offered[0], 1, "{method}: the first flight reads into one buffer");
        assert_eq!(offered[2], large_slots, "{method}: a large read is offered every slot");
        match method.generation() {
            ss_crypto::Generation::Classic => assert_eq!(large_slots, 4, "{method}: four chunks per 64 KiB"),
            ss_crypto::Generation::Aead2022 => assert_eq!(large_slots, 1, "{method}: one chunk per read"),
        }
    }
}

#[test]
fn slots_lie_end_to_end_within_the_buffer_and_every_pool_size_has_one() {
    for max in [0x3FFF, 0xFFFF] {
        for len in [buffer::START, buffer::SMALL, buffer::LARGE] {
            let slots = slot_layout(len, max);
            assert!(slots[0].payload > 0, "{len} {max}: at least one slot");
            let mut end = 0;
            for slot in slots.iter().take_while(|slot| slot.payload > 0) {
                assert_eq!(slot.start, end, "{len} {max}: end to end");
                assert!(slot.payload <= max && slot.payload >= MIN_SLOT_PAYLOAD);
                end = slot.start + CHUNK_HEAD + slot.payload + CHUNK_TAIL;
            }
            assert!(end <= len, "{len} {max}: within the buffer");
            assert!(slots.iter().skip_while(|slot| slot.payload > 0).all(|slot| slot.payload == 0));
        }
    }
    let classic = slot_layout(buffer::LARGE, 0x3FFF);
    assert_eq!(
        &classic.map(|slot| slot.payload)[..3],
        &[0x3FFF; 3],
        "three full classic chunks, then the rest"
    );
    assert_eq!(slot_layout(buffer::LARGE, 0xFFFF)[0].payload, 0xFFFF, "one full 2022 chunk");
}

#[tokio::test]
async fn a_buffer_is_held_only_while_sealed_bytes_wait() {
    let method = Method::Aes128Gcm;
    let (near, far) = loopback_pair().await;
    let (far_read, _far_write) = far.into_split();
    let (encryptor, _) = response_pair(method);
    let mut reader = SealingReader::new(far_read, encryptor);
    let mut near = near;
    near.write_all(b"first").await.unwrap();
    let first = reader.fill_buf().await.unwrap().len();
    reader.consume(first);
    assert!(reader.first.is_empty() && reader.buf.is_empty(), "the first flight is let go once written");

    near.write_all(&pattern(3000)).await.unwrap();
    let lent = reader.fill_buf().await.unwrap().len();
    reader.consume(lent / 2);
    assert!(!reader.buf.is_empty(), "half still to write: the buffer is held");
    assert_eq!(reader.payload_sent(), 5, "the chunk half written is not counted yet");
    reader.consume(lent - lent / 2);
    assert!(reader.buf.is_empty(), "all written: no buffer while the next read waits");
    assert_eq!(reader.payload_sent(), 3005);

    let pending = poll_fn(|cx| Poll::Ready(Pin::new(&mut reader).poll_fill_buf(cx).is_pending())).await;
    assert!(pending, "nothing to read yet");
    assert!(reader.buf.is_empty(), "no buffer held while waiting");
}
