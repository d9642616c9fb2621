//! The route step of a CONNECT: through the Shadowsocks server, or directly from ss-local when the ACL
//! (`--acl`) bypasses the target.
//!
//! ```text
//! IP target   ─▶ IP rules (bypass list first) ─────────────────────────────▶ proxy | direct
//! name target ─▶ host rules (bypass list first) ─ matched ─────────────────▶ proxy | direct (resolve here)
//!                                               └ no match ─▶ default, unless the list that could overturn
//!                                                 it has IP rules: resolve, then the first address's rules
//! ```
//!
//! No DNS leak: a name is looked up locally only when it will be connected to directly, or when IP rules
//! of the deciding list need its address. A proxied name is sent to the server as a name, even when it
//! was resolved here to test the rules. A name that does not resolve locally goes through the server.
//! UDP ASSOCIATE routes each datagram by the same rules (`udp_direct.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use ss_config::acl::{HostRoute, Route};
use ss_crypto::Address;
use ss_net::{ResolveSettings, Resolver, SharedAcl};
use tracing::{debug, warn};

/// The ACL and the resolver for targets reached directly.
#[derive(Debug)]
pub(crate) struct Router {
    acl: Arc<SharedAcl>,
    resolver: Arc<Resolver>,
}

/// Where one connection goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Through a Shadowsocks server, with the target as the client gave it.
    Proxy,
    /// Directly to these addresses, in order.
    Direct(Vec<SocketAddr>),
}

impl Router {
    /// A router over `acl`, resolving bypassed names as `resolve` says.
    pub(crate) fn new(acl: Arc<SharedAcl>, resolve: &ResolveSettings) -> io::Result<Router> {
        let resolver = Resolver::new(resolve).map_err(io::Error::other)?;
        Ok(Router { acl, resolver: Arc::new(resolver) })
    }

    /// The rules in force now.
    pub(crate) fn acl(&self) -> Arc<ss_config::acl::Acl> {
        self.acl.current()
    }

    /// Decides for one target, with the rules in force now.
    pub(crate) async fn decide(&self, target: &Address) -> io::Result<Decision> {
        let acl = self.acl.current();
        let (host, port) = match target {
            Address::Ip(addr) => {
                return Ok(match acl.route_ip(addr.ip()) {
                    Route::Bypass => Decision::Direct(vec![*addr]),
                    Route::Proxy => Decision::Proxy,
                });
            }
            Address::Domain(host, port) => (host.as_str(), *port),
        };
        match acl.route_host(host) {
            HostRoute::Decided { route: Route::Proxy, .. } => Ok(Decision::Proxy),
            HostRoute::Decided { route: Route::Bypass, in_both } => {
                if in_both {
                    warn!(%host, "name is in both the bypass and the proxy list; bypassed");
                }
                Ok(Decision::Direct(self.resolve(host, port).await?))
            }
            HostRoute::ResolveFirst => {
                let addresses = match self.resolve(host, port).await {
                    Ok(addresses) => addresses,
                    Err(error) => {
                        debug!(%host, %error, "no local answer for the IP rules; proxied");
                        return Ok(Decision::Proxy);
                    }
                };
                match addresses.first().map(|addr| acl.route_ip(addr.ip())) {
                    Some(Route::Bypass) => Ok(Decision::Direct(addresses)),
                    _ => Ok(Decision::Proxy),
                }
            }
        }
    }

    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let addresses = self.resolver.resolve(host).await.map_err(io::Error::other)?;
        if addresses.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "name resolved to no address"));
        }
        Ok(addresses.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }
}
