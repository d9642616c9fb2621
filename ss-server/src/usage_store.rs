//! The usage store: per-user accounting ([`crate::accounting`]) saved in one SQLite file so that a
//! restart loses at most a few seconds of it.
//!
//! The file is `usage.sqlite3` in the state directory (`state_dir`), in WAL mode, opened with an
//! exclusive lock for the life of the process: a second server on the same state directory gets a clear
//! "locked" error at start instead of both overwriting each other's totals. One row per (server entry,
//! user name); the entry's total is the row whose user name is empty (config names never are).
//! [`save_periodically`] writes every [`SAVE_INTERVAL`], and [`crate::run_on`] once more after the
//! drain; the writes run on a blocking thread, never on the async workers.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};
use tokio_util::sync::CancellationToken;

use crate::accounting::Counts;
use crate::users::Users;

/// How often usage is written to the store.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// The file name inside the state directory.
pub const FILE_NAME: &str = "usage.sqlite3";

/// The open store, shared by every server entry of the process.
#[derive(Debug)]
pub struct UsageStore {
    path: PathBuf,
    connection: Mutex<Connection>,
}

/// The store and the name a server entry's rows are saved under (its `host:port`).
#[derive(Debug, Clone)]
pub struct Saving {
    /// The process's store.
    pub store: Arc<UsageStore>,
    /// The entry's rows' `server` column.
    pub server: String,
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("usage store {path}: {message}")]
pub struct StoreError {
    path: PathBuf,
    message: String,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS usage (
    server TEXT NOT NULL, user TEXT NOT NULL,
    client_to_proxy INTEGER NOT NULL, proxy_to_target INTEGER NOT NULL,
    target_to_proxy INTEGER NOT NULL, proxy_to_client INTEGER NOT NULL,
    tcp_opened INTEGER NOT NULL, tcp_closed INTEGER NOT NULL, udp_associations INTEGER NOT NULL,
    udp_packets_in INTEGER NOT NULL, udp_packets_out INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    period_start INTEGER NOT NULL, period_used INTEGER NOT NULL,
    PRIMARY KEY (server, user))";

/// The schema's version (`PRAGMA user_version`): 1 had no quota columns.
const SCHEMA_VERSION: i64 = 2;

/// Brings a store written by an older version up to [`SCHEMA_VERSION`], keeping its rows.
fn migrate(connection: &Connection) -> rusqlite::Result<()> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    let has_quota: bool = connection.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('usage') WHERE name = 'period_start'",
        [],
        |row| row.get(0),
    )?;
    if !has_quota {
        connection.execute_batch(
            "ALTER TABLE usage ADD COLUMN period_start INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE usage ADD COLUMN period_used INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    connection.pragma_update(None, "user_version", SCHEMA_VERSION)
}

/// The state directory when none is configured: `$STATE_DIRECTORY` (systemd's `StateDirectory=`, the first
/// of several), `$XDG_STATE_HOME/ss-rs`, or `~/.local/state/ss-rs`.
pub fn default_dir(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    crate::replay_snapshot::default_path(0, env).and_then(|file| file.parent().map(Path::to_path_buf))
}

impl UsageStore {
    /// Opens (or creates) the store in `state_dir`, which is created (mode 0700) if missing.
    pub fn open_in(state_dir: &Path) -> Result<UsageStore, StoreError> {
        let path = state_dir.join(FILE_NAME);
        let fail = |message: String| StoreError { path: path.clone(), message };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|error| fail(format!("cannot create the state directory: {error}")))?;
        let connection = Connection::open(&path).map_err(|error| fail(error.to_string()))?;
        // The exclusive lock is taken by the first write (the schema) and held until the process ends.
        connection
            .busy_timeout(Duration::ZERO)
            .and_then(|()| connection.pragma_update(None, "locking_mode", "EXCLUSIVE"))
            .and_then(|()| connection.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|()| connection.execute_batch(SCHEMA))
            .and_then(|()| migrate(&connection))
            .map_err(|error| match error.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    fail("locked by another process (is another ss-server using this state_dir?)".into())
                }
                _ => fail(error.to_string()),
            })?;
        Ok(UsageStore { path, connection: Mutex::new(connection) })
    }

    /// Where the store is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The saved rows of `server`: each user's counts, and the total.
    pub fn load(&self, server: &str) -> Result<(Vec<(String, Counts)>, Counts), StoreError> {
        let fail =
            |error: rusqlite::Error| StoreError { path: self.path.clone(), message: error.to_string() };
        let connection = self.lock();
        let mut statement = connection
            .prepare(
                "SELECT user, client_to_proxy, proxy_to_target, target_to_proxy, proxy_to_client, \
                 tcp_opened, tcp_closed, udp_associations, udp_packets_in, udp_packets_out, last_seen, \
                 period_start, period_used \
                 FROM usage WHERE server = ?1",
            )
            .map_err(fail)?;
        let rows = statement
            .query_map(params![server], |row| {
                let get = |index: usize| row.get::<_, i64>(index).map(|value| value.max(0) as u64);
                let counts = Counts {
                    client_to_proxy: get(1)?,
                    proxy_to_target: get(2)?,
                    target_to_proxy: get(3)?,
                    proxy_to_client: get(4)?,
                    tcp_opened: get(5)?,
                    tcp_closed: get(6)?,
                    udp_associations: get(7)?,
                    udp_packets_in: get(8)?,
                    udp_packets_out: get(9)?,
                    last_seen: get(10)?,
                    period_start: get(11)?,
                    period_used: get(12)?,
                };
                Ok((row.get::<_, String>(0)?, counts))
            })
            .map_err(fail)?;
        let (mut users, mut total) = (Vec::new(), Counts::default());
        for row in rows {
            match row.map_err(fail)? {
                (name, counts) if name.is_empty() => total = counts,
                user => users.push(user),
            }
        }
        Ok((users, total))
    }

    /// Writes `server`'s rows, all in one transaction.
    pub fn save(&self, server: &str, users: &[(String, Counts)], total: &Counts) -> Result<(), StoreError> {
        let fail =
            |error: rusqlite::Error| StoreError { path: self.path.clone(), message: error.to_string() };
        let mut connection = self.lock();
        let transaction = connection.transaction().map_err(fail)?;
        {
            let mut statement = transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO usage VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)",
                )
                .map_err(fail)?;
            let total = (String::new(), *total);
            for (name, c) in users.iter().chain(std::iter::once(&total)) {
                // SQLite integers are signed; 2^63 bytes is out of reach.
                let n = |value: u64| value.min(i64::MAX as u64) as i64;
                statement
                    .execute(params![
                        server,
                        name,
                        n(c.client_to_proxy),
                        n(c.proxy_to_target),
                        n(c.target_to_proxy),
                        n(c.proxy_to_client),
                        n(c.tcp_opened),
                        n(c.tcp_closed),
                        n(c.udp_associations),
                        n(c.udp_packets_in),
                        n(c.udp_packets_out),
                        n(c.last_seen),
                        n(c.period_start),
                        n(c.period_used),
                    ])
                    .map_err(fail)?;
            }
        }
        transaction.commit().map_err(fail)
    }
}

/// Loads `server`'s saved usage into `users` (at start, before anything is served).
pub fn restore(store: &UsageStore, server: &str, users: &Users) -> Result<(), StoreError> {
    let (rows, total) = store.load(server)?;
    users.restore(&rows, &total);
    Ok(())
}

/// Saves `users`' usage on a blocking thread; a failure is logged (the next save tries again).
pub async fn save(store: &Arc<UsageStore>, server: &str, users: &Users) {
    let (rows, total) = users.usage_counts();
    let (store, server) = (store.clone(), server.to_string());
    let saved = tokio::task::spawn_blocking(move || store.save(&server, &rows, &total)).await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "usage not saved"),
        Err(error) => tracing::warn!(%error, "usage not saved"),
    }
}

/// Saves every [`SAVE_INTERVAL`] until `shutdown`.
pub async fn save_periodically(
    store: Arc<UsageStore>,
    server: String,
    users: Arc<Users>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + SAVE_INTERVAL, SAVE_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => save(&store, &server, &users).await,
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(bytes: u64) -> Counts {
        Counts {
            client_to_proxy: bytes,
            proxy_to_client: 2 * bytes,
            tcp_opened: 1,
            last_seen: 7,
            ..Counts::default()
        }
    }

    #[test]
    fn a_store_without_quota_columns_is_migrated_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(dir.path().join(FILE_NAME)).unwrap();
            let version_one =
                SCHEMA.replace("period_start INTEGER NOT NULL, period_used INTEGER NOT NULL,", "");
            old.execute_batch(&version_one).unwrap();
            old.execute("INSERT INTO usage VALUES ('a','alice',5,0,0,10,1,0,0,0,0,7)", []).unwrap();
        }
        let store = UsageStore::open_in(dir.path()).unwrap();
        let (users, _) = store.load("a").unwrap();
        assert_eq!(users, vec![("alice".into(), counts(5))]);
        let spent = Counts { period_start: 86_400, period_used: 3, ..counts(6) };
        store.save("a", &[("alice".into(), spent)], &counts(6)).unwrap();
        assert_eq!(store.load("a").unwrap().0[0].1, spent);
    }

    #[test]
    fn saved_rows_load_back_per_server() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        {
            let store = UsageStore::open_in(&state).unwrap();
            store.save("a", &[("alice".into(), counts(5))], &counts(5)).unwrap();
            store.save("a", &[("alice".into(), counts(6)), ("bob".into(), counts(1))], &counts(7)).unwrap();
            store.save("b", &[("carol".into(), counts(9))], &counts(9)).unwrap();
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700);
        let store = UsageStore::open_in(&state).unwrap();
        let (mut users, total) = store.load("a").unwrap();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(users, vec![("alice".into(), counts(6)), ("bob".into(), counts(1))]);
        assert_eq!(total, counts(7));
        assert_eq!(store.load("nothing").unwrap(), (Vec::new(), Counts::default()));
    }

    #[test]
    fn a_second_opener_and_a_corrupt_file_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let _first = UsageStore::open_in(dir.path()).unwrap();
        let error = UsageStore::open_in(dir.path()).unwrap_err().to_string();
        assert!(error.contains("locked by another process"), "{error}");

        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(FILE_NAME), vec![0x55; 8192]).unwrap();
        let error = UsageStore::open_in(other.path()).unwrap_err().to_string();
        assert!(error.contains(FILE_NAME) && error.contains("not a database"), "{error}");
    }
}
