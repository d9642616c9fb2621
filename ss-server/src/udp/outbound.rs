//! The way out to targets: a datagram's domain target resolved without holding up the server socket
//! (a place to wait taken from two bounds), the address policy and the user's limits applied, and the
//! datagrams of one received batch sent in GSO runs per association ([`Outgoing`]).

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ss_crypto::Address;
use ss_net::udp_batch::BatchSender;
use ss_net::{canonical_addr, ResolveError};
use tokio::net::UdpSocket;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use super::{Association, Relay};
use crate::limits::Way;
use crate::rejections::Reason;
use crate::Shared;

/// Most datagrams of one server socket waiting for their target's name to resolve; with payloads of
/// at most 64 KiB that bounds what they hold to 16 MiB.
pub(super) const MAX_AWAITING_RESOLUTION: usize = 256;
/// Most datagrams of one association waiting for names, so one client cannot take every place.
pub(super) const MAX_AWAITING_PER_ASSOCIATION: usize = 16;

impl Relay {
    /// Forwards a datagram for a domain target: at once if its name is cached, else from a task of
    /// its own once the lookup ends, if there is room to wait; otherwise it is dropped and counted.
    pub(super) async fn resolve(
        self: Arc<Self>,
        association: Arc<Association>,
        target: Address,
        payload: &[u8],
        outgoing: &mut Outgoing,
    ) {
        let Address::Domain(host, port) = &target else { return };
        let port = *port;
        if !self.shared.guard.allows_name(host) {
            debug!(%target, "UDP target refused by the ACL");
            return self.shared.settings.stats.rejections.count(Reason::Policy);
        }
        let lookup = match self.shared.resolver.try_resolve(host) {
            Ok(lookup) => lookup,
            Err(error) => return self.drop_unresolved(&target, &error),
        };
        let with_port = move |addrs: &ss_net::resolve::Addresses| -> Vec<SocketAddr> {
            addrs.iter().map(|&ip| SocketAddr::new(ip, port)).collect()
        };
        match lookup.ready() {
            Some(Ok(addrs)) => {
                let candidates = with_port(addrs);
                return self.forward(&association, &target, candidates, payload, Some(outgoing)).await;
            }
            Some(Err(error)) => {
                debug!(%error, %target, "UDP target does not resolve");
                return;
            }
            None => {}
        }
        let Some(place) = self.reserve_place(&association) else {
            return self.drop_unresolved(&target, &ResolveError::Busy);
        };
        let payload = payload.to_vec();
        tokio::spawn(async move {
            let _place = place;
            match lookup.wait().await {
                Ok(addrs) => self.forward(&association, &target, with_port(&addrs), &payload, None).await,
                Err(error) => debug!(%error, %target, "UDP target does not resolve"),
            }
        });
    }

    /// Sends `payload` to the first of `candidates` the address policy allows: queued in `outgoing`
    /// (sent with the rest of its batch), or at once without.
    pub(super) async fn forward(
        &self,
        association: &Arc<Association>,
        target: &Address,
        candidates: impl IntoIterator<Item = SocketAddr>,
        payload: &[u8],
        outgoing: Option<&mut Outgoing>,
    ) {
        let Some(destination) = self.shared.guard.first_allowed(candidates.into_iter().map(canonical_addr))
        else {
            debug!(%target, "UDP target refused by the address policy or the ACL");
            return self.shared.settings.stats.rejections.count(Reason::Policy);
        };
        if let Some(user) = &association.user {
            if !user.account().pass_datagram(Way::Up, payload.len()) {
                debug!("UDP datagram over the user's rate or quota; dropped");
                return;
            }
        }
        let destination = outbound_addr(destination, association.dual_stack);
        if let Some(outgoing) = outgoing {
            return outgoing.push(association, destination, payload).await;
        }
        let sent = match association.outbound.send_to(payload, destination).await {
            Ok(sent) => sent,
            Err(error) => {
                debug!(%error, %target, "UDP send to target failed");
                0
            }
        };
        if let Some(user) = &association.user {
            user.usages().iter().for_each(|usage| usage.udp_in(payload.len(), sent));
        }
    }

    fn drop_unresolved(&self, target: &Address, error: &ResolveError) {
        if *error == ResolveError::Busy {
            self.shared.settings.stats.udp_unresolved_drops.fetch_add(1, Ordering::Relaxed);
        }
        debug!(%error, %target, "UDP datagram dropped before resolution");
    }

    /// A place for one more datagram of `association` to wait for a name, if both bounds allow it.
    fn reserve_place(&self, association: &Arc<Association>) -> Option<AwaitingPlace> {
        let permit = self.awaiting.clone().try_acquire_owned().ok()?;
        if association.awaiting.fetch_add(1, Ordering::Relaxed) >= MAX_AWAITING_PER_ASSOCIATION {
            association.awaiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.shared.settings.stats.udp_awaiting_resolution.fetch_add(1, Ordering::Relaxed);
        Some(AwaitingPlace { _permit: permit, association: association.clone(), shared: self.shared.clone() })
    }
}

/// Datagrams of one received batch on their way to targets: consecutive ones of one association go
/// together when the batch ends or another association's datagram comes, in GSO runs where they are
/// for one target and of one size (a client's equal-size datagrams to one target: one send).
#[derive(Default)]
pub(super) struct Outgoing {
    association: Option<Arc<Association>>,
    /// Payloads, tagged with their length for the user's counters.
    sender: BatchSender<usize>,
}

impl Outgoing {
    pub(super) async fn push(
        &mut self,
        association: &Arc<Association>,
        destination: SocketAddr,
        payload: &[u8],
    ) {
        if self.association.as_ref().is_some_and(|queued| !Arc::ptr_eq(queued, association)) {
            self.flush().await;
        }
        self.association.get_or_insert_with(|| association.clone());
        let copied = self.sender.push(destination, payload.len(), |bytes| {
            bytes.extend_from_slice(payload);
            Ok::<_, std::convert::Infallible>(())
        });
        copied.unwrap_or_else(|never| match never {});
    }

    /// Sends what is queued, and counts each datagram for its user as the direct send does.
    pub(super) async fn flush(&mut self) {
        let Some(association) = self.association.take() else { return };
        for (len, sent) in self.sender.send(&association.outbound).await {
            if let Some(user) = &association.user {
                let sent = if sent { len } else { 0 };
                user.usages().iter().for_each(|usage| usage.udp_in(len, sent));
            }
        }
    }
}

/// A datagram's place in the queue for name resolution; given back when dropped.
struct AwaitingPlace {
    _permit: OwnedSemaphorePermit,
    association: Arc<Association>,
    shared: Arc<Shared>,
}

impl Drop for AwaitingPlace {
    fn drop(&mut self) {
        self.association.awaiting.fetch_sub(1, Ordering::Relaxed);
        self.shared.settings.stats.udp_awaiting_resolution.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A dual-stack outbound socket where the system allows it, IPv4 otherwise.
pub(super) async fn bind_outbound() -> io::Result<UdpSocket> {
    match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).await {
        Ok(socket) => Ok(socket),
        Err(_) => UdpSocket::bind(("0.0.0.0", 0)).await,
    }
}

/// IPv4 destinations in the IPv4-mapped form a dual-stack socket needs.
fn outbound_addr(addr: SocketAddr, dual_stack: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if dual_stack => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        other => other,
    }
}
