//! A DNS server the tests control, on 127.0.0.1 port 0 (UDP and TCP on the same port): each name answers
//! at once, slowly, never, or with many records; every other name is NXDOMAIN. It counts the queries
//! per name, so a test sees whether a lookup reached it.
//!
//! Answers with more than [`UDP_MAX_RECORDS`] records are sent truncated over UDP (TC bit, no records),
//! as a real server does when they do not fit, and in full over TCP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// Most records an answer carries over UDP before it is truncated.
pub const UDP_MAX_RECORDS: usize = 16;

/// How the server treats queries for one name.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answers at once with these addresses (A for IPv4, AAAA for IPv6) and TTL in seconds.
    Answer { addrs: Vec<IpAddr>, ttl: u32 },
    /// Answers like [`Behaviour::Answer`] after `delay`.
    Slow { delay: Duration, addrs: Vec<IpAddr>, ttl: u32 },
    /// Never answers.
    Never,
    /// Answers A queries at once, never AAAA queries (a broken middlebox or server).
    SilentAaaa { addrs: Vec<IpAddr>, ttl: u32 },
}

/// A running test DNS server; stops when dropped.
#[derive(Debug)]
pub struct TestDns {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    zone: Arc<HashMap<String, Behaviour>>,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    stop: CancellationToken,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestDns {
    /// Starts a server for `names` (lower case, no trailing dot).
    pub async fn start(names: &[(&str, Behaviour)]) -> TestDns {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS UDP");
            let addr = udp.local_addr().expect("DNS address");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let dns = TestDns {
            addr: udp.local_addr().expect("DNS address"),
            zone: Arc::new(
                names.iter().map(|(name, behaviour)| (name.to_string(), behaviour.clone())).collect(),
            ),
            queries: Arc::default(),
            stop: CancellationToken::new(),
        };
        let server = Server { zone: dns.zone.clone(), queries: dns.queries.clone() };
        tokio::spawn(server.clone().serve_udp(udp, dns.stop.clone()));
        tokio::spawn(server.serve_tcp(tcp, dns.stop.clone()));
        dns
    }

    /// Queries (A and AAAA, UDP and TCP) received for `name` so far.
    pub fn queries(&self, name: &str) -> usize {
        self.queries.lock().expect("query counts").get(name).copied().unwrap_or(0)
    }
}

#[derive(Clone)]
struct Server {
    zone: Arc<HashMap<String, Behaviour>>,
    queries: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    async fn serve_udp(self, socket: UdpSocket, stop: CancellationToken) {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = tokio::select! {
                () = stop.cancelled() => return,
                received = socket.recv_from(&mut buf) => match received {
                    Ok(received) => received,
                    Err(_) => continue,
                },
            };
            let Some((delay, reply)) = self.answer(&buf[..len], true) else { continue };
            let socket = socket.clone();
            let send = async move {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&reply, from).await;
            };
            if delay.is_zero() {
                send.await;
            } else {
                tokio::spawn(send);
            }
        }
    }

    async fn serve_tcp(self, listener: TcpListener, stop: CancellationToken) {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let server = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = server.serve_connection(stream) => {}
                }
            });
        }
    }

    /// Length-prefixed messages, one answer after another.
    async fn serve_connection(self, mut stream: TcpStream) {
        loop {
            let Ok(len) = stream.read_u16().await else { return };
            let mut query = vec![0u8; len.into()];
            if stream.read_exact(&mut query).await.is_err() {
                return;
            }
            let Some((delay, reply)) = self.answer(&query, false) else { continue };
            tokio::time::sleep(delay).await;
            let Ok(reply_len) = u16::try_from(reply.len()) else { return };
            if stream.write_u16(reply_len).await.is_err() || stream.write_all(&reply).await.is_err() {
                return;
            }
        }
    }

    /// The reply to `query` and when to send it; `None`: no reply at all.
    fn answer(&self, query: &[u8], udp: bool) -> Option<(Duration, Vec<u8>)> {
        let query = Message::from_vec(query).ok()?;
        let question = query.queries.first()?.clone();
        let name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        *self.queries.lock().ok()?.entry(name.clone()).or_default() += 1;
        let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_query(question.clone());
        let (delay, addrs, ttl) = match self.zone.get(&name) {
            None => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                return Some((Duration::ZERO, reply.to_vec().ok()?));
            }
            Some(Behaviour::Never) => return None,
            Some(Behaviour::SilentAaaa { .. }) if question.query_type() == RecordType::AAAA => return None,
            Some(Behaviour::SilentAaaa { addrs, ttl }) => (Duration::ZERO, addrs, *ttl),
            Some(Behaviour::Answer { addrs, ttl }) => (Duration::ZERO, addrs, *ttl),
            Some(Behaviour::Slow { delay, addrs, ttl }) => (*delay, addrs, *ttl),
        };
        let records: Vec<Record> = addrs
            .iter()
            .filter_map(|addr| match (addr, question.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A((*v4).into())),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA((*v6).into())),
                _ => None,
            })
            .map(|data| Record::from_rdata(question.name().clone(), ttl, data))
            .collect();
        if udp && records.len() > UDP_MAX_RECORDS {
            reply.metadata.truncation = true;
        } else {
            reply.insert_answers(records);
        }
        Some((delay, reply.to_vec().ok()?))
    }
}

/// ss-server (in-process) whose resolver is a [`TestDns`] that answers `names` with 127.0.0.1 and knows
/// nothing else, with ss-local in front of it: a name only the test knows is reached only through
/// ss-server, so a page fetched by that name proves the path (and [`TestDns::queries`] that ss-server
/// resolved it).
pub struct ResolvingChain {
    /// The DNS server ss-server asks.
    pub dns: TestDns,
    /// ss-server.
    pub server: crate::RunningServer,
    /// ss-local, pointed at `server`.
    pub local: crate::RunningServer,
}

impl ResolvingChain {
    /// Starts the three for `method`.
    pub async fn start(method: ss_crypto::Method, names: &[&str]) -> ResolvingChain {
        let loopback = || Behaviour::Answer { addrs: vec![[127, 0, 0, 1].into()], ttl: 60 };
        let answers: Vec<(&str, Behaviour)> = names.iter().map(|name| (*name, loopback())).collect();
        let dns = TestDns::start(&answers).await;
        let mut settings = crate::server_settings(method);
        settings.resolve =
            ss_net::ResolveSettings { nameservers: vec![dns.addr], ..ss_net::ResolveSettings::default() };
        let server = crate::start_server(settings).await;
        let local = crate::start_local(crate::local_settings(method, server.addr)).await;
        ResolvingChain { dns, server, local }
    }
}
