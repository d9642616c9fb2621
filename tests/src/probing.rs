//! Support for the probe-resistance and target-policy tests (tests/probes.rs, tests/policy.rs):
//! hand-made client flights (valid, replayed, or sealed around bytes our encoder would never write) and
//! canary listeners that record every connection the server makes to them. Every address is loopback.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use rand_core::{OsRng, RngCore};
use ss_crypto::stream::{unix_now, DecryptReader, EncryptWriter};
use ss_crypto::{Address, Algorithm, Decryptor, Encryptor, Key, Method, Salt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::{test_key, STEP};

/// A fresh random salt for `method`.
pub fn random_salt(method: Method) -> Salt {
    Salt::random(method, &mut OsRng)
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A valid client's first flight under [`test_key`]: salt, header and `payload` (non-empty) to
/// `target`, exactly as our client sends it, with the 2022 timestamp `now` (Unix seconds).
pub fn first_flight(method: Method, salt: Salt, target: &Address, payload: &[u8], now: u64) -> Vec<u8> {
    let mut out = Vec::new();
    Encryptor::request(method, &test_key(method), salt, target, &[])
        .encrypt(payload, now, &mut out)
        .expect("fresh nonce counter");
    out
}

/// Like [`first_flight`], but the target is given as raw bytes that are sealed as they are, so the
/// request authenticates whatever they say: an unknown address type, an empty name, or an IPv4-mapped
/// IPv6 address (which [`Address::write_to`] would shorten to IPv4).
///
/// ```text
/// classic: salt | seal(len) | seal(raw address | payload)
/// 2022:    salt | seal(0 | now | len) | seal(raw address | padding_len 0 | payload)
/// ```
pub fn sealed_first_flight(
    method: Method,
    salt: Salt,
    raw_address: &[u8],
    payload: &[u8],
    now: u64,
) -> Vec<u8> {
    assert!(!payload.is_empty(), "2022 requests without padding need a payload");
    let subkey = test_key(method).session_subkey(method, salt.as_bytes());
    let mut sealer = RecordSealer { algorithm: method.algorithm(), key: subkey, counter: 0 };
    let mut body = raw_address.to_vec();
    if method.is_2022() {
        body.extend_from_slice(&0u16.to_be_bytes());
    }
    body.extend_from_slice(payload);
    let len = u16::try_from(body.len()).expect("first chunk fits a length field");
    let mut out = salt.as_bytes().to_vec();
    if method.is_2022() {
        let mut fixed = vec![0u8];
        fixed.extend_from_slice(&now.to_be_bytes());
        fixed.extend_from_slice(&len.to_be_bytes());
        sealer.seal(&fixed, &mut out);
    } else {
        sealer.seal(&len.to_be_bytes(), &mut out);
    }
    sealer.seal(&body, &mut out);
    out
}

/// The raw bytes of `address` as a request header carries them.
pub fn address_bytes(address: &Address) -> Vec<u8> {
    let mut out = Vec::new();
    address.write_to(&mut out);
    out
}

/// A well-behaved client: connects to `server`, asks for `target`, sends `payload` and reads as many
/// bytes back (the target echoes). Every step is bounded by [`STEP`].
pub async fn round_trip(
    server: SocketAddr,
    method: Method,
    target: &Address,
    payload: &[u8],
) -> io::Result<Vec<u8>> {
    let stream = bounded(TcpStream::connect(server)).await?;
    let (read_half, write_half) = stream.into_split();
    let salt = random_salt(method);
    let key = test_key(method);
    let mut writer = EncryptWriter::new(write_half, Encryptor::request(method, &key, salt, target, &[]));
    let mut reader = DecryptReader::new(read_half, Decryptor::response(method, &key, salt));
    bounded(writer.write_all(payload)).await?;
    bounded(writer.flush()).await?;
    let mut back = vec![0u8; payload.len()];
    bounded(reader.read_exact(&mut back)).await?;
    Ok(back)
}

/// Sends `flight` (made with `salt`) in one write, reads the server's raw response stream until it
/// decrypts to `expected` bytes of payload, and returns that raw stream and the payload of its first
/// chunk. The target must echo.
pub async fn record_response(
    server: SocketAddr,
    method: Method,
    salt: Salt,
    flight: &[u8],
    expected: usize,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut stream = bounded(TcpStream::connect(server)).await?;
    bounded(stream.write_all(flight)).await?;
    let mut decryptor = Decryptor::response(method, &test_key(method), salt);
    let mut raw = Vec::new();
    let mut pending = Vec::new();
    let mut first_chunk: Option<Vec<u8>> = None;
    let mut plain = 0;
    let mut buf = [0u8; 4096];
    while plain < expected {
        let n = bounded(stream.read(&mut buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        loop {
            let decoded = decryptor
                .decrypt(&mut pending, unix_now())
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            let payload = pending[decoded.payload.clone()].to_vec();
            pending.drain(..decoded.consumed);
            if payload.is_empty() {
                break;
            }
            plain += payload.len();
            first_chunk.get_or_insert(payload);
        }
    }
    Ok((raw, first_chunk.unwrap_or_default()))
}

/// A loopback listener that records the peer of every connection it accepts and echoes its bytes.
///
/// [`Canary::connections`] is exact rather than a guess after a sleep: it sends a sentinel connection
/// through the same accept queue, which the kernel hands out in order, so once the sentinel has been
/// accepted every connection made before the call has been recorded.
#[derive(Debug)]
pub struct Canary {
    addr: SocketAddr,
    accepted: watch::Receiver<Vec<SocketAddr>>,
    sentinels: std::sync::Mutex<Vec<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Canary {
    /// Binds `bind` (a loopback address; port 0 or a given port).
    pub async fn bind(bind: &str) -> io::Result<Canary> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (record, accepted) = watch::channel(Vec::new());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, peer)) = listener.accept().await {
                record.send_modify(|peers| peers.push(peer));
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = write.shutdown().await;
                });
            }
        });
        Ok(Canary { addr, accepted, sentinels: std::sync::Mutex::new(Vec::new()), task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Peers of every connection made to it so far, sentinels excluded.
    pub async fn connections(&self) -> Vec<SocketAddr> {
        let sentinel = timeout(STEP, TcpStream::connect(self.addr))
            .await
            .expect("sentinel connect timed out")
            .expect("sentinel connect");
        let me = sentinel.local_addr().expect("sentinel address");
        self.sentinels.lock().expect("sentinel list").push(me);
        let mut accepted = self.accepted.clone();
        timeout(STEP, accepted.wait_for(|peers| peers.contains(&me)))
            .await
            .expect("canary did not accept its sentinel")
            .expect("canary task alive");
        let seen = self.others(&accepted.borrow());
        seen
    }

    /// Waits up to `grace` for a connection other than a sentinel and returns the peers seen by then
    /// (empty if none came): "nothing may arrive; give the server a moment" without a bare sleep.
    pub async fn connections_within(&self, grace: Duration) -> Vec<SocketAddr> {
        let mut accepted = self.accepted.clone();
        let _ = timeout(grace, accepted.wait_for(|peers| !self.others(peers).is_empty())).await;
        let seen = self.others(&accepted.borrow());
        seen
    }

    fn others(&self, peers: &[SocketAddr]) -> Vec<SocketAddr> {
        let sentinels = self.sentinels.lock().expect("sentinel list");
        peers.iter().filter(|peer| !sentinels.contains(peer)).copied().collect()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Seals records with a little-endian nonce counter, independently of ss-crypto's own cipher code.
struct RecordSealer {
    algorithm: Algorithm,
    key: Key,
    counter: u64,
}

impl RecordSealer {
    fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.counter.to_le_bytes());
        self.counter += 1;
        let nonce = aes_gcm::Nonce::from_slice(&nonce);
        let mut record = plaintext.to_vec();
        let key = self.key.as_bytes();
        let tag = match self.algorithm {
            Algorithm::Aes128Gcm => Aes128Gcm::new_from_slice(key)
                .expect("16-byte key")
                .encrypt_in_place_detached(nonce, &[], &mut record),
            Algorithm::Aes256Gcm => Aes256Gcm::new_from_slice(key)
                .expect("32-byte key")
                .encrypt_in_place_detached(nonce, &[], &mut record),
            Algorithm::ChaCha20Poly1305 => ChaCha20Poly1305::new_from_slice(key)
                .expect("32-byte key")
                .encrypt_in_place_detached(nonce, &[], &mut record),
        }
        .expect("record within AEAD limits");
        out.extend_from_slice(&record);
        out.extend_from_slice(&tag);
    }
}

async fn bounded<T>(step: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    timeout(STEP, step).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "step timed out"))?
}
