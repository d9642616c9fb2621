//! `--check`: what both binaries do instead of serving when asked to check their config.
//!
//! The binary loads its config exactly as a start does (a config that does not load never gets here:
//! its one-line error is the answer), then [`run_check`] raises the open-file limit as a start would and
//! hands a [`Report`] to the binary's own checks, which resolve names, bind every listen address (and
//! release it at the end), find plugin executables and load the files a start loads. Each check records
//! a line of summary or a problem; checks that do not depend on each other all run, so one run lists
//! every problem.
//!
//! ```text
//! $ ss-server --check -c /etc/ss-rs/main.json          (exit 0)
//! ss-server: config OK
//!   server 0.0.0.0:8388: TCP and UDP bind
//!   open-file limit: 51200 (raised from 1024)
//! $ ss-server --check -c broken.json                   (exit 1)
//! ss-server: 2 problems:
//!   binding TCP 0.0.0.0:8388: Address already in use (os error 98)
//!   plugin "obfs-server": not found (not an executable file, and not on PATH)
//! ```
//!
//! Binding needs the ports free: a check run while the same server runs reports them taken.

use std::future::Future;
use std::process::ExitCode;

/// What a check found: lines of summary and the problems, printed by [`Report::finish`].
#[derive(Debug, Default)]
pub struct Report {
    summary: Vec<String>,
    problems: Vec<String>,
}

impl Report {
    /// Records a line of the summary printed under "config OK" (and before the problems otherwise).
    pub fn note(&mut self, line: impl Into<String>) {
        self.summary.push(line.into());
    }

    /// Records a problem: the check fails.
    pub fn problem(&mut self, line: impl Into<String>) {
        self.problems.push(line.into());
    }

    /// Records `result`'s error as a problem prefixed with `what`, and returns its value if it has one.
    pub fn check<T, E: std::fmt::Display>(&mut self, what: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.problem(format!("{what}: {error}"));
                None
            }
        }
    }

    /// The problems recorded so far.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The summary lines recorded so far.
    pub fn summary(&self) -> &[String] {
        &self.summary
    }

    /// Prints the outcome: "`binary`: config OK" and the summary on stdout and exit code 0, or the
    /// summary on stdout, the number of problems and each problem on stderr, and exit code 1.
    pub fn finish(self, binary: &str) -> ExitCode {
        if self.problems.is_empty() {
            println!("{binary}: config OK");
        }
        for line in &self.summary {
            println!("  {line}");
        }
        if self.problems.is_empty() {
            return ExitCode::SUCCESS;
        }
        let count = self.problems.len();
        eprintln!("{binary}: {count} problem{}:", if count == 1 { "" } else { "s" });
        for problem in &self.problems {
            eprintln!("  {problem}");
        }
        ExitCode::FAILURE
    }
}

/// `--check`'s counterpart of [`run_main`](crate::process::run_main): logs warnings only (a check
/// prints its own report), lists the config's `warnings` in the summary, raises the open-file limit
/// to `nofile` as a start does and reports it, then runs `check` (given the report and the limit) on
/// a single-threaded runtime and prints its report.
pub fn run_check<F>(
    binary: &str,
    warnings: &[String],
    nofile: Option<u64>,
    check: impl FnOnce(Report, u64) -> F,
) -> ExitCode
where
    F: Future<Output = Report>,
{
    crate::process::init_logging("warn");
    let mut report = Report::default();
    for warning in warnings {
        report.note(format!("warning: {warning}"));
    }
    let descriptors = descriptor_limit(&mut report, nofile);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{binary}: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(check(report, descriptors)).finish(binary)
}

/// Raises the limit as a start does and notes it (with what it was before, when it changed); a limit
/// that cannot be set is a problem, and the check goes on with the one in force.
fn descriptor_limit(report: &mut Report, nofile: Option<u64>) -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    let before = getrlimit(Resource::RLIMIT_NOFILE).map(|(soft, _)| soft).unwrap_or(0);
    match crate::process::raise_descriptor_limit(nofile) {
        Ok(limit) if limit == before => {
            report.note(format!("open-file limit: {limit}"));
            limit
        }
        Ok(limit) => {
            report.note(format!("open-file limit: {limit} (raised from {before})"));
            limit
        }
        Err(error) => {
            report.problem(format!("nofile: cannot set the open-file limit: {error}"));
            before
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn independent_problems_are_all_kept() {
        let mut report = Report::default();
        report.note("server 127.0.0.1:8388: TCP bind");
        assert_eq!(report.check("binding TCP", Ok::<u8, String>(7)), Some(7));
        assert_eq!(report.check("binding UDP", Err::<u8, _>("Address already in use")), None);
        report.problem("plugin \"x\": not found");
        assert_eq!(report.problems(), ["binding UDP: Address already in use", "plugin \"x\": not found"]);
        assert_eq!(report.summary(), ["server 127.0.0.1:8388: TCP bind"]);
        assert_eq!(report.finish("ss-server"), ExitCode::FAILURE);
    }

    #[test]
    fn no_problem_is_success() {
        let mut report = Report::default();
        report.note("open-file limit: 1024");
        assert_eq!(report.finish("ss-local"), ExitCode::SUCCESS);
    }
}
