//! One server the API manages: the multi-user entries of one port (one per host they listen on), their
//! users and traffic, and the edits of their users file.
//!
//! An edit is a change of the users file followed by the reload a SIGHUP does: the config is loaded
//! again (so every check of a start applies: key length, duplicate names or keys, limits) and each
//! entry's [`Users::replace`] puts the result in force, ending a removed or re-keyed user's connections at
//! once. If the config no longer loads, the old file is written back and the error is the answer. So a
//! change survives a restart, and a SIGHUP re-reads what the API wrote. Users written in config.json
//! itself (`users`) are not the API's to change: it answers 409 and says to move them to `users_file`.
//!
//! Statistics are the accounting's ([`crate::accounting`]): the store's totals. `clear` remembers the
//! counts at that moment and later answers report what came after (as shadowsocks-go's snapshot-and-reset
//! does for a panel billing by interval); the totals and the usage store are left alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use ss_config::CliArgs;

use super::users_file::{EditError, UsersFile};
use super::Reply;
use crate::accounting::Counts;
use crate::users::Users;

/// A managed server: one port's multi-user entries.
#[derive(Debug)]
pub struct Group {
    name: String,
    /// The entries (index in the config's servers) and their users.
    entries: Vec<(usize, Arc<Users>)>,
    /// `users_file`, if the entries have one.
    file: Option<std::path::PathBuf>,
    /// How to load the config again.
    args: CliArgs,
    /// Counts at the last `clear`, by user name ("" for the total).
    baseline: Mutex<HashMap<String, Counts>>,
    /// One edit at a time.
    editing: tokio::sync::Mutex<()>,
}

impl Group {
    /// A server named `name` of `entries`, whose users come (partly) from `file`.
    pub fn new(
        name: String,
        entries: Vec<(usize, Arc<Users>)>,
        file: Option<std::path::PathBuf>,
        args: CliArgs,
    ) -> Group {
        Group {
            name,
            entries,
            file,
            args,
            baseline: Mutex::default(),
            editing: tokio::sync::Mutex::default(),
        }
    }

    /// The name the API knows it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `GET /users`.
    pub fn list(&self) -> Reply {
        let file = self.read_file().ok();
        let users: Vec<Value> = self
            .names()
            .iter()
            .map(|name| json!({"username": name, "uPSK": self.upsk(name, file.as_ref())}))
            .collect();
        Reply::ok(json!({ "users": users }))
    }

    /// `GET /users/NAME`.
    pub fn get(&self, name: &str) -> Reply {
        if !self.names().iter().any(|known| known == name) {
            return Reply::error(404, "user not found");
        }
        let file = self.read_file().ok();
        let (users, _) = self.counts();
        let counts = users.get(name).copied().unwrap_or_default();
        let mut user = traffic(&self.since_clear(name, counts));
        user["username"] = Value::from(name);
        user["uPSK"] = self.upsk(name, file.as_ref());
        Reply::ok(user)
    }

    /// `GET /stats[?clear=true]`.
    pub fn stats(&self, clear: bool) -> Reply {
        let (users, total) = self.counts();
        let names = self.names();
        let mut baseline = self.baseline.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let minus = |name: &str, counts: Counts| subtract(counts, baseline.get(name).copied());
        let mut body = traffic(&minus("", total));
        let listed: Vec<Value> = names
            .iter()
            .map(|name| {
                let mut user = traffic(&minus(name, users.get(name).copied().unwrap_or_default()));
                user["username"] = Value::from(name.as_str());
                user
            })
            .collect();
        body["users"] = Value::Array(listed);
        if clear {
            baseline.clear();
            baseline.insert(String::new(), total);
            baseline.extend(users);
        }
        Reply::ok(body)
    }

    /// `POST /users`.
    pub async fn add(&self, name: &str, upsk: &str) -> Reply {
        let _editing = self.editing.lock().await;
        if self.names().iter().any(|known| known == name) {
            return Reply::error(409, format!("user {name:?} already exists"));
        }
        let added = self.edit(|file| {
            file.add(name, upsk);
            Ok(())
        });
        match added.await {
            Ok(()) => Reply::created(json!({"username": name, "uPSK": upsk})),
            Err(reply) => reply,
        }
    }

    /// `PATCH /users/NAME`.
    pub async fn update(&self, name: &str, upsk: &str) -> Reply {
        let _editing = self.editing.lock().await;
        if !self.names().iter().any(|known| known == name) {
            return Reply::error(404, "user not found");
        }
        self.edit(|file| file.set_password(name, upsk)).await.err().unwrap_or_else(Reply::empty)
    }

    /// `DELETE /users/NAME`.
    pub async fn delete(&self, name: &str) -> Reply {
        let _editing = self.editing.lock().await;
        if !self.names().iter().any(|known| known == name) {
            return Reply::error(404, "user not found");
        }
        self.edit(|file| file.remove(name)).await.err().unwrap_or_else(Reply::empty)
    }

    /// Applies `change` to the users file, writes it and reloads; on failure the reply saying why (the
    /// file then is as it was).
    async fn edit(&self, change: impl FnOnce(&mut UsersFile) -> Result<(), EditError>) -> Result<(), Reply> {
        let Some(path) = self.file.clone() else {
            return Err(Reply::error(409, INLINE));
        };
        let old = UsersFile::read(&path).map_err(|error| Reply::error(500, error.to_string()))?;
        let mut new = old.clone();
        change(&mut new).map_err(|error| match error {
            EditError::NotInFile(_) => Reply::error(409, INLINE),
            error => Reply::error(500, error.to_string()),
        })?;
        let (args, entries) = (self.args.clone(), self.entries.clone());
        let done = tokio::task::spawn_blocking(move || {
            new.write().map_err(|error| Reply::error(500, error.to_string()))?;
            let result = ss_config::load(&args).map_err(|error| error.to_string()).and_then(|config| {
                entries.iter().try_for_each(|(index, users)| users.reload_from(config.servers.get(*index)))
            });
            if let Err(why) = result {
                // Back to the file that loaded; its users are still in force.
                let _ = old.write();
                return Err(Reply::error(400, why));
            }
            Ok(())
        })
        .await;
        done.unwrap_or_else(|error| Err(Reply::error(500, error.to_string())))
    }

    /// The users in force, in config order.
    fn names(&self) -> Vec<String> {
        let Some((_, users)) = self.entries.first() else { return Vec::new() };
        users.current().users().iter().map(|user| user.name().to_string()).collect()
    }

    /// Each user's counts (summed over the entries) and the total.
    fn counts(&self) -> (HashMap<String, Counts>, Counts) {
        let mut by_name: HashMap<String, Counts> = HashMap::new();
        let mut total = Counts::default();
        for (_, users) in &self.entries {
            for user in users.current().users() {
                let sum = by_name.entry(user.name().to_string()).or_default();
                *sum = add(*sum, user.usage().counts());
            }
            total = add(total, users.usage_counts().1);
        }
        (by_name, total)
    }

    fn since_clear(&self, name: &str, counts: Counts) -> Counts {
        let baseline = self.baseline.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        subtract(counts, baseline.get(name).copied())
    }

    fn read_file(&self) -> Result<UsersFile, EditError> {
        match &self.file {
            Some(path) => UsersFile::read(path),
            None => Err(EditError::NotInFile(String::new())),
        }
    }

    /// A user's uPSK: a 2022 key in base64, or a classic password as the users file has it.
    fn upsk(&self, name: &str, file: Option<&UsersFile>) -> Value {
        if let Some(password) = file.and_then(|file| file.password(name)) {
            return Value::from(password);
        }
        let Some((_, users)) = self.entries.first() else { return Value::Null };
        let table = users.current();
        match table.users().iter().find(|user| user.name() == name) {
            Some(user) if users.method().is_2022() => Value::from(user.key().to_base64()),
            _ => Value::Null,
        }
    }
}

const INLINE: &str = "this user is written in the config file itself; only the users of a users_file can be \
                      changed through the API (move them to \"users_file\")";

/// The traffic fields of shadowsocks-go's statistics.
fn traffic(counts: &Counts) -> Value {
    json!({
        "uplinkBytes": counts.client_to_proxy,
        "downlinkBytes": counts.proxy_to_client,
        "uplinkPackets": counts.udp_packets_in,
        "downlinkPackets": counts.udp_packets_out,
        "tcpSessions": counts.tcp_opened,
        "udpSessions": counts.udp_associations,
    })
}

fn add(a: Counts, b: Counts) -> Counts {
    Counts {
        client_to_proxy: a.client_to_proxy.saturating_add(b.client_to_proxy),
        proxy_to_client: a.proxy_to_client.saturating_add(b.proxy_to_client),
        udp_packets_in: a.udp_packets_in.saturating_add(b.udp_packets_in),
        udp_packets_out: a.udp_packets_out.saturating_add(b.udp_packets_out),
        tcp_opened: a.tcp_opened.saturating_add(b.tcp_opened),
        udp_associations: a.udp_associations.saturating_add(b.udp_associations),
        ..Counts::default()
    }
}

fn subtract(counts: Counts, baseline: Option<Counts>) -> Counts {
    let Some(base) = baseline else { return counts };
    Counts {
        client_to_proxy: counts.client_to_proxy.saturating_sub(base.client_to_proxy),
        proxy_to_client: counts.proxy_to_client.saturating_sub(base.proxy_to_client),
        udp_packets_in: counts.udp_packets_in.saturating_sub(base.udp_packets_in),
        udp_packets_out: counts.udp_packets_out.saturating_sub(base.udp_packets_out),
        tcp_opened: counts.tcp_opened.saturating_sub(base.tcp_opened),
        udp_associations: counts.udp_associations.saturating_sub(base.udp_associations),
        ..Counts::default()
    }
}
