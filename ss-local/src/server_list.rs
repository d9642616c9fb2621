//! [`ServerList`]: the servers new connections choose from, which can change while ss-local runs (an
//! online config brings a new list).
//!
//! Each connection takes the list once, when it starts ([`ServerList::current`], one atomic load), and
//! keeps that snapshot to its end: a swap changes where new connections go and never touches a
//! connection already open. Readers never wait for a writer (arc-swap).

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::Server;

/// A server list shared by the accept loops and whatever updates it; clones share one list.
#[derive(Debug, Clone)]
pub struct ServerList {
    current: Arc<ArcSwap<Vec<Server>>>,
    /// Counts replacements, for those who want to hear of them (logs, tests).
    generation: Arc<watch::Sender<u64>>,
    /// Something (an online config) will replace the contents: the balancer's checks must run even
    /// when the list starts with one server or none.
    updatable: bool,
}

impl ServerList {
    /// A list holding `servers`.
    pub fn new(servers: Vec<Server>) -> ServerList {
        let (generation, _) = watch::channel(0);
        ServerList {
            current: Arc::new(ArcSwap::from_pointee(servers)),
            generation: Arc::new(generation),
            updatable: false,
        }
    }

    /// A list holding `servers` for now, which an updater (an online config) will replace.
    pub fn updatable(servers: Vec<Server>) -> ServerList {
        ServerList { updatable: true, ..ServerList::new(servers) }
    }

    /// Whether it was made with [`ServerList::updatable`].
    pub fn is_updatable(&self) -> bool {
        self.updatable
    }

    /// The servers now, in the order to try them.
    pub fn current(&self) -> Arc<Vec<Server>> {
        self.current.load_full()
    }

    /// Puts `servers` in place for connections that start from now on.
    pub fn replace(&self, servers: Vec<Server>) {
        self.current.store(Arc::new(servers));
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// A receiver that sees the number of replacements so far, and is told of each new one.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use ss_crypto::{Key, Method};

    use super::*;

    fn server(port: u16) -> Server {
        let key = Key::from_bytes(Method::Blake3Aes128Gcm, &[1; 16]).unwrap();
        Server::new("127.0.0.1", port, Method::Blake3Aes128Gcm, key)
    }

    #[test]
    fn a_snapshot_outlives_a_replacement_and_observers_are_told() {
        let list = ServerList::new(vec![server(1)]);
        let mut changes = list.changes();
        let before = list.current();
        list.clone().replace(vec![server(2), server(3)]);
        assert_eq!(before.iter().map(|s| s.port).collect::<Vec<_>>(), [1], "the old snapshot is untouched");
        assert_eq!(list.current().iter().map(|s| s.port).collect::<Vec<_>>(), [2, 3]);
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), 1);
    }
}
