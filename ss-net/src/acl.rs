//! The ACL a binary routes or filters by ([`ss_config::acl`]), loaded from its file and replaced whole
//! when the process receives SIGHUP.
//!
//! Readers take the current rules with [`SharedAcl::current`] (no lock: an `ArcSwap`) once per connection
//! and keep them for its life, so a reload never changes a connection that is already open and never
//! drops one. A reload that fails (file gone or unreadable, regexes too large) keeps the rules in force
//! and logs why; lines that are merely bad are skipped with a warning, as at start-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ss_config::acl::{Acl, AclError};
use tokio_util::sync::CancellationToken;

/// The rules in force and the file they came from.
pub struct SharedAcl {
    path: PathBuf,
    current: ArcSwap<Acl>,
}

/// Only the path: the compiled rules of a large list would fill a log line by the megabyte.
impl std::fmt::Debug for SharedAcl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAcl").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SharedAcl {
    /// Loads `path`, logging a warning per skipped line. An unusable file is an error: at start-up
    /// the caller refuses to run rather than run without the rules the operator asked for.
    pub fn load(path: &Path) -> Result<Arc<SharedAcl>, AclError> {
        let acl = load_logged(path)?;
        Ok(Arc::new(SharedAcl { path: path.to_owned(), current: ArcSwap::from_pointee(acl) }))
    }

    /// The rules in force now; keep the `Arc` for the whole connection.
    pub fn current(&self) -> Arc<Acl> {
        self.current.load_full()
    }

    /// Reads the file again and puts its rules in force; on error the old rules stay and the error is
    /// returned (and logged).
    pub fn reload(&self) -> Result<(), AclError> {
        match load_logged(&self.path) {
            Ok(acl) => {
                self.current.store(Arc::new(acl));
                tracing::info!(path = %self.path.display(), "ACL reloaded");
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "ACL reload failed; the previous rules stay in force");
                Err(error)
            }
        }
    }

    /// Reloads on every SIGHUP until `shutdown` is cancelled ([`crate::hangup`]). Installing the
    /// handler can fail (no signal support): the caller reports it at start-up.
    pub fn reload_on_hangup(self: &Arc<Self>, shutdown: CancellationToken) -> std::io::Result<()> {
        let shared = self.clone();
        crate::hangup::on_hangup(shutdown, move || {
            let _ = shared.reload();
        })
    }
}

fn load_logged(path: &Path) -> Result<Acl, AclError> {
    let parsed = Acl::load(path)?;
    for warning in &parsed.warnings {
        tracing::warn!("ACL {warning}");
    }
    Ok(parsed.acl)
}

#[cfg(test)]
mod tests {
    use ss_config::acl::Route;

    use super::*;

    #[test]
    fn reload_replaces_the_rules_and_a_broken_file_keeps_the_old_ones() {
        let dir = std::env::temp_dir().join(format!("ss-net-acl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.acl");
        let ip = "192.0.2.1".parse().unwrap();
        std::fs::write(&path, "[bypass_list]\n192.0.2.0/24\n").unwrap();
        let shared = SharedAcl::load(&path).unwrap();
        let held = shared.current();
        assert_eq!(held.route_ip(ip), Route::Bypass);

        std::fs::write(&path, "[proxy_list]\n192.0.2.0/24\n").unwrap();
        shared.reload().unwrap();
        assert_eq!(shared.current().route_ip(ip), Route::Proxy, "new rules in force");
        assert_eq!(held.route_ip(ip), Route::Bypass, "a connection keeps the rules it started with");

        std::fs::remove_file(&path).unwrap();
        assert!(shared.reload().is_err());
        assert_eq!(shared.current().route_ip(ip), Route::Proxy, "a missing file keeps the old rules");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
