//! Finding the user of a new stream from its first bytes, and the order trial decryption tries keys in.
//!
//! Both searches look at a fixed number of bytes, the same whatever the number of users and whether a
//! user is found ([`head_len`]): the salt and the identity header (AES 2022), or the salt and the first
//! record (classic: the sealed length, 2022 ChaCha20: the fixed header). A stream no key opens gets the
//! same treatment as any failed handshake.
//!
//! Trial order ([`KeyOrder`]): first the few keys that last succeeded from the client's IP address, then
//! every key, most recently successful first. A repeat client costs one or two trials; a miss costs one
//! trial per user (a session-key derivation and one small AEAD open each; see the README's table).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use ss_crypto::identity::{first_record_len, first_record_opens, open_tcp_identity, IDENTITY_HEADER_LEN};
use ss_crypto::{Key, Method};

use super::{User, UserTable};

/// Keys remembered per client address.
const KEYS_PER_SOURCE: usize = 4;
/// Client addresses remembered; beyond this the memory starts over (bounded, and a new table is cheap
/// to warm up again: one search per address).
const MAX_SOURCES: usize = 65_536;
/// An empty slot of a source's list.
const NONE: u32 = u32::MAX;

/// How many bytes of a client stream the search reads before it decides.
pub fn head_len(method: Method) -> usize {
    if ss_crypto::identity::supports_identity_headers(method) {
        method.salt_len() + IDENTITY_HEADER_LEN
    } else {
        first_record_len(method)
    }
}

/// The user `head` (at least [`head_len`] bytes) belongs to, if any. `ipsk` is the server's identity
/// PSK (its `password`), used by the AES 2022 methods only.
pub fn find_user(
    table: &UserTable,
    method: Method,
    ipsk: &Key,
    source: IpAddr,
    head: &[u8],
) -> Option<Arc<User>> {
    let salt_len = method.salt_len();
    if ss_crypto::identity::supports_identity_headers(method) {
        let header: &[u8; IDENTITY_HEADER_LEN] =
            head.get(salt_len..salt_len + IDENTITY_HEADER_LEN)?.try_into().ok()?;
        let hash = open_tcp_identity(method, ipsk, &head[..salt_len], header)?;
        return table.by_hash(&hash).cloned();
    }
    let users = table.users();
    let index = table.order.search(source, |index| first_record_opens(method, users[index].key(), head))?;
    users.get(index).cloned()
}

/// The user of a datagram without identity header: keys are tried in trial order with `opens` (which
/// must not change the datagram). A client's later datagrams find its key first, from its address.
pub fn find_datagram_user(
    table: &UserTable,
    source: IpAddr,
    mut opens: impl FnMut(&Key) -> bool,
) -> Option<Arc<User>> {
    let users = table.users();
    let index = table.order.search(source, |index| opens(users[index].key()))?;
    users.get(index).cloned()
}

/// The order trial decryption tries a table's keys in.
#[derive(Debug)]
pub struct KeyOrder {
    /// Every key's index, most recently successful first.
    recent: Mutex<Vec<u32>>,
    /// Per client address, the keys that last succeeded from it, newest first.
    by_source: Mutex<HashMap<IpAddr, [u32; KEYS_PER_SOURCE]>>,
}

impl KeyOrder {
    /// The order for `len` keys: as listed, until clients are seen.
    pub fn new(len: usize) -> KeyOrder {
        let len = u32::try_from(len).unwrap_or(NONE - 1);
        KeyOrder { recent: Mutex::new((0..len).collect()), by_source: Mutex::default() }
    }

    /// Tries keys by index in trial order until `opens` says yes; remembers the winner for `source`.
    pub fn search(&self, source: IpAddr, mut opens: impl FnMut(usize) -> bool) -> Option<usize> {
        let from_source = lock(&self.by_source).get(&source).copied().unwrap_or([NONE; KEYS_PER_SOURCE]);
        for &index in from_source.iter().filter(|&&index| index != NONE) {
            if opens(index as usize) {
                self.succeeded(source, index);
                return Some(index as usize);
            }
        }
        // A copy, so no lock is held while keys are tried (4 bytes per user).
        let everyone = lock(&self.recent).clone();
        for index in everyone.into_iter().filter(|index| !from_source.contains(index)) {
            if opens(index as usize) {
                self.succeeded(source, index);
                return Some(index as usize);
            }
        }
        None
    }

    fn succeeded(&self, source: IpAddr, index: u32) {
        {
            let mut recent = lock(&self.recent);
            if let Some(at) = recent.iter().position(|&other| other == index) {
                recent[..=at].rotate_right(1);
            }
        }
        let mut by_source = lock(&self.by_source);
        if by_source.len() >= MAX_SOURCES && !by_source.contains_key(&source) {
            by_source.clear();
        }
        let keys = by_source.entry(source).or_insert([NONE; KEYS_PER_SOURCE]);
        let at = keys.iter().position(|&other| other == index).unwrap_or(KEYS_PER_SOURCE - 1);
        keys[..=at].rotate_right(1);
        keys[0] = index;
    }
}

/// A panic elsewhere while holding the lock leaves a usable order (it is only a hint).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    /// The indices tried, in order, when key `wanted` is the one that opens.
    fn trials(order: &KeyOrder, source: IpAddr, wanted: usize) -> Vec<usize> {
        let mut tried = Vec::new();
        order.search(source, |index| {
            tried.push(index);
            index == wanted
        });
        tried
    }

    #[test]
    fn a_repeat_client_is_tried_first_then_the_most_recent_keys() {
        let order = KeyOrder::new(100);
        assert_eq!(trials(&order, HOME, 42).len(), 43, "cold: in list order");
        assert_eq!(trials(&order, HOME, 42), [42], "warm from the same address: one trial");
        assert_eq!(trials(&order, ELSEWHERE, 42), [42], "another address: most recent key first");
        assert_eq!(trials(&order, ELSEWHERE, 7), [42, 0, 1, 2, 3, 4, 5, 6, 7], "42 first, then list order");
        // HOME's own list names 42 only; then the global order (7, 42 done, 0, 1, ...).
        assert_eq!(trials(&order, HOME, 7), [42, 7]);
        assert_eq!(trials(&order, HOME, 7), [7]);
        let miss = trials(&order, HOME, 1000);
        assert_eq!(miss.len(), 100, "a miss tries every key once");
    }

    #[test]
    fn the_memory_of_sources_is_bounded() {
        let order = KeyOrder::new(3);
        for n in 0..(MAX_SOURCES as u32 + 10) {
            order.search(IpAddr::V4(n.into()), |index| index == 1);
        }
        assert!(lock(&order.by_source).len() <= MAX_SOURCES);
    }
}
