//! The UDP relay: datagrams from clients are opened, checked and sent on to their targets from one
//! outbound socket per association; replies come back sealed with the address they came from.
//!
//! ```text
//! client ──▶ server socket ──open──▶ association (NAT entry) ──outbound socket──▶ target
//! client ◀── server socket ◀─seal─── association reply task ◀──────────────────── target
//! ```
//!
//! - The ciphers of the two generations, and the per-association 2022 session, are in [`flow`]; the way
//!   out to targets (resolution, policy, batched sends) in [`outbound`].
//! - Classic AEAD: an association per client address. AEAD-2022: an association per client session id;
//!   its packet-id window and its client address are updated only after a packet fully validated (tag,
//!   type, timestamp, fresh packet id), so a replayed packet from elsewhere moves nothing.
//! - Datagrams that fail to open are dropped silently and create no state. So are replays
//!   ([`crate::udp_replay`]): a classic datagram whose salt was seen (a bounded
//!   [`crate::replay::SaltHistory`] of [`crate::replay::CLASSIC_UDP_CAPACITY`] salts per generation), and a 2022 datagram of a recently ended session whose
//!   packet id that session's window refuses. Neither draws a reply, nor creates or evicts an association.
//! - Datagrams from a client the ACL refuses are dropped before they are opened. Every datagram's target
//!   goes through the address policy (with the ACL's outbound lists), after resolution; a name the ACL
//!   blocks is not resolved.
//! - A domain target is resolved without holding up the socket: a cached name is sent at once; otherwise
//!   the datagram waits in a task for its lookup, at most [`MAX_AWAITING_RESOLUTION`] datagrams per
//!   server socket and [`outbound::MAX_AWAITING_PER_ASSOCIATION`] per association, each for at most the lookup
//!   timeout. A datagram that finds every lookup slot taken, or no room to wait, is dropped and counted
//!   (`Stats::udp_unresolved_drops`).
//! - Datagrams come in batches ([`ss_net::udp_batch`]): one `recvmmsg` takes all that wait on the server
//!   socket, another all the replies waiting on an association's socket; what a batch sends (datagrams
//!   of one association to their targets, an association's replies to its client) leaves in GSO runs
//!   (one send for consecutive equal-size datagrams to one address; single sends where the kernel has
//!   no GSO). Each datagram is still checked, limited and counted on its own. Datagrams that waited
//!   for a name are sent alone.
//! - Associations expire after the UDP timeout without traffic (a short timeout when they only ever
//!   spoke to port 53); beyond the cap the least recently used one is evicted.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use ss_crypto::Address;
use ss_net::udp_batch::{self, BatchReceiver, BatchSender};
use ss_net::{canonical_addr, unix_now};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::limits::{Refusal, Way};
use crate::rejections::Reason;
use crate::udp_replay::EndedSessions;
use crate::users::Admitted;
use crate::Shared;
use flow::{AssociationKey, Codec, Flow, ReplyCipher};
use outbound::MAX_AWAITING_RESOLUTION;
use outbound::{bind_outbound, Outgoing};

mod flow;
mod outbound;

/// Most receive buffers of one association's replies (64 KiB each, allocated as its traffic needs
/// them); a GRO buffer holds many datagrams.
const REPLY_BATCH: usize = 8;
/// Idle timeout of associations that only ever spoke to port 53.
const DNS_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the UDP relay on `socket` until `shutdown`.
pub(crate) async fn run_relay(socket: UdpSocket, shared: Arc<Shared>, shutdown: CancellationToken) {
    let codec = match &shared.settings.users {
        Some(users) => Some(Codec::for_users(users.clone(), &shared.settings.key)),
        None => Codec::new(shared.settings.method, &shared.settings.key),
    };
    let Some(codec) = codec else {
        tracing::error!(method = %shared.settings.method, "the key does not fit the method; no UDP relay");
        return;
    };
    let ended = EndedSessions::new(EndedSessions::capacity_for(shared.settings.max_udp_associations));
    let relay = Arc::new(Relay {
        socket: Arc::new(socket),
        codec,
        table: Mutex::new(Table { live: HashMap::new(), ended }),
        awaiting: Arc::new(Semaphore::new(MAX_AWAITING_RESOLUTION)),
        started: Instant::now(),
        shared,
    });
    udp_batch::prepare(&relay.socket);
    let mut receiver = match BatchReceiver::new(udp_batch::BATCH) {
        Ok(receiver) => receiver,
        Err(error) => {
            tracing::error!(%error, "no UDP receiver; no UDP relay");
            return;
        }
    };
    let mut outgoing = Outgoing::default();
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = receiver.recv(&relay.socket) => received,
        };
        if let Err(error) = received {
            debug!(%error, "UDP receive failed");
            continue;
        }
        for datagram in receiver.datagrams() {
            relay.clone().handle(datagram.bytes, canonical_addr(datagram.from), &mut outgoing).await;
        }
        outgoing.flush().await;
    }
    let associations: Vec<_> = relay.lock_table().live.drain().map(|(_, association)| association).collect();
    associations.iter().for_each(|association| association.stop.cancel());
}

struct Relay {
    socket: Arc<UdpSocket>,
    codec: Codec,
    table: Mutex<Table>,
    /// Places for datagrams waiting for a name ([`MAX_AWAITING_RESOLUTION`]).
    awaiting: Arc<Semaphore>,
    started: Instant,
    shared: Arc<Shared>,
}

/// The associations, and what is left of the 2022 sessions that ended.
struct Table {
    live: HashMap<AssociationKey, Arc<Association>>,
    ended: EndedSessions,
}

impl Table {
    /// Removes an association; a 2022 session's window is kept for [`EndedSessions`].
    fn remove(&mut self, key: AssociationKey) -> Option<Arc<Association>> {
        let removed = self.live.remove(&key)?;
        if let ReplyCipher::Aead2022 { session, .. } = &removed.replies {
            let session = session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            self.ended.record(session.client_session_id, session.window.clone(), Instant::now());
        }
        Some(removed)
    }
}

/// One NAT entry.
struct Association {
    outbound: UdpSocket,
    /// The outbound socket is IPv6 dual-stack (IPv4 targets are sent to in mapped form).
    dual_stack: bool,
    /// Where replies go; for 2022 the sender of the last fully validated packet.
    client: Mutex<SocketAddr>,
    replies: ReplyCipher,
    /// The user of a multi-user server: the association ends when a reload removes them, and holds
    /// its place among the user's devices.
    user: Option<Admitted>,
    /// Milliseconds since the relay started, at the last datagram either way.
    last_active: AtomicU64,
    dns_only: AtomicBool,
    /// Datagrams of this association waiting for a name ([`outbound::MAX_AWAITING_PER_ASSOCIATION`]).
    awaiting: AtomicUsize,
    stop: CancellationToken,
}

impl Association {
    /// Records a 2022 packet id in the session's window; false for a duplicate or too old id, and for
    /// a classic association, which has no window.
    fn accept_packet(&self, packet_id: u64) -> bool {
        let ReplyCipher::Aead2022 { session, .. } = &self.replies else { return false };
        session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).window.accept(packet_id)
    }
}

impl Relay {
    fn lock_table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis().try_into().unwrap_or(u64::MAX)
    }

    /// Opens, checks and forwards one datagram from `from` (queued in `outgoing`). Failures are silent.
    async fn handle(self: Arc<Self>, packet: &mut [u8], from: SocketAddr, outgoing: &mut Outgoing) {
        if !self.shared.admits_client(from.ip()) {
            return;
        }
        let Some((flow, target, payload)) = self.codec.open(packet, from, unix_now()) else { return };
        let association = match self.association(&flow, from).await {
            Ok(Opened::Live(association)) => association,
            Ok(Opened::EndedSession) => {
                debug!("UDP packet of an ended session replayed, dropped");
                return;
            }
            Ok(Opened::Refused(refusal)) => {
                debug!(%refusal, "UDP association refused");
                self.shared.settings.stats.rejections.count(Reason::UserLimit);
                return;
            }
            Err(error) => {
                debug!(%error, "cannot open an outbound UDP socket");
                return;
            }
        };
        if let Flow::Session { packet_id, .. } = flow {
            if !association.accept_packet(packet_id) {
                debug!(packet_id, "duplicate UDP packet dropped");
                return;
            }
            // Replies follow the client to the address of its last fully validated packet.
            *association.client.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = from;
        }
        association.last_active.store(self.now_ms(), Ordering::Relaxed);
        if target.port() != 53 {
            association.dns_only.store(false, Ordering::Relaxed);
        }
        if let Address::Ip(addr) = target {
            return self.forward(&association, &target, [addr], &packet[payload], Some(outgoing)).await;
        }
        self.resolve(association, target, &packet[payload], outgoing).await;
    }

    /// The association of `flow`, created (and the oldest evicted beyond the cap) if new and its
    /// user's limits allow it.
    async fn association(self: &Arc<Self>, flow: &Flow, from: SocketAddr) -> io::Result<Opened> {
        let key = flow.key();
        {
            let mut table = self.lock_table();
            if let Some(existing) = table.live.get(&key) {
                return Ok(Opened::Live(existing.clone()));
            }
            if let Flow::Session { id, packet_id, .. } = flow {
                if !table.ended.admits(*id, *packet_id, Instant::now()) {
                    return Ok(Opened::EndedSession);
                }
            }
        }
        // A single-key server's datagrams carry no user; a counted one's belong to its owner.
        let user = flow.user().or(self.shared.settings.owner.as_ref());
        let user = match user.map(|user| user.admit(from.ip(), false)).transpose() {
            Ok(user) => user,
            Err(refusal) => return Ok(Opened::Refused(refusal)),
        };
        let outbound = bind_outbound().await?;
        udp_batch::prepare(&outbound);
        let receiver = BatchReceiver::new(REPLY_BATCH)?;
        let dual_stack = outbound.local_addr()?.is_ipv6();
        // Drawn outside the table lock: it may be a system call.
        let server_session_id = OsRng.next_u64();
        let association = {
            let mut table = self.lock_table();
            if let Some(raced) = table.live.get(&key) {
                return Ok(Opened::Live(raced.clone()));
            }
            let association = Arc::new(Association {
                outbound,
                dual_stack,
                client: Mutex::new(from),
                replies: flow.reply_cipher(&mut table.ended, server_session_id),
                user,
                last_active: AtomicU64::new(self.now_ms()),
                dns_only: AtomicBool::new(true),
                awaiting: AtomicUsize::new(0),
                stop: CancellationToken::new(),
            });
            if table.live.len() >= self.shared.settings.max_udp_associations {
                evict_oldest(&mut table);
            }
            if let Some(user) = &association.user {
                user.usages().iter().for_each(|usage| usage.udp_association());
            }
            table.live.insert(key, association.clone());
            self.shared.settings.stats.udp_associations.store(table.live.len(), Ordering::Relaxed);
            self.shared.settings.stats.udp_associations_added.fetch_add(1, Ordering::Relaxed);
            association
        };
        tokio::spawn(self.clone().replies(key, association.clone(), receiver));
        Ok(Opened::Live(association))
    }

    /// Carries the target's replies back to the client until the association idles out or is evicted.
    async fn replies(
        self: Arc<Self>,
        key: AssociationKey,
        association: Arc<Association>,
        mut receiver: BatchReceiver,
    ) {
        // Sealed replies of one batch, tagged with their payload's length for the user's counters.
        let mut sender = BatchSender::<usize>::new();
        loop {
            let idle = if association.dns_only.load(Ordering::Relaxed) {
                DNS_TIMEOUT
            } else {
                self.shared.settings.udp_timeout
            };
            let last = association.last_active.load(Ordering::Relaxed);
            let deadline = self.started + Duration::from_millis(last) + idle;
            let user_removed = async {
                match &association.user {
                    Some(user) => user.removed().await,
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                () = association.stop.cancelled() => return,
                () = user_removed => break,
                () = tokio::time::sleep_until(deadline) => {
                    if association.last_active.load(Ordering::Relaxed) == last {
                        break;
                    }
                    continue;
                }
                received = receiver.recv(&association.outbound) => received,
            };
            if received.is_err() {
                continue;
            }
            association.last_active.store(self.now_ms(), Ordering::Relaxed);
            let client = *association.client.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for reply in receiver.datagrams() {
                let len = reply.bytes.len();
                if let Some(user) = &association.user {
                    if !user.account().pass_datagram(Way::Down, len) {
                        debug!("UDP reply over the user's rate or quota; dropped");
                        continue;
                    }
                }
                let source = Address::Ip(canonical_addr(reply.from));
                let sealed =
                    sender.push(client, len, |out| association.replies.seal(&source, reply.bytes, out));
                if let Err(error) = sealed {
                    debug!(%error, "UDP reply not sealed; dropped");
                }
            }
            for (len, sent) in sender.send(&self.socket).await {
                let delivered = if sent { len } else { 0 };
                if let Some(user) = &association.user {
                    user.usages().iter().for_each(|usage| usage.udp_out(len, delivered));
                }
            }
        }
        let mut table = self.lock_table();
        if table.live.get(&key).is_some_and(|current| Arc::ptr_eq(current, &association)) {
            table.remove(key);
        }
        self.shared.settings.stats.udp_associations.store(table.live.len(), Ordering::Relaxed);
    }
}

/// What [`Relay::association`] found for a datagram.
enum Opened {
    /// The association to send it on.
    Live(Arc<Association>),
    /// A packet (session id, packet id) of a recently ended 2022 session that its old window refuses.
    EndedSession,
    /// A new association its user's limits refuse.
    Refused(Refusal),
}

fn evict_oldest(table: &mut Table) {
    let oldest =
        table.live.iter().min_by_key(|(_, association)| association.last_active.load(Ordering::Relaxed));
    if let Some((&key, _)) = oldest {
        if let Some(evicted) = table.remove(key) {
            evicted.stop.cancel();
        }
    }
}
