//! Support for the probe-resistance and target-policy tests (tests/probes.rs, tests/policy.rs):
//! hand-made client flights and UDP datagrams (valid, replayed, or sealed around address bytes our
//! encoder would never write), and canaries: TCP listeners that record every connection the server makes
//! to them, UDP sockets that record every datagram. Every address is loopback.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::aes::cipher::BlockEncrypt;
use aes_gcm::aes::Aes192;
use aes_gcm::aes::{Aes128, Aes256};
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use ss_crypto::{Address, Algorithm, Decryptor, Encryptor, Key, Method, Salt};
use ss_net::stream::{DecryptReader, EncryptWriter};
use ss_net::unix_now;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
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

/// A client's UDP datagram under [`test_key`] for `method`, with the target given as raw bytes sealed as
/// they are (an IPv4-mapped IPv6 address stays address type 4). `session_id` and `packet_id` are used
/// by 2022 methods only; `now` is Unix seconds. Built from the specification, independently of
/// ss-crypto's sealing code:
///
/// ```text
/// classic:        salt | seal_subkey(salt)(raw address | payload)                       nonce 0
/// 2022 AES:       AES_psk(session id | packet id) | seal_subkey(session id)(body)        nonce = ids[4..16]
/// 2022 ChaCha:    nonce(24) | XChaCha20-Poly1305_psk(session id | packet id | body)
/// body:           type 0 | now u64 | padding_len 0 u16 | raw address | payload
/// ```
pub fn sealed_udp_request(
    method: Method,
    raw_address: &[u8],
    payload: &[u8],
    session_id: u64,
    packet_id: u64,
    now: u64,
) -> Vec<u8> {
    let key = test_key(method);
    if !method.is_2022() {
        let salt = random_salt(method);
        let mut out = salt.as_bytes().to_vec();
        let subkey = key.session_subkey(method, salt.as_bytes());
        seal_record(method.algorithm(), &subkey, &[0; 12], &[raw_address, payload].concat(), &mut out);
        return out;
    }
    let mut ids = [0u8; 16];
    ids[..8].copy_from_slice(&session_id.to_be_bytes());
    ids[8..].copy_from_slice(&packet_id.to_be_bytes());
    let mut body = vec![0u8];
    body.extend_from_slice(&now.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(raw_address);
    body.extend_from_slice(payload);
    let psk = key.as_bytes();
    if method == Method::Blake3ChaCha20Poly1305 {
        let nonce = random_bytes(24);
        let mut sealed = [&ids[..], &body].concat();
        let tag = XChaCha20Poly1305::new_from_slice(psk)
            .expect("32-byte PSK")
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &[], &mut sealed)
            .expect("datagram within AEAD limits");
        return [&nonce[..], &sealed, &tag].concat();
    }
    let mut separate = aes_gcm::aes::Block::clone_from_slice(&ids);
    match method {
        Method::Blake3Aes128Gcm => {
            Aes128::new_from_slice(psk).expect("16-byte PSK").encrypt_block(&mut separate)
        }
        _ => Aes256::new_from_slice(psk).expect("32-byte PSK").encrypt_block(&mut separate),
    }
    let mut out = separate.to_vec();
    let nonce: [u8; 12] = ids[4..].try_into().expect("12 bytes");
    let subkey = key.blake3_subkey(&ids[..8]);
    seal_record(method.algorithm(), &subkey, &nonce, &body, &mut out);
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
    round_trip_over(stream, method, target, payload).await
}

/// [`round_trip`] from the loopback address `source` (another "host": 127.0.0.2, say).
pub async fn round_trip_from(
    source: IpAddr,
    server: SocketAddr,
    method: Method,
    target: &Address,
    payload: &[u8],
) -> io::Result<Vec<u8>> {
    let stream = bounded(connect_from(source, server)).await?;
    round_trip_over(stream, method, target, payload).await
}

/// Connects to `server` from the loopback address `source`.
pub async fn connect_from(source: IpAddr, server: SocketAddr) -> io::Result<TcpStream> {
    let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(server).await
}

/// Loopback address number `n` from 127.1.0.0 on (all of 127/8 is this machine's loopback). Tests that
/// play many clients give each its own, so that the server's per-source handshake budget (ss-server's
/// `admission` module) sees as many hosts as there are clients.
pub fn loopback_host(n: usize) -> IpAddr {
    let n = u32::try_from(n % (1 << 16)).unwrap_or(0);
    IpAddr::V4(std::net::Ipv4Addr::from(0x7f01_0000 | n))
}

async fn round_trip_over(
    stream: TcpStream,
    method: Method,
    target: &Address,
    payload: &[u8],
) -> io::Result<Vec<u8>> {
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

/// A loopback UDP socket that records every datagram it receives (sender and bytes) and answers none.
///
/// [`UdpCanary::datagrams`] is exact in the same way as [`Canary::connections`]: a sentinel datagram
/// from the test goes through the same receive queue, so once it has been read every datagram that
/// arrived before it has been recorded.
#[derive(Debug)]
pub struct UdpCanary {
    addr: SocketAddr,
    received: watch::Receiver<Vec<(SocketAddr, Vec<u8>)>>,
    task: JoinHandle<()>,
}

/// Marks a sentinel datagram.
const SENTINEL: &[u8] = b"canary sentinel ";

impl UdpCanary {
    /// Binds `bind` (a loopback address; port 0 or a given port).
    pub async fn bind(bind: &str) -> io::Result<UdpCanary> {
        let socket = UdpSocket::bind(bind).await?;
        let addr = socket.local_addr()?;
        let (record, received) = watch::channel(Vec::new());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                record.send_modify(|datagrams| datagrams.push((from, buf[..len].to_vec())));
            }
        });
        Ok(UdpCanary { addr, received, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every datagram received so far, sentinels excluded.
    pub async fn datagrams(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        let bind = if self.addr.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
        let socket = UdpSocket::bind(bind).await.expect("bind sentinel socket");
        let sentinel = [SENTINEL, &random_bytes(16)].concat();
        let mut received = self.received.clone();
        // Loopback does not lose datagrams in practice; resending costs nothing if it ever does.
        let arrived = timeout(STEP, async {
            loop {
                socket.send_to(&sentinel, self.addr).await.expect("send sentinel");
                let seen = |datagrams: &Vec<(SocketAddr, Vec<u8>)>| {
                    datagrams.iter().any(|(_, bytes)| *bytes == sentinel)
                };
                if timeout(Duration::from_millis(200), received.wait_for(seen)).await.is_ok() {
                    return;
                }
            }
        })
        .await;
        arrived.expect("the UDP canary did not receive its sentinel");
        let seen = others(&received.borrow());
        seen
    }

    /// Waits until at least `count` datagrams other than sentinels arrived, or `patience` passed; returns
    /// those seen by then.
    pub async fn datagrams_within(&self, count: usize, patience: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut received = self.received.clone();
        let _ = timeout(patience, received.wait_for(|datagrams| others(datagrams).len() >= count)).await;
        let seen = others(&received.borrow());
        seen
    }
}

fn others(datagrams: &[(SocketAddr, Vec<u8>)]) -> Vec<(SocketAddr, Vec<u8>)> {
    datagrams.iter().filter(|(_, bytes)| !bytes.starts_with(SENTINEL)).cloned().collect()
}

impl Drop for UdpCanary {
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
        seal_record(self.algorithm, &self.key, &nonce, plaintext, out);
    }
}

/// Appends `plaintext` sealed under `key` and `nonce`, then its tag, to `out`.
fn seal_record(algorithm: Algorithm, key: &Key, nonce: &[u8; 12], plaintext: &[u8], out: &mut Vec<u8>) {
    // XChaCha20's 24-byte nonce is the same little-endian counter, zero-extended.
    let mut xnonce = XNonce::default();
    xnonce[..12].copy_from_slice(nonce);
    let nonce = aes_gcm::Nonce::from_slice(nonce);
    let mut record = plaintext.to_vec();
    let key = key.as_bytes();
    let tag = match algorithm {
        Algorithm::Aes128Gcm => Aes128Gcm::new_from_slice(key)
            .expect("16-byte key")
            .encrypt_in_place_detached(nonce, &[], &mut record),
        Algorithm::Aes192Gcm => AesGcm::<Aes192, U12>::new_from_slice(key)
            .expect("24-byte key")
            .encrypt_in_place_detached(nonce, &[], &mut record),
        Algorithm::Aes256Gcm => Aes256Gcm::new_from_slice(key)
            .expect("32-byte key")
            .encrypt_in_place_detached(nonce, &[], &mut record),
        Algorithm::ChaCha20Poly1305 => ChaCha20Poly1305::new_from_slice(key)
            .expect("32-byte key")
            .encrypt_in_place_detached(nonce, &[], &mut record),
        Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new_from_slice(key)
            .expect("32-byte key")
            .encrypt_in_place_detached(&xnonce, &[], &mut record),
    }
    .expect("record within AEAD limits");
    out.extend_from_slice(&record);
    out.extend_from_slice(&tag);
}

async fn bounded<T>(step: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    timeout(STEP, step).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "step timed out"))?
}
