//! The classic replay filter survives restarts: a snapshot of its fingerprints is saved atomically
//! (written to a temporary file beside it, synced, renamed over the old one) every
//! [`SNAPSHOT_INTERVAL`] while salts arrive, and once more at shutdown, and loaded at start.
//!
//! Classic AEAD has no timestamp, so a censor can replay a recorded connection days later; a filter that
//! lives only in memory forgets everything at each restart or crash. AEAD-2022 needs no snapshot: its
//! salts only matter for about a minute, less than a restart takes to matter.
//!
//! ```text
//! +---------------+-------------+---------+--------+-----------+----------+---------+----------+---------+
//! | magic 8 bytes | version u16 | len u8  | method | key check | capacity | n_older | n_newer  | ...     |
//! | "ss-rs-RF"    | 1           |         | name   | 16 bytes  | u64      | u64     | u64      |         |
//! +---------------+-------------+---------+--------+-----------+----------+---------+----------+---------+
//!   ... | fingerprints u64 x (n_older + n_newer), older generation first | BLAKE3 of all before (32) |
//! ```
//!
//! All integers are big-endian. The key check is derived from the server key (see
//! [`SaltHistory::key_check`]), and so are the fingerprints: a snapshot written under another key or
//! method would be useless, and is recognised and ignored. A file that is cut short, too large for the
//! configured capacity, or fails its checksum is ignored too. Every such case is one WARN line naming
//! the file; none stops the server, and the next save replaces the file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ss_crypto::Method;
use tokio_util::sync::CancellationToken;

use crate::replay::{ReplayFilter, SaltHistory};

/// How often a changed filter is saved while the server runs.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(300);

const MAGIC: &[u8; 8] = b"ss-rs-RF";
const VERSION: u16 = 1;
const CHECKSUM_LEN: usize = 32;

/// Why a snapshot file was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a snapshot (wrong magic) or of a version this build does not read.
    Foreign(&'static str),
    /// Written for another method or key.
    OtherKey,
    /// Cut short, inconsistent, or failing its checksum.
    Damaged(&'static str),
    /// Bigger than the configured capacity allows.
    TooLarge,
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Foreign(what) => write!(f, "not a replay filter snapshot ({what})"),
            SnapshotError::OtherKey => f.write_str("written for another method or key"),
            SnapshotError::Damaged(what) => write!(f, "damaged ({what})"),
            SnapshotError::TooLarge => f.write_str("larger than the configured filter capacity allows"),
        }
    }
}

/// The snapshot of `history` for `method`.
pub fn encode(method: Method, history: &SaltHistory) -> Vec<u8> {
    let (older, newer) = history.generations();
    let name = method.name().as_bytes();
    let mut out = Vec::with_capacity(header_len(name.len()) + 8 * (older.len() + newer.len()) + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.push(name.len().try_into().unwrap_or(u8::MAX));
    out.extend_from_slice(name);
    out.extend_from_slice(&history.key_check());
    for count in [history.capacity(), older.len(), newer.len()] {
        out.extend_from_slice(&(count as u64).to_be_bytes());
    }
    for fingerprint in older.iter().chain(newer) {
        out.extend_from_slice(&fingerprint.to_be_bytes());
    }
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// Checks a snapshot completely, then records its fingerprints in `history` (older generation first);
/// returns how many. Nothing is recorded from a file that fails any check.
pub fn decode_into(bytes: &[u8], method: Method, history: &mut SaltHistory) -> Result<usize, SnapshotError> {
    let mut reader = Reader(bytes);
    if reader.take(MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(SnapshotError::Foreign("wrong magic"));
    }
    if reader.u16() != Some(VERSION) {
        return Err(SnapshotError::Foreign("unknown version"));
    }
    let name_len = reader.take(1).ok_or(SnapshotError::Damaged("cut short"))?[0];
    let name = reader.take(usize::from(name_len)).ok_or(SnapshotError::Damaged("cut short"))?;
    let check = reader.take(16).ok_or(SnapshotError::Damaged("cut short"))?;
    if name != method.name().as_bytes() || check != history.key_check() {
        return Err(SnapshotError::OtherKey);
    }
    let (_capacity, older, newer) = match (reader.u64(), reader.u64(), reader.u64()) {
        (Some(capacity), Some(older), Some(newer)) => (capacity, older, newer),
        _ => return Err(SnapshotError::Damaged("cut short")),
    };
    let count = older.checked_add(newer).and_then(|count| usize::try_from(count).ok());
    let fingerprints_len = count.and_then(|count| count.checked_mul(8)).ok_or(SnapshotError::TooLarge)?;
    if reader.0.len() != fingerprints_len + CHECKSUM_LEN {
        return Err(SnapshotError::Damaged("length does not match its counts"));
    }
    let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if blake3::hash(body).as_bytes() != checksum {
        return Err(SnapshotError::Damaged("checksum mismatch"));
    }
    let fingerprints = &reader.0[..fingerprints_len];
    for chunk in fingerprints.chunks_exact(8) {
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(chunk);
        history.insert_fingerprint(u64::from_be_bytes(fingerprint));
    }
    Ok(fingerprints_len / 8)
}

/// Loads `path` into the classic filter at start. A missing file is normal (first start); anything
/// else that keeps it from being used is logged at WARN and ignored.
pub fn load(path: &Path, method: Method, filter: &ReplayFilter) {
    let limit = filter.with_history(|history| max_file_len(method, history.capacity())).unwrap_or(0) as u64;
    let bytes = match std::fs::metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no replay filter snapshot yet; starting empty");
            return;
        }
        Ok(metadata) if metadata.len() > limit => Err(SnapshotError::TooLarge.to_string()),
        _ => std::fs::read(path).map_err(|error| error.to_string()),
    };
    let loaded = bytes.and_then(|bytes| {
        filter
            .with_history(|history| decode_into(&bytes, method, history))
            .unwrap_or(Ok(0))
            .map_err(|error| error.to_string())
    });
    match loaded {
        Ok(salts) => tracing::info!(path = %path.display(), salts, "replay filter snapshot loaded"),
        Err(reason) => tracing::warn!(
            path = %path.display(),
            %reason,
            "replay filter snapshot ignored; starting with an empty filter"
        ),
    }
}

/// Saves the filter every [`SNAPSHOT_INTERVAL`] if a salt arrived since the last save, until `shutdown`.
/// The final save at shutdown is the caller's, once connections have drained.
pub(crate) async fn save_periodically(
    filter: &ReplayFilter,
    method: Method,
    path: &Path,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SNAPSHOT_INTERVAL) => {}
        }
        if filter.take_changed() {
            save(filter, method, path).await;
        }
    }
}

/// Writes a snapshot of `filter` to `path` now; failures are logged.
pub async fn save(filter: &ReplayFilter, method: Method, path: &Path) {
    // Copied under the filter's lock (a few milliseconds for a full filter), written off the runtime.
    let Some(bytes) = filter.with_history(|history| encode(method, history)) else { return };
    let target = path.to_owned();
    let written = tokio::task::spawn_blocking(move || write_atomically(&target, &bytes)).await;
    match written {
        Ok(Ok(())) => tracing::debug!(path = %path.display(), "replay filter snapshot saved"),
        Ok(Err(error)) => tracing::warn!(path = %path.display(), %error, "cannot save the replay filter"),
        Err(error) => tracing::warn!(path = %path.display(), %error, "cannot save the replay filter"),
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`, so a crash
/// leaves either the old snapshot or the new one, never half of one. Only the owner may read it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mut temporary = PathBuf::from(path);
    temporary.as_mut_os_string().push(".tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    // Make the rename itself durable; not every file system lets a directory be synced.
    let _ = std::fs::File::open(dir).and_then(|dir| dir.sync_all());
    Ok(())
}

/// Where the snapshot of the server on `port` goes when none is configured: `replay-PORT.snapshot` in
/// systemd's `$STATE_DIRECTORY` (set by `StateDirectory=`), else `$XDG_STATE_HOME/ss-rs`, else
/// `$HOME/.local/state/ss-rs`; `None` when none of these is set. `env` reads an environment variable.
pub fn default_path(port: u16, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty()).map(PathBuf::from);
    let dir = set("STATE_DIRECTORY")
        // systemd passes several directories separated by colons when several are configured.
        .map(|dirs| dirs.to_string_lossy().split(':').next().map(PathBuf::from).unwrap_or(dirs))
        .or_else(|| set("XDG_STATE_HOME").map(|state| state.join("ss-rs")))
        .or_else(|| set("HOME").map(|home| home.join(".local/state/ss-rs")))?;
    Some(dir.join(format!("replay-{port}.snapshot")))
}

/// The largest snapshot a history of `capacity` salts per generation can produce.
fn max_file_len(method: Method, capacity: usize) -> usize {
    header_len(method.name().len()) + 16 * capacity + CHECKSUM_LEN
}

fn header_len(name_len: usize) -> usize {
    MAGIC.len() + 2 + 1 + name_len + 16 + 3 * 8
}

/// A cursor over the file's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(taken)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|bytes| u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let mut value = [0u8; 8];
        value.copy_from_slice(self.take(8)?);
        Some(u64::from_be_bytes(value))
    }
}

#[cfg(test)]
mod tests;
