//! Many users on one port: the user table a connection finds its user in, and its reload.
//!
//! Every accepted connection (and UDP association) of a multi-user server carries the `Arc<User>` it
//! authenticated as, for its whole life: logs name the user, and per-user accounting and limits hang
//! on it. How the user is found depends on the method ([`search`]):
//!
//! - AES 2022 methods: the SIP023 identity header after the salt names the user's key hash; one AES
//!   block and one hash-map lookup, whatever the number of users.
//! - Classic AEAD and 2022-blake3-chacha20-poly1305: trial decryption of the first record with each
//!   user's key, the keys recently used from the client's address first, then the most recently used.
//!
//! [`Users::replace`] puts a new list in force (SIGHUP): users that stay (same name and key) keep their
//! `Arc<User>` and their connections; a removed user's (or one whose key changed) connections end, as
//! [`User::removed`] fires. Every user's limits are set anew. Readers take the table with one
//! lock-free load ([`ArcSwap`]).
//!
//! What a user name has (usage, quota, rates, who is connected: [`Account`]) lives as long as the
//! server, so a user whose key changes, or who is removed and comes back, goes on where they left off.

pub mod search;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ss_config::users::UserEntry;
use ss_crypto::identity::UserHash;
use ss_crypto::{Key, Method};
use tokio_util::sync::CancellationToken;

pub use search::KeyOrder;

use crate::accounting::{Counts, Usage};
use crate::limits::{Account, Present, Refusal};

/// One user: a name and a key, their account, and the signal that ends their connections when they
/// are removed.
pub struct User {
    name: String,
    key: Key,
    hash: UserHash,
    account: Arc<Account>,
    /// Every user's traffic together (shared by the users of one server entry).
    total: Arc<Usage>,
    removed: CancellationToken,
}

impl User {
    /// A user named `name` whose streams are sealed with `key`, counting from zero, without limits.
    pub fn new(name: impl Into<String>, key: Key) -> User {
        User::with_account(name.into(), key, Arc::default(), Arc::default())
    }

    fn with_account(name: String, key: Key, account: Arc<Account>, total: Arc<Usage>) -> User {
        let hash = UserHash::of(&key);
        User { name, key, hash, account, total, removed: CancellationToken::new() }
    }

    /// What this user has used (kept across reloads by name, and across restarts by the store).
    pub fn usage(&self) -> &Usage {
        self.account.usage()
    }

    /// The user's counters and the server's total, which every count goes to.
    pub fn usages(&self) -> [&Usage; 2] {
        [self.account.usage(), &self.total]
    }

    /// The user's account: usage, quota, rates, who is connected.
    pub fn account(&self) -> &Arc<Account> {
        &self.account
    }

    /// Admits a new TCP connection (`tcp`) or UDP association of this user from `client`, if the
    /// user's limits allow it ([`crate::limits`]).
    pub fn admit(self: &Arc<User>, client: IpAddr, tcp: bool) -> Result<Admitted, Refusal> {
        let present = self.account.admit(client, tcp)?;
        Ok(Admitted { user: self.clone(), _present: present })
    }

    /// The name from the config (a label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user's key: uPSK for 2022 methods, the password-derived key for classic ones.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Completes when the user has been removed by a reload: its connections end.
    pub async fn removed(&self) {
        self.removed.cancelled().await;
    }

    /// Ends the user's connections and associations, as a reload that removes them does (the manager's
    /// `remove`, the API's `DELETE`).
    pub fn mark_removed(&self) {
        self.removed.cancel();
    }

    /// Whether a reload removed this user.
    pub fn is_removed(&self) -> bool {
        self.removed.is_cancelled()
    }
}

/// The key stays out of logs.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A connection's or association's user, holding its place among the user's connections until dropped.
#[derive(Debug)]
pub struct Admitted {
    user: Arc<User>,
    _present: Present,
}

impl std::ops::Deref for Admitted {
    type Target = User;

    fn deref(&self) -> &User {
        &self.user
    }
}

/// The users in force, with what the key search needs.
#[derive(Debug)]
pub struct UserTable {
    users: Vec<Arc<User>>,
    by_hash: HashMap<UserHash, usize>,
    /// Trial order (unused by identity-header methods).
    order: KeyOrder,
}

impl UserTable {
    fn new(users: Vec<Arc<User>>) -> UserTable {
        let by_hash = users.iter().enumerate().map(|(index, user)| (user.hash, index)).collect();
        let order = KeyOrder::new(users.len());
        UserTable { users, by_hash, order }
    }

    /// Every user, in config order.
    pub fn users(&self) -> &[Arc<User>] {
        &self.users
    }

    /// The user whose key hashes to `hash` (identity headers).
    pub fn by_hash(&self, hash: &UserHash) -> Option<&Arc<User>> {
        self.by_hash.get(hash).map(|&index| &self.users[index])
    }
}

/// The user table of one server entry, replaceable while connections run.
#[derive(Debug)]
pub struct Users {
    method: Method,
    current: ArcSwap<UserTable>,
    /// Accounts by user name; removed users' stay (their counts are saved).
    accounts: Mutex<HashMap<String, Arc<Account>>>,
    total: Arc<Usage>,
}

impl Users {
    /// A table of `entries` for `method`.
    pub fn new(method: Method, entries: &[UserEntry]) -> Users {
        let users = Users {
            method,
            current: ArcSwap::from_pointee(UserTable::new(Vec::new())),
            accounts: Mutex::default(),
            total: Arc::default(),
        };
        let table = entries.iter().map(|entry| users.user(entry)).collect();
        users.current.store(Arc::new(UserTable::new(table)));
        users
    }

    /// A new `Arc<User>` for `entry`, with the account kept under its name and `entry`'s limits.
    fn user(&self, entry: &UserEntry) -> Arc<User> {
        let account = self.lock_accounts().entry(entry.name.clone()).or_default().clone();
        account.set_limits(&entry.limits);
        Arc::new(User::with_account(entry.name.clone(), entry.key.clone(), account, self.total.clone()))
    }

    fn lock_accounts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Account>>> {
        self.accounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds saved counts (by user name, and the total) to the live ones: the store's rows at start.
    pub fn restore(&self, users: &[(String, Counts)], total: &Counts) {
        let mut accounts = self.lock_accounts();
        for (name, counts) in users {
            accounts.entry(name.clone()).or_default().restore(counts);
        }
        self.total.add(total);
    }

    /// Every user's counts by name (removed users' too), and the total.
    pub fn usage_counts(&self) -> (Vec<(String, Counts)>, Counts) {
        let accounts = self.lock_accounts();
        let users = accounts.iter().map(|(name, account)| (name.clone(), account.counts())).collect();
        (users, self.total.counts())
    }

    /// The method every user's key is for.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<UserTable> {
        self.current.load_full()
    }

    /// Puts `entries` in force. Users of the same name and key keep their `Arc<User>` (and connections);
    /// the others' connections are told to end. Returns how many were (kept, added, removed).
    pub fn replace(&self, entries: &[UserEntry]) -> (usize, usize, usize) {
        let old = self.current();
        let mut kept_count = 0;
        let users: Vec<Arc<User>> = entries
            .iter()
            .map(|entry| {
                let same = old.users.iter().find(|user| user.name == entry.name && user.key == entry.key);
                match same {
                    Some(user) => {
                        user.account.set_limits(&entry.limits);
                        kept_count += 1;
                        user.clone()
                    }
                    None => self.user(entry),
                }
            })
            .collect();
        let table = UserTable::new(users);
        let mut removed = 0;
        for user in &old.users {
            if !table.users.iter().any(|kept| Arc::ptr_eq(kept, user)) {
                user.removed.cancel();
                removed += 1;
            }
        }
        let added = table.users.len() - kept_count;
        self.current.store(Arc::new(table));
        (kept_count, added, removed)
    }

    /// Puts the users of `entry` (this server's entry in a freshly loaded config) in force and logs one
    /// line saying what changed; an entry that is gone, has no users, or changed its method keeps the
    /// users in force and logs one line why.
    pub fn reload_from(&self, entry: Option<&ss_config::ServerEntry>) -> Result<(), String> {
        let result = match entry {
            None => Err("the server entry is gone from the config".to_string()),
            Some(entry) if entry.method != self.method => {
                Err(format!("the method changed to {} (a restart is needed)", entry.method))
            }
            Some(ss_config::ServerEntry { users: None, .. }) => Err("the entry has no users any more".into()),
            Some(ss_config::ServerEntry { users: Some(list), .. }) => Ok(self.replace(&list.users)),
        };
        match result {
            Ok((kept, added, removed)) => {
                tracing::info!(kept, added, removed, "users reloaded");
                Ok(())
            }
            Err(why) => {
                tracing::error!("users reload failed: {why}; the previous users stay in force");
                Err(why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, byte: u8) -> UserEntry {
        UserEntry::new(name, Key::from_bytes(Method::Blake3Aes128Gcm, &[byte; 16]).unwrap())
    }

    #[test]
    fn a_reload_keeps_remaining_users_and_ends_removed_ones() {
        let users =
            Users::new(Method::Blake3Aes128Gcm, &[entry("alice", 1), entry("bob", 2), entry("carol", 3)]);
        let before = users.current();
        let alice = before.users()[0].clone();
        let bob = before.users()[1].clone();
        let carol = before.users()[2].clone();
        // bob is removed, carol's key changes, dave is new.
        let counts = users.replace(&[entry("alice", 1), entry("carol", 4), entry("dave", 5)]);
        assert_eq!(counts, (1, 2, 2));
        let after = users.current();
        assert!(Arc::ptr_eq(&after.users()[0], &alice), "alice keeps her Arc and connections");
        assert!(!alice.is_removed());
        assert!(bob.is_removed() && carol.is_removed(), "removed or re-keyed users' connections end");
        let hash = UserHash::of(&entry("dave", 5).key);
        assert_eq!(after.by_hash(&hash).map(|user| user.name()), Some("dave"));
        assert!(after.by_hash(&UserHash::of(&entry("bob", 2).key)).is_none());
    }

    #[test]
    fn debug_output_hides_keys() {
        let user = User::new("alice", entry("alice", 1).key);
        assert_eq!(format!("{user:?}"), "User { name: \"alice\", .. }");
    }
}
