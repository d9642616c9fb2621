//! `proxy-bench`: command line in, markdown report out. See `ss_benches::proxy` for what is measured and
//! how; `benches/proxy-bench.sh` builds the release binaries and runs this.
//!
//! ```text
//! proxy-bench [--quick] [--runs N] [--methods a,b] [--impls ours,rust,libev] [--out FILE]
//! ```
//!
//! Exit status: 0 when every measurement of ours succeeded (a peer's failure is reported, not fatal), 1 when
//! one of ours failed, 2 for a bad command line or set-up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use ss_benches::proxy::process::{Flavour, Implementation};
use ss_benches::proxy::report::{self, RunInfo};
use ss_benches::proxy::suite::{Sizes, Suite, Workload};
use ss_crypto::Method;

/// Our Shadowsocks server and local against shadowsocks-rust and shadowsocks-libev, side by side on
/// loopback: bulk throughput, CPU per byte, request/response latency, connection rate, UDP, memory.
#[derive(Debug, Parser)]
#[command(name = "proxy-bench")]
struct Args {
    /// Rounds per figure; the report shows the median [default: 3, or 1 with --quick].
    #[arg(long)]
    runs: Option<usize>,
    /// A smoke run: small sizes, short durations, one round.
    #[arg(long)]
    quick: bool,
    /// Methods to measure, comma-separated [default: every method].
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Implementations to measure, comma-separated, from ours, rust, libev [default: all installed].
    #[arg(long, value_delimiter = ',')]
    impls: Vec<Flavour>,
    /// Also write the markdown report to this file (it goes to stdout either way).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Bytes per bulk measurement, MiB [default: 512, or 16 with --quick].
    #[arg(long)]
    bulk_mib: Option<u64>,
    /// Directory holding our ss-server and ss-local [default: proxy-bench's own directory].
    #[arg(long)]
    ours_dir: Option<PathBuf>,
    /// What our binaries were built from (e.g. a commit), shown next to their version in the report.
    #[arg(long)]
    ours_label: Option<String>,
    /// Directory holding shadowsocks-rust's ssserver and sslocal [default: PATH, then ~/.cargo/bin].
    #[arg(long)]
    rust_dir: Option<PathBuf>,
    /// Directory holding shadowsocks-libev's ss-server and ss-local [default: the first on PATH or in
    /// /usr/bin that says it is shadowsocks-libev].
    #[arg(long)]
    libev_dir: Option<PathBuf>,
    /// Run only these workloads, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Workload>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (suite, mut info) = match set_up(&args) {
        Ok(set_up) => set_up,
        Err(error) => {
            eprintln!("proxy-bench: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("proxy-bench: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let load_before = load_average();
    let results = match runtime.block_on(suite.run()) {
        Ok(results) => results,
        Err(error) => {
            eprintln!("proxy-bench: {error:#}");
            return ExitCode::from(2);
        }
    };
    info.machine =
        format!("{}, load average {load_before} at start and {} at end", info.machine, load_average());
    let markdown = report::markdown(&info, &results);
    println!("{markdown}");
    if let Some(path) = &args.out {
        if let Err(error) = write_report(path, &markdown) {
            eprintln!("proxy-bench: {error:#}");
            return ExitCode::from(2);
        }
        eprintln!("proxy-bench: report written to {}", path.display());
    }
    if results.ours_failed() {
        eprintln!("proxy-bench: measurements of ours failed (see \"Failed measurements\")");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Checks the command line, finds the binaries and raises the open-file limit.
fn set_up(args: &Args) -> Result<(Suite, RunInfo)> {
    let methods = if args.methods.is_empty() {
        Method::ALL.to_vec()
    } else {
        let parsed: Result<Vec<Method>, _> = args.methods.iter().map(|name| name.parse::<Method>()).collect();
        parsed.map_err(|error| anyhow::anyhow!("--methods: {error}"))?
    };
    let wanted = if args.impls.is_empty() { Flavour::ALL.to_vec() } else { args.impls.clone() };
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 });
    if runs == 0 {
        bail!("--runs: at least 1");
    }
    let mut sizes = if args.quick { Sizes::quick() } else { Sizes::full() };
    if let Some(mib) = args.bulk_mib {
        sizes.bulk_bytes = mib.max(1) << 20;
    }
    fit_crowd_to_open_file_limit(&mut sizes);
    raise_open_file_limit(sizes.most_connections())?;

    let mut implementations = Vec::new();
    let mut missing = Vec::new();
    for flavour in Flavour::ALL.into_iter().filter(|flavour| wanted.contains(flavour)) {
        let found = match flavour {
            Flavour::Ours => {
                let mut ours = Implementation::ours(&ours_dir(args)?)?;
                if let Some(label) = &args.ours_label {
                    ours.version = format!("{}, {label}", ours.version);
                }
                Some(ours)
            }
            Flavour::Rust => Implementation::rust(args.rust_dir.as_deref()),
            Flavour::Libev => Implementation::libev(args.libev_dir.as_deref()),
        };
        match found {
            Some(implementation) => implementations.push(implementation),
            None => {
                eprintln!("proxy-bench: {} is not installed; its column stays empty", flavour.name());
                missing.push(flavour);
            }
        }
    }
    let info = RunInfo {
        date: utc_now(),
        mode: if args.quick { "quick" } else { "full" },
        runs,
        machine: machine(),
        implementations: implementations.clone(),
        missing,
        methods: methods.clone(),
        sizes: sizes.clone(),
    };
    Ok((Suite { implementations, methods, runs, sizes, only: args.only.clone() }, info))
}

fn ours_dir(args: &Args) -> Result<PathBuf> {
    if let Some(dir) = &args.ours_dir {
        return Ok(dir.clone());
    }
    let exe = std::env::current_exe().context("locating proxy-bench itself")?;
    exe.parent().map(Path::to_path_buf).context("proxy-bench has no parent directory")
}

/// The idle crowd (10,000 in full mode) needs more descriptors than some machines allow even root (a
/// container's hard limit): shrink it to what the hard limit holds, and say so; the report's label shows
/// the size used.
fn fit_crowd_to_open_file_limit(sizes: &mut Sizes) {
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let busy = sizes.crowd_busy;
    let needed = 2 * (sizes.crowd_idle + busy) as u64 + 512;
    // Root may raise the hard limit, where the machine lets it.
    if needed > hard && setrlimit(Resource::RLIMIT_NOFILE, needed, needed).is_err() {
        let fitted = ((hard.saturating_sub(512) / 2) as usize).saturating_sub(busy);
        eprintln!(
            "proxy-bench: the open-file hard limit is {hard}: the idle crowd is {fitted} connections, not {}",
            sizes.crowd_idle
        );
        sizes.crowd_idle = fitted;
    }
}

/// Each open connection holds two descriptors here (client and target side) and two in each proxy, which
/// inherit this limit: raise the soft limit to the hard one (at most 65,536) if it is lower than needed,
/// and the hard limit too where we may (root).
fn raise_open_file_limit(connections: usize) -> Result<()> {
    let needed = 2 * connections as u64 + 512;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading the open-file limit")?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        return setrlimit(Resource::RLIMIT_NOFILE, needed, needed).map_err(|_| {
            anyhow::anyhow!(
                "the open-file hard limit is {hard}, {needed} are needed: raise it (ulimit -Hn) or use --quick"
            )
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536).max(needed), hard)
        .context("raising the open-file limit")
}

fn write_report(path: &Path, markdown: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, markdown).with_context(|| format!("writing {}", path.display()))
}

/// CPUs, kernel and our niceness (the proxies inherit it).
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Field 19 of /proc/self/stat; the fields after the command name's ')' start at field 3.
    let nice = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(16).map(str::to_owned))
        })
        .unwrap_or_else(|| "?".to_owned());
    format!("{cpus} CPUs, Linux {}, nice {nice}", kernel.trim())
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Now as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
    }
}
