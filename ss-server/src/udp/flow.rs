//! The relay's datagram ciphers, one type per protocol generation so that the two cannot be mixed:
//! [`Codec`] opens client datagrams into a [`Flow`] (classic: a client address; AEAD-2022: a client
//! session and packet id), and each association seals its replies with the [`ReplyCipher`] its flow
//! made, which for 2022 holds the session state (our session id, reply counter, packet-id window).

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use rand_core::{OsRng, RngCore};
use ss_crypto::udp::{Header2022, Origin, Sender, Udp2022, UdpClassic, XNONCE_LEN};
use ss_crypto::{Address, Key, Method, Salt, SealError};
use ss_net::{unix_now, PacketWindow};
use tracing::debug;

use crate::replay::{SaltHistory, CLASSIC_UDP_CAPACITY};
use crate::udp_replay::EndedSessions;
use crate::users::{search, User, Users};

/// How associations are keyed: by client address (classic) or client session id (2022).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum AssociationKey {
    Client(SocketAddr),
    Session(u64),
}

/// The relay's datagram cipher, with the replay state its generation needs.
pub(super) enum Codec {
    Classic {
        cipher: Arc<UdpClassic>,
        /// Salts of datagrams already relayed.
        salts: Mutex<SaltHistory>,
    },
    Aead2022(Arc<Udp2022>),
    /// Many users: each datagram's user is found first (identity header or trial), then its key opens
    /// the datagram and seals the association's replies.
    Users(Box<UserCodec>),
}

/// The multi-user codec: the users, the server's identity cipher (AES 2022: the iPSK) and the classic
/// salt history, global across users like the TCP replay filter.
pub(super) struct UserCodec {
    users: Arc<Users>,
    method: Method,
    ipsk: Key,
    identity: Option<Udp2022>,
    salts: Mutex<SaltHistory>,
}

impl Codec {
    /// The multi-user codec of `users`; `ipsk` is the server's key (the identity PSK of AES 2022).
    pub(super) fn for_users(users: Arc<Users>, ipsk: &Key) -> Codec {
        let method = users.method();
        let identity = ss_crypto::identity::supports_identity_headers(method)
            .then(|| Udp2022::new(method, ipsk))
            .flatten();
        let salts = Mutex::new(SaltHistory::new(ipsk, CLASSIC_UDP_CAPACITY));
        Codec::Users(Box::new(UserCodec { users, method, ipsk: ipsk.clone(), identity, salts }))
    }

    /// The cipher of `method`; `None` only if `key` does not fit it.
    pub(super) fn new(method: Method, key: &Key) -> Option<Codec> {
        if let Some(cipher) = Udp2022::new(method, key) {
            return Some(Codec::Aead2022(Arc::new(cipher)));
        }
        let cipher = UdpClassic::new(method, key)?;
        let salts = Mutex::new(SaltHistory::new(key, CLASSIC_UDP_CAPACITY));
        Some(Codec::Classic { cipher: Arc::new(cipher), salts })
    }

    /// Opens a client datagram from `from` in place: its flow, target and payload range. `None` for a
    /// datagram that does not open, and for a classic datagram whose salt was seen before.
    pub(super) fn open(
        &self,
        packet: &mut [u8],
        from: SocketAddr,
        now: u64,
    ) -> Option<(Flow, Address, Range<usize>)> {
        match self {
            Codec::Classic { cipher, salts } => {
                let (target, payload) = cipher.open(packet).ok()?;
                let salt = &packet[..cipher.method().salt_len()];
                // Recorded only now that the datagram is authentic: forged salts cannot fill the history.
                if !salts.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(salt) {
                    debug!("replayed UDP datagram dropped");
                    return None;
                }
                Some((Flow::Classic { client: from, cipher: cipher.clone(), user: None }, target, payload))
            }
            Codec::Aead2022(cipher) => {
                let opened = cipher.open(packet, now, Origin::Client).ok()?;
                let (id, packet_id) = (opened.header.session_id, opened.header.packet_id);
                Some((
                    Flow::Session { id, packet_id, cipher: cipher.clone(), user: None },
                    opened.address,
                    opened.payload,
                ))
            }
            Codec::Users(codec) => codec.open(packet, from, now),
        }
    }
}

impl UserCodec {
    /// Finds the datagram's user and opens it with their key.
    fn open(&self, packet: &mut [u8], from: SocketAddr, now: u64) -> Option<(Flow, Address, Range<usize>)> {
        let table = self.users.current();
        let method = self.method;
        if let Some(identity) = &self.identity {
            let separate = identity.separate_header(packet)?;
            let header: &[u8; 16] = packet.get(16..32)?.try_into().ok()?;
            let hash = ss_crypto::identity::open_udp_identity(method, &self.ipsk, &separate, header)?;
            let user = table.by_hash(&hash)?.clone();
            let cipher = Arc::new(Udp2022::new(method, user.key())?);
            let opened = cipher.open_identified(packet, &separate, now).ok()?;
            let (id, packet_id) = (opened.header.session_id, opened.header.packet_id);
            let flow = Flow::Session { id, packet_id, cipher, user: Some(user) };
            return Some((flow, opened.address, opened.payload));
        }
        // Trial: each key opens a copy, so a failed try leaves the datagram as it came.
        let mut scratch = Vec::with_capacity(packet.len());
        let mut try_copy = |open: &dyn Fn(&mut [u8]) -> bool| {
            scratch.clear();
            scratch.extend_from_slice(packet);
            open(&mut scratch)
        };
        if method.is_2022() {
            let user = search::find_datagram_user(&table, from.ip(), |key| {
                Udp2022::new(method, key)
                    .is_some_and(|cipher| try_copy(&|copy| cipher.open(copy, now, Origin::Client).is_ok()))
            })?;
            let cipher = Arc::new(Udp2022::new(method, user.key())?);
            let opened = cipher.open(packet, now, Origin::Client).ok()?;
            let (id, packet_id) = (opened.header.session_id, opened.header.packet_id);
            let flow = Flow::Session { id, packet_id, cipher, user: Some(user) };
            return Some((flow, opened.address, opened.payload));
        }
        let user = search::find_datagram_user(&table, from.ip(), |key| {
            UdpClassic::new(method, key).is_some_and(|cipher| try_copy(&|copy| cipher.open(copy).is_ok()))
        })?;
        let cipher = Arc::new(UdpClassic::new(method, user.key())?);
        let (target, payload) = cipher.open(packet).ok()?;
        if !self
            .salts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(&packet[..method.salt_len()])
        {
            debug!("replayed UDP datagram dropped");
            return None;
        }
        Some((Flow::Classic { client: from, cipher, user: Some(user) }, target, payload))
    }
}

/// Where a datagram that opened belongs.
pub(super) enum Flow {
    /// Classic: to its client address.
    Classic { client: SocketAddr, cipher: Arc<UdpClassic>, user: Option<Arc<User>> },
    /// 2022: to the client's session; `packet_id` is checked against the session's window.
    Session { id: u64, packet_id: u64, cipher: Arc<Udp2022>, user: Option<Arc<User>> },
}

impl Flow {
    /// The user of a multi-user server the datagram belongs to.
    pub(super) fn user(&self) -> Option<&Arc<User>> {
        match self {
            Flow::Classic { user, .. } | Flow::Session { user, .. } => user.as_ref(),
        }
    }

    pub(super) fn key(&self) -> AssociationKey {
        match self {
            Flow::Classic { client, .. } => AssociationKey::Client(*client),
            Flow::Session { id, .. } => AssociationKey::Session(*id),
        }
    }

    /// How a new association of this flow seals its replies. A 2022 session that ended recently gets
    /// its old window back from `ended`: the real client coming back is not a fresh start for replays.
    pub(super) fn reply_cipher(&self, ended: &mut EndedSessions, server_session_id: u64) -> ReplyCipher {
        match self {
            Flow::Classic { cipher, .. } => ReplyCipher::Classic(cipher.clone()),
            Flow::Session { id, cipher, .. } => ReplyCipher::Aead2022 {
                cipher: cipher.clone(),
                session: Mutex::new(Session {
                    client_session_id: *id,
                    server_session_id,
                    next_packet_id: 1,
                    window: ended.take(*id).unwrap_or_default(),
                }),
            },
        }
    }
}

/// How an association seals replies: one type per generation, so a reply cannot be sealed with the
/// other generation's format.
pub(super) enum ReplyCipher {
    Classic(Arc<UdpClassic>),
    /// The client's session id, our session id and reply counter, and the packet-id window.
    Aead2022 {
        cipher: Arc<Udp2022>,
        session: Mutex<Session>,
    },
}

pub(super) struct Session {
    pub(super) client_session_id: u64,
    server_session_id: u64,
    next_packet_id: u64,
    pub(super) window: PacketWindow,
}

impl ReplyCipher {
    /// Seals one reply from `source` and appends it to `out`.
    pub(super) fn seal(&self, source: &Address, payload: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        match self {
            ReplyCipher::Classic(cipher) => {
                cipher.seal(Salt::random(cipher.method(), &mut OsRng), source, payload, out)
            }
            ReplyCipher::Aead2022 { cipher, session } => {
                let header = {
                    let mut session = session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    session.next_packet_id += 1;
                    Header2022 {
                        session_id: session.server_session_id,
                        packet_id: session.next_packet_id - 1,
                        sender: Sender::Server { client_session_id: session.client_session_id },
                        timestamp: unix_now(),
                    }
                };
                let mut nonce = [0u8; XNONCE_LEN];
                OsRng.fill_bytes(&mut nonce);
                cipher.seal(&header, &[], source, payload, &nonce, out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_704_164_645;

    fn key(method: Method) -> Key {
        Key::from_bytes(method, &[9; 32][..method.key_len()]).unwrap()
    }

    fn client() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    fn target() -> Address {
        Address::Ip("127.0.0.1:53".parse().unwrap())
    }

    /// A client datagram of `method` (session 7, packet `packet_id` for 2022).
    fn client_datagram(method: Method, packet_id: u64) -> Vec<u8> {
        let mut out = Vec::new();
        match Udp2022::new(method, &key(method)) {
            Some(cipher) => {
                let header = Header2022 { session_id: 7, packet_id, sender: Sender::Client, timestamp: NOW };
                cipher.seal(&header, &[], &target(), b"query", &[1; XNONCE_LEN], &mut out).unwrap();
            }
            None => {
                let salt = Salt::random(method, &mut OsRng);
                UdpClassic::new(method, &key(method))
                    .unwrap()
                    .seal(salt, &target(), b"query", &mut out)
                    .unwrap();
            }
        }
        out
    }

    #[test]
    fn classic_datagrams_flow_by_client_address_and_open_once() {
        let method = Method::Aes128Gcm;
        let codec = Codec::new(method, &key(method)).unwrap();
        let datagram = client_datagram(method, 1);
        let (flow, target_, payload) = codec.open(&mut datagram.clone(), client(), NOW).unwrap();
        assert_eq!(flow.key(), AssociationKey::Client(client()));
        assert_eq!((target_, payload.len()), (target(), 5));
        assert!(codec.open(&mut datagram.clone(), client(), NOW).is_none(), "replayed salt");

        let reply = flow.reply_cipher(&mut EndedSessions::new(4), 0);
        let mut sealed = Vec::new();
        reply.seal(&target(), b"answer", &mut sealed).unwrap();
        let (source, range) = UdpClassic::new(method, &key(method)).unwrap().open(&mut sealed).unwrap();
        assert_eq!((source, &sealed[range]), (target(), &b"answer"[..]));
    }

    #[test]
    fn a_2022_session_answers_in_its_own_session_with_counted_packets() {
        for method in Method::ALL.into_iter().filter(|m| m.is_2022()) {
            let codec = Codec::new(method, &key(method)).unwrap();
            let (flow, ..) = codec.open(&mut client_datagram(method, 3), client(), NOW).unwrap();
            assert_eq!(flow.key(), AssociationKey::Session(7), "{method}");
            let Flow::Session { packet_id, .. } = flow else { panic!("{method}: not a session") };
            assert_eq!(packet_id, 3);

            let reply = flow.reply_cipher(&mut EndedSessions::new(4), 99);
            let client_side = Udp2022::new(method, &key(method)).unwrap();
            for expected_id in [1, 2] {
                let mut sealed = Vec::new();
                reply.seal(&target(), b"answer", &mut sealed).unwrap();
                let opened = client_side.open(&mut sealed, unix_now(), Origin::Server).unwrap();
                assert_eq!(opened.header.session_id, 99, "{method}");
                assert_eq!(opened.header.packet_id, expected_id, "{method}");
                assert_eq!(opened.header.sender, Sender::Server { client_session_id: 7 }, "{method}");
            }
        }
    }

    #[test]
    fn a_returning_session_gets_its_old_window_back() {
        let method = Method::Blake3Aes128Gcm;
        let codec = Codec::new(method, &key(method)).unwrap();
        let (flow, ..) = codec.open(&mut client_datagram(method, 3), client(), NOW).unwrap();
        let mut window = PacketWindow::default();
        assert!(window.accept(3));
        let mut ended = EndedSessions::new(4);
        ended.record(7, window, tokio::time::Instant::now());
        let ReplyCipher::Aead2022 { session, .. } = flow.reply_cipher(&mut ended, 1) else {
            panic!("a 2022 flow made a classic reply cipher")
        };
        assert!(!session.lock().unwrap().window.accept(3), "packet 3 was seen before the session ended");
        assert!(ended.take(7).is_none(), "the window moved into the new association");
    }
}
