//! The server host's own addresses, kept current, so that the target policy can refuse them.
//!
//! A request for `<the VPS's public address>:6379` leaves over `lo` and passes firewall rules written for
//! the external interface; a request for the server's own port makes it connect to itself (and over UDP
//! one datagram can nest hundreds of layers). Every address configured on any interface, IPv4 and IPv6, is
//! therefore refused under the default policy.
//!
//! Addresses come and go (DHCP, a new IPv6 prefix, a container bridge), so the set is re-read from the
//! kernel (`getifaddrs`, one netlink dump) every [`REFRESH`] by a background task. Connections only read
//! the current set: one atomic load and a hash lookup, no system call on the hot path.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// How often the set is re-read from the kernel.
pub const REFRESH: Duration = Duration::from_secs(2);

/// A shared, current set of the host's addresses. Clones share the set.
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses {
    set: Arc<ArcSwap<HashSet<IpAddr>>>,
}

impl OwnAddresses {
    /// A fixed set (tests, or hosts where the kernel cannot be asked).
    pub fn from_addresses(addresses: impl IntoIterator<Item = IpAddr>) -> OwnAddresses {
        let own = OwnAddresses::default();
        own.replace(addresses.into_iter().collect());
        own
    }

    /// The host's addresses now, kept current every `REFRESH` until `shutdown`. If the kernel cannot be
    /// asked, the problem is logged and the last good set (at first: none) stays in force.
    pub fn watch(shutdown: CancellationToken) -> OwnAddresses {
        OwnAddresses::watch_with(read_host, REFRESH, shutdown)
    }

    /// [`OwnAddresses::watch`] over any source of addresses, re-read every `interval`.
    pub fn watch_with<F>(source: F, interval: Duration, shutdown: CancellationToken) -> OwnAddresses
    where
        F: Fn() -> io::Result<HashSet<IpAddr>> + Send + 'static,
    {
        let own = OwnAddresses::default();
        own.refresh(&source);
        tracing::info!(addresses = own.len(), "refusing the host's own addresses as targets");
        let watched = own.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => watched.refresh(&source),
                }
            }
        });
        own
    }

    /// Whether `ip` (in any IPv4-mapped form too) is one of the host's addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.set.load().contains(&ip.to_canonical())
    }

    /// How many addresses are in the set.
    pub fn len(&self) -> usize {
        self.set.load().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn replace(&self, addresses: HashSet<IpAddr>) {
        let addresses = addresses.into_iter().map(|ip| ip.to_canonical()).collect();
        self.set.store(Arc::new(addresses));
    }

    fn refresh(&self, source: &impl Fn() -> io::Result<HashSet<IpAddr>>) {
        match source() {
            Ok(addresses) => {
                if **self.set.load() != addresses {
                    tracing::debug!(addresses = addresses.len(), "the host's addresses changed");
                    self.replace(addresses);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the host's addresses; keeping the last ones"),
        }
    }
}

/// Every IPv4 and IPv6 address configured on the host's interfaces.
pub fn read_host() -> io::Result<HashSet<IpAddr>> {
    let interfaces = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_host_has_at_least_its_loopback() {
        let addresses = read_host().unwrap();
        assert!(addresses.contains(&ip("127.0.0.1")), "{addresses:?}");
    }

    #[test]
    fn mapped_forms_match_their_ipv4_address() {
        let own = OwnAddresses::from_addresses([ip("192.0.2.1"), ip("2001:db8::1")]);
        assert!(own.contains(ip("192.0.2.1")));
        assert!(own.contains(ip("::ffff:192.0.2.1")));
        assert!(own.contains(ip("2001:db8::1")));
        assert!(!own.contains(ip("192.0.2.2")));
        assert!(!own.contains(ip("2001:db8::2")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_set_follows_the_source_and_survives_its_failures() {
        let answers = Arc::new(Mutex::new(vec![
            Ok(HashSet::from([ip("192.0.2.1")])),
            Ok(HashSet::from([ip("192.0.2.2"), ip("2001:db8::2")])),
            Err(io::Error::other("netlink unavailable")),
        ]));
        let source = {
            let answers = answers.clone();
            move || {
                let mut answers = answers.lock().unwrap();
                if answers.is_empty() {
                    Ok(HashSet::new())
                } else {
                    answers.remove(0)
                }
            }
        };
        let shutdown = CancellationToken::new();
        let own = OwnAddresses::watch_with(source, Duration::from_secs(2), shutdown.clone());
        assert!(own.contains(ip("192.0.2.1")), "read at once, before serving");

        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(!own.contains(ip("192.0.2.1")), "a removed address is forgotten");
        assert!(own.contains(ip("192.0.2.2")) && own.contains(ip("2001:db8::2")), "new ones are added");

        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(own.len(), 2, "a failed read keeps the last good set");

        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(own.is_empty(), "the next good read applies");
        shutdown.cancel();
    }
}
