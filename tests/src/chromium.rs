//! Headless Chromium for the browser tests (tests/tests/browser.rs, front_browsers.rs): one `--dump-dom`
//! run with a fresh profile, its own process group killed after it, and what it printed.
//!
//! Every run carries flags that keep the browser quiet (no sync, updates, QUIC or first-run calls); the
//! caller adds its proxy flags and a `--host-resolver-rules` that fails every name it should not resolve,
//! so no test traffic leaves the machine.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::time::timeout;

/// Upper bound for one browser run.
pub const BROWSER_RUN: Duration = Duration::from_secs(90);

/// `chromium` on `PATH`; missing: a skip, or a failure when `CI` is set ([`crate::skip`]).
pub fn chromium() -> Option<PathBuf> {
    crate::peers::program("chromium", "apt-get install chromium")
}

/// What one `chromium --dump-dom` run printed.
#[derive(Debug)]
pub struct BrowserRun {
    /// The page's DOM (stdout).
    pub dom: String,
    /// The browser's log (stderr).
    pub stderr: String,
}

impl std::fmt::Display for BrowserRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Chromium's stderr is mostly D-Bus noise on a headless machine; the page load lines matter.
        let relevant: Vec<&str> =
            self.stderr.lines().filter(|line| !line.contains("dbus") && !line.contains("DBus")).collect();
        write!(
            f,
            "--- DOM ---\n{}\n--- chromium stderr (D-Bus lines left out) ---\n{}",
            self.dom,
            relevant.join("\n")
        )
    }
}

/// Runs headless Chromium with `flags` (proxy and resolver rules) and a fresh profile, so nothing is
/// cached between runs, and returns the DOM it dumps for `url`.
pub async fn dump_dom(chromium: &Path, flags: &[String], url: &str) -> BrowserRun {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut command = Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(flags)
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so the browser's helper processes can be killed with it.
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().unwrap_or_else(|error| panic!("spawn {}: {error}", chromium.display()));
    let group = child.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw);
    let output = timeout(BROWSER_RUN, child.wait_with_output()).await;
    // The helpers (zygote, GPU, network service) exit with the browser; make sure none outlives the test.
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let output = output
        .unwrap_or_else(|_| panic!("chromium did not finish within {BROWSER_RUN:?}"))
        .expect("wait for chromium");
    BrowserRun {
        dom: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
