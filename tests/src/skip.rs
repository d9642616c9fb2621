//! One way for a test to step aside when something outside the repository is missing (a peer binary,
//! Chromium, root for a network namespace).
//!
//! cargo's test harness has no "skipped" outcome, so a test that returns early is reported as `ok`. To
//! keep a skip from passing for a success:
//! - with `CI` set (`.ci/run` exports `CI=true`) a missing requirement fails the test, since CI must
//!   install everything;
//! - otherwise [`skip`] writes one line starting with [`MARKER`] straight to the process's stderr (past
//!   the harness's output capture, so it shows even for a passing test), and `scripts/test.sh` collects
//!   those lines into its final summary as skipped tests.

use std::io::Write as _;

/// How every skip line starts; `scripts/test.sh` greps the test output for it.
pub const MARKER: &str = "SKIPPED:";

/// Whether the tests run in CI, where nothing may be skipped: `CI` set to anything but empty, `0` or
/// `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"))
}

/// The test cannot run because `reason`; `remedy` says how to provide what is missing. Panics when
/// [`in_ci`]; otherwise prints the skip line and returns, and the caller returns early.
pub fn skip(reason: &str, remedy: &str) {
    let test = current_test();
    assert!(!in_ci(), "{test}: {reason}; CI is set, so this fails instead of skipping ({remedy})");
    let _ = writeln!(std::io::stderr(), "{MARKER} {test}: {reason} ({remedy})");
}

/// The running test's name: the harness names each test's thread after it.
fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => "a test".to_owned(),
    }
}
